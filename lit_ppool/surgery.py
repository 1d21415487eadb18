"""Model surgery: replace the pooling layers of any ``nn.Module`` in place, and bake them back.

:func:`swap_pooling` turns the ``nn.MaxPool2d`` / ``nn.AvgPool2d`` layers of a model (smp,
timm, torchvision or your own) into any pooling of the registry (and global average/max
pools, when ``include`` names them, into its global form) under the same attribute names,
and returns what it replaced and what it left alone (with the reason).
:func:`bake_pooling` does the reverse for deployment: P-pooling layers whose learned alpha
sits at a limit become the native pooling they have converged to.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import warnings
from typing import Any, Iterable, NamedTuple, Sequence

import torch
from torch import Tensor, nn
from torch.nn.modules import pooling as torch_pooling
from torch.overrides import TorchFunctionMode

from lit_ppool.functional import pool_geometry
from lit_ppool.layers.baselines import AveragePool2d
from lit_ppool.layers.ppool import GlobalPPool2d, PPool2d
from lit_ppool.layers.registry import (
    POOLINGS,
    PoolLayerType,
    create_pool2d,
    get_pool_layer,
    pool_requires_num_channels,
)
from lit_ppool.layers.same import SamePadPool2d

__all__ = ["Bake", "BakeReport", "NothingSwappedWarning", "Skip", "Swap", "SwapReport", "bake_pooling", "swap_pooling"]

try:  # timm's dynamic "same" padding pools (timm comes with segmentation-models-pytorch)
    from timm.layers.pool2d_same import AvgPool2dSame as _TimmAvgSame
    from timm.layers.pool2d_same import MaxPool2dSame as _TimmMaxSame

    _SAME_TYPES: tuple[type, ...] = (_TimmMaxSame, _TimmAvgSame)
except ImportError:  # pragma: no cover - timm is a dependency of smp
    _SAME_TYPES = ()

_PLAIN_TYPES = (nn.MaxPool2d, nn.AvgPool2d)
_ADAPTIVE_TYPES = (torch_pooling._AdaptiveAvgPoolNd, torch_pooling._AdaptiveMaxPoolNd)
_GLOBAL_TYPES = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)  # swappable when `include` names them
_GEOMETRY_KEYWORDS = ("kernel_size", "stride", "padding", "dilation", "ceil_mode")
_TORCH_POOL_TYPES = (
    torch_pooling._MaxPoolNd,
    torch_pooling._AvgPoolNd,
    torch_pooling._LPPoolNd,
    torch_pooling.FractionalMaxPool2d,
    torch_pooling.FractionalMaxPool3d,
) + _ADAPTIVE_TYPES
_OURS = tuple({cls for cls in POOLINGS.values() if cls not in _PLAIN_TYPES}) + (SamePadPool2d,)
_FUNCTIONAL_POOLS = {"max_pool2d", "avg_pool2d", "_max_pool2d", "max_pool2d_with_indices", "lp_pool2d", "fractional_max_pool2d"}


class NothingSwappedWarning(UserWarning):
    """:func:`swap_pooling` replaced no module: the model has no pooling layer, or none was selected."""


class Swap(NamedTuple):
    """One replaced pooling module: qualified ``name``, the ``old`` module and the ``new`` one."""

    name: str
    old: nn.Module
    new: nn.Module


class Skip(NamedTuple):
    """One pooling module (or functional pooling call) left alone, with the ``reason``."""

    name: str
    module: nn.Module | None
    reason: str


class SwapReport(list):
    """The :class:`Swap` records of :func:`swap_pooling`, plus what it left alone.

    Attributes:
        skipped: :class:`Skip` records: pooling modules not replaced (and pooling called
            functionally, found by the probe), each with its reason.
        negative_inputs: Names of replaced pools that received negative inputs during the
            probe forward (empty without ``example_input``). P-pooling's domain is ``x >= 0``.
        probed: Whether a probe forward ran.
    """

    def __init__(self, swaps: Iterable[Swap] = (), skipped: Iterable[Skip] = (), negative_inputs: Iterable[str] = (), probed: bool = False):
        super().__init__(swaps)
        self.skipped = list(skipped)
        self.negative_inputs = list(negative_inputs)
        self.probed = probed

    @property
    def names(self) -> list[str]:
        """Qualified names of the replaced modules."""
        return [swap.name for swap in self]

    def summary(self) -> str:
        """A human-readable, one line per module, account of the swap."""
        lines = [f"swapped {len(self)} pooling module(s), left {len(self.skipped)} alone"]
        lines += [f"  {s.name}: {type(s.old).__name__} -> {type(s.new).__name__}" for s in self]
        lines += [f"  {s.name}: kept ({s.reason})" for s in self.skipped]
        if self.negative_inputs:
            lines.append(f"  negative inputs reached: {', '.join(self.negative_inputs)}")
        return "\n".join(lines)


class Bake(NamedTuple):
    """One P-pooling layer baked into native pooling, with the measured max abs ``error``."""

    name: str
    old: nn.Module
    new: nn.Module
    error: float


class BakeReport(list):
    """The :class:`Bake` records of :func:`bake_pooling`; ``kept`` lists the P-pooling layers left as they are."""

    def __init__(self, baked: Iterable[Bake] = (), kept: Iterable[Skip] = ()):
        super().__init__(baked)
        self.kept = list(kept)


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


def _geometry_of(module: nn.Module):
    """Geometry of a built torch pooling module (read now: smp mutates padding after construction)."""
    return pool_geometry(
        module.kernel_size,
        module.stride,
        getattr(module, "padding", 0),
        getattr(module, "dilation", 1),
        getattr(module, "ceil_mode", False),
    )


def _is_global(module: nn.Module) -> bool:
    """Whether an adaptive pool's ``output_size`` is 1 (or ``(1, 1)``): one window over the whole map."""
    size = module.output_size
    sizes = size if isinstance(size, (tuple, list)) else (size,)
    return all(s == 1 for s in sizes)


def _reason_to_keep_adaptive(module: nn.Module, include: list[str] | None) -> str | None:
    """Why an adaptive pool (selected by include/exclude so far) is not a candidate, or ``None`` if it is."""
    kind = type(module).__name__
    if include is None:
        return (
            f"adaptive/global pooling ({kind}) is left alone unless `include` names it: its window depends on "
            "the input size, while registry poolings have a fixed window"
        )
    if type(module) not in _GLOBAL_TYPES:
        return f"unsupported adaptive pooling type {kind} (only nn.AdaptiveAvgPool2d / nn.AdaptiveMaxPool2d are swapped)"
    if not _is_global(module):
        return (
            f"adaptive pooling with output_size={module.output_size}: only global (output_size=1) adaptive "
            "pools can be swapped"
        )
    if getattr(module, "return_indices", False):
        return "return_indices=True: its indices feed an unpooling layer, which no other pooling can serve"
    return None


# Registry class -> its global (whole-map) form, built from the non-geometry options.
_GLOBAL_FORMS: dict[type, Any] = {
    PPool2d: lambda **options: GlobalPPool2d(**options),
    nn.MaxPool2d: lambda **options: nn.AdaptiveMaxPool2d(1, **options),
    AveragePool2d: lambda **options: nn.AdaptiveAvgPool2d(1, **options),
    nn.AvgPool2d: lambda **options: nn.AdaptiveAvgPool2d(1, **options),
}


def _unwrap(to: PoolLayerType) -> tuple[Any, dict[str, Any]]:
    """The class behind the pooling ``to`` and the keywords of its ``functools.partial`` layers."""
    constructor = get_pool_layer(to)
    chain = []
    while isinstance(constructor, functools.partial):
        chain.append(constructor.keywords)
        constructor = constructor.func
    options: dict[str, Any] = {}
    for keywords in reversed(chain):  # the outermost partial's keywords win, as in a call
        options.update(keywords)
    return constructor, options


def _no_global_form(to: PoolLayerType) -> str | None:
    """Why the pooling ``to`` cannot replace a global pool, or ``None`` if it has a global form."""
    if _unwrap(to)[0] in _GLOBAL_FORMS:
        return None
    return (
        f"{to!r} has no global form; a global pool can only become 'p' (GlobalPPool2d), "
        "'max' (nn.AdaptiveMaxPool2d) or 'avg' (nn.AdaptiveAvgPool2d)"
    )


def _global_pool(to: PoolLayerType, pool_kwargs: dict[str, Any]) -> nn.Module:
    """The global form of the pooling ``to`` (which has one), with its partial's options and ``pool_kwargs``.

    Geometry options are dropped: the window is the whole map.
    """
    constructor, options = _unwrap(to)
    options.update(pool_kwargs)
    options = {k: v for k, v in options.items() if k not in _GEOMETRY_KEYWORDS}
    return _GLOBAL_FORMS[constructor](**options)


def _reason_to_keep(
    name: str, module: nn.Module, include: list[str] | None, exclude: list[str] | None, downsampling_only: bool
) -> str | None:
    """Why ``module`` (a pooling module) is not a candidate, or ``None`` if it is."""
    if include is not None and not _matches(name, include):
        return f"not matched by include={include}"
    if exclude is not None and _matches(name, exclude):
        return f"matched by exclude={exclude}"
    if isinstance(module, _ADAPTIVE_TYPES):
        return _reason_to_keep_adaptive(module, include)
    if type(module) not in _PLAIN_TYPES + _SAME_TYPES:
        if isinstance(module, _PLAIN_TYPES):
            return (
                f"{type(module).__name__} subclasses {type(module).__mro__[1].__name__} with its own forward; "
                "not swapped so as not to drop its behaviour"
            )
        return f"unsupported pooling type {type(module).__name__} (only 2-d max/avg pooling is swapped)"
    if getattr(module, "return_indices", False):
        return "return_indices=True: its indices feed an unpooling layer, which no other pooling can serve"
    try:
        geometry = _geometry_of(module)
    except (TypeError, ValueError) as error:
        return f"invalid geometry: {error}"
    if downsampling_only and geometry.stride == (1, 1):
        return "stride 1 (does not downsample); pass downsampling_only=False to swap it"
    if type(module) in _SAME_TYPES:
        if geometry.ceil_mode:
            return "'same' padding with ceil_mode=True is not supported"
        if geometry.dilation != (1, 1):
            return "'same' padding with dilation > 1 is not supported"
    return None


class _Probe(TorchFunctionMode):
    """One forward that records each candidate pool's input channels and sign, and functional pooling."""

    def __init__(self, model: nn.Module, candidates: dict[str, nn.Module]) -> None:
        super().__init__()
        self.channels: dict[str, set[int]] = {name: set() for name in candidates}
        self.negative: set[str] = set()
        self.functional: dict[tuple[str, str], nn.Module] = {}
        self._stack: list[tuple[str, nn.Module]] = []
        self._handles = []
        for name, module in model.named_modules():
            self._handles.append(module.register_forward_pre_hook(self._enter(name, module, name in candidates)))
            self._handles.append(module.register_forward_hook(self._leave))

    def _enter(self, name: str, module: nn.Module, candidate: bool):
        def hook(_module, args):
            self._stack.append((name, module))
            if candidate and args and isinstance(args[0], Tensor) and args[0].dim() >= 3:
                self.channels[name].add(int(args[0].shape[-3]))
                if bool((args[0] < 0).any()):
                    self.negative.add(name)

        return hook

    def _leave(self, _module, _args, _output):
        self._stack.pop()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        fname = getattr(func, "__name__", "")
        if fname in _FUNCTIONAL_POOLS and self._stack:
            name, module = self._stack[-1]
            if not isinstance(module, _TORCH_POOL_TYPES + _OURS):
                self.functional.setdefault((name, fname), module)
        return func(*args, **(kwargs or {}))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


@contextlib.contextmanager
def _eval_no_grad(model: nn.Module):
    """Eval mode (no BatchNorm statistics updated) and no autograd; training flags restored."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, mode in modes:
            module.training = mode


def _call(model: nn.Module, example_input: Any):
    if isinstance(example_input, dict):
        return model(**example_input)
    if isinstance(example_input, (tuple, list)):
        return model(*example_input)
    return model(example_input)


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def _device_of(model: nn.Module) -> torch.device | None:
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return None


def swap_pooling(
    model: nn.Module,
    to: PoolLayerType = "p",
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
    :class:`~lit_ppool.layers.same.SamePadPool2d`), is rebuilt with ``to`` and the geometry
    read from the built module (kernel, stride, padding, dilation, ceil_mode), so every
    output shape of the model is unchanged. The new module takes the old one's attribute
    name and training mode; no other parameter or buffer is touched, so the only new
    ``state_dict`` keys are the new layers' own (e.g. ``<name>.alpha_raw``).

    Global pooling is swapped only when asked: an ``nn.AdaptiveAvgPool2d`` /
    ``nn.AdaptiveMaxPool2d`` with ``output_size=1`` (or ``(1, 1)``) whose name a glob of
    ``include`` matches (not ``exclude``) becomes the global form of ``to``:
    :class:`~lit_ppool.layers.ppool.GlobalPPool2d` for ``"p"`` (``p_pool2d`` over the whole
    map, same ``alpha_raw`` / ``alpha`` and options), ``nn.AdaptiveMaxPool2d(1)`` for ``"max"``
    and ``nn.AdaptiveAvgPool2d(1)`` for ``"avg"``. The output stays ``(N, C, 1, 1)``. Other
    poolings have no global form and skip it with that reason; ``downsampling_only`` does
    not apply to global pools.

    Left alone, each with its reason in ``report.skipped``: adaptive pooling when
    ``include`` is not given, adaptive pooling with ``output_size`` other than 1 (always),
    other subclasses and pooling types, ``return_indices=True``, stride-1 pools when
    ``downsampling_only``, names not selected by ``include``/``exclude``, geometries the
    target rejects (e.g. ``avg`` with dilation), and pooling called functionally inside a
    ``forward`` (found by the probe; it cannot be replaced in place).

    With ``example_input``, one probe forward (eval mode, no grad, nothing updated) runs on
    the original model first: it gives each pool's channel count (needed by
    ``strided_conv`` and by ``num_channels="auto"`` for one alpha per channel) and fills
    ``report.negative_inputs`` with the swapped pools that received negative values.

    Args:
        model: Any ``nn.Module`` (smp model or encoder, timm or torchvision model).
        to: A name from :func:`lit_ppool.available_poolings`, a class or a ``functools.partial``.
        include: Glob(s) on qualified module names; only matching pools are swapped. Global
            (``output_size=1``) adaptive pools are swapped only when matched here.
        exclude: Glob(s) on qualified module names; matching pools are kept.
        downsampling_only: Only swap pools with a stride > 1 along some axis.
        example_input: A tensor (or tuple of positional inputs, or dict of keyword inputs)
            for the probe forward.
        **pool_kwargs: Passed to every new layer (``alpha_init=0.5``, ``num_channels="auto"``, ...).

    Returns:
        A :class:`SwapReport`: a list of :class:`Swap` ``(name, old, new)`` with ``.skipped``
        and ``.negative_inputs``. When it is empty a :class:`NothingSwappedWarning` says so.

    Raises:
        ValueError: If ``to`` is unknown (the message lists the valid names), a glob
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
    if not isinstance(model, nn.Module):
        raise ValueError(f"Expected argument `model` to be a torch.nn.Module, but got {type(model).__name__}.")
    get_pool_layer(to)  # unknown names fail here, listing the valid ones
    include_ = _as_patterns(include, "include")
    exclude_ = _as_patterns(exclude, "exclude")
    auto_channels = pool_kwargs.get("num_channels") == "auto"
    needs_channels = auto_channels or pool_requires_num_channels(to)
    if needs_channels and example_input is None:
        raise ValueError(
            f"Expected argument `example_input` to be an input for one probe forward when to={to!r}"
            f"{' with num_channels=' + repr('auto') if auto_channels else ''} (the channel count of each pool "
            "is measured), but got None."
        )
    if "num_channels" in pool_kwargs and not auto_channels and pool_requires_num_channels(to):
        raise ValueError("Expected argument `num_channels` to be left out (it is measured per pool), but got one.")

    skipped: list[Skip] = []
    candidates: dict[str, nn.Module] = {}
    inside_ours: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in inside_ours):
            continue  # the pool inside one of our wrappers
        if isinstance(module, _OURS):
            inside_ours.append(name)
            skipped.append(Skip(name, module, f"already a lit_ppool pooling layer ({type(module).__name__})"))
            continue
        if not isinstance(module, _TORCH_POOL_TYPES):
            continue
        if name == "":
            skipped.append(Skip(name, module, "the model itself is a pooling layer: there is no parent to swap it in"))
            continue
        reason = _reason_to_keep(name, module, include_, exclude_, downsampling_only)
        if reason is None:
            candidates[name] = module
        else:
            skipped.append(Skip(name, module, reason))

    probe = None
    if example_input is not None:
        probe = _Probe(model, candidates)
        try:
            with _eval_no_grad(model), probe:
                _call(model, example_input)
        finally:
            probe.remove()
        for (name, fname), module in probe.functional.items():
            skipped.append(
                Skip(name or "<model>", module, f"calls {fname} functionally in forward(); it cannot be swapped in place "
                     "(make it an nn.MaxPool2d/nn.AvgPool2d attribute first)")
            )

    device = _device_of(model)
    swaps: list[Swap] = []
    for name, old in candidates.items():
        kwargs = dict(pool_kwargs)
        is_global = isinstance(old, _GLOBAL_TYPES)
        if is_global and _no_global_form(to) is not None:
            skipped.append(Skip(name, old, _no_global_form(to)))
            continue
        if needs_channels:
            channels = probe.channels[name]
            if len(channels) != 1:
                why = "was not called by the probe forward" if not channels else f"was called with several channel counts {sorted(channels)}"
                skipped.append(Skip(name, old, f"needs its channel count, but it {why}"))
                continue
            kwargs["num_channels"] = channels.pop()
        same = type(old) in _SAME_TYPES
        try:  # the built module's own values (validated above), so the new repr reads like the old
            if is_global:
                new = _global_pool(to, kwargs)
            else:
                new = create_pool2d(
                    to, old.kernel_size, old.stride, 0 if same else old.padding,
                    getattr(old, "dilation", 1), bool(old.ceil_mode), **kwargs,
                )
        except (TypeError, ValueError) as error:
            skipped.append(Skip(name, old, f"{to!r} cannot be built for this pool: {error}"))
            continue
        if same:
            new = SamePadPool2d(new)
        if device is not None:
            new = new.to(device)
        new.train(old.training)
        _set_submodule(model, name, new)
        swaps.append(Swap(name, old, new))

    if not swaps:
        _warn_nothing_swapped(model, skipped)
    swapped = {swap.name for swap in swaps}
    negative = sorted(swapped & probe.negative) if probe is not None else []
    return SwapReport(swaps, skipped, negative, probed=probe is not None)


def _warn_nothing_swapped(model: nn.Module, skipped: list[Skip]) -> None:
    if skipped:
        why = f"all {len(skipped)} pooling module(s) were left alone (the report's `skipped` says why)"
    else:
        why = "it has no pooling module (its downsampling is done by strided convolutions, or pooling is called functionally)"
    warnings.warn(f"swap_pooling replaced nothing in {type(model).__name__}: {why}.", NothingSwappedWarning, stacklevel=3)


def _baked_replacement(pool: PPool2d, alpha: Tensor, threshold: float) -> tuple[nn.Module | None, str]:
    if isinstance(pool, GlobalPPool2d):
        if bool((alpha == 0).all()):
            return nn.AdaptiveAvgPool2d(1), ""
        if bool((alpha >= threshold).all()):
            return nn.AdaptiveMaxPool2d(1), ""
        return None, f"alpha = {alpha.mean().item():.4g} is at neither limit (0 or >= {threshold:g})"
    geometry = pool_geometry(pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode)
    if bool((alpha == 0).all()):
        if geometry.dilation != (1, 1):
            return None, "alpha = 0 but dilation > 1, which nn.AvgPool2d cannot express"
        return AveragePool2d(geometry.kernel_size, geometry.stride, geometry.padding, 1, geometry.ceil_mode), ""
    if bool((alpha >= threshold).all()):
        return nn.MaxPool2d(geometry.kernel_size, geometry.stride, geometry.padding, geometry.dilation, ceil_mode=geometry.ceil_mode), ""
    return None, f"alpha = {alpha.mean().item():.4g} is at neither limit (0 or >= {threshold:g})"


def bake_pooling(
    model: nn.Module,
    example_input: Any,
    *,
    atol: float = 1e-4,
    alpha_threshold: float | None = None,
) -> BakeReport:
    """Replace P-pooling layers whose alpha sits at a limit by native pooling, for deployment.

    ``alpha = 0`` (every channel) becomes average pooling (``count_include_pad=False``,
    which P-pooling at 0 is exactly); ``alpha >= alpha_threshold`` (default: the layer's
    ``alpha_max``) becomes ``nn.MaxPool2d``. A
    :class:`~lit_ppool.layers.ppool.GlobalPPool2d` becomes ``nn.AdaptiveAvgPool2d(1)`` or
    ``nn.AdaptiveMaxPool2d(1)``. A replacement is made only where the maximum
    absolute output difference, measured on each layer's own input during one forward of
    ``example_input`` (eval mode, no grad), is within ``atol``. Layers inside a
    :class:`~lit_ppool.layers.same.SamePadPool2d` are baked inside it (still "same").

    Args:
        model: A model after :func:`swap_pooling`.
        example_input: Representative input (tensor, tuple of positional or dict of keyword inputs).
        atol: Largest accepted max abs output difference.
        alpha_threshold: Alpha from which a layer counts as max pooling.

    Returns:
        A :class:`BakeReport` of :class:`Bake` ``(name, old, new, error)``, with ``.kept``
        listing the P-pooling layers left as they are and why.

    Raises:
        ValueError: If ``atol`` is negative or ``alpha_threshold`` is not positive.

    Example:
        >>> model = nn.Sequential(nn.ReLU(), PPool2d(2, alpha_init=0.0))
        >>> report = bake_pooling(model, torch.rand(1, 1, 4, 4))
        >>> type(model[1]).__name__, report[0].error < 1e-6
        ('AveragePool2d', True)
    """
    if not isinstance(atol, (int, float)) or atol < 0:
        raise ValueError(f"Expected argument `atol` to be a number >= 0, but got {atol!r}.")
    if alpha_threshold is not None and not (isinstance(alpha_threshold, (int, float)) and alpha_threshold > 0):
        raise ValueError(f"Expected argument `alpha_threshold` to be None or a number > 0, but got {alpha_threshold!r}.")

    kept: list[Skip] = []
    plans: dict[str, tuple[PPool2d, nn.Module]] = {}
    for name, module in model.named_modules():
        if not isinstance(module, PPool2d) or name == "":
            continue
        threshold = module.alpha_max if alpha_threshold is None else float(alpha_threshold)
        new, reason = _baked_replacement(module, module.alpha.detach(), threshold)
        if new is None:
            kept.append(Skip(name, module, reason))
        else:
            plans[name] = (module, new)

    # A PPool2d inside a SamePadPool2d is run by the wrapper (not through its own forward):
    # measure at the wrapper, with the replacement wrapped the same way.
    measured_at: dict[str, tuple[nn.Module, nn.Module]] = {}
    for name, (old, new) in plans.items():
        parent_name = name.rpartition(".")[0]
        parent = model.get_submodule(parent_name) if parent_name else model
        measured_at[name] = (parent, SamePadPool2d(new)) if isinstance(parent, SamePadPool2d) else (old, new)
    inputs: dict[str, Tensor] = {}
    handles = [
        at.register_forward_pre_hook(lambda _m, args, name=name: inputs.setdefault(name, args[0]))
        for name, (at, _) in measured_at.items()
    ]
    errors: dict[str, float] = {}
    try:
        with _eval_no_grad(model):
            _call(model, example_input)
            for name, (at, replacement) in measured_at.items():
                if name in inputs:
                    x = inputs[name]
                    errors[name] = (at(x) - replacement.to(x.device)(x)).abs().max().item()
    finally:
        for handle in handles:
            handle.remove()

    baked: list[Bake] = []
    for name, (old, new) in plans.items():
        if name not in errors:
            kept.append(Skip(name, old, "not called by example_input, so its error could not be measured"))
        elif not errors[name] <= atol:
            kept.append(Skip(name, old, f"max abs output difference {errors[name]:.3g} exceeds atol={atol:g}"))
        else:
            new.train(old.training)
            _set_submodule(model, name, new)
            baked.append(Bake(name, old, new, errors[name]))
    return BakeReport(baked, kept)
