"""A user's own folder through the ``lit-ppool`` console script, as docs/own-data.md shows it:
one data block layered on a config, then ``fit``, ``test`` and ``compare``; and the CrackForest config."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers.folders import crackforest_clone
from helpers.tiny import CONFIGS

TINY_STEPS = ["--trainer.max_steps=2", "--trainer.limit_train_batches=2", "--trainer.check_val_every_n_epoch=1", "--trainer.limit_val_batches=1",
              "--trainer.limit_test_batches=2", "--trainer.enable_progress_bar=false",
              "--data.init_args.batch_size=2", "--data.init_args.eval_batch_size=2"]  # fmt: skip
"""Two training steps of ``configs/crackforest.yaml``, whatever its data."""

USER_DATA = """\
class_path: lit_ppool.FolderDataModule
init_args:
  root: my_cracks                 # images/ and masks/ with the same file stems
  classes: [background, crack]
  binary: true                    # masks of 0 (background) and 255 (crack)
  crop_size: [32, 32]
  base_size: [40, 48]
"""


def lit_ppool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The ``lit-ppool`` console script of this environment, in a fresh process."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "WANDB_MODE": "offline", "MPLBACKEND": "Agg", "PATH": path}
    return subprocess.run(["lit-ppool", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def write_user_folder(root: Path, count: int = 10) -> None:
    """Photos with a dark 1-2 px line, and 0/255 masks of it, as most crack sets ship them."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        image = rng.integers(120, 200, (40, 48, 3), dtype=np.uint8)
        mask = np.zeros((40, 48), dtype=np.uint8)
        mask[5 + 3 * i : 7 + 3 * i, :] = 255
        image[mask > 0] = 30
        Image.fromarray(image).save(root / "images" / f"road_{i:02d}.jpg")
        Image.fromarray(mask).save(root / "masks" / f"road_{i:02d}.png")


def test_own_folder_fit_test_and_compare_from_the_command_line(tmp_path):
    write_user_folder(tmp_path / "my_cracks")
    (tmp_path / "my_data.yaml").write_text(USER_DATA)
    base = ["--config", str(CONFIGS / "crackforest.yaml"), "--data", "my_data.yaml", *TINY_STEPS]

    fit = lit_ppool("fit", *base, cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr[-3000:]
    test = lit_ppool("test", *base, "--ckpt_path", "last", cwd=tmp_path)
    assert test.returncode == 0, test.stderr[-3000:]
    (record_path,) = (tmp_path / "lightning_logs" / "crackforest").glob("version_0/test-last.json")
    metrics = json.loads(record_path.read_text())["metrics"]
    for key in ("test/IoU/crack", "test/F1/crack", "test/precision/crack", "test/recall/crack", "test/boundary_IoU/crack"):
        assert key in metrics and 0.0 <= metrics[key] <= 1.0

    compare = lit_ppool("compare", *base[:4], "--poolings", "max,p", "--seeds", "1", "--output", "cmp", *TINY_STEPS, cwd=tmp_path)
    assert compare.returncode == 0, compare.stderr[-3000:]
    markdown = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| max | 1 |" in markdown and "| p | 1 |" in markdown
    assert "background | crack" in markdown and "F1" in markdown


def test_a_bad_folder_is_one_error_line_before_any_model_is_built(tmp_path):
    write_user_folder(tmp_path / "my_cracks")
    (tmp_path / "my_cracks" / "masks" / "road_03.png").unlink()
    (tmp_path / "my_data.yaml").write_text(USER_DATA)
    result = lit_ppool("fit", "--config", str(CONFIGS / "crackforest.yaml"), "--data", "my_data.yaml", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "1 of 10 images have no mask" in result.stderr and "'road_03.jpg'" in result.stderr
    assert "swapped" not in result.stdout + result.stderr  # the model (whose surgery logs what it swapped) was never built
    assert not (tmp_path / "lightning_logs").exists()


def test_the_crackforest_config_runs_on_a_tiny_clone(tmp_path):
    root = crackforest_clone(tmp_path / "CrackForest", size=(32, 48))
    args = ["--config", str(CONFIGS / "crackforest.yaml"), f"--data.init_args.root={root}"]
    fit = lit_ppool("fit", *args, *TINY_STEPS, cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr[-3000:]
    metrics = (tmp_path / "lightning_logs" / "crackforest" / "version_0" / "metrics.csv").read_text()
    assert "val/IoU/crack" in metrics and "val/F1/crack" in metrics and "alpha/" in metrics


def test_compare_finds_a_missing_test_split_before_any_run(tmp_path, monkeypatch, capsys):
    from lit_ppool.cli import main

    write_user_folder(tmp_path / "my_cracks")
    (tmp_path / "my_data.yaml").write_text(USER_DATA + "  split: [0.8, 0.2, 0.0]\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["compare", "--config", str(CONFIGS / "crackforest.yaml"), "--data", "my_data.yaml", "--seeds", "1", "--output", "cmp"])
    assert info.value.code == 2 and "Expected a test split" in capsys.readouterr().err
    assert not (tmp_path / "cmp").exists()


def test_crackforest_takes_no_folder_argument_it_would_ignore(capsys):
    from lit_ppool.cli import main

    with pytest.raises(SystemExit):
        main(["fit", "--config", str(CONFIGS / "crackforest.yaml"), "--print_config"])
    data = capsys.readouterr().out.split("\ndata:", 1)[1]
    assert "check_files" in data and not any(key in data for key in ("split_seed", "binary", "palette", "value_map"))
