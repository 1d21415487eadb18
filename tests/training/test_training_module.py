"""PPoolSegmentationModule: construction, optimiser groups, errors, checkpoints, bf16-mixed."""

import math

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from lit_ppool import PPool2d, PPoolSegmentationModule, SyntheticDetailDataModule
from lit_ppool.training.module import ConfigError

from helpers.tiny import TINY_MODEL


def tiny_data(**kwargs):
    return SyntheticDetailDataModule(**{"image_size": 32, "train_size": 8, "val_size": 8, "test_size": 8, "batch_size": 4, "eval_batch_size": 4, **kwargs})


def tiny_trainer(tmp_path, **kwargs):
    defaults = dict(
        accelerator="cpu", devices=1, max_steps=2, limit_val_batches=1, num_sanity_val_steps=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    return L.Trainer(**{**defaults, **kwargs})


def test_init_swaps_pooling_and_saves_hyperparameters():
    module = PPoolSegmentationModule(**TINY_MODEL, pooling="p", pooling_kwargs={"alpha_init": 2.0})
    assert isinstance(module.model.encoder.maxpool, PPool2d)
    assert module.model.encoder.maxpool.alpha.item() == 2.0
    assert module.swapped_layers == ["encoder.maxpool"]
    assert module.hparams.pooling == "p" and module.hparams.num_classes == 5
    assert module(torch.randn(2, 3, 32, 32)).shape == (2, 5, 32, 32)


def test_max_pooling_keeps_no_alpha():
    module = PPoolSegmentationModule(**TINY_MODEL, pooling="max")
    assert module.alpha_parameters() == []
    assert len(module.configure_optimizers().param_groups) == 1


def test_alpha_parameter_group_has_no_weight_decay_and_scaled_lr():
    module = PPoolSegmentationModule(
        **TINY_MODEL, alpha_lr_mult=5.0, optimizer=lambda params: torch.optim.SGD(params, lr=0.02, weight_decay=1e-4)
    )
    optimizer = module.configure_optimizers()
    model_group, alpha_group = optimizer.param_groups
    assert [id(p) for p in alpha_group["params"]] == [id(module.model.encoder.maxpool.alpha_raw)]
    assert alpha_group["weight_decay"] == 0.0 and model_group["weight_decay"] == 1e-4
    assert alpha_group["lr"] == pytest.approx(0.1) and model_group["lr"] == 0.02
    n_params = sum(1 for _ in module.parameters())
    assert len(model_group["params"]) + len(alpha_group["params"]) == n_params


def test_scheduler_is_returned_with_its_interval():
    module = PPoolSegmentationModule(
        **TINY_MODEL, scheduler=lambda opt: torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=10, power=0.9)
    )
    config = module.configure_optimizers()
    assert config["lr_scheduler"]["interval"] == "step"
    assert isinstance(config["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.PolynomialLR)


@pytest.mark.parametrize(
    ("override", "listed"),
    [
        ({"arch": "NotAnArch"}, "DeepLabV3Plus"),
        ({"encoder_name": "resnet7"}, "Did you mean 'resnet50'"),
        ({"encoder_name": "tu-not_a_timm_model"}, "timm"),
        ({"pooling": "maxx"}, "softpool"),
        ({"loss": "focal"}, "lovasz"),
        ({"num_classes": 0}, "int >= 1"),
        ({"ignore_index": 3}, "outside"),
        ({"alpha_lr_mult": -1.0}, ">= 0"),
        ({"pooling_kwargs": {"not_an_argument": 1}}, "pooling_kwargs"),
    ],
)
def test_invalid_configuration_lists_choices(override, listed):
    with pytest.raises(ConfigError, match="Expected argument") as info:
        PPoolSegmentationModule(**{**TINY_MODEL, **override})
    assert listed in str(info.value)


@pytest.mark.parametrize("pooling, expected", [("P", "PPool2d"), ("strided-conv", "StridedConvPool2d")])
def test_pooling_is_validated_by_the_registry_resolver(pooling, expected):
    # the spellings swap_pooling accepts are accepted here too
    module = PPoolSegmentationModule(**TINY_MODEL, pooling=pooling)
    assert module.swapped_layers == ["encoder.maxpool"] and type(module.model.encoder.maxpool).__name__ == expected


def test_pooling_is_resolved_once(monkeypatch):
    from lit_ppool.layers import registry
    from lit_ppool.surgery import swap as swap_module
    from lit_ppool.training import module as module_module

    resolved = []

    def counting(pooling, *args):
        if not isinstance(pooling, registry.ResolvedPooling):
            resolved.append(pooling)
        return registry.resolve_pooling(pooling, *args)

    monkeypatch.setattr(module_module, "resolve_pooling", counting)
    monkeypatch.setattr(swap_module, "resolve_pooling", counting)
    module = PPoolSegmentationModule(**TINY_MODEL, pooling="strided-conv")  # a probe forward measures its channels
    assert resolved == ["strided-conv"] and module.swapped_layers == ["encoder.maxpool"]


def test_num_classes_must_match_datamodule(tmp_path):
    module = PPoolSegmentationModule(**{**TINY_MODEL, "num_classes": 7})
    with pytest.raises(ConfigError, match="num_classes"):
        tiny_trainer(tmp_path).fit(module, tiny_data())


def test_out_of_range_label_names_the_value():
    # checked on the host, before the batch moves to the device (the training step itself never syncs)
    batch = {"image": torch.randn(1, 3, 32, 32), "mask": torch.zeros(1, 32, 32, dtype=torch.long), "name": ["img_7"]}
    batch["mask"][0, 3, 3] = 9
    with pytest.raises(ValueError, match=r"img_7.*\[9\]"):
        tiny_data().on_before_batch_transfer(batch, 0)


def test_fit_logs_metrics_and_checkpoint_restores_swapped_model_and_alpha(tmp_path):
    module = PPoolSegmentationModule(**TINY_MODEL, alpha_lr_mult=50.0)
    trainer = tiny_trainer(tmp_path, max_steps=3, limit_train_batches=3, max_epochs=1)
    trainer.fit(module, tiny_data(train_size=12))
    metrics = trainer.callback_metrics
    for key in ("train/loss", "val/mIoU", "val/pixel_acc", "val/trimap_mIoU", "val/IoU/thin_line", "val/IoU/background",
                "val/F1/thin_line", "val/precision/thin_line", "val/recall/background"):  # fmt: skip
        assert key in metrics, key
    assert 0.0 <= metrics["val/mIoU"].item() <= 1.0
    (tested,) = trainer.test(module, tiny_data(test_size=4), verbose=False)
    for key in ("test/mIoU", "test/F1/thin_line", "test/F1/background", "test/precision/dots", "test/recall/stripes"):
        assert key in tested, key
    assert "test/F1" not in tested  # per-class only
    alpha = module.model.encoder.maxpool.alpha_raw.detach().clone()
    assert alpha.item() != 1.0  # it was trained

    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    restored = PPoolSegmentationModule.load_from_checkpoint(path, weights_only=True)
    assert isinstance(restored.model.encoder.maxpool, PPool2d)
    assert torch.equal(restored.model.encoder.maxpool.alpha_raw, alpha)
    for (name, value), (_, expected) in zip(restored.state_dict().items(), module.state_dict().items()):
        assert torch.equal(value, expected), name
    restored.eval(), module.eval()
    images = torch.randn(1, 3, 32, 32)
    assert torch.equal(restored(images), module(images))


class _RecordDtypes(Callback):
    def __init__(self):
        self.losses, self.dtypes = [], []

    def on_fit_start(self, trainer, pl_module):
        for layer in pl_module.modules():
            if isinstance(layer, PPool2d):
                layer.register_forward_hook(lambda mod, args, out: self.dtypes.append((args[0].dtype, out.dtype)))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].item())


def test_bf16_mixed_on_cpu_trains_with_bf16_at_the_pooling_boundary(tmp_path):
    module = PPoolSegmentationModule(**TINY_MODEL, alpha_lr_mult=10.0)
    record = _RecordDtypes()
    trainer = tiny_trainer(tmp_path, precision="bf16-mixed", callbacks=[record], limit_val_batches=0)
    trainer.fit(module, tiny_data())
    assert len(record.losses) == 2 and all(math.isfinite(loss) for loss in record.losses)
    assert record.dtypes and all(dtypes == (torch.bfloat16, torch.bfloat16) for dtypes in record.dtypes)
    alpha = module.model.encoder.maxpool.alpha_raw
    assert alpha.dtype == torch.float32 and alpha.item() != 1.0  # fp32 master weight, updated
