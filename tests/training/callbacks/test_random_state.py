"""RandomStateCheckpoint in process; the CLI default is tested with AtomicCheckpointIO, the kill tests are in test_resume.py."""

import random

import numpy as np
import torch

from lit_ppool import RandomStateCheckpoint


def test_random_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    callback = RandomStateCheckpoint()
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    torch.save({"callbacks": {callback.state_key: callback.state_dict()}}, tmp_path / "c.ckpt")
    expected = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])

    torch.manual_seed(99), np.random.seed(99), random.seed(99)  # what a fresh process does
    restored = RandomStateCheckpoint()
    restored.load_state_dict(torch.load(tmp_path / "c.ckpt", weights_only=True)["callbacks"][restored.state_key])
    assert torch.rand(1).item() != expected[0][0].item()  # not restored before the training loop starts
    restored.on_train_start(None, None)
    assert torch.equal(torch.rand(4), expected[0])
    assert np.array_equal(np.random.rand(4), expected[1])
    assert [random.random() for _ in range(4)] == expected[2]
    state = torch.rand(1)
    restored.on_train_start(None, None)  # restores once only
    assert not torch.equal(torch.rand(1), state)
