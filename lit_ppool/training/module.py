"""The LightningModule: an smp segmentation model whose pooling layers are swapped, with its metrics."""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import lightning as L
import segmentation_models_pytorch as smp
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torchmetrics import ClasswiseWrapper, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassF1Score,
    MulticlassJaccardIndex,
    MulticlassPrecision,
    MulticlassRecall,
)

from lit_ppool.layers.adaptive import AdaptivePPool2d
from lit_ppool.layers.ppool import PPoolBase
from lit_ppool.layers.registry import NATIVE_POOL_TYPES, REFERENCE_POOLING, ResolvedPooling, resolve_pooling
from lit_ppool.surgery import NothingSwappedWarning, SwapReport, swap_pooling
from lit_ppool.surgery.swap import needs_channel_counts
from lit_ppool.training.alpha_maps import AlphaMapCapture, AlphaMapStats
from lit_ppool.training.data.checks import IGNORE_INDEX
from lit_ppool.training.errors import ConfigError
from lit_ppool.training.faults import check_finite_loss
from lit_ppool.training.metrics import BoundaryIoU, TrimapJaccardIndex
from lit_ppool.training.record import BOUNDARY_IOU, F1, IOU, MIOU, PIXEL_ACC, PRECISION, RECALL, TRIMAP_MIOU, metric_key
from lit_ppool.training.weights import create_model, skip_pretrained_weights

__all__ = ["ConfigError", "LOSSES", "PPoolSegmentationModule", "available_archs", "available_encoders"]


def _cross_entropy(ignore_index: int) -> nn.Module:
    return nn.CrossEntropyLoss(ignore_index=ignore_index)


def _dice(ignore_index: int) -> nn.Module:
    return smp.losses.DiceLoss(mode="multiclass", ignore_index=ignore_index)


def _lovasz(ignore_index: int) -> nn.Module:
    return smp.losses.LovaszLoss(mode="multiclass", ignore_index=ignore_index)


class _SumOfLosses(nn.ModuleList):
    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return sum(loss(logits, target) for loss in self)


LOSSES = {
    "ce": _cross_entropy,
    "dice": _dice,
    "lovasz": _lovasz,
    "ce+dice": lambda ignore_index: _SumOfLosses([_cross_entropy(ignore_index), _dice(ignore_index)]),
    "ce+lovasz": lambda ignore_index: _SumOfLosses([_cross_entropy(ignore_index), _lovasz(ignore_index)]),
}
"""Loss name -> factory taking ``ignore_index``: cross-entropy, smp's Dice and Lovasz, or sums."""


def available_archs() -> list[str]:
    """Names of the smp architectures (``Unet``, ``FPN``, ``DeepLabV3Plus``, ...)."""
    return sorted(cls.__name__ for cls in smp.MODEL_ARCHITECTURES_MAPPING.values())


def available_encoders() -> list[str]:
    """Names of smp's own encoders; any timm model is also available as ``"tu-<timm name>"``."""
    return sorted(smp.encoders.get_encoder_names())


def _smp_arch(arch: Any) -> str:
    """smp's spelling of the architecture ``arch`` (given in any case).

    Raises:
        ConfigError: If ``arch`` names no smp architecture (the message lists them).
    """
    archs = {name.lower(): name for name in available_archs()}
    if not isinstance(arch, str) or arch.lower() not in archs:
        raise ConfigError(f"Expected argument `arch` to be one of {available_archs()} (any case), but got {arch!r}.")
    return archs[arch.lower()]


def _check_choice(arg: str, value: Any, choices: Sequence[str], hint: str = "") -> None:
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f"Expected argument `{arg}` to be one of {list(choices)}{hint}, but got {value!r}.")


def _did_you_mean(value: Any, choices: Sequence[str], prefix: str = "") -> str:
    """`` Did you mean 'a' or 'b'?`` for the choices closest to ``value`` (difflib), or ``""``."""
    close = difflib.get_close_matches(str(value), list(choices), n=4, cutoff=0.6)
    return f" Did you mean {' or '.join(repr(prefix + c) for c in close)}?" if close else ""


def _check_encoder(encoder_name: Any) -> None:
    if isinstance(encoder_name, str) and encoder_name.startswith("tu-"):
        import timm

        if timm.is_model(encoder_name[3:]):
            return
        raise ConfigError(
            f"Expected argument `encoder_name` to be 'tu-<a timm model name>', but got {encoder_name!r}: "
            f"{encoder_name[3:]!r} is not a timm model.{_did_you_mean(encoder_name[3:], timm.list_models(), 'tu-')} "
            "`timm.list_models()` lists them."
        )
    encoders = available_encoders()
    if not isinstance(encoder_name, str) or encoder_name not in encoders:
        raise ConfigError(
            f"Expected argument `encoder_name` to be one of smp's {len(encoders)} encoders or 'tu-<any timm model>', "
            f"but got {encoder_name!r}.{_did_you_mean(encoder_name, encoders)} "
            "`lit_ppool.training.module.available_encoders()` lists them."
        )


def _no_swap_message(arch: str, encoder_name: str, pooling: str, report: SwapReport) -> str:
    """Why a model had nothing to swap, for the error of a pooling other than the reference (``max``)."""
    pools = [skip for skip in report.skipped if isinstance(skip.module, NATIVE_POOL_TYPES)]
    if pools:
        reasons = "; ".join(f"{skip.name}: {skip.reason}" for skip in pools[:3])
        why = f"its {len(pools)} pooling layer(s) were all left alone ({reasons})"
    else:
        why = (
            f"it has no pooling layer: {encoder_name!r} downsamples with strided convolutions, so "
            f"pooling={pooling!r} would train the same model as pooling={REFERENCE_POOLING!r}"
        )
    return (
        f"Expected the {arch}/{encoder_name} model to have pooling layers to swap to {pooling!r}, but {why}. "
        "Choose an encoder with pooling layers (e.g. resnet34, vgg16_bn, tu-resnet50d), or pass "
        "allow_no_swap=True (--model.allow_no_swap=true) to train it unchanged on purpose."
    )


def _check_config(hparams: Mapping[str, Any]) -> ResolvedPooling:
    """Validate the module's hyperparameters (names and ranges); return the pooling, resolved once.

    Raises:
        ConfigError: For the first invalid one, naming it, the valid values and what was got.
    """
    _smp_arch(hparams["arch"])
    _check_encoder(hparams["encoder_name"])
    try:  # the table's resolver, as swap_pooling's: "P" and "strided-conv" are valid here too
        target = resolve_pooling(hparams["pooling"], "pooling")
    except ValueError as err:
        raise ConfigError(str(err)) from None
    _check_choice("loss", hparams["loss"], list(LOSSES))
    _check_choice("scheduler_interval", hparams["scheduler_interval"], ["step", "epoch"])
    num_classes, ignore_index = hparams["num_classes"], hparams["ignore_index"]
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"Expected argument `num_classes` to be an int >= 1, but got {num_classes!r}.")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int) or 0 <= ignore_index < num_classes:
        raise ConfigError(
            f"Expected argument `ignore_index` to be an int outside [0, num_classes={num_classes}), "
            f"but got {ignore_index!r}."
        )
    alpha_lr_mult, boundary_width = hparams["alpha_lr_mult"], hparams["boundary_width"]
    if isinstance(alpha_lr_mult, bool) or not isinstance(alpha_lr_mult, (int, float)) or not alpha_lr_mult >= 0:
        raise ConfigError(f"Expected argument `alpha_lr_mult` to be a number >= 0, but got {alpha_lr_mult!r}.")
    if isinstance(boundary_width, bool) or not isinstance(boundary_width, int) or boundary_width < 1:
        raise ConfigError(f"Expected argument `boundary_width` to be an int >= 1, but got {boundary_width!r}.")
    return target


class PPoolSegmentationModule(L.LightningModule):
    """Semantic segmentation with an smp model whose pooling layers are swapped (P-pooling by default).

    ``__init__`` builds ``smp.create_model(arch, encoder_name, encoder_weights, classes=num_classes)``
    (loading the pretrained encoder weights), then replaces its pooling layers with
    :func:`lit_ppool.swap_pooling`, so every process under DDP and every checkpoint sees the
    same modules and the same alpha parameters.

    Optimisation: the ``alpha_raw`` parameters of the :class:`~lit_ppool.PPool2d` layers (and the
    side branches that predict alpha in :class:`~lit_ppool.AdaptivePPool2d` layers) form their
    own parameter group with no weight decay and learning rate ``lr * alpha_lr_mult``; every
    other parameter is in the first group.

    Logged metrics (torchmetrics, dataset-level, synchronised across processes), for
    ``stage`` in ``val`` and ``test``:

    * ``{stage}/mIoU``: ``MulticlassJaccardIndex(average="macro", ignore_index=...)``;
    * ``{stage}/pixel_acc``: pixel accuracy over non-ignored pixels;
    * ``{stage}/trimap_mIoU``: mIoU within ``boundary_width`` pixels of a ground-truth boundary
      (:class:`~lit_ppool.training.metrics.TrimapJaccardIndex`), the detail-sensitive score;
    * ``{stage}/boundary_IoU``: the Boundary IoU of Cheng et al. (CVPR 2021), IoU within the
      inner boundary bands of the target and predicted masks
      (:class:`~lit_ppool.training.metrics.BoundaryIoU`);
    * ``{stage}/IoU/<class name>`` and ``{stage}/boundary_IoU/<class name>``: per-class IoU and
      Boundary IoU at epoch end (names from the datamodule's ``class_names``);
    * ``{stage}/F1/<class name>``, ``{stage}/precision/<class name>`` and ``{stage}/recall/<class name>``:
      per-class pixel F1 (Dice), precision and recall, the scores of thin-structure work (cracks,
      vessels), which report the foreground class's F1; there is no macro F1, as it would mix
      background and foreground;
    * ``{stage}/loss`` and ``train/loss``.

    In ``validate`` and ``test`` (not in the validation of ``fit``), forward hooks on the adaptive
    P-pooling layers (:class:`~lit_ppool.AdaptivePPool2d`) collect the mean, min and max of the
    alpha they predict, over every window, channel and evaluated image (padding included),
    gathered from every process at the end of the epoch: :attr:`alpha_map_summary`, which the
    run record keeps.

    A class absent from both the targets and the predictions (0/0) gets IoU, F1, precision and
    recall 0 (torchmetrics' ``zero_division``, which accepts only 0 or 1), but Boundary IoU nan;
    likewise precision is 0 for a class never predicted and recall 0 for a class without target
    pixels. The macro scores (``mIoU``, ``boundary_IoU``) leave absent classes out.

    Args:
        arch: smp architecture name, e.g. ``"Unet"``, ``"FPN"``, ``"DeepLabV3Plus"`` (case-insensitive).
        encoder_name: smp encoder (``"resnet101"``, ``"vgg16"``, ...) or ``"tu-<timm model>"``.
        encoder_weights: Pretrained encoder weights (``"imagenet"``), the path of a local weights file
            (a state_dict of the encoder: ``.safetensors``, ``.pth``, ``.pt``) or ``None`` for random
            init. Pretrained weights come from the local cache when there (offline too); when they
            are not cached and cannot be downloaded, a ``WeightsUnavailableError`` says how to
            pre-download them (see :func:`lit_ppool.training.weights.create_model`).
        num_classes: Number of classes.
        pooling: Pooling registry name the model's pooling layers are swapped to
            (``"p"``, ``"max"``, ``"avg"``, ``"lp"``, ``"gated"``, ``"mixed"``, ``"dpp"``,
            ``"strided_conv"``, ``"softpool"``).
        pooling_kwargs: Keyword arguments of the new pooling layers (e.g. ``{"alpha_init": 1.0}``).
        include: Glob(s) of qualified module names to swap (default: all pooling layers).
        exclude: Glob(s) of qualified module names to leave alone.
        loss: One of :data:`LOSSES`: ``"ce"``, ``"dice"``, ``"lovasz"``, ``"ce+dice"``, ``"ce+lovasz"``.
        ignore_index: Label of pixels ignored by the loss and the metrics.
        alpha_lr_mult: Learning-rate multiplier of the alpha parameter group, ``>= 0``.
        optimizer: Optimiser factory taking the parameter groups (LightningCLI injects it).
        scheduler: Optional learning-rate scheduler factory taking the optimiser.
        scheduler_interval: Step the scheduler every ``"step"`` (poly schedules) or ``"epoch"``.
        boundary_width: Half-width in pixels of the band of the trimap mIoU.
        model_kwargs: Extra keyword arguments of the smp model (``decoder_channels``, ...).
        check_finite_loss: Stop training with a :class:`~lit_ppool.training.faults.NonFiniteLossError`
            (step, loss, every layer's alpha) when the training loss is NaN or infinite, before the
            backward pass and the optimiser step; ``False`` trains through.
        allow_no_swap: Train a model in which nothing was swapped (an encoder without pooling
            layers, or ``include``/``exclude`` that select none) although ``pooling`` is not
            ``"max"``; by default that is an error, since such a run trains the unchanged model.

    Raises:
        ConfigError: (a ``ValueError``) if a name is unknown (listing the valid ones), a
            value is out of range, the encoder weights are unavailable or do not match, or
            nothing could be swapped (see ``allow_no_swap``).

    Example:
        >>> module = PPoolSegmentationModule("Unet", "resnet18", None, num_classes=3)
        >>> module.model.encoder.maxpool
        PPool2d(kernel_size=3, stride=2, padding=1, dilation=1, ceil_mode=False, alpha=1.0000)
    """

    def __init__(
        self,
        arch: str = "Unet",
        encoder_name: str = "resnet34",
        encoder_weights: str | None = "imagenet",
        num_classes: int = 21,
        pooling: str = "p",
        pooling_kwargs: dict[str, Any] | None = None,
        include: str | list[str] | None = None,
        exclude: str | list[str] | None = None,
        loss: str = "ce",
        ignore_index: int = IGNORE_INDEX,
        alpha_lr_mult: float = 1.0,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["step", "epoch"] = "step",
        boundary_width: int = 3,
        model_kwargs: dict[str, Any] | None = None,
        check_finite_loss: bool = True,
        allow_no_swap: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        target = _check_config(self.hparams)  # the pooling, resolved once for the check and the swap
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.model = self._create_smp_model()  # smp.create_model, offline-safe, or with a local weights file
        self.swapped_layers = self._swap_pooling(target)
        self.criterion = LOSSES[loss](ignore_index)

        self.class_names = tuple(f"class_{i}" for i in range(num_classes))
        self.val_metrics = self._stage_metrics(metric_key("val", ""))  # "val/": every key of the stage
        self.test_metrics = self._stage_metrics(metric_key("test", ""))
        self.alpha_map_summary: dict[str, dict[str, float]] = {}
        """Adaptive layer log name -> ``{"mean", "min", "max"}`` of its predicted alpha over the last
        ``validate`` or ``test`` epoch (see the class); empty before one and without adaptive layers."""
        self._alpha_maps: tuple[AlphaMapCapture, AlphaMapStats] | None = None  # while a validate/test epoch collects

    def _create_smp_model(self) -> nn.Module:
        """The smp model of the hyperparameters, with its ``encoder_weights`` (:func:`create_model`)."""
        hparams = self.hparams
        return create_model(
            _smp_arch(hparams.arch),
            encoder_name=hparams.encoder_name,
            encoder_weights=hparams.encoder_weights,
            classes=hparams.num_classes,
            **(hparams.model_kwargs or {}),
        )

    def _swap_pooling(self, target: ResolvedPooling) -> list[str]:
        """Swap :attr:`model`'s pooling layers to ``target`` (:func:`swap_pooling`); return the swapped names.

        Raises:
            ConfigError: If the swap fails, no layer can be built with ``pooling_kwargs``, or nothing
                is swapped although ``target`` is not the reference pooling and ``allow_no_swap`` is off.
        """
        hparams = self.hparams
        pooling_kwargs = dict(hparams.pooling_kwargs or {})
        example_input = None
        if needs_channel_counts(target, pooling_kwargs):  # one probe forward measures each pool's channel count
            example_input = torch.zeros(1, (hparams.model_kwargs or {}).get("in_channels", 3), 64, 64)
        try:
            with warnings.catch_warnings():  # the error below says more
                warnings.simplefilter("ignore", NothingSwappedWarning)
                report = swap_pooling(
                    self.model, target, include=hparams.include, exclude=hparams.exclude, example_input=example_input,
                    **pooling_kwargs,
                )
        except (TypeError, ValueError) as err:
            raise ConfigError(
                f"Could not swap the pooling layers of {hparams.arch}/{hparams.encoder_name} to {hparams.pooling!r}: {err}"
            ) from err
        unbuildable = [skip for skip in report.skipped if skip.kind == "cannot_build"]
        if unbuildable and not len(report):
            raise ConfigError(
                f"Expected argument `pooling_kwargs` to be valid for pooling {hparams.pooling!r}, but no layer could be "
                f"built with {pooling_kwargs}: {unbuildable[0].reason}"
            )
        if not len(report) and not target.spec.reference and not hparams.allow_no_swap:
            raise ConfigError(_no_swap_message(_smp_arch(hparams.arch), hparams.encoder_name, hparams.pooling, report))
        rank_zero_info(f"lit_ppool: {report.summary()}")
        return [swap.name for swap in report]

    def load_pretrained_weights(self) -> list[str]:
        """Load ``encoder_weights`` into the encoder of a model built without them; return the keys loaded.

        For a model built under :func:`~lit_ppool.training.weights.skip_pretrained_weights` that gets
        no checkpoint after all (``lit-ppool fit --ckpt_path last`` with no run to resume): it then
        equals the model built with its weights. The swapped pooling layers keep their parameters,
        and torch's random state is left as it was. Nothing is loaded when ``encoder_weights`` is None.

        Raises:
            WeightsUnavailableError: (a :class:`ConfigError`) if the weights are neither cached nor downloadable.
            ConfigError: If ``encoder_weights`` names a file that is missing or does not match.

        Example:
            >>> module = PPoolSegmentationModule(encoder_name="resnet18", encoder_weights=None, num_classes=2)
            >>> module.load_pretrained_weights()  # encoder_weights=None: nothing to load
            []
        """
        if self.hparams.encoder_weights in (None, False):
            return []
        with torch.random.fork_rng(devices=[]):  # the model's own random init is already drawn
            source = self._create_smp_model()
        weights, own_keys = source.encoder.state_dict(), self.model.encoder.state_dict().keys()
        swapped = tuple(f"{name.removeprefix('encoder.')}." for name in self.swapped_layers)
        unexplained = [key for key in weights.keys() ^ own_keys if not key.startswith(swapped)]
        if unexplained:
            raise RuntimeError(
                f"Expected the pretrained encoder to differ from this model's only in the swapped pooling layers "
                f"{self.swapped_layers}, but these keys differ too: {unexplained[:5]}. Build the module with its "
                "weights instead (outside skip_pretrained_weights)."
            )
        self.model.encoder.load_state_dict(weights, strict=False)  # strict=False: the swapped layers' own keys
        return list(weights)

    def _stage_metrics(self, prefix: str) -> MetricCollection:
        """The metrics of one stage; the per-class ones are ``ClasswiseWrapper`` s labelled by :attr:`class_names`."""
        num_classes, ignore_index = self.hparams.num_classes, self.hparams.ignore_index
        labels = list(self.class_names)
        per_class = dict(num_classes=num_classes, average="none", ignore_index=ignore_index, validate_args=False)
        classwise = {  # the metric names of the run record (lit_ppool.training.record)
            IOU: MulticlassJaccardIndex(**per_class),
            # the macro boundary_IoU is the mean of these (see _log_metrics): the bands are computed once
            BOUNDARY_IOU: BoundaryIoU(**per_class),
            # zero_division=0: torchmetrics accepts only 0 or 1, so an absent class scores 0 (see the class docstring)
            F1: MulticlassF1Score(**per_class, zero_division=0),
            PRECISION: MulticlassPrecision(**per_class, zero_division=0),
            RECALL: MulticlassRecall(**per_class, zero_division=0),
        }
        return MetricCollection(
            {
                MIOU: MulticlassJaccardIndex(num_classes, average="macro", ignore_index=ignore_index, validate_args=False),
                PIXEL_ACC: MulticlassAccuracy(num_classes, average="micro", ignore_index=ignore_index, validate_args=False),
                TRIMAP_MIOU: TrimapJaccardIndex(
                    num_classes, self.hparams.boundary_width, ignore_index, validate_args=False
                ),
                # keys <prefix><family>/<class>, as metric_key(stage, family, class) builds them
                **{name: ClasswiseWrapper(metric, labels, prefix=f"{name}/") for name, metric in classwise.items()},
            },
            prefix=prefix,
            compute_groups=False,  # the trimap mIoU has the state of the mIoU but not its update
        )

    def forward(self, images: Tensor) -> Tensor:
        """Logits of shape ``(N, num_classes, H, W)`` for images ``(N, 3, H, W)`` (H, W multiples of 32)."""
        return self.model(images)

    @classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: Any,
        map_location: Any = None,
        hparams_file: Any = None,
        strict: bool | None = None,
        weights_only: bool | None = True,
        **kwargs: Any,
    ) -> Any:
        """Lightning's ``load_from_checkpoint``, with ``weights_only=True`` by default and no pretrained download.

        The checkpoint holds every weight, so the model is built without reading or downloading
        its ``encoder_weights`` (which works offline and on machines without the original
        weights file), unless ``strict=False`` asks to keep weights the checkpoint lacks.
        """
        with skip_pretrained_weights(strict is not False):
            return super().load_from_checkpoint(
                checkpoint_path,
                map_location=map_location,
                hparams_file=hparams_file,
                strict=strict,
                weights_only=weights_only,
                **kwargs,
            )

    def setup(self, stage: str) -> None:
        try:
            datamodule = getattr(self.trainer, "datamodule", None)
        except RuntimeError:  # not attached to a Trainer (setup called by hand)
            datamodule = None
        expected = getattr(datamodule, "num_classes", None)
        if expected is not None and expected != self.hparams.num_classes:
            raise ConfigError(
                f"Expected argument `num_classes` to match the datamodule's {expected} classes "
                f"({type(datamodule).__name__}), but got {self.hparams.num_classes}. Build the module with "
                f"num_classes={expected} (the CLI links it from the datamodule)."
            )
        ignore_index = getattr(datamodule, "ignore_index", None)
        if ignore_index is not None and ignore_index != self.hparams.ignore_index:
            raise ConfigError(
                f"Expected argument `ignore_index` to match the datamodule's ignore_index {ignore_index} "
                f"({type(datamodule).__name__} marks void and padded pixels with it), but got {self.hparams.ignore_index}."
            )
        names = getattr(datamodule, "class_names", None)
        if names is not None and len(names) == self.hparams.num_classes:
            self.class_names = tuple(str(name) for name in names)
            for metrics in (self.val_metrics, self.test_metrics):
                for metric in metrics.values():
                    if isinstance(metric, ClasswiseWrapper):
                        metric.labels = list(self.class_names)  # ClasswiseWrapper's public labels

    def alpha_parameters(self) -> list[nn.Parameter]:
        """The parameters that set alpha: the learnable ``alpha_raw`` of the P-pooling layers
        (:class:`~lit_ppool.layers.ppool.PPoolBase`) and the side branches of the adaptive ones
        (:class:`~lit_ppool.AdaptivePPool2d`)."""
        found: list[nn.Parameter] = []
        for layer in self.model.modules():
            if isinstance(layer, PPoolBase) and isinstance(layer.alpha_raw, nn.Parameter):
                found.append(layer.alpha_raw)
            elif isinstance(layer, AdaptivePPool2d):
                found.extend(layer.parameters())
        return found

    def _step(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        # labels are checked on the host before the transfer (SegmentationDataModule.on_before_batch_transfer):
        # a check here would synchronise host and device every step
        images, target = batch["image"], batch["mask"]
        logits = self(images)
        return self.criterion(logits, target), logits, target

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        loss, _, _ = self._step(batch)
        if self.hparams.get("check_finite_loss", True):
            check_finite_loss(loss, self.model, self.trainer, batch_idx)  # raises before backward: no NaN reaches the weights
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["image"].shape[0])
        return loss

    def _eval_step(self, batch: dict[str, Any], stage: str) -> None:
        if batch["image"].shape[0] == 0:  # every sample was bad and skipped (datamodule on_bad_sample="skip")
            return
        loss, logits, target = self._step(batch)
        preds = logits.argmax(dim=1)
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        metrics.update(preds, target)  # logged at the end of the epoch (_log_metrics)
        self.log(f"{stage}/loss", loss, sync_dist=True, batch_size=batch["image"].shape[0])

    def _log_metrics(self, stage: str) -> None:
        """Log the stage's dataset-level metrics (synchronised across processes by torchmetrics) and reset them."""
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        values = metrics.compute()
        per_class = [value for key, value in values.items() if key.startswith(metric_key(stage, BOUNDARY_IOU, ""))]
        # BoundaryIoU(average="macro") is the mean over the classes present (nan for the absent ones)
        values[metric_key(stage, BOUNDARY_IOU)] = torch.stack(per_class).nanmean()
        scalars = {key: value for key, value in values.items() if key.count("/") == 1}
        self.log_dict(scalars, prog_bar=True)
        self.log_dict({key: value for key, value in values.items() if key not in scalars})
        metrics.reset()

    def _start_alpha_maps(self) -> None:
        """In ``validate`` and ``test``: hooks that add every adaptive layer's alpha map to running statistics."""
        if self._alpha_maps is not None:  # left by an epoch that stopped on an error
            self._alpha_maps[0].remove()
            self._alpha_maps = None
        if self.trainer.state.fn not in ("validate", "test"):
            return
        capture = AlphaMapCapture(self.model)
        if not capture.layers:
            capture.remove()
            return
        stats = AlphaMapStats(list(capture.layers), self.device)
        capture.on_map = stats.update
        self._alpha_maps = capture, stats

    def _stop_alpha_maps(self) -> None:
        """Remove the hooks; at the end of an epoch that collected, gather the statistics into :attr:`alpha_map_summary`."""
        collecting, self._alpha_maps = self._alpha_maps, None
        if collecting is None:
            return
        capture, stats = collecting
        capture.remove()
        stats.merge(self.all_gather(stats.totals))  # every process calls this at the same epoch end
        self.alpha_map_summary = stats.summary()

    def on_validation_epoch_start(self) -> None:
        self._start_alpha_maps()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")
        self._stop_alpha_maps()

    def on_test_epoch_start(self) -> None:
        self._start_alpha_maps()

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")
        self._stop_alpha_maps()

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """Predicted label maps (uint8 when ``num_classes <= 256``), cropped to each image's size."""
        if batch["image"].shape[0] == 0:  # every sample was bad and skipped
            return {"masks": [], "names": []}
        preds = self(batch["image"]).argmax(dim=1)
        preds = preds.to(torch.uint8) if self.hparams.num_classes <= 256 else preds
        sizes = batch.get("size", torch.tensor([preds.shape[-2:]] * preds.shape[0]))
        return {
            "masks": [pred[:height, :width] for pred, (height, width) in zip(preds, sizes.tolist())],
            "names": list(batch.get("name", [str(i) for i in range(preds.shape[0])])),
        }

    def configure_optimizers(self) -> Any:
        alphas = self.alpha_parameters()
        alpha_ids = {id(p) for p in alphas}
        groups = [{"params": [p for p in self.parameters() if id(p) not in alpha_ids], "name": "model"}]
        if alphas:
            groups.append({"params": alphas, "weight_decay": 0.0, "name": "alpha"})
        optimizer = self.optimizer_factory(groups)
        if alphas:
            optimizer.param_groups[1]["lr"] = optimizer.param_groups[0]["lr"] * self.hparams.alpha_lr_mult
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.hparams.scheduler_interval, "monitor": metric_key("val", MIOU)},
        }
