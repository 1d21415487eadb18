"""Sharing a model: save_pretrained / from_pretrained round trips, bad inputs, the Hub cache, `lit-ppool export`."""

import json
from pathlib import Path

import pytest
import segmentation_models_pytorch as smp
import torch
from safetensors.torch import load_file, save_file

import lit_ppool
from lit_ppool import (
    PPool2d,
    available_poolings,
    bake_pooling,
    from_pretrained,
    save_pretrained,
    swap_pooling,
)
from lit_ppool.layers.baselines import AveragePool2d
from lit_ppool.layers.same import SamePadPool2d
from lit_ppool.sharing import NotASavedModelError, SavedModelError, model_card

from helpers.tiny import TINY_FIT

X = torch.rand(2, 3, 32, 32)


def _unet(**kwargs):
    kwargs = {"encoder_depth": 3, "decoder_channels": (8, 8, 8), "classes": 2, **kwargs}
    return smp.Unet(kwargs.pop("encoder_name", "resnet18"), encoder_weights=None, **kwargs).eval()


def _perturb(model, names):
    """Move the swapped layers' parameters away from their initial values, so loading them is tested."""
    with torch.no_grad():
        for name in names:
            for param in model.get_submodule(name).parameters():
                param.add_(torch.rand_like(param) * 0.5)


def _assert_same_model(loaded, model, x=X):
    assert list(loaded.state_dict()) == list(model.state_dict())
    assert [(n, type(m)) for n, m in loaded.named_modules()] == [(n, type(m)) for n, m in model.named_modules()]
    with torch.no_grad():
        for got, expected in zip(*(out if isinstance(out, tuple) else (out,) for out in (loaded(x), model(x)))):
            torch.testing.assert_close(got, expected, atol=0, rtol=0)


def _one_line(excinfo):
    return "\n" not in str(excinfo.value)


# --- round trips ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pooling", available_poolings())
def test_round_trip_of_every_registry_pooling(pooling, tmp_path):
    model = _unet()
    report = swap_pooling(model, pooling, example_input=X)
    _perturb(model, report.names)
    save_pretrained(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((tmp_path / "config.json").read_text())
    if pooling == "max":  # same module as smp's own: a plain smp folder
        assert "lit_ppool" not in config
    else:
        (swap,) = config["lit_ppool"]["swaps"]
        assert (swap["name"], swap["pooling"], swap["same"], swap["global"]) == ("encoder.maxpool", pooling, False, False)
    loaded = from_pretrained(tmp_path)
    assert not loaded.training
    _assert_same_model(loaded, model)
    with torch.no_grad():
        assert repr(loaded.encoder.maxpool) == repr(model.encoder.maxpool)


def test_per_channel_alpha_and_options_round_trip(tmp_path):
    model = _unet()
    swap_pooling(model, "p", num_channels="auto", alpha_max=50.0, learnable=False, example_input=X)
    model.encoder.maxpool.alpha_raw.copy_(torch.linspace(0.0, 60.0, 64))  # some past alpha_max: clamped
    loaded = from_pretrained(save_pretrained(model, tmp_path))
    pool = loaded.encoder.maxpool
    assert (pool.num_channels, pool.alpha_max, "alpha_raw" in dict(pool.named_buffers())) == (64, 50.0, True)
    torch.testing.assert_close(pool.alpha_raw, model.encoder.maxpool.alpha_raw, atol=0, rtol=0)
    _assert_same_model(loaded, model)
    assert "64 channels: mean" in (tmp_path / "README.md").read_text()


@pytest.mark.parametrize("setup", ["include_global_p_exclude_softpool", "global_to_max"])
def test_include_exclude_and_global_pools_round_trip(setup, tmp_path):
    model = _unet(aux_params={"classes": 3})
    if setup == "global_to_max":  # AdaptiveAvgPool2d -> AdaptiveMaxPool2d: told apart from smp's own by type
        names = swap_pooling(model, "max", include="classification_head.*").names
    else:
        names = swap_pooling(model, "p", include="classification_head.*", num_channels="auto", example_input=X).names
        names += swap_pooling(model, "softpool", exclude="classification_head.*").names
        _perturb(model, names)
    swaps = json.loads(save_pretrained(model, tmp_path).joinpath("config.json").read_text())["lit_ppool"]["swaps"]
    assert sorted(s["name"] for s in swaps) == sorted(names)
    assert all(s["global"] == s["name"].startswith("classification_head") for s in swaps)
    _assert_same_model(from_pretrained(tmp_path), model)


def test_timm_same_padding_pools_round_trip(tmp_path):
    model = _unet(encoder_name="tu-maxvit_tiny_tf_224", img_size=64)
    x = torch.rand(1, 3, 64, 64)
    report = swap_pooling(model, "p", example_input=x)
    same = [s.name for s in report if isinstance(s.new, SamePadPool2d)]
    assert same and type(report[0].old).__name__ == "AvgPool2dSame"
    _perturb(model, report.names)
    swaps = json.loads(save_pretrained(model, tmp_path).joinpath("config.json").read_text())["lit_ppool"]["swaps"]
    assert {s["name"] for s in swaps if s["same"]} == set(same)
    loaded = from_pretrained(tmp_path)
    assert all(isinstance(loaded.get_submodule(name).pool, PPool2d) for name in same)
    _assert_same_model(loaded, model, x)


def test_baked_model_is_a_plain_smp_model(tmp_path):
    model = _unet()
    swap_pooling(model, "p", alpha_init=100.0)  # alpha at alpha_max: bakes into nn.MaxPool2d
    assert len(bake_pooling(model, X, atol=1.0)) == 1 and type(model.encoder.maxpool) is torch.nn.MaxPool2d
    save_pretrained(model, tmp_path)
    assert "lit_ppool" not in json.loads((tmp_path / "config.json").read_text())
    assert "smp.from_pretrained" in (tmp_path / "README.md").read_text()
    _assert_same_model(smp.from_pretrained(str(tmp_path)).eval(), model)
    _assert_same_model(from_pretrained(tmp_path), model)


def test_baked_to_average_is_recorded(tmp_path):
    model = _unet()
    swap_pooling(model, "p", alpha_init=0.0)
    bake_pooling(model, X)
    (swap,) = json.loads(save_pretrained(model, tmp_path).joinpath("config.json").read_text())["lit_ppool"]["swaps"]
    assert swap["pooling"] == "avg" and swap["options"] == {"count_include_pad": False}
    _assert_same_model(from_pretrained(tmp_path), model)


def _swap_then_maybe_bake(model, setup):
    if setup == "baked to avg":  # alpha 0: bakes into average pooling, no weights of its own
        swap_pooling(model, "p", alpha_init=0.0)
        assert len(bake_pooling(model, X)) == 1
    elif setup == "per-channel p":
        swap_pooling(model, "p", num_channels="auto", example_input=X)
    else:
        swap_pooling(model, setup, example_input=X)


@pytest.mark.parametrize("setup", ["p", "per-channel p", "avg", "softpool", "baked to avg"])
def test_smp_loader_refuses_a_swapped_folder_and_names_lit_ppools(setup, tmp_path):
    model = _unet()
    _swap_then_maybe_bake(model, setup)
    save_pretrained(model, tmp_path)
    with pytest.raises(AttributeError, match="'Unet with swapped pooling: load it with lit_ppool.from_pretrained'"):
        smp.from_pretrained(str(tmp_path))  # smp's own loader, as a user of the folder would call it
    with pytest.raises(KeyError, match=r"swapped pooling: load it with lit_ppool\.from_pretrained"):
        smp.Unet.from_pretrained(str(tmp_path))  # smp's class method, which does not read _model_class
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["lit_ppool"]["model_class"] == "Unet" and config["lit_ppool"]["format"] == 2
    assert config["lit_ppool"]["encoder_name"] == "resnet18"
    _assert_same_model(from_pretrained(tmp_path), model)


@pytest.mark.parametrize("setup", ["nothing swapped", "swapped to max", "baked to max"])
def test_smp_loader_rebuilds_a_folder_with_smps_own_pooling_exactly(setup, tmp_path):
    model = _unet()
    if setup == "swapped to max":
        assert len(swap_pooling(model, "max")) == 1
    elif setup == "baked to max":
        swap_pooling(model, "p", alpha_init=100.0)
        assert len(bake_pooling(model, X, atol=1.0)) == 1
    save_pretrained(model, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["_model_class"] == "Unet"
    _assert_same_model(smp.from_pretrained(str(tmp_path)).eval(), model)
    _assert_same_model(from_pretrained(tmp_path), model)


def test_folders_of_format_1_still_load(tmp_path):
    model = _unet()
    swap_pooling(model, "avg")

    def as_format_1(config):  # what lit_ppool wrote before the folder named its loader to smp
        config["_model_class"] = config["lit_ppool"].pop("model_class")
        config["lit_ppool"]["format"] = 1

    _edit_config(save_pretrained(model, tmp_path), as_format_1)
    _assert_same_model(from_pretrained(tmp_path), model)


def test_the_files_say_which_loader_to_use(tmp_path):
    model = _unet()
    swap_pooling(model, "p")
    save_pretrained(model, tmp_path)
    assert "lit_ppool.from_pretrained" in (tmp_path / "config.json").read_text().splitlines()[1]
    card = (tmp_path / "README.md").read_text().splitlines()
    assert card[0] == "---" and any("Load with `lit_ppool.from_pretrained" in line for line in card[:14])
    assert "| `encoder.maxpool` | p | PPool2d | kernel 3, stride 2, padding 1 | 1.0000 |" in card
    adaptive = _unet()
    swap_pooling(adaptive, "p_adaptive", example_input=X)
    assert ("| `encoder.maxpool` | p_adaptive | AdaptivePPool2d | kernel 3, stride 2, padding 1 | predicted per window "
            "(range [1, 50], initial bias 30) |") in model_card(adaptive).splitlines()  # fmt: skip



def test_the_card_metadata_is_what_the_hub_reads(tmp_path):
    from huggingface_hub import ModelCard

    swapped, plain = _unet(), _unet()
    swap_pooling(swapped, "p")
    for model, library in ((swapped, "lit_ppool"), (plain, "segmentation-models-pytorch")):
        card = ModelCard(model_card(model))
        assert card.data.library_name == library and card.data.pipeline_tag == "image-segmentation"
        assert card.data.tags == ["lit_ppool", "segmentation-models-pytorch", "semantic-segmentation", "pytorch"]
        assert card.text.lstrip().startswith("# Unet (resnet18)")


def test_the_sharing_modules_import_downward_only():
    """swaps <- card <- hub <- export: a module imports only the ones before it (and nothing above the package)."""
    import ast

    order = ["swaps", "card", "hub", "export"]
    folder = Path(lit_ppool.__file__).parent / "sharing"
    for index, name in enumerate(order):
        tree = ast.parse((folder / f"{name}.py").read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        ours = {module.removeprefix("lit_ppool.sharing.") for module in imported if module.startswith("lit_ppool.sharing")}
        assert ours <= set(order[:index]), (name, ours)
        assert not any(module.startswith(("lit_ppool.cli", "lit_ppool.compare")) for module in imported), name

def test_save_keeps_the_random_state_and_refuses_non_smp_models(tmp_path):
    model = _unet()
    state = torch.random.get_rng_state()
    save_pretrained(model, tmp_path)
    assert torch.equal(torch.random.get_rng_state(), state)
    with pytest.raises(ValueError, match="Expected argument `model` to be a segmentation_models_pytorch model"):
        save_pretrained(torch.nn.Sequential(PPool2d(2)), tmp_path)
    model.encoder.conv1 = torch.nn.Conv2d(3, 64, 3, bias=False)
    with pytest.raises(ValueError, match=r"1 that differ \(encoder.conv1.weight\)"):
        save_pretrained(model, tmp_path)
    model.encoder.conv1 = torch.nn.Identity()
    with pytest.raises(ValueError, match="'encoder.conv1': Identity"):
        save_pretrained(model, tmp_path)


# --- bad input ---------------------------------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path):
    model = _unet()
    swap_pooling(model, "p", num_channels="auto", example_input=X)
    return save_pretrained(model, tmp_path / "saved")


def _edit_config(folder, edit):
    path = folder / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))


def test_not_a_saved_model(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    cases = [(tmp_path / "empty", "without config.json"), (tmp_path / "file.txt", "file.txt"), (tmp_path / "no" / "such", "no such folder")]
    for source, expected in cases:
        with pytest.raises(NotASavedModelError, match=expected) as excinfo:
            from_pretrained(source)
        assert _one_line(excinfo) and isinstance(excinfo.value, FileNotFoundError)
    (tmp_path / "empty" / "config.json").write_text("{not json")
    with pytest.raises(SavedModelError, match=r"config.json to be JSON"):
        from_pretrained(tmp_path / "empty")


def test_config_from_a_newer_lit_ppool_with_an_unknown_pooling(saved):
    def newer(config):
        config["lit_ppool"]["version"] = "9.0.0"
        config["lit_ppool"]["swaps"][0]["pooling"] = "quantum"

    _edit_config(saved, newer)
    with pytest.raises(SavedModelError) as excinfo:
        from_pretrained(saved)
    message = str(excinfo.value)
    assert _one_line(excinfo) and isinstance(excinfo.value, ValueError)
    assert all(part in message for part in (str(saved / "config.json"), "'quantum'", "9.0.0", "Upgrade lit_ppool", "softpool"))
    _edit_config(saved, lambda config: config["lit_ppool"].update(format=3))
    with pytest.raises(SavedModelError, match="format <= 2, but got 3"):
        from_pretrained(saved)
    _edit_config(saved, lambda config: config["lit_ppool"].update(format=2, model_class="Unet3000"))
    with pytest.raises(SavedModelError, match="Expected `model_class` in .* to be an smp architecture, but got 'Unet3000'"):
        from_pretrained(saved)


def test_weights_that_do_not_match_the_recorded_swap(saved):
    weights = load_file(saved / "model.safetensors")
    save_file({k: v for k, v in weights.items() if "alpha_raw" not in k}, saved / "model.safetensors")
    with pytest.raises(SavedModelError, match=r"1 missing keys \(encoder.maxpool.alpha_raw\)") as excinfo:
        from_pretrained(saved)
    assert _one_line(excinfo) and str(saved / "model.safetensors") in str(excinfo.value)
    save_file(weights, saved / "model.safetensors")
    _edit_config(saved, lambda config: config["lit_ppool"]["swaps"][0]["options"].update(num_channels=8))
    with pytest.raises(SavedModelError, match=r"shape mismatches \(encoder.maxpool.alpha_raw \(64,\) != \(8,\)\)"):
        from_pretrained(saved)
    _edit_config(saved, lambda config: config["lit_ppool"]["swaps"][0].update(name="encoder.nothing_here"))
    with pytest.raises(SavedModelError, match="to name a module of the Unet"):
        from_pretrained(saved)


# --- Hub repo ids: the cache and offline mode --------------------------------------------------------------------


def test_hub_id_offline_and_not_cached_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(NotASavedModelError, match="'lit-ppool-tests/no-such-model'.*HF_HUB_OFFLINE=1.*hf download") as excinfo:
        from_pretrained("lit-ppool-tests/no-such-model")
    assert _one_line(excinfo)


def test_hub_id_offline_loads_from_the_cache(monkeypatch, tmp_path, saved):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--lit-ppool-tests--tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for path in saved.iterdir():
        (snapshot / path.name).write_bytes(path.read_bytes())
    loaded = from_pretrained("lit-ppool-tests/tiny")
    _assert_same_model(loaded, from_pretrained(saved))


# --- lit-ppool export ---------------------------------------------------------------------------------------------

TINY = [*TINY_FIT, "--trainer.max_steps=2"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A 2-step `lit-ppool fit` of the quickstart, then `lit-ppool test`: (checkpoint, the fitted model)."""
    from lit_ppool.cli import run_cli

    root = tmp_path_factory.mktemp("run")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("WANDB_MODE", "offline")
        cli = run_cli(["fit", *TINY])
        run_cli(["test", *TINY, "--ckpt_path=last"])
    ckpt = root / "lightning_logs" / "quickstart" / "version_0" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file() and (ckpt.parents[1] / "alpha.png").is_file() and (ckpt.parents[1] / "test-last.json").is_file()
    return ckpt, cli.model.model.eval()


def test_export_hub_from_a_checkpoint(trained_run, tmp_path, capsys):
    from lit_ppool.cli import main

    ckpt, model = trained_run
    assert main(["export", "--ckpt_path", str(ckpt), "--output", str(tmp_path / "out")]) == 0
    assert "lit_ppool.from_pretrained" in capsys.readouterr().out
    _assert_same_model(from_pretrained(tmp_path / "out"), model)
    card = (tmp_path / "out" / "README.md").read_text()
    alpha = f"{model.encoder.maxpool.alpha.item():.4f}"
    for part in ("# Unet (resnet18)", "| encoder | resnet18 |", f"| `encoder.maxpool` | p | PPool2d | kernel 3, stride 2, padding 1 | {alpha} |",
                 "| test/mIoU |", "| val/mIoU |", "## Training configuration", "class_path: lit_ppool.SyntheticDetailDataModule", "](alpha.png)", "last.ckpt"):
        assert part in card
    assert (tmp_path / "out" / "alpha.png").is_file()


def test_export_bake_reports_what_it_kept(trained_run, tmp_path, capsys):
    from lit_ppool.cli import main

    ckpt, model = trained_run
    assert main(["export", "--ckpt_path", str(ckpt), "--output", str(tmp_path), "--bake", "--example_size", "32", "32"]) == 0
    assert "kept encoder.maxpool: alpha = " in capsys.readouterr().out  # two steps leave alpha near 1: no limit
    assert "## Baked pooling" in (tmp_path / "README.md").read_text()
    _assert_same_model(from_pretrained(tmp_path), model)


def test_export_onnx_from_a_checkpoint(trained_run, tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    from lit_ppool.cli import main

    ckpt, _ = trained_run
    assert main(["export", "--ckpt_path", str(ckpt), "--output", str(tmp_path), "--format", "onnx", "--opset", "18", "--example_size", "32", "32"]) == 0
    out = capsys.readouterr().out
    assert "onnx.checker passed" in out and ("onnxruntime is not installed" in out or "max abs difference" in out)
    proto = onnx.load(str(tmp_path / "model.onnx"))
    onnx.checker.check_model(proto)
    assert proto.opset_import[0].version == 18
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    card = (tmp_path / "README.md").read_text()
    assert "opset 18" in card and "dynamic axes" in card and "| `encoder.maxpool` | p |" in card


def _checkpoint_variant(ckpt, folder, variant):
    """A copy of the trained checkpoint with alpha set for ``variant``, in a run folder of its own."""
    checkpoint = torch.load(ckpt, weights_only=True)
    key = "model.encoder.maxpool.alpha_raw"
    if variant == "per-channel alpha":  # every channel its own alpha, average pooling (0) included
        checkpoint["hyper_parameters"]["pooling_kwargs"] = {"num_channels": "auto"}
        checkpoint["state_dict"][key] = torch.linspace(0.0, 8.0, 64)
    elif variant == "baked":  # alpha 0: --bake makes it average pooling (count_include_pad=False, padding 1)
        checkpoint["state_dict"][key] = torch.zeros(1)
    else:
        checkpoint["state_dict"][key] = torch.full((1,), 3.5)
    path = folder / "checkpoints" / "variant.ckpt"
    path.parent.mkdir(parents=True)
    torch.save(checkpoint, path)
    return path


@pytest.mark.parametrize("variant", ["per-layer alpha", "per-channel alpha", "baked"])
def test_exported_onnx_matches_torch_at_the_traced_size_and_two_others(variant, trained_run, tmp_path, capsys):
    import onnxruntime

    from lit_ppool import PPoolSegmentationModule
    from lit_ppool.cli import main

    ckpt = _checkpoint_variant(trained_run[0], tmp_path / "run", variant)
    args = ["export", "--ckpt_path", str(ckpt), "--output", str(tmp_path / "onnx"), "--format", "onnx", "--example_size", "64", "64"]
    assert main([*args, "--bake"] if variant == "baked" else args) == 0
    assert "onnx.checker passed; onnxruntime" in capsys.readouterr().out
    model = PPoolSegmentationModule.load_from_checkpoint(ckpt, map_location="cpu").model.eval()
    if variant == "baked":
        assert type(bake_pooling(model, torch.rand(1, 3, 64, 64))[0].new) is AveragePool2d
    else:
        assert isinstance(model.encoder.maxpool, PPool2d) and model.encoder.maxpool.alpha.numel() == (
            64 if variant == "per-channel alpha" else 1)
    session = onnxruntime.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    torch.manual_seed(0)
    for shape in [(1, 3, 64, 64), (2, 3, 96, 64), (1, 3, 128, 160)]:  # the traced size, then other batch, height, width
        x = torch.rand(shape)
        (logits,) = session.run(None, {"input": x.numpy()})
        with torch.no_grad():
            expected = model(x)
        assert logits.shape == tuple(expected.shape)
        torch.testing.assert_close(torch.from_numpy(logits), expected, atol=1e-4, rtol=1e-4)


def test_export_errors_are_one_line(tmp_path, capsys):
    from lit_ppool.cli import main

    assert main(["export", "--ckpt_path", str(tmp_path / "missing.ckpt"), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "missing.ckpt' does not exist" in err and err.count("\n") == 1
    (tmp_path / "bad.ckpt").write_text("not a checkpoint")
    assert main(["export", "--ckpt_path", str(tmp_path / "bad.ckpt"), "--output", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith("lit-ppool export: error: Expected --ckpt_path")
