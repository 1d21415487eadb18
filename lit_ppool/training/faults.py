"""Numerical faults in training: a NaN or infinite loss stops the run before it reaches the weights."""

from __future__ import annotations

import lightning as L
from torch import Tensor, nn

from lit_ppool.layers.adaptive import AdaptivePPool2d
from lit_ppool.layers.ppool import PPoolBase

__all__ = ["NonFiniteLossError", "alpha_summary", "check_finite_loss"]


class NonFiniteLossError(FloatingPointError):
    """The training loss is NaN or infinite; raised before the backward pass and the optimiser step."""


def alpha_summary(module: nn.Module) -> dict[str, str]:
    """Effective alpha of every P-pooling layer of ``module``: qualified name -> value (per-channel: mean/min/max).

    An adaptive layer (:class:`~lit_ppool.AdaptivePPool2d`) has no alpha of its own: its entry gives
    the range its predicted alpha is clamped to.

    Example:
        >>> from lit_ppool import PPool2d
        >>> alpha_summary(nn.Sequential(PPool2d(2), AdaptivePPool2d(2, num_channels=3)))
        {'0': '1', '1': 'predicted per window, range [1, 50]'}
    """
    summary = {}
    for name, layer in module.named_modules():
        if isinstance(layer, AdaptivePPool2d):
            summary[name] = f"predicted per window, range [{layer.alpha_min:g}, {layer.alpha_max:g}]"
        elif isinstance(layer, PPoolBase):
            alpha = layer.alpha.detach().float()
            if alpha.numel() == 1:
                summary[name] = f"{alpha.item():.6g}"
            else:
                summary[name] = f"mean {alpha.mean().item():.6g}, min {alpha.min().item():.6g}, max {alpha.max().item():.6g}"
    return summary


def check_finite_loss(
    loss: Tensor, module: nn.Module, trainer: L.Trainer | None = None, batch_idx: int | None = None
) -> None:
    """Raise :class:`NonFiniteLossError` if ``loss`` is NaN or infinite on this or, with a ``trainer``, any process.

    With a ``trainer`` the decision is synchronised across processes, so under DDP every
    rank stops at the same step instead of leaving the others waiting in the gradient
    all-reduce. Called in the training step, before the backward pass, it leaves the
    parameters (weights and alphas), the optimiser state and the last checkpoint as they were
    after the last good step; BatchNorm running statistics updated by the failing forward
    pass are not rolled back.

    Args:
        loss: The training loss of this step.
        module: The model whose P-pooling alphas the error lists.
        trainer: The running Trainer: synchronises the decision and names the step and epoch.
        batch_idx: The ``batch_idx`` of ``training_step``, named in the error.

    Raises:
        NonFiniteLossError: Naming the global step, epoch and batch, the loss value and every
            P-pooling layer's effective alpha.

    Example:
        >>> check_finite_loss(torch.tensor(0.5), nn.Identity())  # finite: nothing happens
    """
    bad = not bool(loss.detach().isfinite().all())
    if trainer is not None:
        bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
    if not bad:
        return
    value = loss.detach().float()
    value_text = str(value.item() if value.numel() == 1 else value.tolist())
    if bool(value.isfinite().all()):
        value_text += " on this process (non-finite on another process)"
    where = ""
    if trainer is not None:
        batch = "" if batch_idx is None else f", batch {batch_idx}"
        where = f" at global step {trainer.global_step} (epoch {trainer.current_epoch}{batch})"
    alphas = alpha_summary(module)
    alpha_text = "\n".join(f"  {name}: {alpha}" for name, alpha in alphas.items()) or "  (no P-pooling layers)"
    raise NonFiniteLossError(
        f"Non-finite training loss {value_text}{where}; stopped before the backward pass and the optimiser step, "
        f"so the parameters are those of the last good step.\nP-pooling alpha per layer:\n{alpha_text}\n"
        "Usual causes: a learning rate too high for the alpha parameters (`alpha_lr_mult`), float16 overflow "
        "(try `precision: bf16-mixed`), NaN/Inf in the input images, a batch whose labels are all ignore_index. "
        "Resume from the last checkpoint with `--ckpt_path last` once fixed; `check_finite_loss: false` in the "
        "model config disables this check."
    )
