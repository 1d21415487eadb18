"""One table of pooling layers, all built with ``nn.MaxPool2d``'s constructor geometry.

``POOLINGS`` maps a name to a class taking ``(kernel_size, stride=None, padding=0,
dilation=1, ceil_mode=False, **kwargs)`` by keyword. :func:`get_pool_layer` resolves a
name, a class or a ``functools.partial`` to a constructor, :func:`create_pool2d` builds
one, and :func:`pool_with_padding` runs any registered layer with another padding (what
dynamic "same" padding needs).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Union

import torch.nn.functional as F
from torch import Tensor, nn

from lit_ppool.functional import _size_2_t, p_pool2d
from lit_ppool.layers.baselines import (
    AveragePool2d,
    DetailPreservingPool2d,
    GatedPool2d,
    LpPool2d,
    MixedPool2d,
    SoftPool2d,
    StridedConvPool2d,
)
from lit_ppool.layers.ppool import PPool2d

__all__ = [
    "POOLINGS",
    "PoolLayerType",
    "available_poolings",
    "create_pool2d",
    "get_pool_layer",
    "pool_requires_num_channels",
    "pool_with_padding",
]

POOLINGS: dict[str, type[nn.Module]] = {
    "max": nn.MaxPool2d,
    "avg": AveragePool2d,
    "p": PPool2d,
    "lp": LpPool2d,
    "gated": GatedPool2d,
    "mixed": MixedPool2d,
    "dpp": DetailPreservingPool2d,
    "strided_conv": StridedConvPool2d,
    "softpool": SoftPool2d,
}
"""Pooling name -> class. Every class accepts the MaxPool2d geometry as keywords."""

PoolLayerType = Union[str, type, functools.partial, Callable[..., nn.Module]]


def available_poolings() -> list[str]:
    """The registered pooling names, sorted.

    Example:
        >>> available_poolings()[:3]
        ['avg', 'dpp', 'gated']
    """
    return sorted(POOLINGS)


def get_pool_layer(layer: PoolLayerType) -> Callable[..., nn.Module]:
    """Resolve a pooling name, class or ``functools.partial`` to a constructor.

    Names are looked up in :data:`POOLINGS` (case-insensitive, ``-`` read as ``_``);
    classes, partials and other callables are returned as they are.

    Args:
        layer: ``"p"``, ``"max"``, ... or a class / partial taking the MaxPool2d geometry.

    Returns:
        A callable ``(kernel_size, stride=..., padding=..., dilation=..., ceil_mode=..., **kwargs) -> nn.Module``.

    Raises:
        ValueError: If ``layer`` is an unknown name or neither a name nor a callable.

    Example:
        >>> get_pool_layer("p") is PPool2d
        True
    """
    if isinstance(layer, str):
        key = layer.strip().lower().replace("-", "_")
        if key not in POOLINGS:
            raise ValueError(f"Expected argument `to` to be one of {available_poolings()}, but got {layer!r}.")
        return POOLINGS[key]
    if callable(layer):
        return layer
    raise ValueError(
        f"Expected argument `to` to be a pooling name (one of {available_poolings()}), a class or a "
        f"functools.partial, but got {type(layer).__name__}."
    )


def _underlying_class(constructor: Callable[..., nn.Module]) -> Any:
    while isinstance(constructor, functools.partial):
        constructor = constructor.func
    return constructor


def pool_requires_num_channels(layer: PoolLayerType) -> bool:
    """Whether a pooling needs ``num_channels`` (its class sets ``requires_num_channels``)."""
    return bool(getattr(_underlying_class(get_pool_layer(layer)), "requires_num_channels", False))


def create_pool2d(
    kind: PoolLayerType,
    kernel_size: _size_2_t,
    stride: _size_2_t | None = None,
    padding: _size_2_t = 0,
    dilation: _size_2_t = 1,
    ceil_mode: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Build a pooling layer from the registry with ``nn.MaxPool2d``'s geometry.

    Args:
        kind: A name from :func:`available_poolings`, a class or a ``functools.partial``.
        kernel_size: Window size.
        stride: Window stride; default ``kernel_size``.
        padding: Implicit padding on both sides.
        dilation: Spacing between window elements.
        ceil_mode: Use ``ceil`` instead of ``floor`` for the output size.
        **kwargs: Layer-specific options (``alpha_init`` for ``p``, ``num_channels`` for
            ``strided_conv``, ...).

    Returns:
        The new module; its output shape equals ``nn.MaxPool2d(...)``'s for the same input.

    Raises:
        ValueError: If ``kind`` is unknown or the layer rejects the geometry or options
            (e.g. ``avg`` with ``dilation > 1``).

    Example:
        >>> create_pool2d("p", 3, stride=2, padding=1, alpha_init=0.5)
        PPool2d(kernel_size=3, stride=2, padding=1, dilation=1, ceil_mode=False, alpha=0.5000)
    """
    constructor = get_pool_layer(kind)
    return constructor(kernel_size, stride=stride, padding=padding, dilation=dilation, ceil_mode=ceil_mode, **kwargs)


def _p_with_padding(pool: PPool2d, input: Tensor, padding: _size_2_t, ceil_mode: bool) -> Tensor:
    if pool.num_channels is not None and (input.dim() < 3 or input.shape[-3] != pool.num_channels):
        return pool(input)  # raises PPool2d's own channel error
    return p_pool2d(input, pool.alpha, pool.kernel_size, pool.stride, padding, pool.dilation, ceil_mode)


def _max_with_padding(pool: nn.MaxPool2d, input: Tensor, padding: _size_2_t, ceil_mode: bool) -> Tensor:
    return F.max_pool2d(input, pool.kernel_size, pool.stride, padding, pool.dilation, ceil_mode)


def _avg_with_padding(pool: nn.AvgPool2d, input: Tensor, padding: _size_2_t, ceil_mode: bool) -> Tensor:
    return F.avg_pool2d(input, pool.kernel_size, pool.stride, padding, ceil_mode, pool.count_include_pad, pool.divisor_override)


_WITH_PADDING: dict[type, Callable[[Any, Tensor, _size_2_t, bool], Tensor]] = {
    PPool2d: _p_with_padding,
    nn.MaxPool2d: _max_with_padding,
    nn.AvgPool2d: _avg_with_padding,
    AveragePool2d: _avg_with_padding,
}


def pool_with_padding(pool: nn.Module, input: Tensor, padding: _size_2_t, ceil_mode: bool) -> Tensor:
    """Run a registered pooling layer as if it had been built with ``padding`` and ``ceil_mode``.

    Raises:
        TypeError: If ``pool`` is not a registered pooling layer.
    """
    method = getattr(pool, "pool_with_padding", None)
    if method is not None:
        return method(input, padding, ceil_mode)
    adapter = _WITH_PADDING.get(type(pool))
    if adapter is None:
        raise TypeError(
            f"Expected argument `pool` to be one of the registered pooling layers "
            f"({', '.join(sorted(c.__name__ for c in set(POOLINGS.values())))}), but got {type(pool).__name__}."
        )
    return adapter(pool, input, padding, ceil_mode)
