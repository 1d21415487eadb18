"""What surgery returns: :class:`Swap` / :class:`Skip` records and the reports that hold them."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Literal, NamedTuple, get_args

from torch import nn

__all__ = ["SKIP_KINDS", "Bake", "BakeReport", "NothingSwappedWarning", "Skip", "SkipKind", "Swap", "SwapReport"]

SkipKind = Literal[
    "not_selected",
    "adaptive",
    "unsupported_type",
    "return_indices",
    "invalid_geometry",
    "stride_one",
    "same_padding",
    "is_model",
    "already_ours",
    "functional",
    "no_global_form",
    "no_channel_count",
    "cannot_build",
    "not_at_limit",
    "not_measured",
    "exceeds_atol",
]
"""Why a module was left alone. Swapping: ``not_selected`` (by ``include``/``exclude``),
``adaptive`` (not a global pool named by ``include``), ``unsupported_type`` (another pooling
type or a subclass with its own forward), ``return_indices``, ``invalid_geometry``,
``stride_one`` (``downsampling_only``), ``same_padding`` (a "same" pool with ``ceil_mode`` or
dilation), ``is_model`` (the model itself is a pool), ``already_ours``, ``functional``
(pooling called functionally), ``no_global_form``, ``no_channel_count`` (the probe did not
measure one) and ``cannot_build`` (the target rejects the geometry or options). Baking:
``not_at_limit`` (alpha at neither limit, or no native form), ``not_measured`` (not called
by the example input) and ``exceeds_atol``."""

SKIP_KINDS: tuple[str, ...] = get_args(SkipKind)
"""Every :data:`SkipKind`, for callers that validate or enumerate them."""


class NothingSwappedWarning(UserWarning):
    """:func:`swap_pooling` replaced no module: the model has no pooling layer, or none was selected."""


class Swap(NamedTuple):
    """One replaced pooling module: qualified ``name``, the ``old`` module and the ``new`` one."""

    name: str
    old: nn.Module
    new: nn.Module


class Skip(NamedTuple):
    """One pooling module (or functional pooling call) left alone: a readable ``reason`` and its ``kind``.

    Branch on ``kind`` (one of :data:`SKIP_KINDS`), never on the text of ``reason``.

    Example:
        >>> Skip("pool", None, "stride 1 (does not downsample)", "stride_one").kind
        'stride_one'
    """

    name: str
    module: nn.Module | None
    reason: str
    kind: SkipKind


class SwapReport(list):
    """The :class:`Swap` records of :func:`swap_pooling`, plus what it left alone.

    Attributes:
        skipped: :class:`Skip` records: pooling modules not replaced (and pooling called
            functionally, found by the probe), each with its reason and kind.
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


def warn_nothing_swapped(model: nn.Module, skipped: list[Skip]) -> None:
    """Warn that :func:`swap_pooling` replaced nothing in ``model``, and why."""
    if skipped:
        why = f"all {len(skipped)} pooling module(s) were left alone (the report's `skipped` says why)"
    else:
        why = "it has no pooling module (its downsampling is done by strided convolutions, or pooling is called functionally)"
    warnings.warn(f"swap_pooling replaced nothing in {type(model).__name__}: {why}.", NothingSwappedWarning, stacklevel=3)
