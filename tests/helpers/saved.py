"""What autograd keeps for backward: the tests that bound an op's memory read it from here."""

from __future__ import annotations

from collections.abc import Callable

import torch


def saved_for_backward(fn: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``fn()``'s output and every tensor autograd saved for its backward (as saved: views and inputs included)."""
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = fn()
    return out, saved
