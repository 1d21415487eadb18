"""Where adaptive P-pooling chooses max: its predicted alpha per ground-truth class, and a figure of alpha maps.

For every checkpoint given (runs of ``pooling: p_adaptive``), the test split of its config's
datamodule runs through the model once; every adaptive layer's alpha map (mean over channels,
upsampled nearest to the image) is averaged over the pixels of each ground-truth class. The
figure shows, for the first checkpoint, a few test images, their masks and every layer's map.

    python tools/alpha_by_class.py runs/compare_crackforest/p_adaptive/seed_*/checkpoints/last.ckpt \
        --root /path/to/CrackForest --figure docs/crackforest_alpha_maps.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from lit_ppool import CrackForestDataModule, PPoolSegmentationModule
from lit_ppool.training.alpha_maps import ALPHA_COLORMAP, AlphaMapCapture, upsampled_mean


def class_means(checkpoint: Path, datamodule, num_classes: int, figure_images: int = 0):
    """Per layer, the mean predicted alpha over the test pixels of each class; and the first images' maps."""
    model = PPoolSegmentationModule.load_from_checkpoint(checkpoint, map_location="cpu").model.eval()
    sums: dict[str, torch.Tensor] = {}
    counts = torch.zeros(num_classes, dtype=torch.float64)
    shown = []
    with AlphaMapCapture(model) as capture, torch.no_grad():
        for batch in datamodule.test_dataloader():
            images, masks = batch["image"], batch["mask"]
            model(images)
            for name, alpha in capture.maps.items():
                full = upsampled_mean(alpha, masks.shape[-2:]).double()
                per_class = torch.stack([full[masks == c].sum() for c in range(num_classes)])
                sums[name] = sums.get(name, torch.zeros(num_classes, dtype=torch.float64)) + per_class
            counts += torch.stack([(masks == c).sum() for c in range(num_classes)]).double()
            if len(shown) < figure_images:
                maps = {name: upsampled_mean(alpha, masks.shape[-2:]) for name, alpha in capture.maps.items()}
                for i in range(min(images.shape[0], figure_images - len(shown))):
                    shown.append((images[i], masks[i], {name: m[i] for name, m in maps.items()}))
    layers = {name: (layer.alpha_min, layer.alpha_max) for name, layer in capture.layers.items()}
    return {name: (total / counts).tolist() for name, total in sums.items()}, shown, layers


def draw(shown, layers, path: Path) -> None:
    from matplotlib.figure import Figure

    rows = 2 + len(layers)
    figure = Figure(figsize=(3.2 * len(shown) + 1.2, 2.2 * rows), layout="constrained")
    axes = figure.subplots(rows, len(shown), squeeze=False)
    image_art = None
    for column, (image, mask, maps) in enumerate(shown):
        picture = image.float()
        picture = ((picture - picture.min()) / (picture.max() - picture.min())).permute(1, 2, 0).numpy()
        axes[0, column].imshow(picture)
        axes[1, column].imshow(mask.numpy() == 1, cmap="gray")
        for row, (name, (low, high)) in enumerate(layers.items(), start=2):
            image_art = axes[row, column].imshow(maps[name].numpy(), cmap=ALPHA_COLORMAP, vmin=low, vmax=high)
            if column == 0:
                axes[row, 0].set_title(name, fontsize="small", loc="left")
        for ax in axes[:, column]:
            ax.set_axis_off()
    axes[0, 0].set_title("test photo", fontsize="small", loc="left")
    axes[1, 0].set_title("crack mask", fontsize="small", loc="left")
    figure.colorbar(image_art, ax=axes[2:, :].ravel().tolist(), label="predicted alpha (mean over channels)", shrink=0.8)
    figure.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--root", required=True, help="the CrackForest folder")
    parser.add_argument("--figure", type=Path, help="write the alpha maps of the first checkpoint here (PNG)")
    parser.add_argument("--images", type=int, default=3, help="test images in the figure")
    args = parser.parse_args()
    datamodule = CrackForestDataModule(root=args.root, eval_batch_size=4)
    datamodule.setup("test")
    names = datamodule.class_names
    table = {}
    for index, checkpoint in enumerate(args.checkpoints):
        means, shown, layers = class_means(checkpoint, datamodule, len(names), args.images if index == 0 else 0)
        table[checkpoint] = means
        if index == 0 and args.figure:
            draw(shown, layers, args.figure)
        for name, values in means.items():
            print(f"{checkpoint}  {name}: " + ", ".join(f"{c} {v:.2f}" for c, v in zip(names, values)))
    layer_names = list(next(iter(table.values())))
    print("\nmean over checkpoints (mean alpha on the pixels of each class):")
    for name in layer_names:
        per_class = torch.tensor([table[c][name] for c in table]).mean(0)
        spread = torch.tensor([table[c][name] for c in table])
        diffs = spread[:, 1] - spread[:, 0] if spread.shape[1] > 1 else spread[:, 0]
        print(f"  {name}: " + ", ".join(f"{c} {v:.2f}" for c, v in zip(names, per_class.tolist()))
              + f"; {names[-1]} - {names[0]} per checkpoint: " + " ".join(f"{d:+.2f}" for d in diffs.tolist()))


if __name__ == "__main__":
    main()
