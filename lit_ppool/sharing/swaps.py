"""What was swapped, as data: the record of each swapped pooling module, and the module rebuilt from it.

:func:`layer_record` describes a pooling module of the registry (pooling name, geometry,
constructor options, global or not, "same" padding) in JSON-ready values, :func:`build_layer`
builds the module back. :func:`recorded_swaps` lists the modules of an smp model that differ
from the model its config builds; :func:`apply_swaps` puts them back into a freshly built one.
The record is the ``lit_ppool`` section of a saved model's ``config.json``
(:mod:`lit_ppool.sharing.hub`), of format :data:`FORMAT_VERSION`; the model card
(:mod:`lit_ppool.sharing.card`) shows it as a table.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lit_ppool.functional import pool_geometry
from lit_ppool.layers.ppool import PPool2d  # noqa: F401 (the doctests)
from lit_ppool.layers.registry import GEOMETRY_KEYWORDS, POOLING_SPECS, available_poolings, create_pool2d, spec_of
from lit_ppool.layers.registry import global_pool as _global_pool
from lit_ppool.layers.registry import is_global_pool as _is_global
from lit_ppool.layers.same import SamePadPool2d

__all__ = ["FORMAT_VERSION", "NotASavedModelError", "SavedModelError", "build_layer", "layer_record"]

FORMAT_VERSION = 2
"""Version of the ``lit_ppool`` section of ``config.json``; a newer one is refused with an error.

1: the smp class in ``_model_class`` (which ``smp.from_pretrained`` then builds without the swap);
2: ``_model_class`` is :data:`~lit_ppool.sharing.hub.SMP_REFUSAL` and the class is the section's ``model_class``.
"""
SECTION = "lit_ppool"
"""The key of the swap record's section in ``config.json``."""


class SavedModelError(ValueError):
    """A saved model's files do not describe a model that this lit_ppool can rebuild (the message names the file)."""


class NotASavedModelError(FileNotFoundError):
    """The path or Hub repo id holds no saved model, or the Hub repo cannot be reached (the message says what to do)."""


def library_version() -> str:
    """The version of this lit_ppool: saved with the swap record, shown on the card, compared when loading."""
    from lit_ppool import __version__

    return __version__


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def layer_record(module: nn.Module) -> dict[str, Any] | None:
    """How to rebuild a registry pooling module (``None`` for any other module).

    Example:
        >>> layer_record(PPool2d(2))["pooling"], layer_record(nn.Conv2d(1, 1, 1))
        ('p', None)
    """
    same = isinstance(module, SamePadPool2d)
    inner = module.pool if same else module
    spec = spec_of(inner)  # by the exact class (the global form's for a global pool); torch's nn.AvgPool2d has no name
    if spec is None or spec.name is None or getattr(inner, "return_indices", False):
        return None
    is_global = _is_global(inner)
    geometry: dict[str, Any] = {}
    if not is_global:
        defaults = {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False}
        geometry = {key: _jsonable(getattr(inner, key, defaults.get(key))) for key in GEOMETRY_KEYWORDS}
    options = inner.init_options() if hasattr(inner, "init_options") else {}
    return {"pooling": spec.name, "global": is_global, "same": same, "geometry": geometry, "options": options}


def _normalized(record: dict[str, Any] | None) -> Any:
    """A record with its geometry as validated pairs, so ``3`` and ``(3, 3)`` compare equal."""
    if record is None or record["global"]:
        return record
    return {**record, "geometry": tuple(pool_geometry(**record["geometry"]))}


def build_layer(record: Mapping[str, Any]) -> nn.Module:
    """The pooling module a :func:`layer_record` describes.

    Raises:
        ValueError: If the pooling name is unknown or the layer rejects its arguments.

    Example:
        >>> build_layer(layer_record(PPool2d(3, 2, 1)))
        PPool2d(kernel_size=3, stride=2, padding=1, dilation=1, ceil_mode=False, alpha=1.0000)
    """
    options = dict(record.get("options") or {})
    if record.get("global"):
        forms = [name for name, spec in POOLING_SPECS.items() if spec.global_form is not None]
        if record["pooling"] not in forms:
            raise ValueError(f"Expected a global pooling to be one of {forms}, but got {record['pooling']!r}.")
        layer = _global_pool(record["pooling"], options)
    else:
        geometry = {key: tuple(v) if isinstance(v, list) else v for key, v in record["geometry"].items()}
        try:
            layer = create_pool2d(record["pooling"], **geometry, **options)
        except TypeError as err:
            raise ValueError(str(err)) from None
    return SamePadPool2d(layer) if record.get("same") else layer


def smp_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
    """The smp model's constructor arguments in a config, with ``encoder_weights=None`` (the weights are saved)."""
    kwargs = {key: value for key, value in config.items() if not key.startswith("_") and key != SECTION}
    kwargs["encoder_weights"] = None
    return kwargs


def fresh_model(model: nn.Module) -> nn.Module:
    """The smp model that ``model.config`` builds, without consuming the caller's random numbers."""
    with torch.random.fork_rng(devices=[]):
        return type(model)(**smp_kwargs(model.config))


def recorded_swaps(model: nn.Module, fresh: nn.Module) -> list[dict[str, Any]]:
    """A record per pooling module of ``model`` that differs from the one of the fresh smp model."""
    fresh_modules = dict(fresh.named_modules())
    swaps: list[dict[str, Any]] = []
    for name, module in model.named_modules():
        if any(name.startswith(swap["name"] + ".") for swap in swaps):
            continue  # the pool inside a recorded SamePadPool2d
        other = fresh_modules.get(name)
        record = layer_record(module)
        unchanged = other is not None and type(other) is type(module)
        if record is not None:
            if not (unchanged and _normalized(layer_record(other)) == _normalized(record)):
                swaps.append({"name": name, **record})
        elif not unchanged:
            raise ValueError(
                f"Expected every module that differs from a freshly built {type(model).__name__} to be a pooling "
                f"layer of the registry ({available_poolings()}), but got {name!r}: {type(module).__name__} "
                f"(the fresh model has {type(other).__name__ if other is not None else 'no such module'})."
            )
    _check_other_weights(model, fresh, [swap["name"] for swap in swaps])
    return swaps


def _check_other_weights(model: nn.Module, fresh: nn.Module, swapped: list[str]) -> None:
    """Outside the swapped modules, the state_dict must have the fresh smp model's keys and shapes."""
    def outside(state: dict[str, Any]) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in state.items() if not any(k.startswith(name + ".") for name in swapped)}

    ours, theirs = outside(model.state_dict()), outside(fresh.state_dict())
    if ours != theirs:
        differ = sorted(set(ours) ^ set(theirs) | {k for k in set(ours) & set(theirs) if ours[k] != theirs[k]})
        raise ValueError(
            f"Expected the weights outside the swapped pooling layers to have the keys and shapes of a freshly "
            f"built {type(model).__name__} of the same config, but got {len(differ)} that differ ({', '.join(differ[:4])}): "
            "a model changed in other ways cannot be rebuilt from its config."
        )


def check_smp_model(model: Any) -> None:
    """Refuse anything but an smp model (``ValueError``): only smp models are saved and rebuilt from a config."""
    from segmentation_models_pytorch.base import SegmentationModel

    if not isinstance(model, SegmentationModel):
        raise ValueError(  # noqa: TRY004 (the house rule: ValueError, as swap_pooling)
            "Expected argument `model` to be a segmentation_models_pytorch model (smp.Unet, smp.FPN, ..., "
            f"e.g. PPoolSegmentationModule.model), but got {type(model).__name__}."
        )



def apply_swaps(model: nn.Module, section: Mapping[str, Any], path: Path) -> None:
    """Re-apply the recorded swap of a ``lit_ppool`` config section to the freshly built model (errors name ``path``)."""
    saved_by = section.get("version", "an unknown version")
    for swap in section["swaps"]:
        name = swap.get("name") if isinstance(swap, dict) else None
        try:  # a module of the model below it, as set_submodule(strict=True) needs
            parent = model.get_submodule(name.rpartition(".")[0])
            if not isinstance(getattr(parent, name.rpartition(".")[2]), nn.Module):
                raise AttributeError(name)
        except (AttributeError, TypeError):
            raise SavedModelError(
                f"Expected every swap in {path} to name a module of the {type(model).__name__}, but got {swap!r:.200}."
            ) from None
        try:
            layer = build_layer(swap)
        except (ValueError, KeyError, TypeError) as err:
            raise SavedModelError(
                f"Expected the pooling of {name!r} in {path} to be buildable by lit_ppool {library_version()} (poolings "
                f"{available_poolings()}), but got {swap.get('pooling')!r} saved by lit_ppool {saved_by}: {err}"
                + (" Upgrade lit_ppool." if saved_by != library_version() else "")
            ) from None
        layer.train(parent.training)
        model.set_submodule(name, layer, strict=True)
