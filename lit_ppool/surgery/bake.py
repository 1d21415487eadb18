""":func:`bake_pooling`: P-pooling layers whose alpha sits at a limit become native pooling, for deployment."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from lit_ppool.functional import pool_geometry
from lit_ppool.layers.ppool import GlobalPPool2d, PPool2d, PPoolBase
from lit_ppool.layers.registry import create_pool2d, global_pool
from lit_ppool.layers.same import SamePadPool2d
from lit_ppool.surgery.probe import eval_no_grad, run_model
from lit_ppool.surgery.report import Bake, BakeReport, Skip

__all__ = ["bake_pooling"]


def _baked_replacement(pool: PPoolBase, alpha: Tensor, threshold: float) -> nn.Module | Skip:
    """The native pooling ``pool`` equals at its ``alpha``, or a :class:`Skip` (named later) saying why none."""
    average, maximum = bool((alpha == 0).all()), bool((alpha >= threshold).all())
    if not (average or maximum):
        return Skip("", pool, f"alpha = {alpha.mean().item():.4g} is at neither limit (0 or >= {threshold:g})", "not_at_limit")
    limit = "avg" if average else "max"  # P-pooling's limits, as the table names them
    if isinstance(pool, GlobalPPool2d):
        return global_pool(limit)
    if not isinstance(pool, PPool2d):
        return Skip("", pool, f"{type(pool).__name__} has no native form", "cannot_build")
    geometry = pool_geometry(pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode)
    if average and geometry.dilation != (1, 1):
        return Skip("", pool, "alpha = 0 but dilation > 1, which nn.AvgPool2d cannot express", "cannot_build")
    return create_pool2d(limit, geometry.kernel_size, geometry.stride, geometry.padding, geometry.dilation, geometry.ceil_mode)


def _plan(model: nn.Module, alpha_threshold: float | None, kept: list[Skip]) -> dict[str, tuple[PPoolBase, nn.Module]]:
    """Qualified name -> (P-pooling layer, its native replacement); the layers without one go to ``kept``."""
    plans: dict[str, tuple[PPoolBase, nn.Module]] = {}
    for name, module in model.named_modules():
        if not isinstance(module, PPoolBase) or name == "":
            continue
        threshold = module.alpha_max if alpha_threshold is None else float(alpha_threshold)
        new = _baked_replacement(module, module.alpha.detach(), threshold)
        if isinstance(new, Skip):
            kept.append(new._replace(name=name))
        else:
            plans[name] = (module, new)
    return plans


def _measure(model: nn.Module, example_input: Any, plans: dict[str, tuple[PPoolBase, nn.Module]]) -> dict[str, float]:
    """Max abs output difference of each planned replacement, on its layer's own input in one forward."""
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
        with eval_no_grad(model):
            run_model(model, example_input)
            for name, (at, replacement) in measured_at.items():
                if name in inputs:
                    x = inputs[name]
                    errors[name] = (at(x) - replacement.to(x.device)(x)).abs().max().item()
    finally:
        for handle in handles:
            handle.remove()
    return errors


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
        model: A model after :func:`~lit_ppool.surgery.swap_pooling`.
        example_input: Representative input (tensor, tuple of positional or dict of keyword inputs).
        atol: Largest accepted max abs output difference.
        alpha_threshold: Alpha from which a layer counts as max pooling.

    Returns:
        A :class:`~lit_ppool.surgery.report.BakeReport` of ``Bake(name, old, new, error)``,
        with ``.kept`` listing the P-pooling layers left as they are, why and the ``kind``.

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
    plans = _plan(model, alpha_threshold, kept)
    errors = _measure(model, example_input, plans)
    baked: list[Bake] = []
    for name, (old, new) in plans.items():
        if name not in errors:
            kept.append(Skip(name, old, "not called by example_input, so its error could not be measured", "not_measured"))
        elif not errors[name] <= atol:
            kept.append(Skip(name, old, f"max abs output difference {errors[name]:.3g} exceeds atol={atol:g}", "exceeds_atol"))
        else:
            new.train(old.training)
            model.set_submodule(name, new, strict=True)
            baked.append(Bake(name, old, new, errors[name]))
    return BakeReport(baked, kept)

