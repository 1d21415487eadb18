"""The pooling registry: names, lookups, errors, and MaxPool2d geometry for every entry."""

import functools

import pytest
import torch
from torch import nn

from lit_ppool import available_poolings, create_pool2d, get_pool_layer
from lit_ppool.layers import GlobalPPool2d, PPool2d
from lit_ppool.layers.registry import (
    NATIVE_GLOBAL_POOL_TYPES,
    NATIVE_POOL_TYPES,
    POOLING_SPECS,
    POOLINGS,
    REFERENCE_POOLING,
    global_pool,
    is_global_pool,
    pool_requires_num_channels,
    pool_with_padding,
    resolve_pooling,
    spec_of,
)

NAMES = ["avg", "dpp", "gated", "lp", "max", "mixed", "p", "p_adaptive", "softpool", "strided_conv"]
CHANNELS = 3

GEOMETRIES = [
    dict(kernel_size=2),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
    dict(kernel_size=3, stride=2, padding=0, ceil_mode=True),
    dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 0), ceil_mode=True),
    dict(kernel_size=3, stride=1, padding=1),
    dict(kernel_size=3, stride=2, padding=1, dilation=2),
    dict(kernel_size=2, stride=3, dilation=(1, 2), ceil_mode=True),
]


def build(name, **geometry):
    extra = {"num_channels": CHANNELS} if pool_requires_num_channels(name) else {}
    return create_pool2d(name, **geometry, **extra)


def test_names_are_the_documented_ones():
    assert available_poolings() == NAMES
    assert sorted(POOLINGS) == NAMES


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="Expected argument `pooling` to be one of") as info:
        get_pool_layer("maxx")
    for name in NAMES:
        assert repr(name) in str(info.value)
    with pytest.raises(ValueError, match="pooling name"):
        get_pool_layer(3)


def test_names_classes_and_partials_are_accepted():
    assert get_pool_layer("p") is PPool2d
    assert get_pool_layer("Strided-Conv") is POOLINGS["strided_conv"]
    assert get_pool_layer(PPool2d) is PPool2d
    partial = functools.partial(PPool2d, alpha_init=3.0)
    layer = create_pool2d(partial, 2)
    assert isinstance(layer, PPool2d) and layer.alpha.item() == 3.0
    assert pool_requires_num_channels(functools.partial(POOLINGS["strided_conv"], depthwise=False))
    assert not pool_requires_num_channels("p")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
def test_output_shape_is_maxpool_shape(name, geometry):
    x = torch.rand(2, CHANNELS, 11, 10)
    expected = nn.MaxPool2d(**geometry)(x).shape
    if name == "avg" and geometry.get("dilation", 1) != 1:
        with pytest.raises(ValueError, match="Expected argument `dilation` to be 1"):
            build(name, **geometry)
        return
    layer = build(name, **geometry)
    out = layer(x)
    assert out.shape == expected
    assert torch.isfinite(out).all()
    # torch's attribute names, so surgery and user code can read them back
    assert layer.kernel_size == geometry["kernel_size"]


@pytest.mark.parametrize("name", NAMES)
def test_invalid_geometry_raises(name):
    # ours refuse at construction; nn.MaxPool2d (the `max` entry) refuses when called
    with pytest.raises((ValueError, TypeError, RuntimeError), match="(?i)pad"):
        build(name, kernel_size=2, padding=2)(torch.rand(1, CHANNELS, 6, 6))


@pytest.mark.parametrize("name", NAMES)
def test_pool_with_padding_matches_a_layer_built_with_that_padding(name):
    torch.manual_seed(0)
    x = torch.rand(1, CHANNELS, 9, 8)
    plain = build(name, kernel_size=3, stride=2)
    padded = build(name, kernel_size=3, stride=2, padding=1, ceil_mode=True)
    padded.load_state_dict(plain.state_dict())
    torch.testing.assert_close(pool_with_padding(plain, x, (1, 1), True), padded(x))


def test_pool_with_padding_rejects_unregistered_modules():
    with pytest.raises(TypeError, match="registered pooling"):
        pool_with_padding(nn.LPPool2d(2, 2), torch.rand(1, 1, 4, 4), 0, False)


def test_the_table_has_one_spec_per_name_and_one_resolver():
    assert all(spec.name == name and POOLINGS[name] is spec.cls for name, spec in POOLING_SPECS.items())
    assert [name for name, spec in POOLING_SPECS.items() if spec.needs_channels] == ["p_adaptive", "strided_conv"]
    assert sorted(name for name, spec in POOLING_SPECS.items() if spec.global_form) == ["avg", "max", "p"]
    for given in ("P", " strided-conv ", POOLINGS["lp"], functools.partial(PPool2d, alpha_init=2.0)):
        resolved = resolve_pooling(given)
        assert resolved.spec is POOLING_SPECS[resolved.spec.name]
    assert resolve_pooling(functools.partial(functools.partial(PPool2d, alpha_init=2.0), alpha_init=3.0)).options == {"alpha_init": 3.0}
    with pytest.raises(ValueError, match="Expected argument `to` to be one of"):  # the caller's argument name
        resolve_pooling("maxx", "to")


def test_global_forms_come_from_the_table():
    assert isinstance(global_pool("p", {"alpha_init": 0.5, "kernel_size": 3}), GlobalPPool2d)
    assert type(global_pool("max")) is nn.AdaptiveMaxPool2d and type(global_pool(nn.AvgPool2d)) is nn.AdaptiveAvgPool2d
    assert global_pool(functools.partial(PPool2d, alpha_init=0.0)).alpha.item() == 0.0
    with pytest.raises(ValueError, match="'softpool' has no global form.*'p' \\(GlobalPPool2d\\)"):
        global_pool("softpool")
    assert is_global_pool(GlobalPPool2d()) and is_global_pool(nn.AdaptiveMaxPool2d((1, 1)))
    assert not is_global_pool(nn.AdaptiveAvgPool2d(2)) and not is_global_pool(nn.MaxPool2d(2))


@pytest.mark.parametrize("name", NAMES)
def test_scriptable_flag_is_honoured_both_ways(name):
    layer, x = build(name, kernel_size=3, stride=2, padding=1), torch.rand(1, CHANNELS, 9, 8)
    if POOLING_SPECS[name].scriptable:
        torch.testing.assert_close(torch.jit.script(layer)(x), layer(x))
    else:
        with pytest.raises(Exception):  # noqa: B017 (torch.jit raises unrelated types: RuntimeError, NotSupportedError)
            torch.jit.script(layer)


@pytest.mark.parametrize("name", NAMES)
def test_learnable_flag_matches_the_parameters(name):
    assert bool(list(build(name, kernel_size=2).parameters())) == POOLING_SPECS[name].learnable


def test_the_derived_maps_come_from_the_table():
    assert REFERENCE_POOLING == "max" and [name for name, spec in POOLING_SPECS.items() if spec.reference] == ["max"]
    assert NATIVE_POOL_TYPES == (nn.MaxPool2d, nn.AvgPool2d)
    assert NATIVE_GLOBAL_POOL_TYPES == (nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool2d)
    assert {spec.global_cls for spec in POOLING_SPECS.values()} == {nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool2d, GlobalPPool2d, None}
    assert [name for name, spec in POOLING_SPECS.items() if spec.has_alpha] == ["p"]
    for spec in POOLING_SPECS.values():  # a native pooling's layer is (a subclass of) torch's own, and so is its global form
        assert spec.native is None or (issubclass(spec.cls, spec.native) and spec.global_cls.__module__.startswith("torch."))


@pytest.mark.parametrize("name", NAMES)
def test_spec_of_a_built_layer_is_its_table_entry(name):
    spec = POOLING_SPECS[name]
    assert spec_of(build(name, kernel_size=2)) is spec
    if spec.global_form is not None:
        assert spec_of(global_pool(name)) is spec and type(global_pool(name)) is spec.global_cls


def test_spec_of_other_modules():
    assert spec_of(nn.AvgPool2d(2)).name is None  # torch's layer: avg's global form and padding rule, no name
    assert spec_of(nn.AdaptiveAvgPool2d(2)) is None and spec_of(nn.Conv2d(1, 1, 1)) is None
    assert spec_of(type("MyMax", (nn.MaxPool2d,), {})(2)) is None  # subclasses are not the table's class


def test_a_resolved_pooling_resolves_to_itself():
    resolved = resolve_pooling(functools.partial(PPool2d, alpha_init=2.0), "to")
    assert resolve_pooling(resolved) is resolved and resolved.argument == "to"
