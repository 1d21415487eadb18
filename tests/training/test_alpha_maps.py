"""Alpha maps of adaptive P-pooling: capture (plain and "same"-padded layers), statistics, drawing, the module's
evaluation summary and the run record's rows."""

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn

from lit_ppool import AdaptivePPool2d, PPool2d, PPoolSegmentationModule, SyntheticDetailDataModule
from lit_ppool.compare.report import Comparison, write_report
from lit_ppool.layers.same import SamePadPool2d
from lit_ppool.training.alpha_maps import (
    ALPHA_PERCENTILES,
    AlphaMapCapture,
    AlphaMapStats,
    adaptive_layers,
    alpha_map_figure,
    colorize,
    map_statistics,
    upsampled_mean,
)
from lit_ppool.training.record import evaluation_record

from helpers.tiny import TINY_MODEL


def _model():
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), AdaptivePPool2d(2, num_channels=4), nn.Conv2d(4, 4, 1),
        SamePadPool2d(AdaptivePPool2d(3, 2, num_channels=4)), PPool2d(2),
    )  # fmt: skip


def test_adaptive_layers_are_named_as_alpha_layers():
    model = _model()
    assert list(adaptive_layers(model)) == ["1", "3_pool"]
    wrapped = nn.Module()
    wrapped.model = model
    assert list(adaptive_layers(wrapped)) == ["1", "3_pool"]  # the common model. prefix dropped
    assert adaptive_layers(nn.Sequential(PPool2d(2))) == {}


def test_capture_gives_the_maps_each_layer_pooled_with_and_removes_its_hooks():
    model, x = _model(), torch.rand(2, 3, 9, 9)
    seen = []
    with AlphaMapCapture(model, on_map=lambda name, alpha: seen.append((name, alpha.shape))) as capture:
        out = model(x)
    first = model[0](x)
    torch.testing.assert_close(capture.maps["1"], model[1].alpha_map(first))
    hidden = model[2](model[1](first))
    (pad_h, pad_w), (crop_h, crop_w) = model[3].same_padding_for(hidden)
    expected = model[3].pool.alpha_map(hidden, (pad_h, pad_w), True)[..., crop_h:, crop_w:]
    torch.testing.assert_close(capture.maps["3_pool"], expected)
    assert capture.maps["3_pool"].shape == model[3](hidden).shape  # "same" padding: the output's shape
    assert [name for name, _ in seen] == ["1", "3_pool"] and not capture.maps["1"].requires_grad
    assert out.shape == (2, 4, 1, 1)
    capture.maps.clear()
    model(x)
    assert capture.maps == {}  # the hooks are gone


def test_stats_over_updates_and_processes():
    stats = AlphaMapStats(["a", "b", "never"])
    stats.update("a", torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    stats.update("a", torch.tensor([10.0]))
    stats.update("b", torch.tensor([5.0]))
    assert stats.summary() == {"a": {"mean": 4.0, "min": 1.0, "max": 10.0}, "b": {"mean": 5.0, "min": 5.0, "max": 5.0}}
    other = AlphaMapStats(["a", "b", "never"])
    other.update("b", torch.tensor([0.5, 1.5]))
    stats.merge(torch.stack([stats.totals, other.totals]))  # what all_gather gives with two processes
    assert stats.summary()["b"] == {"mean": pytest.approx(7.0 / 3), "min": 0.5, "max": 5.0}
    assert stats.summary()["a"]["mean"] == 4.0 and "never" not in stats.summary()
    stats.merge(stats.totals)  # one process: all_gather returns the tensor as it is
    assert stats.summary()["b"]["min"] == 0.5


def test_statistics_upsampling_and_colours():
    alpha = torch.rand(2, 3, 4, 4) * 49 + 1
    statistics = map_statistics(alpha)
    assert list(statistics) == ["mean", *(f"p{q}" for q in ALPHA_PERCENTILES)]
    assert statistics["mean"] == pytest.approx(alpha.mean().item(), rel=1e-6)
    percentiles = [statistics[f"p{q}"] for q in ALPHA_PERCENTILES]
    assert percentiles == sorted(percentiles) and alpha.min() <= percentiles[0] and percentiles[-1] <= alpha.max()
    assert statistics["p50"] == pytest.approx(alpha.median().item(), abs=1.0)
    maps = upsampled_mean(alpha, (8, 12))
    assert maps.shape == (2, 8, 12)
    torch.testing.assert_close(maps[:, ::2, ::3], alpha.mean(1))
    rgb = colorize(maps[0], 1.0, 50.0)
    assert rgb.shape == (8, 12, 3) and rgb.dtype == np.uint8
    assert (colorize(torch.tensor([[0.0, 1.0]]), 1.0, 50.0)[0, 0] == colorize(torch.tensor([[1.0]]), 1.0, 50.0)[0, 0]).all()
    figure = alpha_map_figure(torch.randn(2, 3, 8, 12), maps, 1.0, 50.0, "title")
    assert len(figure.axes) == 5  # 2 x 2 images and the colour bar


def _tiny_data(**kwargs):
    sizes = {"image_size": 32, "train_size": 4, "val_size": 4, "test_size": 6, "batch_size": 2, "eval_batch_size": 4}
    return SyntheticDetailDataModule(**{**sizes, **kwargs})


def _trainer(tmp_path, **kwargs):
    defaults = dict(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    return L.Trainer(**{**defaults, **kwargs})


def test_the_module_summarises_the_predicted_alpha_of_a_test_and_the_record_keeps_it(tmp_path):
    module = PPoolSegmentationModule(**TINY_MODEL, pooling="p_adaptive")
    layer = module.model.encoder.maxpool
    with torch.no_grad():  # spread the predicted alpha away from its initial 30 everywhere
        layer.alpha_conv.weight.normal_(0.0, 20.0)
    _trainer(tmp_path, max_steps=1, limit_val_batches=1, num_sanity_val_steps=0).fit(module, _tiny_data())
    assert module.alpha_map_summary == {}  # the validation of fit collects nothing

    inputs = []
    handle = layer.register_forward_hook(lambda mod, args, out: inputs.append(args[0].detach()))
    _trainer(tmp_path).test(module, _tiny_data(), verbose=False)
    handle.remove()
    module.eval()
    with torch.no_grad():
        expected = torch.cat([layer.alpha_map(x).flatten() for x in inputs])
    assert sum(x.shape[0] for x in inputs) == 6  # every test image
    summary = module.alpha_map_summary["encoder_maxpool"]
    assert summary == {"mean": pytest.approx(expected.mean().item(), rel=1e-5), "min": pytest.approx(expected.min().item()),
                       "max": pytest.approx(expected.max().item())}  # fmt: skip
    assert 1.0 <= summary["min"] < summary["mean"] < summary["max"] <= 50.0
    calls = []
    original = layer.alpha_map
    layer.alpha_map = lambda *args: calls.append(1) or original(*args)
    with torch.no_grad():
        module(torch.rand(1, 3, 32, 32))
    assert len(calls) == 1  # the pooling's own call: no hook left that predicts again
    del layer.alpha_map

    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
    record = evaluation_record(checkpoint, module, {"test/mIoU": torch.tensor(0.5)}, seed=0)
    assert record.pooling == "p_adaptive"
    assert record.alpha == {"encoder_maxpool": {**summary, "init": 30.0}}
    report = write_report(Comparison([record]), tmp_path / "compare", "adaptive")["compare.md"].read_text()
    row = f"| p_adaptive | encoder_maxpool | 30.000 | {summary['mean']:.3f} | {summary['mean']:.3f} – {summary['mean']:.3f} |"
    assert row in report.splitlines()  # compare's alpha table has the layer (one seed: its mean is the range)


def test_a_validate_run_is_summarised_too_and_models_without_adaptive_layers_collect_nothing(tmp_path):
    module = PPoolSegmentationModule(**TINY_MODEL, pooling="p_adaptive")
    _trainer(tmp_path, limit_val_batches=1).validate(module, _tiny_data(), verbose=False)
    assert list(module.alpha_map_summary) == ["encoder_maxpool"]
    assert module.alpha_map_summary["encoder_maxpool"]["mean"] == pytest.approx(30.0, abs=5.0)  # near the initial bias
    plain = PPoolSegmentationModule(**TINY_MODEL, pooling="p")
    _trainer(tmp_path).test(plain, _tiny_data(), verbose=False)
    assert plain.alpha_map_summary == {}
    assert list(evaluation_record(tmp_path / "last.ckpt", plain, {}, seed=0).alpha) == ["encoder_maxpool"]
