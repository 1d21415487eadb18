"""The pooling benchmark: its synthetic textures data and its config."""


import torch

from lit_ppool import PPool2d, SyntheticTexturesDataModule
from lit_ppool.cli import run_cli
from lit_ppool.training.data.synthetic import TEXTURE_CLASSES, SyntheticTexturesDataset

from helpers.tiny import CONFIGS

CONFIG = str(CONFIGS / "benchmark.yaml")


def test_samples_are_deterministic_in_range_and_hold_every_class():
    dataset = SyntheticTexturesDataset(16, 64, "train", seed=3)
    image, mask = dataset.generate(5)
    again, mask_again = SyntheticTexturesDataset(16, 64, "train", seed=3).generate(5)
    assert torch.equal(image, again) and torch.equal(mask, mask_again)
    assert image.shape == (3, 64, 64) and 0 <= image.min() and image.max() <= 1
    seen = set().union(*(set(dataset.generate(i)[1].unique().tolist()) for i in range(16)))
    assert seen == set(range(len(TEXTURE_CLASSES)))
    assert not torch.equal(SyntheticTexturesDataset(1, 64, "test", seed=3).generate(0)[1], dataset.generate(0)[1])


def test_textures_differ_from_the_background_only_in_detail():
    # each textured region keeps the local mean colour: only its fine structure tells the class
    dataset = SyntheticTexturesDataset(8, 64, "val", seed=0)
    for index in range(8):
        image, mask = dataset.generate(index)
        for label in (3, 4):  # the zero-mean textures
            region = mask == label
            if region.sum() > 50:
                inside = image[:, region].mean()
                ring = torch.nn.functional.max_pool2d(region[None, None].float(), 9, 1, 4)[0, 0].bool() & ~region
                assert abs(float(inside - image[:, ring & (mask == 0)].mean())) < 0.1


def test_benchmark_config_builds_pspnet_with_its_three_pools(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = run_cli(["--config", CONFIG], run=False)
    assert isinstance(cli.datamodule, SyntheticTexturesDataModule)
    assert cli.model.swapped_layers == ["encoder.features.3", "encoder.features.7", "encoder.features.14"]
    assert all(isinstance(cli.model.model.get_submodule(name), PPool2d) for name in cli.model.swapped_layers)
    assert cli.model(torch.rand(2, 3, 64, 64)).shape == (2, 5, 64, 64)
