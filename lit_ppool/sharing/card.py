"""The model card: the ``README.md`` of a saved model, with how to load it, the pooling per layer and its alpha.

:func:`model_card` writes it for any smp model (swapped or not); :func:`lit_ppool.sharing.hub.save_pretrained`
puts it next to the weights, ``lit-ppool export`` next to an ONNX file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from torch import nn

from lit_ppool.layers.adaptive import AdaptivePPool2d
from lit_ppool.layers.ppool import PPoolBase
from lit_ppool.layers.same import SamePadPool2d
from lit_ppool.sharing.swaps import check_smp_model, fresh_model, library_version, recorded_swaps

__all__ = ["model_card"]


def _alpha_text(module: nn.Module) -> str:
    """The learned alpha of a P-pooling layer for the card, the range of an adaptive one's (``-`` for other layers)."""
    inner = module.pool if isinstance(module, SamePadPool2d) else module
    if isinstance(inner, AdaptivePPool2d):
        return f"predicted per window (range [{inner.alpha_min:g}, {inner.alpha_max:g}], initial bias {inner.alpha_init:g})"
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
    from huggingface_hub import ModelCardData  # the Hub's metadata (YAML front matter); imported when a card is written

    metadata = ModelCardData(
        library_name="segmentation-models-pytorch" if plain else "lit_ppool",
        tags=["lit_ppool", "segmentation-models-pytorch", "semantic-segmentation", "pytorch"],
        pipeline_tag="image-segmentation",
    )
    front = ["---", *metadata.to_yaml().splitlines(), "---"]
    title = f"# {config['_model_class']} ({config.get('encoder_name')})" + ("" if plain else " with swapped pooling")
    if plain:
        how = ("Load with `smp.from_pretrained(\"<this folder or repo id>\")` or `lit_ppool.from_pretrained(...)`: "
               "its pooling layers are smp's own.")
        loader = "import segmentation_models_pytorch as smp\n\nmodel = smp.from_pretrained(\"<this folder or repo id>\")"
    else:
        how = (f"Load with `lit_ppool.from_pretrained(\"<this folder or repo id>\")` (lit_ppool >= {library_version()}): it builds "
               "the smp model, swaps its pooling layers as `config.json` records and loads the weights. "
               "`smp.from_pretrained` cannot rebuild the swapped layers.")
        loader = "import lit_ppool\n\nmodel = lit_ppool.from_pretrained(\"<this folder or repo id>\")"
    if loading is not None:
        how, loader = loading
    return front + [title, "", how, "", "```python", loader, "```"]


def card_markdown(
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
    lines += [f"| saved by | lit_ppool {library_version()} |"] + ([f"| dataset | {dataset} |"] if dataset else [])
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
    check_smp_model(model)
    config = {"_model_class": type(model).__name__, **model.config}
    swaps = recorded_swaps(model, fresh_model(model))
    return card_markdown(
        model, config, swaps, metrics=metrics, training_config=training_config, plot_name=plot_name,
        dataset=dataset, sections=sections, loading=loading,
    )
