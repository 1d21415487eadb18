"""The pooling table: one :class:`PoolingSpec` per name, all built with ``nn.MaxPool2d``'s geometry.

Everything lit_ppool knows about a pooling name lives in :data:`POOLING_SPECS`: its class
(taking ``(kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, **kwargs)`` by
keyword), torch's own class it stands for, its global (whole-map) form, how to run a built
layer with another padding (what dynamic "same" padding needs), whether it needs the channel
count, whether it scripts and whether it learns, and which pooling is the reference. Every
other map (class -> name, the global and native pooling types) is derived from it here.
:func:`resolve_pooling` turns a name, a class or a ``functools.partial`` into a
:class:`ResolvedPooling` once, and every other function here goes through it; :func:`spec_of`
goes the other way, from a built layer to its entry.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any, Union

import torch.nn.functional as F
from torch import Tensor, nn

from lit_ppool.functional import _size_2_t
from lit_ppool.layers.adaptive import AdaptivePPool2d
from lit_ppool.layers.baselines import (
    AveragePool2d,
    DetailPreservingPool2d,
    GatedPool2d,
    LpPool2d,
    MixedPool2d,
    SoftPool2d,
    StridedConvPool2d,
)
from lit_ppool.layers.ppool import GlobalPPool2d, PPool2d, PPoolBase

__all__ = [
    "GEOMETRY_KEYWORDS",
    "NATIVE_GLOBAL_POOL_TYPES",
    "NATIVE_POOL_TYPES",
    "POOLINGS",
    "POOLING_SPECS",
    "REFERENCE_POOLING",
    "PoolLayerType",
    "PoolingSpec",
    "ResolvedPooling",
    "available_poolings",
    "create_pool2d",
    "get_pool_layer",
    "global_pool",
    "is_global_pool",
    "pool_requires_num_channels",
    "pool_with_padding",
    "resolve_pooling",
    "spec_of",
]

PoolLayerType = Union[str, type, functools.partial, Callable[..., nn.Module]]  # noqa: UP007 (as _size_2_t)
WithPadding = Callable[[Any, Tensor, _size_2_t, bool], Tensor]
GEOMETRY_KEYWORDS = ("kernel_size", "stride", "padding", "dilation", "ceil_mode")
"""The keywords of ``nn.MaxPool2d``'s geometry, which every pooling of the table takes."""


@dataclasses.dataclass(frozen=True)
class PoolingSpec:
    """Everything about one pooling of the table.

    Attributes:
        name: The registry name (``None`` for a class given directly that is not in the table).
        cls: The layer class, taking the MaxPool2d geometry as keywords.
        global_form: Builds the whole-map form from the non-geometry options (``None``: it has none).
        with_padding: ``(layer, input, padding, ceil_mode) -> output`` for a built layer
            (``None``: the layer's own ``pool_with_padding`` method).
        needs_channels: Its constructor needs ``num_channels`` (measured by a probe forward).
        scriptable: ``torch.jit.script`` compiles it.
        learnable: It has parameters trained with the model (at its default options).
        native: torch's own class of this pooling (``nn.MaxPool2d``, ``nn.AvgPool2d``), which
            models are built with and surgery rebuilds; its global form is torch's too
            (``None``: the pooling is lit_ppool's only).
        reference: The pooling smp's encoders are built with (one entry has it): swapping a
            model to it changes nothing, and comparisons measure every other pooling against it.

    Example:
        >>> POOLING_SPECS["p"].global_form is GlobalPPool2d, POOLING_SPECS["strided_conv"].needs_channels
        (True, True)
    """

    name: str | None
    cls: type
    global_form: Callable[..., nn.Module] | None = None
    with_padding: WithPadding | None = None
    needs_channels: bool = False
    scriptable: bool = False
    learnable: bool = False
    native: type | None = None
    reference: bool = False

    @property
    def global_cls(self) -> type | None:
        """The class the global form builds (``None``: there is no global form).

        Example:
            >>> POOLING_SPECS["max"].global_cls, POOLING_SPECS["softpool"].global_cls
            (<class 'torch.nn.modules.pooling.AdaptiveMaxPool2d'>, None)
        """
        form = self.global_form
        return form.func if isinstance(form, functools.partial) else form

    @property
    def has_alpha(self) -> bool:
        """Its layers are P-pooling layers (:class:`~lit_ppool.layers.ppool.PPoolBase`), with an ``alpha``."""
        return isinstance(self.cls, type) and issubclass(self.cls, PPoolBase)

    @property
    def predicts_alpha(self) -> bool:
        """Its layers are adaptive P-pooling layers (:class:`~lit_ppool.AdaptivePPool2d`): an alpha predicted for every window.

        Example:
            >>> POOLING_SPECS["p_adaptive"].predicts_alpha, POOLING_SPECS["p"].predicts_alpha
            (True, False)
        """
        return isinstance(self.cls, type) and issubclass(self.cls, AdaptivePPool2d)


def _max_with_padding(pool: nn.MaxPool2d, input: Tensor, padding: _size_2_t, ceil_mode: bool) -> Tensor:
    return F.max_pool2d(input, pool.kernel_size, pool.stride, padding, pool.dilation, ceil_mode)


def _avg_with_padding(pool: nn.AvgPool2d, input: Tensor, padding: _size_2_t, ceil_mode: bool) -> Tensor:
    return F.avg_pool2d(input, pool.kernel_size, pool.stride, padding, ceil_mode, pool.count_include_pad, pool.divisor_override)


_AVG = {"global_form": functools.partial(nn.AdaptiveAvgPool2d, 1), "with_padding": _avg_with_padding, "scriptable": True}
POOLING_SPECS: dict[str, PoolingSpec] = {
    spec.name: spec
    for spec in (
        PoolingSpec(
            "max", nn.MaxPool2d, functools.partial(nn.AdaptiveMaxPool2d, 1), _max_with_padding, scriptable=True,
            native=nn.MaxPool2d, reference=True,
        ),
        PoolingSpec("avg", AveragePool2d, **_AVG, native=nn.AvgPool2d),
        PoolingSpec("p", PPool2d, GlobalPPool2d, scriptable=True, learnable=True),
        PoolingSpec("p_adaptive", AdaptivePPool2d, needs_channels=True, learnable=True),
        PoolingSpec("lp", LpPool2d),
        PoolingSpec("gated", GatedPool2d, learnable=True),
        PoolingSpec("mixed", MixedPool2d, learnable=True),
        PoolingSpec("dpp", DetailPreservingPool2d, learnable=True),
        PoolingSpec("strided_conv", StridedConvPool2d, needs_channels=True, learnable=True),
        PoolingSpec("softpool", SoftPool2d),
    )
}
"""Pooling name -> :class:`PoolingSpec`: the one table of poolings."""

POOLINGS: dict[str, type[nn.Module]] = {name: spec.cls for name, spec in POOLING_SPECS.items()}
"""Pooling name -> class (a view of :data:`POOLING_SPECS`)."""

REFERENCE_POOLING: str = next(name for name, spec in POOLING_SPECS.items() if spec.reference)
"""The name of the reference pooling (``"max"``; a view of :data:`POOLING_SPECS`)."""

NATIVE_POOL_TYPES: tuple[type, ...] = tuple(spec.native for spec in POOLING_SPECS.values() if spec.native)
"""torch's own windowed poolings of the table (``nn.MaxPool2d``, ``nn.AvgPool2d``): what surgery rebuilds."""

NATIVE_GLOBAL_POOL_TYPES: tuple[type, ...] = tuple(
    spec.global_cls for spec in POOLING_SPECS.values() if spec.native and spec.global_cls
)
"""torch's own global poolings of the table (``nn.AdaptiveMaxPool2d``, ``nn.AdaptiveAvgPool2d``): what surgery
rebuilds when asked."""

# Exact layer class -> spec. A native class that is not the spec's own (torch's nn.AvgPool2d, given as a
# class or built) shares its global form and padding rule, under no name: it is torch's layer, not the table's.
_BY_CLASS: dict[type, PoolingSpec] = {spec.cls: spec for spec in POOLING_SPECS.values()}
_BY_CLASS.update(
    {
        spec.native: dataclasses.replace(spec, name=None, cls=spec.native, learnable=False, reference=False)
        for spec in POOLING_SPECS.values()
        if spec.native and spec.native is not spec.cls
    }
)
# Exact global form class -> spec (nn.AdaptiveMaxPool2d -> max, nn.AdaptiveAvgPool2d -> avg, GlobalPPool2d -> p).
_BY_GLOBAL_CLASS: dict[type, PoolingSpec] = {spec.global_cls: spec for spec in POOLING_SPECS.values() if spec.global_cls}


def available_poolings() -> list[str]:
    """The registered pooling names, sorted.

    Example:
        >>> available_poolings()[:3]
        ['avg', 'dpp', 'gated']
    """
    return sorted(POOLING_SPECS)


@dataclasses.dataclass(frozen=True)
class ResolvedPooling:
    """A pooling argument resolved once: its :class:`PoolingSpec`, constructor and bound options.

    Attributes:
        spec: The table entry of the class behind the argument.
        constructor: What builds a layer: the class, or the ``functools.partial`` as given.
        options: The keywords the partial layers bind (the outermost wins, as in a call).
        argument: The caller's argument name, for error messages.
    """

    spec: PoolingSpec
    constructor: Callable[..., nn.Module]
    options: Mapping[str, Any]
    argument: str = "pooling"

    @property
    def needs_channels(self) -> bool:
        """Whether the layer needs ``num_channels``."""
        return self.spec.needs_channels

    def build(
        self,
        kernel_size: _size_2_t,
        stride: _size_2_t | None = None,
        padding: _size_2_t = 0,
        dilation: _size_2_t = 1,
        ceil_mode: bool = False,
        **kwargs: Any,
    ) -> nn.Module:
        """The layer with ``nn.MaxPool2d``'s geometry and the layer-specific ``kwargs``."""
        return self.constructor(kernel_size, stride=stride, padding=padding, dilation=dilation, ceil_mode=ceil_mode, **kwargs)

    def build_global(self, **kwargs: Any) -> nn.Module:
        """The global form, with the partial's options and ``kwargs`` (geometry keywords dropped).

        Raises:
            ValueError: If the pooling has no global form (the message names those that have one).
        """
        if self.spec.global_form is None:
            raise ValueError(self.no_global_form())
        options = {k: v for k, v in {**self.options, **kwargs}.items() if k not in GEOMETRY_KEYWORDS}
        return self.spec.global_form(**options)

    @property
    def label(self) -> str:
        """How messages name this pooling: its registry name, else the constructor's repr."""
        return repr(self.spec.name) if self.spec.name else repr(self.constructor)

    def no_global_form(self) -> str:
        """Why this pooling cannot replace a global pool."""
        forms = ", ".join(
            f"{name!r} ({_class_name(spec.global_form)})" for name, spec in POOLING_SPECS.items() if spec.global_form
        )
        return f"{self.label} has no global form; a global pool can only become {forms}"


def _class_name(factory: Callable[..., nn.Module]) -> str:
    factory = factory.func if isinstance(factory, functools.partial) else factory
    return f"{'nn.' if factory.__module__.startswith('torch.') else ''}{factory.__name__}"


def _unwrap(constructor: Callable[..., nn.Module]) -> tuple[Any, dict[str, Any]]:
    """The class behind ``constructor`` and the keywords its ``functools.partial`` layers bind."""
    chain = []
    while isinstance(constructor, functools.partial):
        chain.append(constructor.keywords)
        constructor = constructor.func
    options: dict[str, Any] = {}
    for keywords in reversed(chain):  # the outermost partial's keywords win, as in a call
        options.update(keywords)
    return constructor, options


def resolve_pooling(pooling: PoolLayerType | ResolvedPooling, argument: str = "pooling") -> ResolvedPooling:
    """Resolve a pooling name, class or ``functools.partial`` against the table, once.

    Names are looked up in :data:`POOLING_SPECS` (case-insensitive, ``-`` read as ``_``).
    A class (or partial of one) in the table gets its spec; any other callable gets a plain
    one (no global form, its own ``pool_with_padding``, ``needs_channels`` from a
    ``requires_num_channels`` class attribute). A :class:`ResolvedPooling` is returned as it is,
    so a caller that resolved the argument already can pass it on.

    Args:
        pooling: ``"p"``, ``"max"``, ... or a class / partial taking the MaxPool2d geometry.
        argument: The caller's name for it, used in the error message.

    Raises:
        ValueError: If ``pooling`` is an unknown name or neither a name nor a callable.

    Example:
        >>> resolved = resolve_pooling("Strided-Conv")
        >>> resolved.spec.name, resolved.needs_channels
        ('strided_conv', True)
    """
    if isinstance(pooling, ResolvedPooling):
        return pooling
    if isinstance(pooling, str):
        key = pooling.strip().lower().replace("-", "_")
        if key not in POOLING_SPECS:
            raise ValueError(f"Expected argument `{argument}` to be one of {available_poolings()}, but got {pooling!r}.")
        spec = POOLING_SPECS[key]
        return ResolvedPooling(spec, spec.cls, {}, argument)
    if not callable(pooling):
        raise ValueError(
            f"Expected argument `{argument}` to be a pooling name (one of {available_poolings()}), a class or a "
            f"functools.partial, but got {type(pooling).__name__}."
        )
    cls, options = _unwrap(pooling)
    spec = _BY_CLASS.get(cls)
    if spec is None:
        spec = PoolingSpec(None, cls, needs_channels=bool(getattr(cls, "requires_num_channels", False)))
    return ResolvedPooling(spec, pooling, options, argument)


def get_pool_layer(pooling: PoolLayerType) -> Callable[..., nn.Module]:
    """Resolve a pooling name, class or ``functools.partial`` to a constructor.

    Args:
        pooling: ``"p"``, ``"max"``, ... or a class / partial taking the MaxPool2d geometry
            (returned as it is).

    Returns:
        A callable ``(kernel_size, stride=..., padding=..., dilation=..., ceil_mode=..., **kwargs) -> nn.Module``.

    Raises:
        ValueError: If ``pooling`` is an unknown name or neither a name nor a callable.

    Example:
        >>> get_pool_layer("p") is PPool2d
        True
    """
    return resolve_pooling(pooling).constructor


def pool_requires_num_channels(pooling: PoolLayerType) -> bool:
    """Whether a pooling needs ``num_channels`` (its spec's ``needs_channels``).

    Example:
        >>> pool_requires_num_channels("strided_conv"), pool_requires_num_channels("p")
        (True, False)
    """
    return resolve_pooling(pooling).needs_channels


def create_pool2d(
    pooling: PoolLayerType,
    kernel_size: _size_2_t,
    stride: _size_2_t | None = None,
    padding: _size_2_t = 0,
    dilation: _size_2_t = 1,
    ceil_mode: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Build a pooling layer from the table with ``nn.MaxPool2d``'s geometry.

    Args:
        pooling: A name from :func:`available_poolings`, a class or a ``functools.partial``.
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
        ValueError: If ``pooling`` is unknown or the layer rejects the geometry or options
            (e.g. ``avg`` with ``dilation > 1``).

    Example:
        >>> create_pool2d("p", 3, stride=2, padding=1, alpha_init=0.5)
        PPool2d(kernel_size=3, stride=2, padding=1, dilation=1, ceil_mode=False, alpha=0.5000)
    """
    return resolve_pooling(pooling).build(kernel_size, stride, padding, dilation, ceil_mode, **kwargs)


def global_pool(pooling: PoolLayerType, options: Mapping[str, Any] | None = None) -> nn.Module:
    """The global (whole-map) form of a pooling, built from non-geometry ``options``.

    Raises:
        ValueError: If ``pooling`` is unknown or has no global form.

    Example:
        >>> global_pool("p", {"alpha_init": 0.5})
        GlobalPPool2d(output_size=1, alpha=0.5000)
        >>> global_pool("max")
        AdaptiveMaxPool2d(output_size=1)
    """
    return resolve_pooling(pooling).build_global(**(options or {}))


def is_global_pool(module: nn.Module) -> bool:
    """Whether ``module`` pools each whole map to one value (a global pool).

    That is a module of the class of a global form of the table (exactly that type:
    :class:`GlobalPPool2d`, ``nn.AdaptiveMaxPool2d``, ``nn.AdaptiveAvgPool2d``) with
    ``output_size`` 1 (or ``(1, 1)``).

    Example:
        >>> is_global_pool(nn.AdaptiveAvgPool2d((1, 1))), is_global_pool(nn.AdaptiveAvgPool2d(2))
        (True, False)
    """
    if type(module) not in _BY_GLOBAL_CLASS:
        return False
    size = module.output_size
    return all(s == 1 for s in (size if isinstance(size, (tuple, list)) else (size,)))


def spec_of(module: nn.Module) -> PoolingSpec | None:
    """The table entry of a built pooling layer: by its exact class, or by its global form's for a global pool.

    torch's ``nn.AvgPool2d`` gets the entry of ``avg`` under no name (``name`` is ``None``): it is
    torch's layer, not the table's.

    Returns:
        The :class:`PoolingSpec`, or ``None`` for any other module (other classes, subclasses,
        adaptive pools with another output size).

    Example:
        >>> spec_of(nn.AdaptiveMaxPool2d(1)).name, spec_of(PPool2d(2)).name, spec_of(nn.AdaptiveMaxPool2d(2))
        ('max', 'p', None)
    """
    if is_global_pool(module):
        return _BY_GLOBAL_CLASS[type(module)]
    return _BY_CLASS.get(type(module))


def pool_with_padding(pool: nn.Module, input: Tensor, padding: _size_2_t, ceil_mode: bool) -> Tensor:
    """Run a registered pooling layer as if it had been built with ``padding`` and ``ceil_mode``.

    Raises:
        TypeError: If ``pool`` is not a registered pooling layer.

    Example:
        >>> pool_with_padding(nn.MaxPool2d(3, 2), torch.rand(1, 1, 5, 5), 1, True).shape
        torch.Size([1, 1, 3, 3])
    """
    spec = _BY_CLASS.get(type(pool))
    if spec is not None and spec.with_padding is not None:
        return spec.with_padding(pool, input, padding, ceil_mode)
    method = getattr(pool, "pool_with_padding", None)
    if method is None:
        raise TypeError(
            f"Expected argument `pool` to be one of the registered pooling layers "
            f"({', '.join(sorted(cls.__name__ for cls in POOLINGS.values()))}), but got {type(pool).__name__}."
        )
    return method(input, padding, ceil_mode)
