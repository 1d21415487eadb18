"""A NaN or infinite training loss stops the run, naming the step, the loss and every layer's alpha, before any weight changes."""

import re

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from lit_ppool import AdaptivePPool2d, PPool2d, PPoolSegmentationModule, SyntheticDetailDataModule
from lit_ppool.training.faults import NonFiniteLossError, alpha_summary, check_finite_loss

TINY = {
    "arch": "Unet",
    "encoder_name": "tu-resnet10t",  # two pooling layers: encoder.model.maxpool and a downsample AvgPool2d
    "encoder_weights": None,
    "num_classes": 5,
    "model_kwargs": {"encoder_depth": 3, "decoder_channels": [16, 8, 8]},
}
BAD_STEP = 2


class PoisonStep(Callback):
    """At global step ``BAD_STEP``: remember the weights, then poison the batch or the loss."""

    def __init__(self, how: str) -> None:
        self.how = how
        self.parameters_before = self.optimizer_before = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step != BAD_STEP:
            return
        self.parameters_before = {k: v.detach().clone() for k, v in pl_module.named_parameters()}
        self.optimizer_before = [v.clone() for state in trainer.optimizers[0].state.values() for v in state.values()]
        if self.how == "nan_pixel":
            batch["image"][0, :, 5, 7] = float("nan")
        else:  # an overflowing loss
            forward = pl_module.criterion.forward
            pl_module.criterion.forward = lambda logits, target: forward(logits, target) * float("inf")


def _fit(tmp_path, how, **module_kwargs):
    module = PPoolSegmentationModule(**TINY, **module_kwargs)
    poison = PoisonStep(how)
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=BAD_STEP + 2, limit_val_batches=0, num_sanity_val_steps=0,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path, callbacks=[poison],
    )  # fmt: skip
    data = SyntheticDetailDataModule(image_size=32, train_size=16, batch_size=2)
    return module, poison, trainer, lambda: trainer.fit(module, data)


@pytest.mark.parametrize("how, shown", [("nan_pixel", "nan"), ("inf_loss", "inf")])
def test_non_finite_loss_stops_before_the_optimizer_step_and_names_step_loss_and_alphas(tmp_path, how, shown):
    module, poison, trainer, fit = _fit(tmp_path, how)
    with pytest.raises(NonFiniteLossError) as info:
        fit()
    message = str(info.value)
    assert f"Non-finite training loss {shown}" in message
    assert f"at global step {BAD_STEP} (epoch 0, batch {BAD_STEP})" in message
    assert module.swapped_layers == ["encoder.model.maxpool", "encoder.model.layer2.0.downsample.0"]
    for name in module.swapped_layers:
        alpha = module.model.get_submodule(name).alpha.item()
        assert re.search(rf"^  {re.escape(name)}: {alpha:.6g}$", message, flags=re.MULTILINE), (name, message)
    assert "check_finite_loss: false" in message  # the switch is named
    # stopped before backward and the optimiser step: parameters and optimiser state as before the bad step
    assert trainer.global_step == BAD_STEP
    assert all(p.grad is None or p.grad.isfinite().all() for p in module.parameters())  # no backward of the bad loss
    parameters = dict(module.named_parameters())
    assert all(torch.equal(parameters[k], v) and v.isfinite().all() for k, v in poison.parameters_before.items())
    optimizer_state = [v for state in trainer.optimizers[0].state.values() for v in state.values()]
    assert len(optimizer_state) == len(poison.optimizer_before) > 0
    assert all(torch.equal(v, before) for v, before in zip(optimizer_state, poison.optimizer_before))


def test_check_can_be_switched_off_and_then_nan_reaches_the_weights(tmp_path):
    module, _, trainer, fit = _fit(tmp_path, "nan_pixel", check_finite_loss=False)
    fit()
    assert trainer.global_step == BAD_STEP + 2  # trained through
    assert not all(p.isfinite().all() for p in module.parameters())  # which is what the check prevents


def test_finite_loss_passes_and_summary_covers_per_channel_alpha():
    check_finite_loss(torch.tensor(1e30), nn.Identity())  # large but finite: no error
    model = nn.Sequential(nn.Conv2d(3, 3, 1), PPool2d(2, alpha_init=2.5), PPool2d(2, num_channels=3, alpha_init=4.0))
    model[2].alpha_raw.data = torch.tensor([1.0, 4.0, 250.0])  # beyond alpha_max: the effective value is shown
    assert alpha_summary(model) == {"1": "2.5", "2": "mean 35, min 1, max 100"}
    with pytest.raises(NonFiniteLossError, match=r"loss -inf;.*\n.*\n  1: 2.5\n  2: mean 35, min 1, max 100"):
        check_finite_loss(torch.tensor(float("-inf")), model)
    adaptive = nn.Sequential(nn.Conv2d(3, 3, 1), AdaptivePPool2d(2, num_channels=3, alpha_min=2.0))
    assert alpha_summary(adaptive) == {"1": "predicted per window, range [2, 50]"}  # no alpha of its own
