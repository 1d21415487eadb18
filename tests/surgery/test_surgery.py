"""swap_pooling / bake_pooling on small models, smp wrappers, timm and torchvision models."""

import io
import warnings

import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from lit_ppool import (
    GlobalPPool2d,
    PPool2d,
    PPoolBase,
    SwapReport,
    available_poolings,
    bake_pooling,
    swap_pooling,
)
from lit_ppool.layers.baselines import AveragePool2d
from lit_ppool.layers.same import SamePadPool2d
from lit_ppool.surgery import SKIP_KINDS, Skip, Swap

pool2d_same = pytest.importorskip("timm.layers.pool2d_same")


class Toy(nn.Module):
    """Every case swap_pooling must tell apart."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.stem_pool = nn.MaxPool2d(3, 2, 1)
        self.block = nn.Sequential(nn.ReLU(), nn.AvgPool2d(2), nn.MaxPool2d(3, 1, 1))
        self.same = pool2d_same.MaxPool2dSame(3, 2)
        self.dilated = nn.MaxPool2d(3, 2, 1, dilation=2)
        self.indices = nn.MaxPool2d(2, return_indices=True)
        self.head = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        x = self.stem_pool(self.conv(x))  # conv output: negative values reach stem_pool
        x = self.same(self.block(x))
        x = self.dilated(x)
        x, _ = self.indices(F.pad(x, (0, 1, 0, 1)))
        return self.head(x).flatten(1)


def test_swap_replaces_exact_types_in_place_and_reports():
    model = Toy()
    report = swap_pooling(model, "p")
    assert isinstance(report, SwapReport) and all(isinstance(s, Swap) for s in report)
    assert report.names == ["stem_pool", "block.1", "same", "dilated"]
    assert isinstance(model.stem_pool, PPool2d) and model.block[1] is report[1].new
    assert isinstance(model.same, SamePadPool2d) and isinstance(model.same.pool, PPool2d)
    assert (model.dilated.dilation, model.dilated.padding, model.stem_pool.stride) == (2, 1, 2)
    reasons = {s.name: s.reason for s in report.skipped}
    assert set(reasons) == {"block.2", "indices", "head"}
    assert "stride 1" in reasons["block.2"] and "return_indices" in reasons["indices"]
    assert "adaptive" in reasons["head"]
    kinds = {s.name: s.kind for s in report.skipped}
    assert kinds == {"block.2": "stride_one", "indices": "return_indices", "head": "adaptive"}
    assert all(isinstance(s, Skip) and s.kind in SKIP_KINDS for s in report.skipped)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 4)
    assert not report.probed and report.negative_inputs == []


def _output_shapes(model, x):
    shapes = {}

    def record(name):
        def hook(_module, _args, output):
            shapes[name] = (output[0] if isinstance(output, tuple) else output).shape

        return hook

    hooks = [m.register_forward_hook(record(n)) for n, m in model.named_modules() if n and "." not in n]
    model(x)
    for h in hooks:
        h.remove()
    return shapes


def test_swap_keeps_every_output_shape_and_other_state():
    torch.manual_seed(0)
    model, x = Toy(), torch.rand(2, 3, 37, 35)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    shapes = _output_shapes(model, x)
    swap_pooling(model, "p", downsampling_only=False)
    after = model.state_dict()
    assert set(after) - set(before) == {
        "stem_pool.alpha_raw", "block.1.alpha_raw", "block.2.alpha_raw", "same.pool.alpha_raw", "dilated.alpha_raw"
    }
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert _output_shapes(model, x) == shapes


def test_include_exclude_and_downsampling_only():
    report = swap_pooling(Toy(), "p", include=["block.*", "same"], exclude="block.2", downsampling_only=False)
    assert report.names == ["block.1", "same"]
    reasons = {s.name: s.reason for s in report.skipped}
    assert "not matched by include" in reasons["stem_pool"] and "matched by exclude" in reasons["block.2"]
    assert swap_pooling(Toy(), "p", downsampling_only=False).names == ["stem_pool", "block.1", "block.2", "same", "dilated"]
    with pytest.raises(ValueError, match="`include`"):
        swap_pooling(Toy(), "p", include=3)


def test_unknown_pooling_lists_valid_names():
    with pytest.raises(ValueError, match="one of") as info:
        swap_pooling(Toy(), "median")
    assert all(repr(name) in str(info.value) for name in available_poolings())


def test_pooling_argument_and_its_earlier_name_to():
    assert swap_pooling(Toy(), "avg").names == swap_pooling(Toy(), pooling="avg").names == swap_pooling(Toy(), to="avg").names
    assert isinstance(swap_pooling(Toy(), to="P", alpha_init=2.0)[0].new, PPool2d)
    with pytest.raises(ValueError, match="Expected argument `to` to be one of"):
        swap_pooling(Toy(), to="median")
    with pytest.raises(ValueError, match="`pooling` and `to`"):
        swap_pooling(Toy(), "p", to="max")


def test_an_already_resolved_pooling_is_swapped_in_as_it_is(monkeypatch):
    import functools

    from lit_ppool.layers.registry import resolve_pooling
    from lit_ppool.surgery import swap as swap_module

    resolved = resolve_pooling(functools.partial(PPool2d, alpha_init=2.0))
    calls = []
    monkeypatch.setattr(swap_module, "resolve_pooling", lambda *args: calls.append(args) or resolve_pooling(*args))
    report = swap_pooling(Toy(), resolved)
    assert calls and all(args[0] is resolved for args in calls)  # nothing resolved a second time
    assert report.names == swap_pooling(Toy(), "p").names
    assert {m.alpha.item() for s in report for m in s.new.modules() if isinstance(m, PPool2d)} == {2.0}
    assert swap_module.needs_channel_counts(resolve_pooling("strided_conv"), {})
    assert not swap_module.needs_channel_counts(resolved, {"num_channels": 3})


def test_geometry_a_target_cannot_take_is_skipped_with_the_reason():
    model = Toy()
    report = swap_pooling(model, "avg")
    reasons = {s.name: s.reason for s in report.skipped}
    assert "dilation" in reasons["dilated"] and type(model.dilated) is nn.MaxPool2d
    assert {s.name: s.kind for s in report.skipped}["dilated"] == "cannot_build"
    assert isinstance(model.stem_pool, AveragePool2d)


def test_probe_reports_channels_negative_inputs_and_functional_pooling():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.toy = Toy()

        def forward(self, x):
            return self.toy(F.max_pool2d(x, 2))

    model, x = Functional(), torch.rand(1, 3, 64, 64)
    model.train()
    running = [m.running_mean for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    report = swap_pooling(model, "strided_conv", example_input=x)
    assert report.probed and report.names == ["toy.stem_pool", "toy.block.1", "toy.same", "toy.dilated"]
    assert report.negative_inputs == ["toy.stem_pool"]  # after a conv, before any ReLU
    assert model.toy.stem_pool.num_channels == 4 and model.toy.same.pool.num_channels == 4
    functional = [s for s in report.skipped if s.kind == "functional"]
    assert all("functionally" in s.reason for s in functional)
    assert [(s.name, "max_pool2d" in s.reason) for s in functional] == [("<model>", True)]
    assert model.training and all(m.training for m in model.modules())
    assert running == []
    with pytest.raises(ValueError, match="`example_input`"):
        swap_pooling(Toy(), "strided_conv")
    per_channel = Toy()
    swap_pooling(per_channel, "p", num_channels="auto", example_input=x[..., :32, :32])
    assert per_channel.stem_pool.alpha_raw.shape == (4,)


def test_probe_leaves_batchnorm_statistics_alone():
    model = smp.encoders.get_encoder("resnet18", weights=None, depth=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    swap_pooling(model, "p", example_input=torch.rand(1, 3, 32, 32))
    assert all(torch.equal(before[k], model.state_dict()[k]) for k in before)
    assert model.training


def test_already_swapped_pools_are_left_alone():
    model = Toy()
    swap_pooling(model, "p")
    again = swap_pooling(model, "softpool")
    assert len(again) == 0
    assert any("already a lit_ppool" in s.reason for s in again.skipped)
    assert {s.kind for s in again.skipped} >= {"already_ours"}


@pytest.mark.parametrize("name", available_poolings())
def test_every_registry_name_on_resnet_and_vgg_encoders(name):
    x = torch.rand(2, 3, 64, 64)
    for encoder_name, expected in (("resnet18", ["maxpool"]), ("vgg11", [f"features.{i}" for i in (2, 5, 10, 15, 20)])):
        torch.manual_seed(0)
        encoder = smp.encoders.get_encoder(encoder_name, weights=None, depth=5)
        shapes = [f.shape for f in encoder(x)]
        report = swap_pooling(encoder, name, example_input=x[:1])
        assert report.names == expected
        features = encoder(x)
        assert [f.shape for f in features] == shapes
        sum(f.mean() for f in features).backward()
        grads = [p.grad for s in report for p in s.new.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_state_dict_round_trip_into_a_fresh_swapped_model(tmp_path):
    torch.manual_seed(0)
    model = smp.Unet("resnet18", encoder_weights=None, classes=3, encoder_depth=3, decoder_channels=(16, 8, 4))
    pretrained = {k: v.clone() for k, v in model.state_dict().items()}
    swap_pooling(model, "p", alpha_init=2.0)
    assert set(model.state_dict()) - set(pretrained) == {"encoder.maxpool.alpha_raw"}
    assert all(torch.equal(pretrained[k], model.state_dict()[k]) for k in pretrained)  # weights survive
    with torch.no_grad():
        model.encoder.maxpool.alpha_raw.fill_(7.5)
    torch.save(model.state_dict(), tmp_path / "swapped.pt")

    fresh = smp.Unet("resnet18", encoder_weights=None, classes=3, encoder_depth=3, decoder_channels=(16, 8, 4))
    swap_pooling(fresh, "p")
    fresh.load_state_dict(torch.load(tmp_path / "swapped.pt", weights_only=True))
    assert fresh.encoder.maxpool.alpha.item() == 7.5
    x = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(fresh.eval()(x), model.eval()(x))


@pytest.mark.parametrize("arch", ["Unet", "FPN", "DeepLabV3Plus"])
def test_smp_wrappers(arch):
    torch.manual_seed(0)
    model = getattr(smp, arch)("resnet18", encoder_weights=None, classes=2)
    x = torch.rand(2, 3, 64, 64)
    shape = model(x).shape
    report = swap_pooling(model, "p", example_input=x)
    assert report.names == ["encoder.maxpool"]
    if arch == "DeepLabV3Plus":  # the ASPP image pooling is global: left alone
        assert any("adaptive" in s.reason and s.name.startswith("decoder") for s in report.skipped)
    out = model(x)
    assert out.shape == shape
    F.cross_entropy(out, torch.randint(0, 2, (2, 64, 64))).backward()
    assert torch.isfinite(model.encoder.maxpool.alpha_raw.grad)


@pytest.mark.parametrize(
    "name, kwargs, same_type",
    [("tu-resnet18", {}, None), ("tu-maxvit_tiny_tf_224", {"img_size": 64}, "AvgPool2dSame"), ("tu-pnasnet5large", {}, "MaxPool2dSame")],
)
def test_timm_universal_encoders(name, kwargs, same_type):
    torch.manual_seed(0)
    encoder = smp.encoders.get_encoder(name, weights=None, **kwargs)
    x = torch.rand(1, 3, 64, 64)
    shapes = [f.shape for f in encoder(x)]
    report = swap_pooling(encoder, "p", example_input=x)
    assert len(report) > 0
    if same_type:
        same = [s for s in report if type(s.old).__name__ == same_type]
        assert same and all(isinstance(s.new, SamePadPool2d) for s in same)
    features = encoder(x)
    assert [f.shape for f in features] == shapes
    sum(f.mean() for f in features).backward()
    assert all(torch.isfinite(s.new.get_parameter("pool.alpha_raw" if isinstance(s.new, SamePadPool2d) else "alpha_raw").grad) for s in report)


def test_same_maxpool_swapped_to_max_is_unchanged():
    model = smp.encoders.get_encoder("tu-pnasnet5large", weights=None, depth=2).eval()
    x = torch.rand(1, 3, 48, 48)
    expected = model(x)
    report = swap_pooling(model, "max", include="*cell_stem_0.*")
    assert report and all(type(s.old).__name__ == "MaxPool2dSame" for s in report)
    for a, b in zip(model(x), expected):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("vgg16", 5),
        ("resnet50", 1),
        ("googlenet", 4),  # maxpool1-4; the inception branch pools have stride 1
        ("densenet121", 4),
    ],
)
def test_torchvision_models(name, expected):
    torch.manual_seed(0)
    kwargs = {"aux_logits": False, "init_weights": False} if name == "googlenet" else {}
    model = getattr(torchvision.models, name)(weights=None, num_classes=4, **kwargs)
    x = torch.rand(2, 3, 64, 64)
    shape = model(x).shape
    report = swap_pooling(model, "p", example_input=x[:1])
    assert len(report) == expected
    if name == "densenet121":  # transitions pool right after a conv
        assert len(report.negative_inputs) == 3
    out = model(x)
    assert out.shape == shape
    out.sum().backward()
    assert all(torch.isfinite(s.new.alpha_raw.grad) for s in report)


def test_bake_pooling_limits_and_tolerance():
    model = nn.Sequential(nn.ReLU(), PPool2d(3, 2, 1, alpha_init=0.0), SamePadPool2d(PPool2d(2, alpha_init=100.0)),
                          PPool2d(2, alpha_init=100.0), PPool2d(2, alpha_init=1.0))
    x = torch.rand(1, 2, 33, 33)
    expected = model(x)
    report = bake_pooling(model, x, atol=1e-2)
    assert [b.name for b in report] == ["1", "2.pool"] or [b.name for b in report] == ["1", "2.pool", "3"]
    assert type(model[1]) is AveragePool2d and type(model[2].pool) is nn.MaxPool2d
    assert {s.name for s in report.kept} >= {"4"}
    assert report[0].error < 1e-6
    torch.testing.assert_close(model(x), expected, atol=1e-2, rtol=0)
    strict = nn.Sequential(PPool2d(2, alpha_init=100.0))
    kept = bake_pooling(strict, torch.rand(1, 1, 8, 8) + 0.5, atol=0.0)
    assert len(kept) == 0 and "exceeds atol" in kept.kept[0].reason and kept.kept[0].kind == "exceeds_atol"
    assert {s.name: s.kind for s in report.kept}["4"] == "not_at_limit"


def _swapped_smp_model():
    torch.manual_seed(0)
    model = smp.Unet("resnet18", encoder_weights=None, classes=2, encoder_depth=3, decoder_channels=(16, 8, 4)).eval()
    swap_pooling(model, "p", alpha_init=3.0)
    return model


def test_torch_jit_script_of_a_swapped_smp_model():
    model, x = _swapped_smp_model(), torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(torch.jit.script(model)(x), model(x))


def test_torch_compile_of_a_swapped_smp_model():
    model, x = _swapped_smp_model(), torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(torch.compile(model)(x), model(x), atol=1e-4, rtol=1e-4)


def test_onnx_export_of_a_swapped_smp_model():
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    model, buffer = _swapped_smp_model(), io.BytesIO()
    torch.onnx.export(model, (torch.rand(1, 3, 64, 64),), buffer, dynamo=True)
    proto = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(proto)
    assert "MaxPool" not in {node.op_type for node in proto.graph.node}


def _adaptive_smp_model():
    torch.manual_seed(0)
    model = smp.Unet("resnet18", encoder_weights=None, classes=2, decoder_channels=[32, 16, 16, 8, 8]).eval()
    swap_pooling(model, "p_adaptive", example_input=torch.rand(1, 3, 64, 64))
    return model


def test_torch_compile_of_an_adaptive_p_pooling_model():
    model, x = _adaptive_smp_model(), torch.rand(2, 3, 64, 96)
    torch.testing.assert_close(torch.compile(model)(x), model(x), atol=1e-4, rtol=1e-4)


def test_onnx_export_of_an_adaptive_p_pooling_model_runs_at_other_sizes():
    """Exported at batch 1, 64 x 64 with dynamic axes; onnxruntime matches torch at other batch sizes and sizes."""
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    model, buffer = _adaptive_smp_model(), io.BytesIO()
    axes = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*'dynamic_axes' is not recommended")
        torch.onnx.export(
            model, (torch.rand(1, 3, 64, 64),), buffer, dynamo=True, input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": axes, "logits": axes},
        )
    onnx.checker.check_model(onnx.load_from_string(buffer.getvalue()))
    session = onnxruntime.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    for shape in [(1, 3, 64, 64), (2, 3, 96, 64), (1, 3, 128, 160)]:
        x = torch.rand(shape)
        (logits,) = session.run(None, {"input": x.numpy()})
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(logits), model(x), atol=1e-4, rtol=1e-4)


# --- global (adaptive, output_size=1) pooling: swapped only when `include` names it -----------------------------


def _distinct_positive(shape, ratio=0.8):
    """Per (n, c) map, the values ratio**0, ratio**1, ... in random order: distinct, > 0, a well-separated max."""
    n, c, h, w = shape
    order = torch.stack([torch.randperm(h * w) for _ in range(n * c)]).reshape(shape)
    return ratio ** order.double()


def test_global_ppool_is_adaptive_avg_at_zero_and_adaptive_max_at_large_alpha():
    torch.manual_seed(0)
    x = _distinct_positive((2, 3, 7, 9))
    avg = GlobalPPool2d(alpha_init=0.0)
    torch.testing.assert_close(avg(x), F.adaptive_avg_pool2d(x, 1), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(GlobalPPool2d(alpha_init=100.0)(x), F.adaptive_max_pool2d(x, 1), atol=1e-8, rtol=0)
    torch.testing.assert_close(avg(x[0]), F.adaptive_avg_pool2d(x[0], 1), atol=1e-12, rtol=1e-12)  # unbatched
    middle = GlobalPPool2d(alpha_init=2.0, num_channels=3)
    assert middle(x).shape == (2, 3, 1, 1) and middle.alpha_raw.shape == (3,)
    assert (F.adaptive_avg_pool2d(x, 1) < middle(x)).all() and (middle(x) < F.adaptive_max_pool2d(x, 1)).all()
    assert repr(middle).startswith("GlobalPPool2d(output_size=1, alpha=[3 channels") and "alpha=0.0000" in repr(avg)
    # a sibling of PPool2d over the alpha base class, not a PPool2d with kernel_size=None
    assert isinstance(avg, PPoolBase) and not isinstance(avg, PPool2d) and not hasattr(avg, "kernel_size")
    assert "alpha_raw" in dict(avg.named_parameters())
    torch.testing.assert_close(torch.jit.script(middle)(x), middle(x))
    with pytest.raises(ValueError, match="num_channels=3"):
        middle(torch.rand(1, 4, 5, 5))
    with pytest.raises(ValueError, match="3D"):
        avg(torch.rand(5, 5))


class _Heads(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.gmp = nn.AdaptiveMaxPool2d((1, 1))
        self.grid = nn.AdaptiveAvgPool2d(2)

    def forward(self, x):
        x = self.features(x)
        return torch.cat([self.gap(x).flatten(1), self.gmp(x).flatten(1), self.grid(x).flatten(1)], 1)


def test_global_pools_are_left_alone_unless_include_names_them():
    model = _Heads()
    report = swap_pooling(model, "p")
    assert len(report) == 0 and type(model.gap) is nn.AdaptiveAvgPool2d and type(model.gmp) is nn.AdaptiveMaxPool2d
    reasons = {s.name: s.reason for s in report.skipped}
    assert set(reasons) == {"gap", "gmp", "grid"} and all("unless `include` names it" in r for r in reasons.values())

    report = swap_pooling(model, "p", include=["g*"], exclude="gmp", alpha_init=0.5)
    assert report.names == ["gap"] and isinstance(model.gap, GlobalPPool2d) and model.gap.alpha.item() == 0.5
    reasons = {s.name: s.reason for s in report.skipped}
    assert "matched by exclude" in reasons["gmp"] and type(model.gmp) is nn.AdaptiveMaxPool2d
    assert "only global (output_size=1) adaptive pools can be swapped" in reasons["grid"]
    assert type(model.grid) is nn.AdaptiveAvgPool2d


@pytest.mark.parametrize(
    "to, expected",
    [("p", GlobalPPool2d), ("max", nn.AdaptiveMaxPool2d), ("avg", nn.AdaptiveAvgPool2d), ("softpool", None), ("strided_conv", None)],
)
def test_global_pools_take_the_global_form_of_the_target(to, expected):
    torch.manual_seed(0)
    model, x = _Heads(), torch.rand(2, 3, 11, 13)
    shape = model(x).shape
    report = swap_pooling(model, to, include=["gap", "gmp"], example_input=x, **({"num_channels": "auto"} if to == "p" else {}))
    if expected is None:
        assert len(report) == 0
        assert all("has no global form" in s.reason for s in report.skipped if s.name in ("gap", "gmp"))
        assert all(s.kind == "no_global_form" for s in report.skipped if s.name in ("gap", "gmp"))
        return
    assert report.names == ["gap", "gmp"] and all(type(s.new) is expected for s in report)
    if to == "max":
        torch.testing.assert_close(model.gap(x), F.adaptive_max_pool2d(x, 1))
    assert model(x).shape == shape
    if to == "p":
        assert model.gap.alpha_raw.shape == (4,)  # num_channels="auto" measured by the probe
        model(x).sum().backward()
        assert all(s.new.alpha_raw.grad is not None and torch.isfinite(s.new.alpha_raw.grad).all() for s in report)


def test_global_ppool_in_smp_unet_scse_attention():
    torch.manual_seed(0)
    model = smp.Unet("resnet18", encoder_weights=None, classes=2, encoder_depth=3, decoder_channels=(32, 32, 32),
                     decoder_attention_type="scse")
    x = torch.rand(2, 3, 64, 64)
    shape = model(x).shape
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # blocks.2 has no skip connection, so its attention1 never runs: select the first two blocks only
    report = swap_pooling(model, "p", include="decoder.blocks.[01].*.cSE.*", alpha_init=2.0)
    assert report.names == [f"decoder.blocks.{b}.attention{a}.attention.cSE.0" for b in (0, 1) for a in (1, 2)]
    assert all(isinstance(s.new, GlobalPPool2d) for s in report)
    reasons = {s.name: s.reason for s in report.skipped}
    assert "not matched by include" in reasons["encoder.maxpool"] and type(model.encoder.maxpool) is nn.MaxPool2d
    assert "not matched by include" in reasons["decoder.blocks.2.attention1.attention.cSE.0"]
    assert set(model.state_dict()) - set(before) == {f"{name}.alpha_raw" for name in report.names}
    assert all(torch.equal(before[k], model.state_dict()[k]) for k in before)
    out = model(x)
    assert out.shape == shape
    F.cross_entropy(out, torch.randint(0, 2, (2, 64, 64))).backward()
    grads = [s.new.alpha_raw.grad for s in report]
    assert all(g is not None and torch.isfinite(g) for g in grads) and any(g != 0 for g in grads), grads


def test_global_ppool_in_deeplabv3plus_aspp_and_bake_back():
    torch.manual_seed(0)
    model = smp.DeepLabV3Plus("resnet18", encoder_weights=None, classes=2, encoder_depth=3, encoder_output_stride=8,
                              decoder_channels=32).eval()
    x = torch.rand(1, 3, 64, 64)
    expected = model(x)
    report = swap_pooling(model, "p", include="decoder.aspp.*", alpha_init=0.0)
    assert report.names == ["decoder.aspp.0.convs.4.0"] and isinstance(report[0].new, GlobalPPool2d)
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)  # alpha = 0: the same global average
    baked = bake_pooling(model, x, atol=1e-5)
    assert [b.name for b in baked] == ["decoder.aspp.0.convs.4.0"] and type(baked[0].new) is nn.AdaptiveAvgPool2d
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
