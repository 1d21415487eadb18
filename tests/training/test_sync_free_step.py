"""The training step never synchronises host and device (no .item(), bool() of a tensor, nonzero ...).

On CPU a TorchFunctionMode records every call that would force a synchronisation on a GPU; on a
GPU ``torch.cuda.set_sync_debug_mode("error")`` turns any synchronisation into an error.
"""

import lightning as L
import pytest
import torch
from torch.overrides import TorchFunctionMode

from lit_ppool import PPoolSegmentationModule, SyntheticDetailDataModule
from lit_ppool.training.data.checks import check_labels

from helpers.tiny import TINY_MODEL

# functions whose result the host must wait for when the tensor lives on a GPU
_SYNCING = {
    torch.Tensor.__bool__, torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__int__, torch.Tensor.__float__,
    torch.Tensor.__index__, torch.Tensor.nonzero, torch.nonzero, torch.Tensor.unique, torch.unique,
    torch.masked_select, torch.Tensor.masked_select, torch.Tensor.numpy, torch.Tensor.cpu,
}  # fmt: skip


class _RecordSyncs(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _SYNCING:
            self.calls.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


class _Recorded(PPoolSegmentationModule):
    def training_step(self, batch, batch_idx):
        with self.recorder:
            return super().training_step(batch, batch_idx)


def _fit_recording(tmp_path, **kwargs):
    module = _Recorded(**TINY_MODEL, **kwargs)
    module.recorder = _RecordSyncs()
    data = SyntheticDetailDataModule(image_size=32, train_size=8, val_size=2, batch_size=4)
    trainer = L.Trainer(accelerator="cpu", max_steps=2, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(module, data)
    assert trainer.global_step == 2
    return module.recorder.calls


def test_training_step_has_no_host_device_synchronisation(tmp_path):
    assert _fit_recording(tmp_path, check_finite_loss=False) == []


def test_the_finite_loss_check_is_the_one_documented_synchronisation(tmp_path):
    assert _fit_recording(tmp_path, check_finite_loss=True) == ["__bool__", "__bool__"]  # one per step


def test_bad_labels_are_still_reported_with_the_samples_before_the_transfer(tmp_path):
    data = SyntheticDetailDataModule(image_size=32, train_size=4, batch_size=2)
    batch = {"image": torch.zeros(2, 3, 32, 32), "mask": torch.tensor([0, 9]).view(2, 1, 1).expand(2, 32, 32),
             "name": ["a.png", "b.png"]}  # fmt: skip
    with pytest.raises(ValueError, match=r"labels of the batch of \['a.png', 'b.png'\] .* but got \[9\]"):
        data.on_before_batch_transfer(batch, 0)
    check_labels(torch.tensor([0, 4, 255]), 5, 255)  # valid: nothing raised


@pytest.mark.cuda
def test_cuda_training_step_is_sync_free():
    module = PPoolSegmentationModule(**TINY_MODEL, check_finite_loss=False).cuda()
    batch = {"image": torch.rand(2, 3, 32, 32, device="cuda"), "mask": torch.randint(0, 5, (2, 32, 32), device="cuda")}
    module.training_step(batch, 0)  # warm-up: kernels load, the allocator settles
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = module.training_step(batch, 0)
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert loss.isfinite()
