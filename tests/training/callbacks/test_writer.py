"""PaletteMaskWriter's alpha maps: one PNG per image and adaptive layer beside the masks, through Trainer.predict
and through `lit-ppool predict`; a model without adaptive layers gets a warning and the masks."""

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from lit_ppool import PaletteMaskWriter, PPoolSegmentationModule, SyntheticDetailDataModule
from lit_ppool.cli import main
from lit_ppool.training.alpha_maps import colorize, upsampled_mean

from helpers.tiny import TINY_FIT, TINY_MODEL


def _predict(tmp_path, module, writer):
    data = SyntheticDetailDataModule(image_size=32, train_size=2, val_size=2, test_size=3, eval_batch_size=2)
    trainer = L.Trainer(
        accelerator="cpu", devices=1, logger=False, callbacks=[writer], enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.predict(module, data, return_predictions=False)
    return data


def test_alpha_maps_are_the_layers_maps_coloured_over_its_range(tmp_path):
    module = PPoolSegmentationModule(**TINY_MODEL, pooling="p_adaptive")
    layer = module.model.encoder.maxpool
    with torch.no_grad():
        layer.alpha_conv.weight.normal_(0.0, 20.0)
    writer = PaletteMaskWriter(tmp_path / "out", alpha_maps=True)
    data = _predict(tmp_path, module, writer)

    names = [f"synthetic_test_{i:05d}.png" for i in range(3)]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == names  # the masks, as without alpha maps
    folder = tmp_path / "out" / "alpha" / "encoder_maxpool"
    assert sorted(p.name for p in folder.iterdir()) == names
    assert (writer.written, writer.alpha_maps_written) == (3, 3)

    image = data.predict_dataloader().dataset[0]["image"].unsqueeze(0)  # recompute the first map independently
    inputs = []
    handle = layer.register_forward_hook(lambda mod, args, out: inputs.append(args[0]))
    module.eval()
    with torch.no_grad():
        module(image)
        expected = colorize(upsampled_mean(layer.alpha_map(inputs[0]), (32, 32))[0], 1.0, 50.0)
    handle.remove()
    with Image.open(folder / names[0]) as png:
        assert (png.mode, png.size) == ("RGB", (32, 32))
        assert png.text == {"layer": "encoder_maxpool", "alpha_min": "1", "alpha_max": "50", "colormap": "magma"}
        written = np.array(png)
    assert np.abs(written.astype(int) - expected.astype(int)).max() <= 1
    assert len(np.unique(written.reshape(-1, 3), axis=0)) > 1  # alpha varies over the image

    calls, original = [], layer.alpha_map
    layer.alpha_map = lambda *args: calls.append(1) or original(*args)
    with torch.no_grad():
        module(image)
    assert len(calls) == 1  # the pooling's own call: the writer's hooks are gone after predict
    del layer.alpha_map


def test_a_model_without_adaptive_layers_gets_the_masks_and_a_warning(tmp_path):
    module = PPoolSegmentationModule(**TINY_MODEL, pooling="p")
    writer = PaletteMaskWriter(alpha_maps=True)  # no folder: <default_root_dir>/predictions
    with pytest.warns(UserWarning, match="found no adaptive P-pooling layer"):
        _predict(tmp_path, module, writer)
    assert (writer.written, writer.alpha_maps_written) == (3, 0) and writer.folder == tmp_path / "predictions"
    assert len(list(writer.folder.glob("*.png"))) == 3 and not (writer.folder / "alpha").exists()
    with pytest.raises(ValueError, match="Expected argument `alpha_maps`"):
        PaletteMaskWriter(alpha_maps="yes")


def test_lit_ppool_predict_writes_the_alpha_maps_beside_the_masks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    adaptive = [*TINY_FIT, "--model.pooling=p_adaptive", "--trainer.limit_val_batches=1"]
    main(["fit", *adaptive])
    run = tmp_path / "lightning_logs" / "quickstart" / "version_0"
    with Image.open(run / "alpha_maps" / "encoder_maxpool.png") as figure:  # the quickstart's AlphaMonitor drew it
        assert figure.format == "PNG"
    main([
        "predict", *adaptive, "--ckpt_path=last", "--trainer.callbacks+=lit_ppool.PaletteMaskWriter",
        "--trainer.callbacks.output_dir=preds", "--trainer.callbacks.alpha_maps=true",
    ])  # fmt: skip
    names = [f"synthetic_test_{i:05d}.png" for i in range(4)]
    assert sorted(p.name for p in (tmp_path / "preds").glob("*.png")) == names
    maps = sorted((tmp_path / "preds" / "alpha" / "encoder_maxpool").glob("*.png"))
    assert [p.name for p in maps] == names
    with Image.open(maps[0]) as png:
        assert (png.mode, png.size, png.text["layer"]) == ("RGB", (32, 32), "encoder_maxpool")
    assert not (run / "predictions").exists()  # the configured writer, not the default one

    main(["predict", *adaptive, "--ckpt_path=last", "--trainer.callbacks+=lit_ppool.PaletteMaskWriter",
          "--trainer.callbacks.alpha_maps=true"])  # fmt: skip
    beside = run / "predictions" / "last"  # a writer without a folder writes where the default writer would
    assert sorted(p.name for p in beside.glob("*.png")) == names
    assert sorted(p.name for p in (beside / "alpha" / "encoder_maxpool").glob("*.png")) == names
