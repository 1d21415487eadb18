"""What a user meets in the first hour: runs never overwrite each other, the alpha group is kept,
errors name the real problem, nothing is silently a no-op, and the command talks like a tool."""

import hashlib
import logging
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import segmentation_models_pytorch as smp
import torch

from lit_ppool import PPoolSegmentationModule, __version__, swap_pooling
from lit_ppool.cli import main, run_cli
from lit_ppool.kernels import cpu
from lit_ppool.surgery import NothingSwappedWarning
from lit_ppool.training.errors import ConfigError
from lit_ppool.training.lightning_cli import _quiet_known_warnings, plain_text

from helpers.tiny import CONFIGS, ROOT, TINY_FIT

TINY = [*TINY_FIT, "--trainer.limit_val_batches=1"]


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.ckpt"))}


def _exit_code_and_stderr(args, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        main(args)
    return info.value.code, capsys.readouterr().err


def _nothing_left(tmp_path: Path) -> bool:
    return not (tmp_path / "lightning_logs").exists() and not (tmp_path / "wandb").exists()


# --- 1. no run writes over another run's files ------------------------------------------------------


def test_an_ablation_overlay_and_the_base_config_write_to_different_folders(tmp_path):
    base = run_cli(["fit", *TINY])
    overlay = run_cli(["fit", *TINY, "--config", str(CONFIGS / "ablations" / "gated.yaml")])
    paths = {cli.trainer.checkpoint_callback.last_model_path for cli in (base, overlay)}
    assert len(paths) == 2 and all(Path(path).is_file() for path in paths)


def test_a_checkpoint_folder_set_by_hand_is_never_overwritten(tmp_path, capsys):
    overlay = tmp_path / "fixed_dir.yaml"
    overlay.write_text(
        "trainer:\n  callbacks:\n    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
        "      init_args: {dirpath: ckpts, save_last: true}\n"
    )
    main(["fit", *TINY, "--config", str(overlay)])
    before = _digests(tmp_path / "ckpts")
    assert "last.ckpt" in before

    code, err = _exit_code_and_stderr(["fit", *TINY, "--config", str(overlay)], capsys)
    assert code == 2 and "Traceback" not in err
    assert "ckpts" in err and "would overwrite" in err and "--ckpt_path last" in err
    assert _digests(tmp_path / "ckpts") == before
    assert sorted(p.name for p in (tmp_path / "lightning_logs" / "quickstart").iterdir()) == ["version_0"]

    # resuming that run is writing into its own folder: allowed
    cli = run_cli(["fit", *TINY, "--config", str(overlay), "--trainer.max_epochs=2", "--ckpt_path=last"])
    assert cli.trainer.current_epoch == 2 and _digests(tmp_path / "ckpts") != before


def test_ckpt_path_last_finds_nothing_before_a_fit(tmp_path, capsys):
    code, err = _exit_code_and_stderr(["test", *TINY, "--ckpt_path=last"], capsys)
    assert code == 2 and "'last'" in err and "lightning_logs/quickstart" in err and "Traceback" not in err
    assert _nothing_left(tmp_path)


# --- 2. the alpha group cannot be lost ----------------------------------------------------------


def test_optimizer_and_lr_scheduler_flags_keep_the_alpha_group(caplog):
    caplog.set_level(logging.INFO)
    cli = run_cli([
        "fit", *TINY, "--trainer.max_steps=1", "--trainer.limit_val_batches=0",
        "--optimizer=torch.optim.SGD", "--optimizer.lr=0.01", "--optimizer.weight_decay=0.1",
        "--lr_scheduler=torch.optim.lr_scheduler.StepLR", "--lr_scheduler.step_size=5",
    ])  # fmt: skip
    (optimizer,) = cli.trainer.optimizers
    assert isinstance(optimizer, torch.optim.SGD)
    model_group, alpha_group = optimizer.param_groups
    assert alpha_group["params"] == [cli.model.model.encoder.maxpool.alpha_raw]
    assert model_group["weight_decay"] == 0.1 and alpha_group["weight_decay"] == 0.0
    assert model_group["lr"] == pytest.approx(0.01) and alpha_group["lr"] == pytest.approx(0.01 * 10.0)  # alpha_lr_mult
    assert isinstance(cli.trainer.lr_scheduler_configs[0].scheduler, torch.optim.lr_scheduler.StepLR)
    assert "--optimizer is used as --model.optimizer" in caplog.text


# --- 3. errors name the real problem first ------------------------------------------------------------


@pytest.mark.parametrize("config", ["quickstart.yaml", "voc_vgg16_ppool.yaml"])
def test_a_missing_checkpoint_is_named_before_anything_is_built(config, tmp_path, capsys):
    code, err = _exit_code_and_stderr(["test", "--config", str(CONFIGS / config), "--ckpt_path=runs/nope.ckpt"], capsys)
    assert code == 2 and "Traceback" not in err
    assert "runs/nope.ckpt" in err and "does not exist" in err and "'last'" in err
    assert "weights" not in err.lower()  # not a download problem of the ImageNet weights
    assert _nothing_left(tmp_path)


def test_a_file_that_is_not_a_checkpoint_is_named(tmp_path, capsys):
    (tmp_path / "broken.ckpt").write_bytes(b"not a checkpoint")
    code, err = _exit_code_and_stderr(["test", *TINY, "--ckpt_path=broken.ckpt"], capsys)
    assert code == 2 and "broken.ckpt" in err and "not a PyTorch checkpoint" in err and "Traceback" not in err
    assert _nothing_left(tmp_path)


def test_a_bad_wandb_mode_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "bogus")
    code, err = _exit_code_and_stderr(["fit", *TINY], capsys)
    assert code == 2 and "Traceback" not in err
    (line,) = [line for line in err.splitlines() if "WANDB_MODE" in line]
    assert "'bogus'" in line and "'offline'" in line
    assert len(err.splitlines()) <= 4
    assert _nothing_left(tmp_path)


def test_a_data_root_that_does_not_exist_says_so(tmp_path, capsys):
    config = str(CONFIGS / "voc_vgg16_ppool.yaml")
    code, err = _exit_code_and_stderr(["fit", "--config", config, f"--data.init_args.root={tmp_path / 'nowhere'}"], capsys)
    assert code == 2 and "nowhere" in err and "does not exist" in err and "is missing" not in err


def test_an_unknown_encoder_gets_a_did_you_mean_not_the_whole_list():
    with pytest.raises(ConfigError) as info:
        PPoolSegmentationModule("Unet", "resnt34", None, num_classes=3)
    message = str(info.value)
    assert "Did you mean 'resnet34'" in message and "available_encoders()" in message
    assert "efficientnet-b7" not in message and len(message) < 400


# --- 4. swapping nothing is not silent ------------------------------------------------------------------


def test_a_model_without_pooling_layers_is_an_error_unless_allowed():
    with pytest.raises(ConfigError, match=r"mobilenet_v2.* strided convolutions.*allow_no_swap"):
        PPoolSegmentationModule("Unet", "mobilenet_v2", None, num_classes=3, pooling="p")
    assert PPoolSegmentationModule("Unet", "mobilenet_v2", None, num_classes=3, pooling="p", allow_no_swap=True).swapped_layers == []
    assert PPoolSegmentationModule("Unet", "mobilenet_v2", None, num_classes=3, pooling="max").swapped_layers == []


def test_swap_pooling_warns_once_when_it_swaps_nothing():
    model = smp.Unet("mobilenet_v2", encoder_weights=None, classes=2)
    with pytest.warns(NothingSwappedWarning, match="no pooling module") as record:
        assert list(swap_pooling(model, "p")) == []
    assert len(record) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", NothingSwappedWarning)
        swap_pooling(smp.Unet("resnet18", encoder_weights=None, classes=2), "p")  # swaps one: no warning


# --- 5. the CLI talks like a tool ----------------------------------------------------------------------


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"lit-ppool {__version__}"


def test_help_starts_with_what_lit_ppool_is_and_has_no_markup(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    top = capsys.readouterr().out
    assert top.splitlines()[2].startswith(f"lit-ppool {__version__}: train and evaluate smp segmentation models")
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    fit_help = capsys.readouterr().out
    assert "--model.pooling" in fit_help and ":class:" not in fit_help and "``" not in fit_help


def test_plain_text_strips_roles_and_literals():
    assert plain_text(":class:`~lit_ppool.PPool2d` and :func:`lit_ppool.p_pool2d`") == "PPool2d and lit_ppool.p_pool2d"
    assert plain_text("see :ref:`the CLI docs <lightning-cli>` for ``fit``") == "see the CLI docs for fit"


def test_predict_says_where_it_wrote(tmp_path, caplog):
    main(["fit", *TINY])
    caplog.set_level(logging.INFO)
    main(["predict", *TINY, "--ckpt_path=last"])
    folder = Path("lightning_logs/quickstart/version_0/predictions/last")
    assert f"wrote 4 palette PNG mask(s) to {folder}" in caplog.text
    assert len(list((tmp_path / folder).glob("*.png"))) == 4


def test_evaluation_logs_to_a_logger_only_when_asked(tmp_path):
    main(["fit", *TINY])
    run_cli(["validate", *TINY, "--ckpt_path=lightning_logs/quickstart/version_0/checkpoints/last.ckpt",
             "--trainer.logger=lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir=eval_logs"])  # fmt: skip
    assert list((tmp_path / "eval_logs").glob("lightning_logs/version_0/metrics.csv"))
    assert (tmp_path / "lightning_logs/quickstart/version_0/validate-last.json").is_file()


def test_a_slow_kernel_load_announces_the_build(monkeypatch, capsys):
    import time

    import torch.utils.cpp_extension

    monkeypatch.setattr(cpu, "BUILD_NOTICE_AFTER_S", 0.05)
    cpu.load_extension.cache_clear()
    try:
        monkeypatch.setattr(torch.utils.cpp_extension, "load", lambda **kwargs: time.sleep(0.3) or "built")
        assert cpu.load_extension() == "built"
        err = capsys.readouterr().err
        assert "building the fused CPU P-pooling kernel (once per machine and torch version, about a minute)" in err
        cpu.load_extension.cache_clear()
        monkeypatch.setattr(torch.utils.cpp_extension, "load", lambda **kwargs: "cached")
        assert cpu.load_extension() == "cached"
        assert "building" not in capsys.readouterr().err
    finally:
        monkeypatch.undo()
        cpu.load_extension.cache_clear()


def test_known_third_party_deprecations_are_filtered_narrowly():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _quiet_known_warnings()
        for message, category, module in [
            ("'set_vital' is deprecated, please do not call", UserWarning, "torchdata.stateful_dataloader.stateful_dataloader"),
            ("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning, "lightning.pytorch.utilities.combined_loader"),
            ("'set_vital' is deprecated, please do not call", UserWarning, "my_code"),  # elsewhere: kept
            ("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning, "my_code"),  # elsewhere: kept
            ("something else is deprecated", UserWarning, "torchdata.stateful_dataloader.stateful_dataloader"),  # kept
        ]:
            warnings.warn_explicit(message, category, "file.py", 1, module=module)
    assert [str(w.message) for w in caught] == [
        "'set_vital' is deprecated, please do not call", "`isinstance(treespec, LeafSpec)` is deprecated, use ...",
        "something else is deprecated"]  # fmt: skip


def test_lightning_pytree_deprecation_is_filtered_where_lightning_raises_it():
    from lightning.pytorch.utilities import CombinedLoader  # flattens its iterables with Lightning's pytree helper

    def leafspec_warnings(quiet: bool) -> list[str]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if quiet:
                _quiet_known_warnings()
            CombinedLoader({"a": [1, 2], "b": [3]})
        return [str(w.message) for w in caught if "LeafSpec" in str(w.message)]

    # torch 2.14 deprecates LeafSpec, so Lightning warns here unless the filter works (a later torch may not)
    assert leafspec_warnings(quiet=True) == []


LITLOGGER_TIP = ("💡 Tip: For seamless cloud logging and experiment tracking, try installing "
                 "[litlogger](https://pypi.org/project/litlogger/) to enable LitLogger, ...")
LITMODELS_TIP = ("💡 Tip: For seamless cloud uploads and versioning, try installing "
                 "[litmodels](https://pypi.org/project/litmodels/) to enable LitModelCheckpoint, ...")


def _log_record(message: str, module: str) -> logging.LogRecord:
    return logging.LogRecord("lightning.pytorch.utilities.rank_zero", logging.INFO, f"/site-packages/{module}.py", 90,
                             message, None, None)


def test_known_third_party_advertising_is_filtered_narrowly():
    _quiet_known_warnings()
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    records = [
        _log_record(LITLOGGER_TIP, "logger_connector"),
        _log_record(LITMODELS_TIP, "callback_connector"),
        _log_record(LITLOGGER_TIP, "my_code"),  # elsewhere: kept
        _log_record("GPU available: False, used: False", "logger_connector"),  # kept
    ]
    assert [record.getMessage() for record in records if logger.filter(record)] == [
        LITLOGGER_TIP, "GPU available: False, used: False"]


def test_lightning_prints_no_advertising_after_the_cli_set_up(tmp_path):
    import lightning as L
    from lightning.pytorch.demos.boring_classes import BoringModel
    from lightning.pytorch.loggers import CSVLogger

    _quiet_known_warnings()
    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append((record.module, record.getMessage()))
    lightning_logger = logging.getLogger("lightning.pytorch")  # where Lightning's rank-zero messages are printed
    lightning_logger.addHandler(handler)
    try:
        trainer = L.Trainer(logger=CSVLogger(tmp_path), default_root_dir=tmp_path, max_epochs=1, limit_train_batches=1,
                            limit_val_batches=0, enable_model_summary=False, enable_progress_bar=False)
        trainer.fit(BoringModel())  # the default ModelCheckpoint: Lightning's litmodels tip
    finally:
        lightning_logger.removeHandler(handler)
    assert any(message.startswith("GPU available") for _, message in seen)  # the other lines still come through
    assert ("fit_loop", "`Trainer.fit` stopped: `max_epochs=1` reached.") in seen
    assert not [message for _, message in seen if "Tip:" in message or "litlogger" in message or "litmodels" in message]


def test_console_script_version_in_a_fresh_process(tmp_path):
    result = subprocess.run([sys.executable, "-m", "lit_ppool.cli", "--version"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == f"lit-ppool {__version__}"


# --- 6. a license ------------------------------------------------------------------------------------


def test_license_file_matches_pyproject():
    assert 'license = "Apache-2.0"' in (ROOT / "pyproject.toml").read_text()
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
