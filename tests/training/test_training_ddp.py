"""DDP on CPU (gloo, ddp_spawn, 2 processes): alpha stays in sync and mIoU and F1 equal the 1-process values."""

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from lit_ppool import PPoolSegmentationModule, SyntheticDetailDataModule

from helpers.tiny import TINY_MODEL

TINY = {**TINY_MODEL, "alpha_lr_mult": 50.0}
ALPHA = "model.encoder.maxpool.alpha_raw"


def tiny_data():
    # 8 validation images, 2 per batch: 2 batches per process under DDP, no padding by the sampler
    return SyntheticDetailDataModule(image_size=32, train_size=8, val_size=8, test_size=8, batch_size=2, eval_batch_size=2)


class SaveWeightsPerRank(Callback):
    """Save each rank's trained weights (spawned processes share nothing else with the test)."""

    def __init__(self, folder):
        self.folder = folder

    def on_train_end(self, trainer, pl_module):
        state = {key: value.detach().cpu().clone() for key, value in pl_module.state_dict().items()}
        torch.save(state, self.folder / f"rank{trainer.global_rank}.pt")


def trainer_kwargs(tmp_path):
    return dict(
        accelerator="cpu", num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip


@pytest.mark.slow
def test_ddp_spawn_two_processes_sync_alpha_and_match_single_process_miou(tmp_path):
    torch.manual_seed(0)
    trainer = L.Trainer(
        strategy="ddp_spawn", devices=2, max_epochs=1, limit_train_batches=2, limit_val_batches=0,
        callbacks=[SaveWeightsPerRank(tmp_path)], **trainer_kwargs(tmp_path),
    )  # fmt: skip
    trainer.fit(PPoolSegmentationModule(**TINY), tiny_data())

    rank0, rank1 = (torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in (0, 1))
    assert rank0[ALPHA].item() != 1.0  # trained
    assert torch.equal(rank0[ALPHA], rank1[ALPHA])
    parameters = {name for name, _ in PPoolSegmentationModule(**TINY).named_parameters()}
    for name in parameters:  # every parameter is synchronised (BatchNorm running stats are per process)
        assert torch.equal(rank0[name], rank1[name]), name

    trained = PPoolSegmentationModule(**TINY)
    trained.load_state_dict(rank0)
    (ddp,) = L.Trainer(strategy="ddp_spawn", devices=2, **trainer_kwargs(tmp_path)).validate(trained, tiny_data(), verbose=False)
    (single,) = L.Trainer(devices=1, **trainer_kwargs(tmp_path)).validate(trained, tiny_data(), verbose=False)
    assert 0.0 < single["val/mIoU"] < 1.0
    for key in ("val/mIoU", "val/pixel_acc", "val/trimap_mIoU", "val/IoU/stripes", "val/F1/stripes", "val/F1/thin_line",
                "val/precision/stripes", "val/recall/stripes"):  # fmt: skip
        assert ddp[key] == pytest.approx(single[key], abs=1e-6), key


class SaveAlphaMapSummaryPerRank(Callback):
    """Save each rank's :attr:`alpha_map_summary` after validation (gathered at the epoch's end)."""

    def __init__(self, folder):
        self.folder = folder

    def on_validation_end(self, trainer, pl_module):
        torch.save(pl_module.alpha_map_summary, self.folder / f"summary{trainer.global_rank}.pt")


@pytest.mark.slow
def test_ddp_gathers_the_predicted_alpha_of_every_process(tmp_path):
    """Two processes see 4 validation images each; the gathered mean, min and max are those of all 8."""
    torch.manual_seed(0)
    module = PPoolSegmentationModule(**TINY_MODEL, pooling="p_adaptive")
    with torch.no_grad():  # spread the predicted alpha away from its initial 30, so each image's maps differ
        module.model.encoder.maxpool.alpha_conv.weight.normal_(0.0, 20.0)
    ddp = L.Trainer(strategy="ddp_spawn", devices=2, callbacks=[SaveAlphaMapSummaryPerRank(tmp_path)], **trainer_kwargs(tmp_path))
    ddp.validate(module, tiny_data(), verbose=False)
    L.Trainer(devices=1, **trainer_kwargs(tmp_path)).validate(module, tiny_data(), verbose=False)

    single = module.alpha_map_summary["encoder_maxpool"]
    assert 1.0 <= single["min"] < single["mean"] < single["max"] <= 50.0
    for rank in (0, 1):
        gathered = torch.load(tmp_path / f"summary{rank}.pt", weights_only=True)["encoder_maxpool"]
        assert gathered == {key: pytest.approx(value, rel=1e-6) for key, value in single.items()}, rank
