"""Share a swapped smp model: smp's Hugging Face Hub layout, plus the swap that rebuilds it.

:func:`save_pretrained` writes what ``model.save_pretrained`` of smp writes (``config.json``,
``model.safetensors``, a ``README.md`` model card) and records in ``config.json`` every
pooling module that differs from a freshly built smp model of the same config: its qualified
name, registry pooling, geometry, constructor options and whether it runs with "same" padding.
:func:`from_pretrained` builds the smp model from that config, re-applies exactly those
modules and loads the weights with strict key checking. ``smp.from_pretrained`` refuses such a
folder: its ``_model_class`` names no smp class but says to use ``lit_ppool.from_pretrained``
(the class is in the ``lit_ppool`` section). A model whose pooling equals smp's own (nothing
swapped, or everything baked back to ``nn.MaxPool2d``) is saved as a plain smp model that
``smp.from_pretrained`` loads unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lit_ppool.functional import pool_geometry
from lit_ppool.layers.ppool import PPool2d, PPoolBase  # noqa: F401 (PPool2d: the doctests)
from lit_ppool.layers.registry import GEOMETRY_KEYWORDS, POOLING_SPECS, available_poolings, create_pool2d, spec_of
from lit_ppool.layers.registry import global_pool as _global_pool
from lit_ppool.layers.registry import is_global_pool as _is_global
from lit_ppool.layers.same import SamePadPool2d

__all__ = ["NotASavedModelError", "SavedModelError", "build_layer", "from_pretrained", "layer_record", "model_card", "save_pretrained"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
FORMAT_VERSION = 2
"""Version of the ``lit_ppool`` section of ``config.json``; a newer one is refused with an error.

1: the smp class in ``_model_class`` (which ``smp.from_pretrained`` then builds without the swap);
2: ``_model_class`` is :data:`SMP_REFUSAL` and the class is the section's ``model_class``.
"""
SMP_REFUSAL = "{model_class} with swapped pooling: load it with lit_ppool.from_pretrained"
"""The ``_model_class`` of a swapped model's folder: no smp class, so ``smp.from_pretrained`` stops with an
``AttributeError`` that names it (``getattr(smp, _model_class)`` in smp 0.5 and 0.6)."""

ENCODER_REFUSAL = "{encoder_name} (swapped pooling: load it with lit_ppool.from_pretrained)"
"""The ``encoder_name`` of a swapped model's folder (the real one is in the section): smp's class methods
(``smp.Unet.from_pretrained``), which do not read ``_model_class``, stop at an encoder name smp does not know."""
SECTION = "lit_ppool"
NOTE_KEY = "_lit_ppool_note"  # smp drops config keys starting with "_" before building the model


class SavedModelError(ValueError):
    """A saved model's files do not describe a model that this lit_ppool can rebuild (the message names the file)."""


class NotASavedModelError(FileNotFoundError):
    """The path or Hub repo id holds no saved model, or the Hub repo cannot be reached (the message says what to do)."""


def _version() -> str:
    from lit_ppool import __version__

    return __version__


def _load_note(source: str = "<this folder or its Hub repo id>") -> str:
    return (
        f"Saved by lit_ppool {_version()} with swapped pooling layers: load it with "
        f"`lit_ppool.from_pretrained({source!r})`. smp.from_pretrained cannot rebuild them, and refuses "
        "this folder (`_model_class` names no smp class; the class is `lit_ppool.model_class`)."
    )


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


def _smp_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
    """The smp model's constructor arguments in a config, with ``encoder_weights=None`` (the weights are saved)."""
    kwargs = {key: value for key, value in config.items() if not key.startswith("_") and key != SECTION}
    kwargs["encoder_weights"] = None
    return kwargs


def _fresh_model(model: nn.Module) -> nn.Module:
    """The smp model that ``model.config`` builds, without consuming the caller's random numbers."""
    with torch.random.fork_rng(devices=[]):
        return type(model)(**_smp_kwargs(model.config))


def _recorded_swaps(model: nn.Module, fresh: nn.Module) -> list[dict[str, Any]]:
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


def _check_smp_model(model: Any) -> None:
    from segmentation_models_pytorch.base import SegmentationModel

    if not isinstance(model, SegmentationModel):
        raise ValueError(  # noqa: TRY004 (the house rule: ValueError, as swap_pooling)
            "Expected argument `model` to be a segmentation_models_pytorch model (smp.Unet, smp.FPN, ..., "
            f"e.g. PPoolSegmentationModule.model), but got {type(model).__name__}."
        )


def save_pretrained(
    model: nn.Module,
    save_directory: str | os.PathLike,
    *,
    metrics: Mapping[str, float] | None = None,
    training_config: str | Mapping[str, Any] | None = None,
    alpha_plot: str | os.PathLike | None = None,
    dataset: str | None = None,
    sections: Mapping[str, str] | None = None,
) -> Path:
    """Save a (swapped) smp model in smp's Hugging Face Hub layout, with the swap and a model card.

    Writes ``config.json`` (smp's, with ``encoder_weights: null`` since every weight is saved,
    plus a ``lit_ppool`` section listing each pooling module that differs from the smp model
    the config builds: qualified name, registry pooling, geometry, constructor options,
    "same" padding, and the lit_ppool version), ``model.safetensors`` (smp's
    ``save_pretrained``) and ``README.md``, a model card with a table of the pooling per
    layer and its learned alpha. With a swap, ``_model_class`` is :data:`SMP_REFUSAL` (the smp class
    moves to the section's ``model_class``), so ``smp.from_pretrained`` stops with an error naming
    ``lit_ppool.from_pretrained`` instead of building the model with smp's own pooling. When no
    pooling differs (nothing swapped, or everything baked back to ``nn.MaxPool2d``) there is no
    ``lit_ppool`` section and ``smp.from_pretrained`` loads the folder as it is.

    Args:
        model: An smp model (``smp.Unet(...)``, ``PPoolSegmentationModule.model``), swapped or not.
        save_directory: Folder to write (created; files of the same names are replaced).
        metrics: Metrics for the card (``{"test/mIoU": 0.77}``).
        training_config: The training configuration for the card (YAML text or a dict).
        alpha_plot: An image of alpha per layer over training; copied next to the card and shown.
        dataset: The dataset's name, for the card.
        sections: More card sections, ``{title: markdown}``.

    Returns:
        The folder.

    Raises:
        ValueError: If ``model`` is not an smp model, or differs from the smp model of its
            config in a module that is not a registry pooling layer.

    Example:
        >>> import tempfile, segmentation_models_pytorch as smp
        >>> from lit_ppool import swap_pooling
        >>> model = smp.Unet("resnet18", encoder_weights=None, classes=2)
        >>> _ = swap_pooling(model, "p")
        >>> folder = save_pretrained(model, tempfile.mkdtemp())
        >>> sorted(p.name for p in folder.iterdir())
        ['README.md', 'config.json', 'model.safetensors']
    """
    _check_smp_model(model)
    swaps = _recorded_swaps(model, _fresh_model(model))
    folder = Path(save_directory).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)  # smp's config.json and model.safetensors (and its card, replaced below)
    config_path = folder / CONFIG_NAME
    config = json.loads(config_path.read_text())
    config["encoder_weights"] = None
    plot_name = None
    if alpha_plot is not None:
        plot_name = "alpha.png" if Path(alpha_plot).suffix.lower() == ".png" else Path(alpha_plot).name
        shutil.copyfile(alpha_plot, folder / plot_name)
    card = _model_card(
        model, config, swaps, metrics=metrics, training_config=training_config, plot_name=plot_name,
        dataset=dataset, sections=sections, loading=None,
    )
    if swaps:  # a folder that smp.from_pretrained refuses, saying which loader rebuilds it
        model_class = config["_model_class"]
        section = {"version": _version(), "format": FORMAT_VERSION, "loader": "lit_ppool.from_pretrained",
                   "model_class": model_class, "encoder_name": config["encoder_name"], "swaps": swaps}
        # smp.Unet.from_pretrained (the class method) skips _model_class: an encoder name smp does not know
        # stops it too, with an error that names the loader
        config = {NOTE_KEY: _load_note(), **config, "_model_class": SMP_REFUSAL.format(model_class=model_class),
                  "encoder_name": ENCODER_REFUSAL.format(encoder_name=config["encoder_name"]), SECTION: section}
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    (folder / CARD_NAME).write_text(card)
    return folder


def _alpha_text(module: nn.Module) -> str:
    """The learned alpha of a P-pooling layer for the card (``-`` for other layers)."""
    inner = module.pool if isinstance(module, SamePadPool2d) else module
    if not isinstance(inner, PPoolBase):
        return "-"
    alpha = inner.alpha.detach().float().cpu()
    if alpha.numel() == 1:
        text = f"{alpha.item():.4f}"
    else:
        text = f"{alpha.numel()} channels: mean {alpha.mean():.4f}, min {alpha.min():.4f}, max {alpha.max():.4f}"
    if bool((alpha == 0).all()):
        return f"{text} (= average)"
    return f"{text} (= max, at alpha_max)" if bool((alpha >= inner.alpha_max).all()) else text


def _geometry_text(swap: Mapping[str, Any]) -> str:
    if swap["global"]:
        return "global (whole map)"
    g = swap["geometry"]
    parts = [f"kernel {g['kernel_size']}", f"stride {g['stride']}"]
    parts += [f"{key} {g[key]}" for key, default in (("padding", 0), ("dilation", 1), ("ceil_mode", False)) if g[key] not in (default, [default] * 2)]
    return ", ".join(parts) + (", 'same' padding" if swap["same"] else "")


def _pooling_table(model: nn.Module, swaps: list[dict[str, Any]]) -> str:
    rows = ["| layer | pooling | module | geometry | alpha |", "| --- | --- | --- | --- | --- |"]
    for swap in swaps:
        module = model.get_submodule(swap["name"])
        kind = type(module).__name__
        if isinstance(module, SamePadPool2d):
            kind = f"SamePadPool2d({type(module.pool).__name__})"
        rows.append(f"| `{swap['name']}` | {swap['pooling']} | {kind} | {_geometry_text(swap)} | {_alpha_text(module)} |")
    return "\n".join(rows)


def _card_header(config: Mapping[str, Any], plain: bool, loading: tuple[str, str] | None) -> list[str]:
    library = "segmentation-models-pytorch" if plain else "lit_ppool"
    front = ["---", f"library_name: {library}", "tags:", "- lit_ppool", "- segmentation-models-pytorch",
             "- semantic-segmentation", "- pytorch", "pipeline_tag: image-segmentation", "---"]
    title = f"# {config['_model_class']} ({config.get('encoder_name')})" + ("" if plain else " with swapped pooling")
    if plain:
        how = ("Load with `smp.from_pretrained(\"<this folder or repo id>\")` or `lit_ppool.from_pretrained(...)`: "
               "its pooling layers are smp's own.")
        loader = "import segmentation_models_pytorch as smp\n\nmodel = smp.from_pretrained(\"<this folder or repo id>\")"
    else:
        how = (f"Load with `lit_ppool.from_pretrained(\"<this folder or repo id>\")` (lit_ppool >= {_version()}): it builds "
               "the smp model, swaps its pooling layers as `config.json` records and loads the weights. "
               "`smp.from_pretrained` cannot rebuild the swapped layers.")
        loader = "import lit_ppool\n\nmodel = lit_ppool.from_pretrained(\"<this folder or repo id>\")"
    if loading is not None:
        how, loader = loading
    return front + [title, "", how, "", "```python", loader, "```"]


def _model_card(
    model: nn.Module,
    config: Mapping[str, Any],
    swaps: list[dict[str, Any]],
    *,
    metrics: Mapping[str, float] | None,
    training_config: str | Mapping[str, Any] | None,
    plot_name: str | None,
    dataset: str | None,
    sections: Mapping[str, str] | None,
    loading: tuple[str, str] | None,
) -> str:
    """The README.md model card: how to load, architecture, pooling per layer, metrics, config, plot."""
    lines = _card_header(config, plain=not swaps, loading=loading)
    lines += ["", "## Architecture", "", "| | |", "| --- | --- |"]
    lines += [f"| architecture | {config['_model_class']} |", f"| encoder | {config.get('encoder_name')} |"]
    lines += [f"| classes | {config.get('classes')} |", f"| in_channels | {config.get('in_channels')} |"]
    lines += [f"| saved by | lit_ppool {_version()} |"] + ([f"| dataset | {dataset} |"] if dataset else [])
    lines += ["", "## Pooling per layer", ""]
    if swaps:
        lines += ["Every pooling layer that differs from the smp model's own (alpha: 0 is average, large is max pooling):", ""]
        lines.append(_pooling_table(model, swaps))
    else:
        lines.append("The smp model's own pooling layers (nothing swapped, or every swapped layer baked back).")
    if metrics:
        lines += ["", "## Metrics", "", "| metric | value |", "| --- | ---: |"]
        lines += [f"| {key} | {value:.4f} |" if isinstance(value, float) else f"| {key} | {value} |" for key, value in metrics.items()]
    if training_config:
        text = training_config if isinstance(training_config, str) else json.dumps(training_config, indent=2, default=str)
        lines += ["", "## Training configuration", "", "```yaml" if isinstance(training_config, str) else "```json", text.rstrip(), "```"]
    if plot_name:
        lines += ["", "## Alpha during training", "", f"![alpha per layer over the training steps]({plot_name})"]
    for title, body in (sections or {}).items():
        lines += ["", f"## {title}", "", body.rstrip()]
    return "\n".join(lines) + "\n"


def model_card(
    model: nn.Module,
    *,
    metrics: Mapping[str, float] | None = None,
    training_config: str | Mapping[str, Any] | None = None,
    plot_name: str | None = None,
    dataset: str | None = None,
    sections: Mapping[str, str] | None = None,
    loading: tuple[str, str] | None = None,
) -> str:
    """The model card (markdown) that :func:`save_pretrained` writes, for a model saved in another form.

    Args:
        model: An smp model, swapped or not.
        metrics, training_config, dataset, sections: As :func:`save_pretrained`.
        plot_name: File name of the alpha plot next to the card, if any.
        loading: ``(sentence, python code)`` saying how to load the saved form, in place of
            ``from_pretrained``'s (e.g. for ONNX).

    Example:
        >>> import segmentation_models_pytorch as smp
        >>> model_card(smp.Unet("resnet18", encoder_weights=None)).splitlines()[9]
        '# Unet (resnet18)'
    """
    _check_smp_model(model)
    config = {"_model_class": type(model).__name__, **model.config}
    swaps = _recorded_swaps(model, _fresh_model(model))
    return _model_card(
        model, config, swaps, metrics=metrics, training_config=training_config, plot_name=plot_name,
        dataset=dataset, sections=sections, loading=loading,
    )


def _env_offline() -> bool:
    from huggingface_hub import constants

    # the constant is read when huggingface_hub is imported; the variable may be set after that
    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _download(repo_id: str, revision: str | None) -> Path:
    """The local snapshot of a Hub repo (from the cache when offline), or a one-line error saying what to do."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = _env_offline()
    try:
        path = snapshot_download(
            repo_id, revision=revision, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, CARD_NAME, "*.png"], local_files_only=offline
        )
    except HFValidationError as err:
        raise NotASavedModelError(
            f"Expected a saved model folder or a Hub repo id ('owner/name'), but got {repo_id!r}: no such folder, "
            f"and not a valid repo id ({str(err).splitlines()[0]})."
        ) from None
    except (RepositoryNotFoundError, RevisionNotFoundError) as err:
        raise NotASavedModelError(
            f"Expected {repo_id!r} to be a saved model folder or a Hub repo, but got neither: no such folder, and "
            f"the Hub says: {str(err).splitlines()[0]}"
        ) from None
    except (LocalEntryNotFoundError, OSError) as err:
        why = "HF_HUB_OFFLINE=1 is set" if offline else f"the Hub could not be reached ({type(err).__name__})"
        raise NotASavedModelError(
            f"Expected {repo_id!r} to be a saved model folder or a Hub repo in the cache ({constants.HF_HUB_CACHE}), "
            f"but it is neither and {why}. Download it once with network (`hf download {repo_id}` or "
            "`lit_ppool.from_pretrained` online), or pass the folder that holds config.json and model.safetensors."
        ) from None
    return Path(path)


def _resolve(source: str | os.PathLike, revision: str | None) -> Path:
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise NotASavedModelError(
            f"Expected a saved model folder or a Hub repo id, but got the file {str(source)!r}: pass the folder "
            f"that holds {CONFIG_NAME} and {WEIGHTS_NAME}."
        )
    if os.path.isabs(str(source)) or str(source).startswith((".", "~")) or str(source).count("/") > 1:
        raise NotASavedModelError(f"Expected a saved model folder or a Hub repo id, but got {str(source)!r}: no such folder.")
    return _download(str(source), revision)


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_NAME
    if not path.is_file():
        found = sorted(p.name for p in folder.iterdir())[:6]
        raise NotASavedModelError(
            f"Expected {str(folder)!r} to be a saved model ({CONFIG_NAME} and {WEIGHTS_NAME}, as lit_ppool.save_pretrained "
            f"or smp's save_pretrained write), but got a folder without {CONFIG_NAME} (it holds {found})."
        )
    try:
        config = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SavedModelError(f"Expected {path} to be JSON, but got a parse error: {err}.") from None
    if not isinstance(config, dict) or not isinstance(config.get("_model_class"), str):
        raise SavedModelError(f"Expected {path} to be an smp config with a `_model_class` entry, but got none.")
    return config


def _read_section(config: Mapping[str, Any], path: Path) -> dict[str, Any] | None:
    """The ``lit_ppool`` section of a config (``None`` for a plain smp folder), its format checked."""
    if SECTION not in config:
        return None
    section = config[SECTION]
    if not isinstance(section, dict) or not isinstance(section.get("swaps"), list):
        raise SavedModelError(f"Expected the `{SECTION}` section of {path} to hold a `swaps` list, but got {section!r:.200}.")
    if not isinstance(section.get("format"), int) or section["format"] > FORMAT_VERSION:
        raise SavedModelError(
            f"Expected the `{SECTION}` section of {path} to have format <= {FORMAT_VERSION}, but got "
            f"{section.get('format')!r} (saved by lit_ppool {section.get('version', 'an unknown version')}; "
            f"this is {_version()}): upgrade lit_ppool."
        )
    return section


def _build_smp_model(config: Mapping[str, Any], section: Mapping[str, Any] | None, path: Path) -> nn.Module:
    import segmentation_models_pytorch as smp
    from segmentation_models_pytorch.base import SegmentationModel

    # format 1 kept the class in _model_class; format 2 moved it to the section (see SMP_REFUSAL)
    if section is not None and "model_class" in section:
        key, name = "model_class", section["model_class"]
    else:
        key, name = "_model_class", config["_model_class"]
    cls = getattr(smp, name, None) if isinstance(name, str) else None
    if not (isinstance(cls, type) and issubclass(cls, SegmentationModel)):
        raise SavedModelError(f"Expected `{key}` in {path} to be an smp architecture, but got {name!r}.")
    kwargs = _smp_kwargs(config)
    if section is not None and "encoder_name" in section:  # see ENCODER_REFUSAL
        kwargs["encoder_name"] = section["encoder_name"]
    try:
        return cls(**kwargs)
    except (TypeError, ValueError, KeyError, RuntimeError) as err:
        raise SavedModelError(f"Expected {path} to hold valid {cls.__name__} arguments, but building it failed: {err}") from None


def _apply_swaps(model: nn.Module, section: Mapping[str, Any], path: Path) -> None:
    """Re-apply the recorded swap of a ``lit_ppool`` config section (:func:`_read_section`) to the freshly built model."""
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
                f"Expected the pooling of {name!r} in {path} to be buildable by lit_ppool {_version()} (poolings "
                f"{available_poolings()}), but got {swap.get('pooling')!r} saved by lit_ppool {saved_by}: {err}"
                + (" Upgrade lit_ppool." if saved_by != _version() else "")
            ) from None
        layer.train(parent.training)
        model.set_submodule(name, layer, strict=True)


def _load_weights(model: nn.Module, folder: Path, config_path: Path) -> None:
    """Load ``model.safetensors`` into ``model``, every key and shape checked first (a one-line error)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = folder / WEIGHTS_NAME
    if not path.is_file():
        raise NotASavedModelError(f"Expected {str(folder)!r} to hold {WEIGHTS_NAME} next to {CONFIG_NAME}, but got none.")
    try:
        state = load_file(path)
    except (SafetensorError, OSError) as err:
        raise SavedModelError(f"Expected {path} to be a safetensors file, but reading it failed: {err}.") from None
    expected = model.state_dict()
    problems = []
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}" for k in expected if k in state and state[k].shape != expected[k].shape]
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if keys:
            problems.append(f"{len(keys)} {label} ({', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''})")
    if problems:
        raise SavedModelError(
            f"Expected the weights in {path} to match the model that {config_path} describes (smp model and "
            f"recorded swap), but got {'; '.join(problems)}."
        )
    model.load_state_dict(state, strict=True)


def from_pretrained(source: str | os.PathLike, *, revision: str | None = None) -> nn.Module:
    """Load a model saved by :func:`save_pretrained` (or smp's ``save_pretrained``) from a folder or the Hub.

    Builds the smp model from ``config.json`` (without pretrained encoder weights: every
    weight is in ``model.safetensors``), re-applies the recorded swap module by module, and
    loads the weights with strict key and shape checking. A Hub repo id goes through
    ``huggingface_hub.snapshot_download``: its cache is used, and ``HF_HUB_OFFLINE=1`` is
    honoured (then only the cache is read).

    Args:
        source: A folder, or a Hub repo id (``"owner/name"``).
        revision: The Hub revision (branch, tag or commit); ignored for folders.

    Returns:
        The model, in eval mode.

    Raises:
        NotASavedModelError: (a ``FileNotFoundError``) If ``source`` is not a folder holding
            ``config.json`` and ``model.safetensors`` nor a Hub repo that can be read (offline and
            not cached, unknown repo): the message names it and says what to do.
        SavedModelError: (a ``ValueError``) If ``config.json`` is not a valid smp config, records
            a pooling or option this lit_ppool does not know (e.g. saved by a newer version), or the
            weights do not match the rebuilt model: the message names the file and the problem.

    Example:
        >>> import tempfile, torch, segmentation_models_pytorch as smp
        >>> from lit_ppool import swap_pooling
        >>> model = smp.Unet("resnet18", encoder_weights=None, classes=2).eval()
        >>> _ = swap_pooling(model, "p", alpha_init=3.0)
        >>> loaded = from_pretrained(save_pretrained(model, tempfile.mkdtemp()))
        >>> loaded.encoder.maxpool
        PPool2d(kernel_size=3, stride=2, padding=1, dilation=1, ceil_mode=False, alpha=3.0000)
        >>> x = torch.rand(1, 3, 64, 64)
        >>> torch.equal(loaded(x), model(x))
        True
    """
    folder = _resolve(source, revision)
    config = _read_config(folder)
    config_path = folder / CONFIG_NAME
    section = _read_section(config, config_path)
    model = _build_smp_model(config, section, config_path)
    if section is not None:
        _apply_swaps(model, section, config_path)
    _load_weights(model, folder, config_path)
    return model.eval()
