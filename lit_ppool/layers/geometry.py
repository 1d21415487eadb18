"""What every pooling layer here shares with ``nn.MaxPool2d``: its geometry attributes, their repr, the channel count.

Layers keep torch's attribute names and values (``kernel_size``, ``stride`` = ``kernel_size``
when not given, ``padding``, ``dilation``, ``ceil_mode``), so code that reads a
``MaxPool2d``'s attributes reads a swapped layer's too.
"""

from __future__ import annotations

from torch import nn

from lit_ppool.functional import PoolGeometry, _size_2_t, pool_geometry

__all__ = ["check_channel_count", "geometry_repr", "store_geometry"]


def store_geometry(
    module: nn.Module,
    kernel_size: _size_2_t,
    stride: _size_2_t | None,
    padding: _size_2_t,
    dilation: _size_2_t,
    ceil_mode: bool,
) -> PoolGeometry:
    """Validate a ``MaxPool2d`` geometry, set it on ``module`` under torch's names, and return its ``(h, w)`` pairs."""
    geometry = pool_geometry(kernel_size, stride, padding, dilation, ceil_mode)
    module.kernel_size = kernel_size
    module.stride = kernel_size if stride is None else stride
    module.padding = padding
    module.dilation = dilation
    module.ceil_mode = ceil_mode
    return geometry


def geometry_repr(module: nn.Module) -> str:
    """The geometry part of ``extra_repr``, as ``nn.MaxPool2d`` writes it."""
    return (
        f"kernel_size={module.kernel_size}, stride={module.stride}, padding={module.padding}, "
        f"dilation={module.dilation}, ceil_mode={module.ceil_mode}"
    )


def check_channel_count(num_channels, pooling: str) -> int:
    """``num_channels`` of a pooling built for a channel count: an int > 0, with the fix when it is missing."""
    if isinstance(num_channels, bool) or not isinstance(num_channels, int) or num_channels < 1:
        raise ValueError(
            f"Expected argument `num_channels` to be an int > 0 ({pooling} needs the channel count), but got "
            f"{num_channels!r}. With swap_pooling, pass `example_input=` so it is measured."
        )
    return num_channels
