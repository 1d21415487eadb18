"""Save and load a swapped smp model: smp's Hugging Face Hub layout, plus the swap that rebuilds it.

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

from torch import nn

from lit_ppool.sharing.card import card_markdown
from lit_ppool.sharing.swaps import (
    FORMAT_VERSION,
    SECTION,
    NotASavedModelError,
    SavedModelError,
    apply_swaps,
    check_smp_model,
    fresh_model,
    library_version,
    recorded_swaps,
    smp_kwargs,
)

__all__ = ["from_pretrained", "save_pretrained"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
SMP_REFUSAL = "{model_class} with swapped pooling: load it with lit_ppool.from_pretrained"
"""The ``_model_class`` of a swapped model's folder: no smp class, so ``smp.from_pretrained`` stops with an
``AttributeError`` that names it (``getattr(smp, _model_class)`` in smp 0.5 and 0.6)."""

ENCODER_REFUSAL = "{encoder_name} (swapped pooling: load it with lit_ppool.from_pretrained)"
"""The ``encoder_name`` of a swapped model's folder (the real one is in the section): smp's class methods
(``smp.Unet.from_pretrained``), which do not read ``_model_class``, stop at an encoder name smp does not know."""
NOTE_KEY = "_lit_ppool_note"  # smp drops config keys starting with "_" before building the model



def _load_note(source: str = "<this folder or its Hub repo id>") -> str:
    return (
        f"Saved by lit_ppool {library_version()} with swapped pooling layers: load it with "
        f"`lit_ppool.from_pretrained({source!r})`. smp.from_pretrained cannot rebuild them, and refuses "
        "this folder (`_model_class` names no smp class; the class is `lit_ppool.model_class`)."
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
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     sorted(p.name for p in save_pretrained(model, tmp).iterdir())
        ['README.md', 'config.json', 'model.safetensors']
    """
    check_smp_model(model)
    swaps = recorded_swaps(model, fresh_model(model))
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
    card = card_markdown(
        model, config, swaps, metrics=metrics, training_config=training_config, plot_name=plot_name,
        dataset=dataset, sections=sections, loading=None,
    )
    if swaps:  # a folder that smp.from_pretrained refuses, saying which loader rebuilds it
        model_class = config["_model_class"]
        section = {"version": library_version(), "format": FORMAT_VERSION, "loader": "lit_ppool.from_pretrained",
                   "model_class": model_class, "encoder_name": config["encoder_name"], "swaps": swaps}
        # smp.Unet.from_pretrained (the class method) skips _model_class: an encoder name smp does not know
        # stops it too, with an error that names the loader
        config = {NOTE_KEY: _load_note(), **config, "_model_class": SMP_REFUSAL.format(model_class=model_class),
                  "encoder_name": ENCODER_REFUSAL.format(encoder_name=config["encoder_name"]), SECTION: section}
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    (folder / CARD_NAME).write_text(card)
    return folder


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
            f"this is {library_version()}): upgrade lit_ppool."
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
    kwargs = smp_kwargs(config)
    if section is not None and "encoder_name" in section:  # see ENCODER_REFUSAL
        kwargs["encoder_name"] = section["encoder_name"]
    try:
        return cls(**kwargs)
    except (TypeError, ValueError, KeyError, RuntimeError) as err:
        raise SavedModelError(f"Expected {path} to hold valid {cls.__name__} arguments, but building it failed: {err}") from None


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
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     loaded = from_pretrained(save_pretrained(model, tmp))
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
        apply_swaps(model, section, config_path)
    _load_weights(model, folder, config_path)
    return model.eval()
