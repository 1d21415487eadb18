"""Paths of the repository and the tiny model and runs the tests train (32 px images, a few steps)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
QUICKSTART = str(CONFIGS / "quickstart.yaml")
TESTS = ROOT / "tests"
HELPERS = TESTS / "helpers"
"""The scripts that tests run in a subprocess, and the modules a subprocess imports by name."""

TINY_MODEL = {
    "arch": "Unet",
    "encoder_name": "resnet18",
    "encoder_weights": None,
    "num_classes": 5,
    "model_kwargs": {"decoder_channels": [32, 16, 16, 8, 8]},
}
"""Keyword arguments of a small :class:`~lit_ppool.PPoolSegmentationModule` (no weights to download)."""

TINY_DATA = [
    "--model.model_kwargs={'decoder_channels': [32, 16, 16, 8, 8]}",
    "--data.init_args.image_size=32", "--data.init_args.train_size=8", "--data.init_args.val_size=4",
    "--data.init_args.test_size=4", "--data.init_args.batch_size=4", "--data.init_args.eval_batch_size=2",
]  # fmt: skip
"""Command-line arguments of the quickstart's model and data, made tiny."""

TINY_FIT = [
    "--config", QUICKSTART, "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
    "--trainer.enable_progress_bar=false", *TINY_DATA,
]  # fmt: skip
"""A ``lit-ppool`` command line: one epoch of two steps of the quickstart, tiny."""

TINY_RUN = [
    "--trainer.max_steps=2", "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false", *TINY_DATA,
]  # fmt: skip
"""The overrides that make each run of a ``lit-ppool compare`` tiny: two steps, one validation batch."""
