""":func:`swap_pooling`: replace a model's pooling layers in place by any pooling of the table."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from lit_ppool.functional import pool_geometry
from lit_ppool.layers.ppool import PPoolBase
from lit_ppool.layers.registry import (
    NATIVE_GLOBAL_POOL_TYPES,
    NATIVE_POOL_TYPES,
    POOLINGS,
    PoolLayerType,
    ResolvedPooling,
    is_global_pool,
    resolve_pooling,
)
from lit_ppool.layers.same import SamePadPool2d
from lit_ppool.surgery.probe import ADAPTIVE_POOL_TYPES, TORCH_POOL_TYPES, Probe
from lit_ppool.surgery.report import Skip, SkipKind, Swap, SwapReport, warn_nothing_swapped

__all__ = ["needs_channel_counts", "swap_pooling"]

try:  # timm's dynamic "same" padding pools (timm comes with segmentation-models-pytorch)
    from timm.layers.pool2d_same import AvgPool2dSame as _TimmAvgSame
    from timm.layers.pool2d_same import MaxPool2dSame as _TimmMaxSame

    _SAME_TYPES: tuple[type, ...] = (_TimmMaxSame, _TimmAvgSame)
except ImportError:  # pragma: no cover - timm is a dependency of smp
    _SAME_TYPES = ()

_PLAIN_TYPES = NATIVE_POOL_TYPES
_GLOBAL_TYPES = NATIVE_GLOBAL_POOL_TYPES  # swappable when `include` names them
_OURS = tuple(cls for cls in POOLINGS.values() if cls not in _PLAIN_TYPES) + (PPoolBase, SamePadPool2d)
_INDICES = "return_indices=True: its indices feed an unpooling layer, which no other pooling can serve"
_Why = tuple[SkipKind, str]  # a Skip's kind and reason


def _as_patterns(value: str | Sequence[str] | None, name: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValueError(f"Expected argument `{name}` to be None, a glob string or a list of them, but got {value!r}.")


def _matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def _why_keep_adaptive(module: nn.Module, include: list[str] | None) -> _Why | None:
    """Why an adaptive pool (selected by include/exclude so far) is not a candidate, or ``None`` if it is."""
    kind = type(module).__name__
    if include is None:
        return "adaptive", (
            f"adaptive/global pooling ({kind}) is left alone unless `include` names it: its window depends on "
            "the input size, while registry poolings have a fixed window"
        )
    if type(module) not in _GLOBAL_TYPES:
        swapped = " / ".join(f"nn.{cls.__name__}" for cls in _GLOBAL_TYPES)
        return "unsupported_type", f"unsupported adaptive pooling type {kind} (only {swapped} are swapped)"
    if not is_global_pool(module):
        return "adaptive", (
            f"adaptive pooling with output_size={module.output_size}: only global (output_size=1) adaptive "
            "pools can be swapped"
        )
    if getattr(module, "return_indices", False):
        return "return_indices", _INDICES
    return None


def _why_keep(name: str, module: nn.Module, include: list[str] | None, exclude: list[str] | None, downsampling_only: bool) -> _Why | None:
    """Why a torch pooling module is not a candidate, or ``None`` if it is."""
    if include is not None and not _matches(name, include):
        return "not_selected", f"not matched by include={include}"
    if exclude is not None and _matches(name, exclude):
        return "not_selected", f"matched by exclude={exclude}"
    if isinstance(module, ADAPTIVE_POOL_TYPES):
        return _why_keep_adaptive(module, include)
    if type(module) not in _PLAIN_TYPES + _SAME_TYPES:
        if isinstance(module, _PLAIN_TYPES):
            return "unsupported_type", (
                f"{type(module).__name__} subclasses {type(module).__mro__[1].__name__} with its own forward; "
                "not swapped so as not to drop its behaviour"
            )
        return "unsupported_type", f"unsupported pooling type {type(module).__name__} (only 2-d max/avg pooling is swapped)"
    if getattr(module, "return_indices", False):
        return "return_indices", _INDICES
    try:  # read now: smp mutates padding after construction
        geometry = pool_geometry(module.kernel_size, module.stride, module.padding, getattr(module, "dilation", 1), module.ceil_mode)
    except (TypeError, ValueError) as error:
        return "invalid_geometry", f"invalid geometry: {error}"
    if downsampling_only and geometry.stride == (1, 1):
        return "stride_one", "stride 1 (does not downsample); pass downsampling_only=False to swap it"
    if type(module) in _SAME_TYPES and geometry.ceil_mode:
        return "same_padding", "'same' padding with ceil_mode=True is not supported"
    if type(module) in _SAME_TYPES and geometry.dilation != (1, 1):
        return "same_padding", "'same' padding with dilation > 1 is not supported"
    return None


def _select(model: nn.Module, include: list[str] | None, exclude: list[str] | None, downsampling_only: bool) -> tuple[dict[str, nn.Module], list[Skip]]:
    """The pools to replace (qualified name -> module) and the ones left alone."""
    candidates: dict[str, nn.Module] = {}
    skipped: list[Skip] = []
    inside_ours: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in inside_ours):
            continue  # the pool inside one of our wrappers
        if isinstance(module, _OURS):
            inside_ours.append(name)
            skipped.append(Skip(name, module, f"already a lit_ppool pooling layer ({type(module).__name__})", "already_ours"))
        elif isinstance(module, TORCH_POOL_TYPES) and name == "":
            skipped.append(Skip(name, module, "the model itself is a pooling layer: there is no parent to swap it in", "is_model"))
        elif isinstance(module, TORCH_POOL_TYPES):
            why = _why_keep(name, module, include, exclude, downsampling_only)
            if why is None:
                candidates[name] = module
            else:
                skipped.append(Skip(name, module, why[1], why[0]))
    return candidates, skipped


def _probe(model: nn.Module, candidates: dict[str, nn.Module], example_input: Any, skipped: list[Skip]) -> Probe | None:
    """Run the probe forward (if there is an input) and add the functional pooling it found to ``skipped``."""
    if example_input is None:
        return None
    probe = Probe(model, candidates, TORCH_POOL_TYPES + _OURS)
    probe.run(model, example_input)
    for (name, fname), module in probe.functional.items():
        reason = (
            f"calls {fname} functionally in forward(); it cannot be swapped in place "
            "(make it an nn.MaxPool2d/nn.AvgPool2d attribute first)"
        )
        skipped.append(Skip(name or "<model>", module, reason, "functional"))
    return probe


def _build(name: str, old: nn.Module, pooling: ResolvedPooling, kwargs: dict[str, Any], probe: Probe | None, needs_channels: bool) -> nn.Module | Skip:
    """The replacement of ``old``, or the :class:`Skip` that says why there is none."""
    is_global = isinstance(old, _GLOBAL_TYPES)
    if is_global and pooling.spec.global_form is None:
        return Skip(name, old, pooling.no_global_form(), "no_global_form")
    if needs_channels:
        channels = probe.channels[name]
        if len(channels) != 1:
            why = "was not called by the probe forward" if not channels else f"was called with several channel counts {sorted(channels)}"
            return Skip(name, old, f"needs its channel count, but it {why}", "no_channel_count")
        kwargs = {**kwargs, "num_channels": next(iter(channels))}
    same = type(old) in _SAME_TYPES
    try:  # the built module's own values (validated above), so the new repr reads like the old
        if is_global:
            new = pooling.build_global(**kwargs)
        else:
            padding = 0 if same else old.padding
            new = pooling.build(old.kernel_size, old.stride, padding, getattr(old, "dilation", 1), bool(old.ceil_mode), **kwargs)
    except (TypeError, ValueError) as error:
        return Skip(name, old, f"{pooling.label} cannot be built for this pool: {error}", "cannot_build")
    return SamePadPool2d(new) if same else new


def _device_of(model: nn.Module) -> torch.device | None:
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return None


def _resolve_target(pooling: PoolLayerType | ResolvedPooling | None, pool_kwargs: dict[str, Any]) -> ResolvedPooling:
    """The target pooling (resolved once, here or by the caller), accepting ``to=`` (its earlier name) in ``pool_kwargs``."""
    if "to" not in pool_kwargs:
        return resolve_pooling("p" if pooling is None else pooling, "pooling")
    if pooling is not None:
        raise ValueError(f"Expected one of the arguments `pooling` and `to` (the same argument), but got both: {pooling!r} and {pool_kwargs['to']!r}.")
    return resolve_pooling(pool_kwargs.pop("to"), "to")


def needs_channel_counts(pooling: ResolvedPooling, pool_kwargs: Mapping[str, Any]) -> bool:
    """Whether swapping to ``pooling`` with ``pool_kwargs`` measures each pool's channel count.

    It does for a pooling that needs ``num_channels`` (``strided_conv``) and for
    ``num_channels="auto"`` (one alpha per channel); the measure is a probe forward of an
    ``example_input``, which :func:`swap_pooling` then requires.

    Example:
        >>> needs_channel_counts(resolve_pooling("p"), {"num_channels": "auto"}), needs_channel_counts(resolve_pooling("p"), {})
        (True, False)
    """
    return pooling.needs_channels or pool_kwargs.get("num_channels") == "auto"


def _needs_channels(model: Any, pooling: ResolvedPooling, example_input: Any, pool_kwargs: dict[str, Any]) -> bool:
    """Validate the arguments; whether a probe must measure each pool's channel count."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"Expected argument `model` to be a torch.nn.Module, but got {type(model).__name__}.")
    auto_channels = pool_kwargs.get("num_channels") == "auto"
    if needs_channel_counts(pooling, pool_kwargs) and example_input is None:
        raise ValueError(
            f"Expected argument `example_input` to be an input for one probe forward when "
            f"{pooling.argument}={pooling.label}{' with num_channels=' + repr('auto') if auto_channels else ''} "
            "(the channel count of each pool is measured), but got None."
        )
    if "num_channels" in pool_kwargs and not auto_channels and pooling.needs_channels:
        raise ValueError("Expected argument `num_channels` to be left out (it is measured per pool), but got one.")
    return needs_channel_counts(pooling, pool_kwargs)


def swap_pooling(
    model: nn.Module,
    pooling: PoolLayerType | ResolvedPooling | None = None,
    *,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    downsampling_only: bool = True,
    example_input: Any = None,
    **pool_kwargs: Any,
) -> SwapReport:
    """Replace a model's pooling layers in place by a registry pooling (P-pooling by default).

    Every ``nn.MaxPool2d`` / ``nn.AvgPool2d`` of exactly that type, and timm's
    ``MaxPool2dSame`` / ``AvgPool2dSame`` (kept "same": wrapped in
    :class:`~lit_ppool.layers.same.SamePadPool2d`), is rebuilt with ``pooling`` and the geometry
    read from the built module (kernel, stride, padding, dilation, ceil_mode), so every
    output shape of the model is unchanged. The new module takes the old one's attribute
    name and training mode; no other parameter or buffer is touched, so the only new
    ``state_dict`` keys are the new layers' own (e.g. ``<name>.alpha_raw``).

    Global pooling is swapped only when asked: an ``nn.AdaptiveAvgPool2d`` /
    ``nn.AdaptiveMaxPool2d`` with ``output_size=1`` (or ``(1, 1)``) whose name a glob of
    ``include`` matches (not ``exclude``) becomes the global form of ``pooling`` (its
    :class:`~lit_ppool.layers.registry.PoolingSpec`'s ``global_form``):
    :class:`~lit_ppool.layers.ppool.GlobalPPool2d` for ``"p"``, ``nn.AdaptiveMaxPool2d(1)`` for
    ``"max"`` and ``nn.AdaptiveAvgPool2d(1)`` for ``"avg"``. The output stays ``(N, C, 1, 1)``.
    Other poolings have no global form and skip it; ``downsampling_only`` does not apply.

    Left alone, each with its reason and ``kind`` in ``report.skipped`` (see
    :data:`~lit_ppool.surgery.report.SkipKind`): adaptive pooling when ``include`` is not
    given, adaptive pooling with ``output_size`` other than 1 (always), other subclasses and
    pooling types, ``return_indices=True``, stride-1 pools when ``downsampling_only``, names
    not selected by ``include``/``exclude``, geometries the target rejects (e.g. ``avg`` with
    dilation), and pooling called functionally inside a ``forward`` (found by the probe).

    With ``example_input``, one probe forward (eval mode, no grad, nothing updated) runs on
    the original model first: it gives each pool's channel count (needed by
    ``strided_conv`` and by ``num_channels="auto"`` for one alpha per channel) and fills
    ``report.negative_inputs`` with the swapped pools that received negative values.

    Args:
        model: Any ``nn.Module`` (smp model or encoder, timm or torchvision model).
        pooling: A name from :func:`lit_ppool.available_poolings`, a class or a
            ``functools.partial``, or the :class:`~lit_ppool.layers.registry.ResolvedPooling` of
            one (a caller that resolved it already); default ``"p"``. ``to=`` is accepted as its
            earlier name.
        include: Glob(s) on qualified module names; only matching pools are swapped. Global
            (``output_size=1``) adaptive pools are swapped only when matched here.
        exclude: Glob(s) on qualified module names; matching pools are kept.
        downsampling_only: Only swap pools with a stride > 1 along some axis.
        example_input: A tensor (or tuple of positional inputs, or dict of keyword inputs)
            for the probe forward.
        **pool_kwargs: Passed to every new layer (``alpha_init=0.5``, ``num_channels="auto"``, ...).

    Returns:
        A :class:`~lit_ppool.surgery.report.SwapReport`: a list of ``Swap(name, old, new)``
        with ``.skipped`` and ``.negative_inputs``. When it is empty a
        :class:`~lit_ppool.surgery.report.NothingSwappedWarning` says so.

    Raises:
        ValueError: If ``pooling`` is unknown (the message lists the valid names), a glob
            argument is malformed, or the target needs channel counts and no
            ``example_input`` is given.

    Example:
        >>> import segmentation_models_pytorch as smp
        >>> model = smp.Unet("resnet18", encoder_weights=None, classes=2)
        >>> report = swap_pooling(model, "p", alpha_init=1.0)
        >>> [(s.name, type(s.new).__name__) for s in report]
        [('encoder.maxpool', 'PPool2d')]
        >>> head = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        >>> swap_pooling(head, "p", include="1")[0].new
        GlobalPPool2d(output_size=1, alpha=1.0000)
    """
    target = _resolve_target(pooling, pool_kwargs)  # unknown names fail here, listing the valid ones
    needs_channels = _needs_channels(model, target, example_input, pool_kwargs)
    include_, exclude_ = _as_patterns(include, "include"), _as_patterns(exclude, "exclude")
    candidates, skipped = _select(model, include_, exclude_, downsampling_only)
    probe = _probe(model, candidates, example_input, skipped)

    device = _device_of(model)
    swaps: list[Swap] = []
    for name, old in candidates.items():
        new = _build(name, old, target, pool_kwargs, probe, needs_channels)
        if isinstance(new, Skip):
            skipped.append(new)
            continue
        if device is not None:
            new = new.to(device)
        new.train(old.training)
        model.set_submodule(name, new, strict=True)  # same attribute, so state_dict keys stay
        swaps.append(Swap(name, old, new))

    if not swaps:
        warn_nothing_swapped(model, skipped)
    negative = sorted({swap.name for swap in swaps} & probe.negative) if probe is not None else []
    return SwapReport(swaps, skipped, negative, probed=probe is not None)
