"""Every encoder registered in smp: those with pooling are swapped to P-pooling and trained one step.

The encoder list is enumerated from ``smp.encoders.encoders``, not hand-picked. Which
encoders have pooling is found per test by building the encoder on the ``meta`` device
(structure only, no memory, no init); only encoders with pooling are then built for real.
"""

import warnings

import pytest
import segmentation_models_pytorch as smp
import torch
from torch import nn

from lit_ppool import PPool2d, swap_pooling

ENCODERS = sorted(smp.encoders.encoders)
# Above this many parameters, only alpha, the stem's first weights and the last weight get
# gradients (the loss still back-propagates through the whole network to alpha): the full
# gradient of e.g. resnext101_32x48d (826M parameters) would need 3.3 GB more memory than CI
# runners have, and time the suite's budget cannot spare.
BIG = 100_000_000


def _structure(name):
    """The encoder built on the meta device when its constructor allows it, else on CPU."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.device("meta"):
                return smp.encoders.get_encoder(name, weights=None)
        except (RuntimeError, NotImplementedError):  # e.g. mit_b*: drop-path rates via .item()
            return smp.encoders.get_encoder(name, weights=None)


def _downsampling_pools(encoder):
    return {n: m for n, m in encoder.named_modules() if type(m) in (nn.MaxPool2d, nn.AvgPool2d) and m.stride not in (1, (1, 1))}


@pytest.mark.parametrize("name", ENCODERS)
def test_encoder(name):
    structure = _structure(name)
    expected = sorted(_downsampling_pools(structure))
    if not expected:
        # no pooling to swap: swap_pooling must agree and leave the model as it is
        report = swap_pooling(structure, "p")
        assert len(report) == 0
        assert all("adaptive" in s.reason or "stride 1" in s.reason for s in report.skipped)
        return
    del structure

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        encoder = smp.encoders.get_encoder(name, weights=None)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        shapes = [f.shape for f in encoder(x)]
    # exact fingerprints, not copies: a copy of a big encoder would double its memory
    weights_before = {k: v.double().sum().item() for k, v in encoder.state_dict().items()}

    report = swap_pooling(encoder, "p", example_input=x[:1])
    assert sorted(report.names) == expected
    assert all(isinstance(s.new, PPool2d) for s in report)
    after = encoder.state_dict()
    assert set(after) - set(weights_before) == {f"{s.name}.alpha_raw" for s in report}
    assert all(after[k].double().sum().item() == v for k, v in weights_before.items())
    del weights_before

    alphas = [s.new.alpha_raw for s in report]
    if sum(p.numel() for p in encoder.parameters()) > BIG:
        params = list(encoder.parameters())
        stem = params[:2] + params[-1:]
        for p in encoder.parameters():
            p.requires_grad_(False)
        trained = list({id(p): p for p in alphas + stem}.values())
        for p in trained:
            p.requires_grad_(True)
    else:
        trained = list(encoder.parameters())
    weights = [p for p in trained if p.dim() > 1]
    assert weights, "no weight gets a gradient"

    optimizer = torch.optim.SGD(trained, lr=0.1)
    features = encoder(x)
    assert [f.shape for f in features] == shapes
    loss = sum(f.square().mean() for f in features[1:])
    loss.backward()
    for p in alphas + weights:
        assert p.grad is not None and torch.isfinite(p.grad).all()
    assert any(p.grad.abs().sum() > 0 for p in alphas)
    before = [a.detach().clone() for a in alphas]
    optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(alphas, before))
