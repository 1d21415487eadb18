"""One forward through a model that changes nothing, and the probe that watches it.

The probe records each candidate pool's input channel count and sign, and finds pooling
that a ``forward`` calls functionally (which surgery cannot replace in place).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

__all__ = ["ADAPTIVE_POOL_TYPES", "TORCH_POOL_TYPES", "Probe", "eval_no_grad", "run_model"]

ADAPTIVE_POOL_TYPES: tuple[type, ...] = (
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)
TORCH_POOL_TYPES: tuple[type, ...] = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.LPPool1d, nn.LPPool2d, nn.LPPool3d,
    nn.FractionalMaxPool2d, nn.FractionalMaxPool3d,
) + ADAPTIVE_POOL_TYPES
"""torch's pooling modules (and their subclasses, e.g. timm's ``MaxPool2dSame``): what surgery looks at."""

_FUNCTIONAL_POOLS = {"max_pool2d", "avg_pool2d", "_max_pool2d", "max_pool2d_with_indices", "lp_pool2d", "fractional_max_pool2d"}


class Probe(TorchFunctionMode):
    """One forward that records each candidate pool's input channels and sign, and functional pooling.

    Args:
        model: The model the forward runs through.
        candidates: Qualified name -> pool whose input is measured.
        pool_types: Modules inside which a functional pooling call is their own (not reported).
    """

    def __init__(self, model: nn.Module, candidates: dict[str, nn.Module], pool_types: tuple[type, ...]) -> None:
        super().__init__()
        self.channels: dict[str, set[int]] = {name: set() for name in candidates}
        self.negative: set[str] = set()
        self.functional: dict[tuple[str, str], nn.Module] = {}
        self._pool_types = pool_types
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
            if not isinstance(module, self._pool_types):
                self.functional.setdefault((name, fname), module)
        return func(*args, **(kwargs or {}))

    def run(self, model: nn.Module, example_input: Any) -> None:
        """The probe forward (eval mode, no grad); the hooks are removed afterwards."""
        try:
            with eval_no_grad(model), self:
                run_model(model, example_input)
        finally:
            for handle in self._handles:
                handle.remove()


@contextlib.contextmanager
def eval_no_grad(model: nn.Module) -> Iterator[None]:
    """Eval mode (no BatchNorm statistics updated) and no autograd; training flags restored."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, mode in modes:
            module.training = mode


def run_model(model: nn.Module, example_input: Any) -> Any:
    """``model`` called on a tensor, a tuple of positional inputs or a dict of keyword inputs."""
    if isinstance(example_input, dict):
        return model(**example_input)
    if isinstance(example_input, (tuple, list)):
        return model(*example_input)
    return model(example_input)
