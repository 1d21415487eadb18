"""Encoder weights of the smp models: pretrained weights that fail fast offline, and local weight files.

smp 0.6 takes ``encoder_weights="imagenet"`` of its own encoders from the Hugging Face Hub
(``smp-hub/<encoder>.<weights>``: ``config.json`` and ``model.safetensors``, pinned to a commit)
and those of ``tu-`` encoders from timm (Hub repo ``timm/<model>.<tag>`` or a release URL
cached under ``torch.hub.get_dir()/checkpoints``). Without network a plain
``smp.create_model`` retries for about half a minute per file before failing with a generic
message; :func:`create_model` looks in the caches first, asks the server once (no retries)
when a file is missing, and otherwise fails at once with :class:`WeightsUnavailableError`,
which says how to pre-download the weights or use a local file.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import pickle
import re
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import segmentation_models_pytorch as smp
import timm
import torch
from torch import Tensor, nn

from lit_ppool.layers.registry import NATIVE_POOL_TYPES
from lit_ppool.training.errors import ConfigError

__all__ = [
    "WEIGHT_FILE_SUFFIXES",
    "WeightsUnavailableError",
    "create_model",
    "load_encoder_weights",
    "skip_pretrained_weights",
]

log = logging.getLogger(__name__)

WEIGHT_FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
"""File endings that mark ``encoder_weights`` as the path of a local weights file."""

# classifier heads of the source networks, absent from the (feature-only) encoders
_HEAD_PREFIXES = ("fc.", "classifier.", "head.", "last_linear.", "_fc.")
_TRUE = {"1", "ON", "YES", "TRUE"}
_SKIP_PRETRAINED: contextvars.ContextVar[bool] = contextvars.ContextVar("lit_ppool_skip_pretrained", default=False)


class WeightsUnavailableError(ConfigError, OSError):
    """Pretrained weights that are neither in the local cache nor downloadable (no network or offline mode)."""


@contextlib.contextmanager
def skip_pretrained_weights(enabled: bool = True) -> Iterator[None]:
    """Within this context :func:`create_model` builds encoders without reading or downloading their weights.

    For models whose weights all come from a checkpoint right after (``load_from_checkpoint``,
    ``lit-ppool test --ckpt_path ...``): nothing is downloaded in vain, and a checkpoint whose
    ``encoder_weights`` names a file of another machine still loads.
    """
    token = _SKIP_PRETRAINED.set(enabled)
    try:
        yield
    finally:
        _SKIP_PRETRAINED.reset(token)


def create_model(
    arch: str, encoder_name: str, encoder_weights: str | os.PathLike | bool | None, classes: int, **model_kwargs: Any
) -> nn.Module:
    """``smp.create_model`` with offline-safe pretrained weights and local weight files.

    ``encoder_weights`` is one of:

    * ``None``: random initialisation;
    * a name of smp's pretrained weights of the encoder (``"imagenet"``, ``"ssl"``, ...): read from
      the Hugging Face cache (``HF_HUB_CACHE``) when there, so it works offline, else downloaded;
    * for ``tu-<timm model>`` encoders ``"imagenet"`` (or ``True``): timm's pretrained weights of
      the model, the tag chosen in the name (``tu-resnet50.a1_in1k``), read from the Hugging Face
      or torch hub cache when there;
    * the path of a local weights file (``.safetensors``, ``.pth``, ``.pt``, ``.bin``, ``.ckpt``):
      see :func:`load_encoder_weights`.

    Args:
        arch: smp architecture name (``"Unet"``, ...).
        encoder_name: smp encoder name or ``"tu-<timm model>"``.
        encoder_weights: As above.
        classes: Number of output classes.
        **model_kwargs: Further arguments of the smp model (``in_channels``, ``decoder_channels``, ...).

    Raises:
        WeightsUnavailableError: (a :class:`ConfigError` and an ``OSError``) if named weights are
            not cached and cannot be downloaded: raised after one request (the Hub's
            ``HF_HUB_ETAG_TIMEOUT``, 10 s by default) or at once with ``HF_HUB_OFFLINE=1``.
        ConfigError: If ``encoder_weights`` is not a valid name or its file is missing or does not match.
    """
    if encoder_weights is None or encoder_weights is False or _SKIP_PRETRAINED.get():
        if encoder_weights not in (None, False):
            log.info("lit_ppool: encoder_weights=%r not loaded: every weight comes from the checkpoint", encoder_weights)
        return smp.create_model(arch, encoder_name=encoder_name, encoder_weights=None, classes=classes, **model_kwargs)
    timm_name = _timm_name(encoder_name)
    kind = _weights_kind(encoder_name, encoder_weights, timm_name)
    if kind == "file":
        model = smp.create_model(arch, encoder_name=encoder_name, encoder_weights=None, classes=classes, **model_kwargs)
        load_encoder_weights(model.encoder, encoder_weights, encoder_name)
        return model
    if kind == "timm":
        if "pretrained_cfg_overlay" not in model_kwargs:
            cached = _ensure_timm_weights(timm_name, encoder_name)
            if cached is not None:  # timm reads the cached file itself, without asking the server first
                model_kwargs = {**model_kwargs, "pretrained_cfg_overlay": {"file": cached}}
        return smp.create_model(arch, encoder_name=encoder_name, encoder_weights=True, classes=classes, **model_kwargs)
    _ensure_smp_hub_weights(encoder_name, encoder_weights)
    # cached at a pinned commit: smp's own download returns the cached files without a request
    return smp.create_model(arch, encoder_name=encoder_name, encoder_weights=encoder_weights, classes=classes, **model_kwargs)


def load_encoder_weights(encoder: nn.Module, path: str | os.PathLike, encoder_name: str = "encoder") -> None:
    """Load a local weights file into ``encoder`` (an smp encoder), checking that it matches.

    The file holds a state_dict of the encoder, as written by
    ``torch.save(model.encoder.state_dict(), path)`` or ``safetensors.torch.save_file``; smp-hub's
    ``model.safetensors`` files are such state_dicts. Also accepted: a Lightning checkpoint or
    model state_dict (keys ``model.encoder.*`` / ``encoder.*`` are taken), ``module.``-prefixed
    keys, a timm model's state_dict for a ``tu-`` encoder; classifier-head keys (``fc.*``,
    ``classifier.*``, ``head.*``) and parameters of swapped pooling layers (the alpha of a
    P-pooling checkpoint: pooling is swapped after loading, with fresh values) are left out. A first convolution saved for 3 input
    channels is adapted to the model's ``in_channels`` as smp adapts pretrained weights.
    ``.safetensors`` files are read with safetensors, others with
    ``torch.load(path, map_location="cpu", weights_only=True)``.

    Raises:
        ConfigError: If the file is missing or unreadable, holds something other than tensors, or
            its keys or shapes do not match the encoder (listing a few of each).
    """
    path = Path(path).expanduser()
    state = _read_state_dict(path)
    expected = encoder.state_dict()
    state = _match_prefix(state, expected)
    missing = [key for key in expected if key not in state and not key.endswith("num_batches_tracked")]
    unexpected = [key for key in state if key not in expected and not _is_head(key) and not _in_pooling(encoder, key)]
    mismatched = []
    for key in expected.keys() & state.keys():
        if state[key].shape != expected[key].shape:
            adapted = _adapt_first_conv(state[key], expected[key].shape)
            if adapted is None:
                mismatched.append(f"{key}: {tuple(state[key].shape)} in the file, {tuple(expected[key].shape)} in the model")
            else:
                state[key] = adapted
    if missing or unexpected or mismatched:
        problems = [
            f"{len(found)} {what}, e.g. {found[:4]}"
            for what, found in (("missing keys", missing), ("unexpected keys", unexpected), ("with another shape", mismatched))
            if found
        ]
        raise ConfigError(
            f"Expected argument `encoder_weights` to be a state_dict of the {encoder_name!r} encoder, but {str(path)!r} "
            f"does not match it: {'; '.join(problems)}. Save a matching file with "
            f"`torch.save(model.encoder.state_dict(), path)` from a model with encoder_name={encoder_name!r}."
        )
    nn.Module.load_state_dict(encoder, {key: state.get(key, value) for key, value in expected.items()})
    log.info("lit_ppool: loaded the %s encoder weights from %s", encoder_name, path)


# --- encoder_weights: which kind --------------------------------------------------------------


def _timm_name(encoder_name: str) -> str | None:
    """The timm model behind a ``tu-`` encoder, or behind a deprecated ``timm-`` one that smp maps to ``tu-``."""
    if encoder_name.startswith("tu-"):
        return encoder_name[3:]
    if not smp.encoders.is_equivalent_to_timm_universal(encoder_name):
        return None
    with warnings.catch_warnings():  # smp's deprecation of the timm- names: the user's choice, warned about at build
        warnings.simplefilter("ignore", DeprecationWarning)
        return smp.encoders.get_encoder(encoder_name, weights=None).name  # smp's own timm- -> tu- mapping


def _looks_like_path(value: Any) -> bool:
    if isinstance(value, os.PathLike):
        return True
    return isinstance(value, str) and (
        "/" in value or "\\" in value or value.startswith(("~", ".")) or value.lower().endswith(WEIGHT_FILE_SUFFIXES)
    )


def _weights_kind(encoder_name: str, encoder_weights: Any, timm_name: str | None) -> str:
    if timm_name is not None:
        if encoder_weights is True or encoder_weights == "imagenet":
            return "timm"
        choices = "'imagenet' or True (timm's pretrained weights of the model; pick them by tag: 'tu-<model>.<tag>')"
    else:
        names = list(smp.encoders.encoders.get(encoder_name, {}).get("pretrained_settings", {}))
        if isinstance(encoder_weights, str) and encoder_weights in names:
            return "smp-hub"
        choices = f"one of {names}" if names else "None (smp has no pretrained weights for it)"
    if _looks_like_path(encoder_weights):
        path = Path(encoder_weights).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"Expected argument `encoder_weights` to be the path of a local weights file, but got "
                f"{str(encoder_weights)!r}, which {'is not a file' if path.exists() else 'does not exist'}."
            )
        return "file"
    raise ConfigError(
        f"Expected argument `encoder_weights` of encoder {encoder_name!r} to be {choices}, None or the path of a "
        f"local weights file ({', '.join(WEIGHT_FILE_SUFFIXES)}), but got {encoder_weights!r}."
    )


# --- pretrained weights: cache first, one request, a clear error --------------------------------


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE


def _hf_cached(repo_id: str, filename: str, revision: str | None) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename, revision=revision)
    return found if isinstance(found, str) else None


def _hub_unreachable(repo_id: str, filename: str, revision: str | None) -> str | None:
    """Why the Hub cannot serve ``filename`` (one request, no retries), or None if it answers."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError

    if _hub_offline():
        return "HF_HUB_OFFLINE is set"
    try:
        get_hf_file_metadata(hf_hub_url(repo_id, filename, revision=revision), timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except HfHubHTTPError as err:
        status = getattr(getattr(err, "response", None), "status_code", None)
        if status is not None and status < 500:  # the server answered: the download reports the details
            return None
        return _first_line(err)
    except Exception as err:  # noqa: BLE001 (connection refused, DNS failure, timeout, proxy errors)
        return _first_line(err)
    return None


def _url_unreachable(url: str) -> str | None:
    if _hub_offline():
        return "HF_HUB_OFFLINE is set"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=10):
            return None
    except urllib.error.HTTPError as err:
        return None if err.code < 500 else _first_line(err)
    except (OSError, ValueError) as err:
        return _first_line(err)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def _ensure_smp_hub_weights(encoder_name: str, weights: str) -> None:
    from huggingface_hub import constants

    settings = smp.encoders.encoders[encoder_name]["pretrained_settings"][weights]
    repo_id, revision = settings["repo_id"], settings.get("revision")
    files = ("config.json", "model.safetensors")
    if all(_hf_cached(repo_id, name, revision) for name in files):
        return
    reason = _hub_unreachable(repo_id, files[1], revision)
    if reason is None:
        return  # online: smp downloads them into the cache
    snapshot = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "snapshots" / str(revision)
    raise WeightsUnavailableError(
        _unavailable_message(
            f"encoder_weights={weights!r} of encoder {encoder_name!r} (Hugging Face repo {repo_id})",
            f"the Hugging Face cache {constants.HF_HUB_CACHE}",
            f"the Hub {constants.ENDPOINT}",
            reason,
            f"python -c \"import segmentation_models_pytorch as smp; smp.encoders.get_encoder('{encoder_name}', weights='{weights}')\"",
            "HF_HUB_CACHE",
            str(snapshot / "model.safetensors"),
        )
    )


def _timm_pretrained_cfg(timm_name: str, encoder_name: str) -> Any:
    try:
        return timm.models.get_pretrained_cfg(timm_name)
    except RuntimeError as err:  # e.g. an unknown pretrained tag
        raise ConfigError(f"Expected argument `encoder_name` to name a timm model with pretrained weights, but got "
                          f"{encoder_name!r}: {err}") from err  # fmt: skip


def _ensure_timm_weights(timm_name: str, encoder_name: str) -> str | None:
    """The cached weights file of a timm model, None if timm may download it, or raise if it cannot."""
    import torch.hub
    from huggingface_hub import constants

    cfg = _timm_pretrained_cfg(timm_name, encoder_name)
    if cfg is None:
        return None  # not in timm's registry: leave it to timm
    if not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise ConfigError(
            f"Expected argument `encoder_weights` to be None for {encoder_name!r}, which has no pretrained weights "
            f"in timm, but got pretrained weights."
        )
    snippet = f"python -c \"import timm; timm.create_model('{timm_name}', pretrained=True)\""
    if cfg.hf_hub_id:
        repo_id, _, revision = cfg.hf_hub_id.partition("@")
        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        for name in names:
            cached = _hf_cached(repo_id, name, revision or None)
            if cached is not None:
                return None if cfg.custom_load else cached
        reason = _hub_unreachable(repo_id, names[0], revision or None)
        where, server, env = f"the Hugging Face cache {constants.HF_HUB_CACHE}", f"the Hub {constants.ENDPOINT}", "HF_HUB_CACHE"
        example = f"{constants.HF_HUB_CACHE}/models--{repo_id.replace('/', '--')}/snapshots/<commit>/{names[0]}"
    elif cfg.url:
        cache_dir = Path(torch.hub.get_dir()) / "checkpoints"
        cached_file = cache_dir / os.path.basename(urlparse(cfg.url).path)
        if cached_file.is_file():
            return None if cfg.custom_load else str(cached_file)
        reason = _url_unreachable(cfg.url)
        where, server, env, example = f"the torch hub cache {cache_dir}", cfg.url, "TORCH_HOME", str(cached_file)
    else:
        return None
    if reason is None:
        return None
    raise WeightsUnavailableError(
        _unavailable_message(
            f"encoder_weights of encoder {encoder_name!r} (timm model {timm_name!r})", where, server, reason, snippet, env, example
        )
    )


def _unavailable_message(what: str, where: str, server: str, reason: str, snippet: str, env: str, example: str) -> str:
    return (
        f"Expected the pretrained {what} to be in {where} or downloadable, but they are not cached and {server} "
        f"cannot be reached ({reason}). Either\n"
        f"  1. download them on a machine with network access:\n"
        f"       {snippet}\n"
        f"     and copy the cache folder it fills to this machine (to the path above, or set {env} to the copy); "
        f"cached weights are used offline;\n"
        f"  2. or pass a local weights file (a state_dict of the encoder, .safetensors/.pth/.pt) as `encoder_weights`, "
        f"e.g. --model.encoder_weights={example};\n"
        f"  3. or train from random initialisation with encoder_weights=None."
    )


# --- local weight files ---------------------------------------------------------------------------


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise ConfigError(
            f"Expected argument `encoder_weights` to be the path of a local weights file, but got {str(path)!r}, "
            f"which {'is not a file' if path.exists() else 'does not exist'}."
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            loaded: Any = load_file(str(path), device="cpu")
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = _unpickler_reason(err)
        if "global" not in reason.lower():  # not a pickle of objects at all
            raise ConfigError(
                f"Expected argument `encoder_weights` to be a readable weights file, but {str(path)!r} could not be "
                f"read ({reason})."
            ) from err
        raise ConfigError(
            f"Expected argument `encoder_weights` to be a file of tensors that loads with `torch.load(..., "
            f"weights_only=True)`, but {str(path)!r} holds other objects ({reason}). Save the encoder's "
            f"weights with `torch.save(model.encoder.state_dict(), path)`."
        ) from err
    except Exception as err:  # truncated or not a checkpoint at all
        raise ConfigError(
            f"Expected argument `encoder_weights` to be a readable weights file, but {str(path)!r} could not be read "
            f"({_first_line(err)})."
        ) from err
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]  # a Lightning checkpoint
    if not isinstance(loaded, Mapping) or not loaded:
        raise ConfigError(
            f"Expected argument `encoder_weights` to be a file holding a state_dict (parameter name -> tensor), "
            f"but {str(path)!r} holds {type(loaded).__name__ if loaded else 'nothing'}."
        )
    not_tensors = [key for key, value in loaded.items() if not isinstance(value, Tensor)]
    if not_tensors:
        raise ConfigError(
            f"Expected argument `encoder_weights` to be a file holding a state_dict (parameter name -> tensor), "
            f"but in {str(path)!r} {not_tensors[:3]} are not tensors."
        )
    return {str(key): value for key, value in loaded.items()}


def _unpickler_reason(err: BaseException) -> str:
    """The specific part of torch's weights_only unpickling error (its first line is generic)."""
    match = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\. Please use|\n\n|$)", str(err), re.DOTALL)
    return match.group(1).strip() if match else _first_line(err)


def _match_prefix(state: dict[str, Tensor], expected: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The variant of ``state``'s keys that best matches ``expected`` (prefixes of models, DDP and timm)."""
    candidates = [state]
    for prefix in ("model.encoder.", "encoder.", "module.", "module.model.encoder."):
        candidates.append({key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)})
    candidates.append({f"model.{key}": value for key, value in state.items()})  # timm model -> tu- encoder
    return max(candidates, key=lambda candidate: len(candidate.keys() & expected.keys()))


def _in_pooling(encoder: nn.Module, key: str) -> bool:
    """Whether ``key`` lies under a (parameterless) pooling layer of ``encoder``, e.g. ``maxpool.alpha_raw``."""
    parts = key.split(".")[:-1]
    while parts:
        try:
            module = encoder.get_submodule(".".join(parts))
        except AttributeError:
            parts.pop()
            continue
        return isinstance(module, NATIVE_POOL_TYPES)
    return False


def _is_head(key: str) -> bool:
    return key.removeprefix("model.").startswith(_HEAD_PREFIXES)


def _adapt_first_conv(weight: Tensor, shape: torch.Size) -> Tensor | None:
    """A 3-input-channel first convolution adapted to ``shape``, else None.

    timm's ``adapt_input_conv``: what timm does for smp's ``tu-`` encoders, and the same as smp's
    ``encoder.set_in_channels(in_channels, pretrained=True)`` for its own encoders.
    """
    if weight.ndim != 4 or len(shape) != 4 or weight.shape[1] != 3:
        return None
    if weight.shape[0] != shape[0] or weight.shape[2:] != shape[2:]:
        return None
    return timm.models.adapt_input_conv(shape[1], weight)
