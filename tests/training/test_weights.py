"""Encoder weights: offline failure that is fast and says what to do, the local cache, local files, checkpoints."""

import ast
import json
import socket
import time
from pathlib import Path

import huggingface_hub
import lightning as L
import pytest
import segmentation_models_pytorch as smp
import timm
import torch
from safetensors.torch import save_file

from lit_ppool import PPoolSegmentationModule, SyntheticDetailDataModule
from lit_ppool.cli import main, run_cli
from lit_ppool.training.errors import ConfigError
from lit_ppool.training.weights import WeightsUnavailableError, create_model, load_encoder_weights, skip_pretrained_weights

from helpers.tiny import QUICKSTART, ROOT

TINY = {"arch": "Unet", "encoder_name": "resnet18", "num_classes": 5, "model_kwargs": {"decoder_channels": [32, 16, 16, 8, 8]}}
CLI_TINY = [
    "--config", QUICKSTART,
    "--trainer.max_epochs=1", "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1",
    "--trainer.enable_progress_bar=false", "--model.model_kwargs={'decoder_channels': [32, 16, 16, 8, 8]}",
    "--data.init_args.image_size=32", "--data.init_args.train_size=4", "--data.init_args.val_size=2",
    "--data.init_args.test_size=2", "--data.init_args.batch_size=2", "--data.init_args.eval_batch_size=2",
]  # fmt: skip
SMP_REPO = smp.encoders.encoders["resnet18"]["pretrained_settings"]["imagenet"]


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty Hugging Face and torch hub cache in tmp_path, offline (as on a cluster node without network)."""
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    # huggingface_hub reads its environment at import: point the imported constants there too
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


@pytest.fixture
def unreachable_hub(hub, monkeypatch):
    """Online mode, but the Hub endpoint is a closed local port: every request fails at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    return hub


def cache_file(cache: Path, repo_id: str, revision: str, filename: str, content: bytes | dict, main_ref: bool = False) -> Path:
    """Write a file into the Hugging Face cache layout (``models--org--name/snapshots/<revision>/``)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    path = repo / "snapshots" / revision / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, dict):
        save_file(content, str(path))
    else:
        path.write_bytes(content)
    if main_ref:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(revision)
    return path


def random_encoder_state(name="resnet18", seed=1):
    torch.manual_seed(seed)
    return {k: v.contiguous() for k, v in smp.encoders.get_encoder(name, weights=None).state_dict().items()}


# --- pretrained weights without network ---------------------------------------------------------


@pytest.mark.parametrize("encoder_name", ["resnet18", "vgg11", "tu-resnet18"])
def test_offline_pretrained_weights_fail_at_once_saying_how_to_get_them(hub, encoder_name):
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as info:
        PPoolSegmentationModule(**{**TINY, "encoder_name": encoder_name}, encoder_weights="imagenet")
    assert time.perf_counter() - start < 5
    message = str(info.value)
    assert isinstance(info.value, ConfigError) and isinstance(info.value, OSError)
    assert "HF_HUB_OFFLINE is set" in message and str(hub) in message  # why, and which cache was looked at
    assert "python -c" in message and "--model.encoder_weights=" in message and "encoder_weights=None" in message
    if encoder_name.startswith("tu-"):
        assert "timm.create_model('resnet18', pretrained=True)" in message and "timm--resnet18.a1_in1k" in message
    else:
        assert f"smp-hub/{encoder_name}.imagenet" in message
        assert f"smp.encoders.get_encoder('{encoder_name}', weights='imagenet')" in message


def test_deprecated_timm_encoder_names_take_smps_timm_model(hub):
    # smp maps timm-mobilenetv3_* to tu-tf_mobilenetv3_*: the weights asked for are that model's
    with pytest.raises(WeightsUnavailableError) as info:
        create_model("Unet", "timm-mobilenetv3_small_100", "imagenet", 3)
    assert "timm.create_model('tf_mobilenetv3_small_100', pretrained=True)" in str(info.value)


def test_unreachable_hub_fails_after_one_request_not_after_retries(unreachable_hub):
    # huggingface_hub alone retries with back-off (1+2+4+8+8 s) before giving up
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError, match="cannot be reached") as info:
        create_model("Unet", "resnet18", "imagenet", 3)
    assert time.perf_counter() - start < 5
    assert "127.0.0.1" in str(info.value) and "HF_HUB_OFFLINE" not in str(info.value)


def test_cached_smp_weights_load_offline(hub):
    state = random_encoder_state()
    for filename, content in (("config.json", json.dumps({"mean": [0.5] * 3}).encode()), ("model.safetensors", state)):
        cache_file(hub, SMP_REPO["repo_id"], SMP_REPO["revision"], filename, content)
    module = PPoolSegmentationModule(**TINY, encoder_weights="imagenet")  # offline: only the cache can serve it
    for key, value in state.items():
        assert torch.equal(module.model.encoder.state_dict()[key], value), key
    assert module.hparams.encoder_weights == "imagenet"


def test_cached_timm_weights_load_offline(hub):
    torch.manual_seed(2)
    state = {k: v.contiguous() for k, v in timm.create_model("resnet18").state_dict().items()}
    cache_file(hub, "timm/resnet18.a1_in1k", "a" * 40, "model.safetensors", state, main_ref=True)
    model = create_model("Unet", "tu-resnet18", "imagenet", 3, decoder_channels=[32, 16, 16, 8, 8])
    assert torch.equal(model.encoder.model.conv1.weight, state["conv1.weight"])
    assert torch.equal(model.encoder.model.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])


# --- local weight files -----------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_weights_file_is_loaded_into_the_encoder(tmp_path, hub, suffix):
    state = random_encoder_state()
    path = tmp_path / f"encoder{suffix}"
    torch.save(state, path) if suffix == ".pth" else save_file(state, str(path))
    module = PPoolSegmentationModule(**TINY, encoder_weights=str(path))
    for key, value in state.items():
        assert torch.equal(module.model.encoder.state_dict()[key], value), key
    assert module.hparams.encoder_weights == str(path)


def test_local_weights_file_accepts_model_checkpoints_heads_and_adapts_in_channels(tmp_path):
    state = random_encoder_state()
    source = PPoolSegmentationModule(**TINY, encoder_weights=None)
    source.model.encoder.load_state_dict(dict(state), strict=False)  # all but the P-pooling alpha
    torch.save({"state_dict": source.state_dict(), "epoch": 3}, tmp_path / "run.ckpt")  # keys model.encoder.*
    model = create_model("Unet", "resnet18", str(tmp_path / "run.ckpt"), 5, decoder_channels=[32, 16, 16, 8, 8])
    assert torch.equal(model.encoder.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])

    # a torchvision-style file with its classifier, into a 1- and a 4-channel encoder: smp's own adaptation
    torch.save({**state, "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}, tmp_path / "tv.pth")
    for channels in (1, 4):
        encoder = smp.encoders.get_encoder("resnet18", in_channels=channels, weights=None)
        load_encoder_weights(encoder, tmp_path / "tv.pth", "resnet18")
        reference = smp.encoders.get_encoder("resnet18", weights=None)
        reference.load_state_dict(dict(state))
        reference.set_in_channels(channels, pretrained=True)
        assert encoder.conv1.weight.shape[1] == channels
        assert torch.allclose(encoder.conv1.weight, reference.conv1.weight)


class _NotAWeight:
    pass


def test_local_weights_file_errors_name_the_file_and_the_problem(tmp_path):
    with pytest.raises(ConfigError, match=r"'.*missing\.pth', which does not exist"):
        create_model("Unet", "resnet18", str(tmp_path / "missing.pth"), 3)
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match=r"garbage\.pth' could not be read"):
        create_model("Unet", "resnet18", str(tmp_path / "garbage.pth"), 3)
    torch.save({"conv1.weight": _NotAWeight()}, tmp_path / "pickled.pth")
    with pytest.raises(ConfigError, match=r"weights_only=True\)`, but '.*pickled\.pth' holds other objects"):
        create_model("Unet", "resnet18", str(tmp_path / "pickled.pth"), 3)
    state = random_encoder_state()
    torch.save({("features.0.weight" if key == "conv1.weight" else key): value for key, value in state.items()}, tmp_path / "other.pth")
    with pytest.raises(ConfigError, match=r"state_dict of the 'resnet18' encoder, but '.*other\.pth' does not match") as info:
        create_model("Unet", "resnet18", str(tmp_path / "other.pth"), 3)
    assert "1 missing keys, e.g. ['conv1.weight']" in str(info.value) and "1 unexpected keys, e.g. ['features.0.weight']" in str(info.value)
    state["layer1.0.conv1.weight"] = state["layer1.0.conv1.weight"][:32]
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(ConfigError, match=r"1 with another shape, e\.g\. \['layer1\.0\.conv1\.weight: \(32, 64, 3, 3\) in the file"):
        create_model("Unet", "resnet18", str(tmp_path / "shape.pth"), 3)


@pytest.mark.parametrize(
    ("encoder_name", "weights", "listed"),
    [("resnet18", "imagnet", "['imagenet', 'ssl', 'swsl']"), ("vgg16", "ssl", "['imagenet']"), ("tu-resnet18", "ssl", "'tu-<model>.<tag>'")],
)
def test_unknown_weights_name_lists_the_choices(encoder_name, weights, listed):
    with pytest.raises(ConfigError, match="Expected argument `encoder_weights`") as info:
        PPoolSegmentationModule(**{**TINY, "encoder_name": encoder_name}, encoder_weights=weights)
    assert listed in str(info.value) and "path of a local weights file" in str(info.value)


# --- checkpoints hold every weight: loading them downloads nothing --------------------------------


@pytest.fixture(scope="module")
def imagenet_checkpoint(tmp_path_factory):
    """A checkpoint of a one-step fit whose hyperparameters say encoder_weights="imagenet"."""
    tmp_path = tmp_path_factory.mktemp("checkpoint")
    module = PPoolSegmentationModule(**TINY, encoder_weights=None)
    data = SyntheticDetailDataModule(image_size=32, train_size=2, batch_size=2, val_size=2, eval_batch_size=2)
    trainer = L.Trainer(accelerator="cpu", max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(module, data)
    path = tmp_path / "imagenet.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["hyper_parameters"]["encoder_weights"] = "imagenet"
    torch.save(checkpoint, path)
    return path, module


def test_load_from_checkpoint_downloads_nothing(hub, imagenet_checkpoint):
    path, trained = imagenet_checkpoint
    restored = PPoolSegmentationModule.load_from_checkpoint(path)  # offline, empty cache
    assert restored.hparams.encoder_weights == "imagenet"
    for (key, value), expected in zip(restored.state_dict().items(), trained.state_dict().values()):
        assert torch.equal(value, expected), key
    # strict=False may leave weights to the encoder_weights: then they are needed, and missing here
    with pytest.raises(WeightsUnavailableError):
        PPoolSegmentationModule.load_from_checkpoint(path, strict=False)


def test_load_from_checkpoint_is_weights_only_by_default(tmp_path, imagenet_checkpoint):
    path, _ = imagenet_checkpoint
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["something"] = _NotAWeight()
    torch.save(checkpoint, tmp_path / "pickled.ckpt")
    with pytest.raises(Exception, match="weights_only"):
        PPoolSegmentationModule.load_from_checkpoint(tmp_path / "pickled.ckpt")


def test_cli_test_with_a_checkpoint_downloads_nothing_and_fit_fails_in_one_line(hub, imagenet_checkpoint, tmp_path, monkeypatch, capsys):
    path, _ = imagenet_checkpoint
    monkeypatch.chdir(tmp_path)
    cli = run_cli(["test", *CLI_TINY, "--model.encoder_weights=imagenet", f"--ckpt_path={path}"])
    assert "test/mIoU" in cli.trainer.callback_metrics
    with pytest.raises(SystemExit) as info:
        main(["fit", *CLI_TINY, "--model.encoder_weights=imagenet"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "smp-hub/resnet18.imagenet" in err and "HF_HUB_OFFLINE is set" in err and "Traceback" not in err
    assert not (tmp_path / "checkpoints").exists()


OFFLINE_CONFIG = """\
seed_everything: 0
trainer:
  accelerator: cpu
  max_epochs: 1
  limit_train_batches: 2
  limit_val_batches: 1
  limit_test_batches: 1
  limit_predict_batches: 1
  enable_progress_bar: false
  enable_model_summary: false
  logger:
    - class_path: lightning.pytorch.loggers.CSVLogger
      init_args: {save_dir: runs, name: offline}
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {save_last: true}
model:
  arch: Unet
  encoder_name: resnet18
  encoder_weights: imagenet
  model_kwargs: {decoder_channels: [32, 16, 16, 8, 8]}
data:
  class_path: lit_ppool.SyntheticDetailDataModule
  init_args: {image_size: 32, train_size: 4, val_size: 2, test_size: 2, batch_size: 2, eval_batch_size: 2}
"""


def test_every_ckpt_path_command_runs_offline_with_an_empty_cache(hub, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "offline.yaml").write_text(OFFLINE_CONFIG)
    config = ["--config", str(tmp_path / "offline.yaml")]
    run_cli(["fit", *config, "--model.encoder_weights=null"])
    last = tmp_path / "runs" / "offline" / "version_0" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    checkpoint["hyper_parameters"]["encoder_weights"] = "imagenet"  # as a run from the ImageNet weights would say
    torch.save(checkpoint, last)
    trained = checkpoint["state_dict"]["model.encoder.conv1.weight"]

    for stage in ("validate", "test"):  # offline, empty cache: nothing but the checkpoint to build from
        cli = run_cli([stage, *config, "--ckpt_path", "last"])
        assert torch.equal(cli.model.model.encoder.conv1.weight, trained)
        assert (last.parent.parent / f"{stage}-last.json").is_file()
    run_cli(["predict", *config, f"--ckpt_path={last}"])
    assert len(list((last.parent.parent / "predictions" / "last").glob("*.png"))) == 2
    resumed = run_cli(["fit", *config, "--ckpt_path", "last", "--trainer.max_epochs=2"])
    assert resumed.trainer.global_step == 4  # two steps from the checkpoint, two more
    assert main(["export", "--ckpt_path", str(last), "--output", str(tmp_path / "exported")]) == 0
    assert (tmp_path / "exported" / "model.safetensors").is_file()

    # no run to resume: the pretrained weights are needed after all, and missing here
    capsys.readouterr()
    with pytest.raises(SystemExit) as info, pytest.warns(UserWarning, match="found no last.ckpt under 'runs/fresh'"):
        main(["fit", *config, "--ckpt_path", "last", "--trainer.logger.init_args.name=fresh"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "smp-hub/resnet18.imagenet" in err and "HF_HUB_OFFLINE is set" in err and "Traceback" not in err


def test_pretrained_weights_loaded_later_give_the_model_built_with_them(hub):
    state = random_encoder_state()
    for filename, content in (("config.json", json.dumps({"mean": [0.5] * 3}).encode()), ("model.safetensors", state)):
        cache_file(hub, SMP_REPO["repo_id"], SMP_REPO["revision"], filename, content)
    model = {**TINY, "encoder_weights": "imagenet", "pooling": "gated"}  # gated: the swap draws random numbers too
    torch.manual_seed(0)
    built_with = PPoolSegmentationModule(**model)
    random_after_build = torch.rand(3)
    torch.manual_seed(0)
    with skip_pretrained_weights():
        built_without = PPoolSegmentationModule(**model)
    assert not torch.equal(built_without.model.encoder.conv1.weight, state["conv1.weight"])
    loaded = built_without.load_pretrained_weights()
    assert sorted(loaded) == sorted(state)
    assert torch.equal(torch.rand(3), random_after_build)  # torch's random state as if built once
    assert built_with.state_dict().keys() == built_without.state_dict().keys()
    for key, value in built_with.state_dict().items():
        assert torch.equal(built_without.state_dict()[key], value), key
    assert PPoolSegmentationModule(**{**model, "encoder_weights": None}).load_pretrained_weights() == []


# --- weights_only everywhere ------------------------------------------------------------------------


def test_every_torch_load_in_the_package_is_weights_only():
    package = ROOT / "lit_ppool"
    calls = []
    for source in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            func = node.func if isinstance(node, ast.Call) else None
            if isinstance(func, ast.Attribute) and func.attr == "load" and isinstance(func.value, ast.Name) and func.value.id == "torch":
                weights_only = [kw.value for kw in node.keywords if kw.arg == "weights_only"]
                ok = len(weights_only) == 1 and isinstance(weights_only[0], ast.Constant) and weights_only[0].value is True
                calls.append((f"{source.relative_to(package)}:{node.lineno}", ok))
    assert calls, "the package loads weight files with torch.load (training/weights.py)"
    assert [where for where, ok in calls if not ok] == []
