"""Frozen configs for every stage, their JSON round trip, and the named presets.

A config is written next to every artefact it produced (``config.json``), and a stage whose artefact exists
with the same config is recognised as done. Unknown keys in a config file are an error, never ignored.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar, Union

from .errors import DiffauditError

C = TypeVar("C")

#: The smallest training set an audit can use: x_p and at least one other image, against which the identity
#: classifier and the reference detector's threshold are calibrated.
MIN_N_TRAIN = 2
MAX_CANARIES = 10_000
SPLITS = ("train", "val", "test")  # the splits of a MedMNIST file
PRECISIONS = ("fp32", "tf32", "bf16")  # the sampler's numerics (diffusion.precision)
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")  # torch.compile modes of the sampler's network


# ---- checked construction ------------------------------------------------------------------------------
# Every config checks itself when it is built, so the command-line flags (through ``override``) and a config file
# (through ``from_dict``) pass the same checks, and bad input is refused before any stage runs: first the types
# (a JSON "0.002" is not a number), then each class's ranges in ``_check``. Names that a registry resolves
# (samplers, SDEs, architectures) are checked above the registries, by ``audit.engine.stages.check_audit_config``.
@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _matches(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:  # an integer is a fine float; a bool is neither
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is tuple:
        return isinstance(value, tuple) and all(_matches(v, args[0]) for v in value)
    if dataclasses.is_dataclass(hint):
        return isinstance(value, hint)
    return True


def _type_name(hint: Any) -> str:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if typing.get_origin(hint) is tuple:
        return f"a list of {_type_name(args[0])}"
    return {type(None): "null", bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(
        hint, getattr(hint, "__name__", str(hint)))


class Checked:
    """Base of the frozen configs: types, then ranges, checked on every construction."""

    def __post_init__(self) -> None:
        label = type(self).__name__
        for name, hint in _hints(type(self)).items():
            value = getattr(self, name)
            if not _matches(value, hint):
                raise DiffauditError(f"{label}.{name} must be {_type_name(hint)}, got {value!r} "
                                     f"({type(value).__name__}); fix the option or the config file")
        self._check()

    def _check(self) -> None:
        pass

    def _require(self, name: str, ok: bool, rule: str) -> None:
        if not ok:
            raise DiffauditError(f"{type(self).__name__}.{name} must be {rule}, got {getattr(self, name)!r}")

    def _at_least(self, minimum: float, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if value is not None:
                self._require(name, math.isfinite(value) and value >= minimum, f">= {minimum:g}")

    def _positive(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if value is not None:
                self._require(name, math.isfinite(value) and value > 0, "a positive finite number")

    def _fraction(self, *names: str, closed: bool = False) -> None:
        for name in names:
            value = getattr(self, name)
            self._require(name, 0 <= value <= 1 if closed else 0 <= value < 1, "in [0, 1]" if closed else "in [0, 1)")

    def _one_of(self, name: str, choices: tuple[str, ...]) -> None:
        self._require(name, getattr(self, name) in choices, f"one of {', '.join(choices)}")


#: the kinds of data source ``--data-format`` may name (``diffaudit.data.sources.SOURCES``)
DATA_FORMATS = ("medmnist", "folder", "dicom", "nifti", "datalist")
FITS = ("crop", "pad")  # how a non-square image is made square
VOLUME_FITS = ("crop", "resize")  # how a volume is brought to its size: crop or pad each axis, or resize
SAF_SHAPES = ("disc", "ring", "ball", "shell")  # in a volume a disc is drawn as a ball and a ring as a shell
FRAMES = ("single", "all")  # a multi-frame DICOM or TIFF: refused, or one image per frame
MEDMNIST_SIZES = (28, 64, 128, 224)  # MedMNIST+ files <flag>_<size>.npz (28: <flag>.npz)
MAX_IMAGE_SIZE = 1024  # the largest --size a prepared set may have
SAF_SIZE = 3 / 28  # the default SAF radius as a fraction of the image side: the paper's 3 px at 28 px


@dataclass(frozen=True)
class PrepareConfig(Checked):
    """Which images form the training set D_p, and the synthetic anatomical fingerprint (SAF) put on x_p.

    The images come from a MedMNIST file (``dataset``, at ``size`` 28, 64, 128 or 224) or, when ``data`` is given,
    from the user's own folder, file or datalist (``diffaudit.data.sources``), read with ``data_format`` (detected when
    None), made square by ``fit`` and resized to ``size`` (default: the most common input side, capped at 256).
    ``split_ratios`` draw train/val/test (patients kept together) when the source names no splits.

    The SAF's radius is ``saf_radius`` pixels, or ``saf_size`` times the image side when None (3 px at 28 px); its
    ring width ``saf_width`` pixels, or half the radius. Its grey level is ``saf_intensity``, or, when None, 0.5
    where that differs from x_i under the SAF by at least ``saf_contrast`` (mean absolute difference in [0, 1]),
    else the extreme grey that does (``diffaudit.data.placement``). It lies on the anatomy (Otsu foreground)."""

    dataset: str = "breastmnist"
    split: str = "train"
    n_train: int | None = None  # N_D; None takes the whole split
    channels: int = 1  # 1 keeps grey images grey; 3 repeats them to RGB as the paper did
    seed: int = 0
    fingerprint: bool = True  # False builds the control set without SAF (for false-positive rates)
    saf_shape: str = "disc"
    saf_radius: float | None = None  # pixels; None: saf_size x the image side
    saf_intensity: float | None = None  # grey level in [0, 1] of the pixel range; None: chosen for contrast
    saf_width: float | None = None  # ring only: thickness in pixels; None: half the radius
    saf_size: float = SAF_SIZE
    saf_contrast: float = 0.2
    data: str | None = None  # the user's folder, file or datalist; None: the MedMNIST file of `dataset`
    data_format: str | None = None
    size: int | tuple[int, ...] | None = None  # D, H, W: the data's NIfTI files are volumes (data.volumes)
    fit: str = "crop"  # images: crop or pad to a square; volumes: crop (crop or pad each axis) or resize
    window: tuple[float, ...] | None = None  # (center, width) for DICOM / NIfTI / 16-bit intensities
    slice: str = "2:mid"  # NIfTI: AXIS[:INDEX|mid|all]
    frames: str = "single"
    labels: str = "auto"  # auto, folders, none, or a CSV file,label[,patient] relative to the data
    split_ratios: tuple[float, ...] = (0.8, 0.1, 0.1)
    skip_unreadable: bool = False
    spacing: tuple[float, ...] | None = None  # volumes: resampled to this voxel size (mm, D,H,W); None keeps the file's
    volume_index: int | None = None  # volumes: the volume of a 4D file to take; None refuses 4D files
    patient_pattern: str | None = None  # volumes: a regex with one group, the patient ID in a file name
    series: str | None = None  # volumes from DICOM folders: the SeriesInstanceUID to take where a folder holds several
    attributes: str | None = None  # volumes: a CSV of the scans' attributes (first column: the scan), e.g. age, sex
    condition: tuple[str, ...] = ()  # volumes: the attributes' columns the model is conditioned on (data.conditions)
    half: str | None = None  # volumes: only the public or private half of the patients (data.volumes.patients)
    canaries: int = 1  # m canary candidates, each included with probability `inclusion` (data.canaries); 1: x_p alone
    duplicates: tuple[int, ...] = (1,)  # how often an included canary occurs in D_p, drawn from these per canary
    inclusion: float = 1.0  # the probability that a candidate is included (Steinke et al.: 0.5)

    # added after configs were first saved: left out of the JSON at their default, so earlier runs' keys stay valid
    _OMIT_AT_DEFAULT = ("spacing", "volume_index", "patient_pattern", "series", "attributes", "condition", "half",
                        "canaries", "duplicates", "inclusion")
    HALVES = ("public", "private")

    def _check(self) -> None:
        self._require("dataset", bool(self.dataset.strip()) and "/" not in self.dataset, "a MedMNIST flag, e.g. breastmnist")
        self._one_of("split", SPLITS)
        if self.n_train is not None:
            self._require("n_train", self.n_train >= MIN_N_TRAIN,
                          f">= {MIN_N_TRAIN} (x_p and at least one other image; --n-train)")
        self._require("channels", self.channels in (1, 3), "1 or 3")
        self._at_least(0, "seed")
        self._positive("saf_radius", "saf_width", "saf_size")
        self._require("saf_size", self.saf_size < 0.5, "below 0.5 (a fraction of the image side)")
        if self.saf_intensity is not None:
            self._fraction("saf_intensity", closed=True)
        self._fraction("saf_contrast", closed=True)
        if self.data is not None:
            self._require("data", bool(self.data.strip()), "a folder, file or datalist path")
        if self.data_format is not None:
            self._one_of("data_format", DATA_FORMATS)
        if isinstance(self.size, tuple):
            self._require("size", len(self.size) == 3 and all(8 <= s <= MAX_IMAGE_SIZE for s in self.size),
                          f"three sides D,H,W of a --data folder of volumes, each between 8 and {MAX_IMAGE_SIZE} voxels "
                          "(--size 32,32,32)")
            self._require("fit", self.fit in VOLUME_FITS, f"one of {', '.join(VOLUME_FITS)} for volumes")
            self._require("saf_shape", self.saf_shape in SAF_SHAPES, f"one of {', '.join(SAF_SHAPES)}")
        elif self.size is not None:
            if self.data is None:
                self._require("size", self.size in MEDMNIST_SIZES,
                              f"one of {', '.join(map(str, MEDMNIST_SIZES))} for a MedMNIST file (--size)")
            else:
                self._require("size", 8 <= self.size <= MAX_IMAGE_SIZE, f"between 8 and {MAX_IMAGE_SIZE} pixels (--size)")
        if not isinstance(self.size, tuple):
            self._one_of("fit", FITS)
            for name in ("spacing", "volume_index", "patient_pattern", "series", "attributes", "half"):
                self._require(name, getattr(self, name) is None, "unset for images (it applies to volumes: --size D,H,W)")
        if self.spacing is not None:
            self._require("spacing", len(self.spacing) == 3 and all(math.isfinite(v) and v > 0 for v in self.spacing),
                          "three positive voxel sizes in mm (--spacing 2,2,2)")
        self._at_least(0, "volume_index")
        if self.half is not None:
            self._one_of("half", self.HALVES)
        self._require("condition", not self.condition or self.attributes is not None,
                      "given with --attributes FILE.csv, whose columns it names")
        self._require("condition", all(c.strip() for c in self.condition) and len(set(self.condition)) == len(self.condition),
                      "distinct column names of the attributes CSV (--condition-on Sex,Age)")
        self._one_of("frames", FRAMES)
        self._require("canaries", 1 <= self.canaries <= MAX_CANARIES, f"between 1 and {MAX_CANARIES} (--canaries)")
        self._require("duplicates", bool(self.duplicates) and all(1 <= d <= 64 for d in self.duplicates)
                      and len(set(self.duplicates)) == len(self.duplicates),
                      "distinct counts between 1 and 64 (--duplicates 1,2,4)")
        self._require("inclusion", 0 < self.inclusion <= 1, "a probability in (0, 1] (--inclusion 0.5)")
        self._require("canaries", self.canaries > 1 or (self.inclusion == 1 and self.duplicates == (1,)),
                      "above 1 with --inclusion or --duplicates (a single canary is always included, once)")
        self._require("inclusion", self.canaries == 1 or self.inclusion < 1,
                      "below 1 with --canaries (the left-out candidates are the run's controls and the one-run "
                      "bound's 'out' guesses; --inclusion 0.5)")
        self._require("canaries", self.canaries == 1 or (self.fingerprint and not self.condition),
                      "1 for a control set (--no-fingerprint) and for a model conditioned on attributes")
        if self.window is not None:
            self._require("window", len(self.window) == 2 and self.window[1] >= 1 and all(map(math.isfinite, self.window)),
                          "CENTER,WIDTH with a width of at least 1 (--window)")
        self._require("split_ratios", len(self.split_ratios) == 3 and min(self.split_ratios) >= 0
                      and self.split_ratios[0] > 0 and abs(sum(self.split_ratios) - 1) < 1e-6,
                      "three ratios train,val,test summing to 1 with train > 0 (--split-ratios)")

    def control(self) -> "PrepareConfig":
        """The control set's config: the same draw without any fingerprint (and without canaries)."""
        return dataclasses.replace(self, fingerprint=False, canaries=1, duplicates=(1,), inclusion=1.0)

    @property
    def many_canaries(self) -> bool:
        """Whether the training set holds m > 1 canary candidates (data.canaries) rather than x_p alone."""
        return self.canaries > 1

    def volume_saf_shape(self) -> str:
        """The SAF's shape in a volume: ball (for disc or ball) or shell (for ring or shell)."""
        return {"disc": "ball", "ring": "shell"}.get(self.saf_shape, self.saf_shape)

    def saf_pixels(self, side: int) -> tuple[float, float]:
        """The SAF's (radius, ring width) in pixels in an image of ``side`` pixels."""
        radius = self.saf_radius if self.saf_radius is not None else self.saf_size * side
        return radius, self.saf_width if self.saf_width is not None else radius / 2


@dataclass(frozen=True)
class ModelConfig(Checked):
    """diffusers UNet2DModel shape. At 28x28 three levels (28, 14, 7) is the most the grid allows (App. A).

    ``levels`` "auto" (the default) sizes the network to the images (``diffusion.unet.model_config_for``): the listed
    levels are the 28-px model, and every doubling of the image side adds one finer level (56/64 px: 4, 128: 5, 256: 6)
    of half the width of the next, with attention at the level nearest 16x16 alone. "fixed" builds the listed levels at any
    size. The trained model's config.json and model.json record the resolved shape.

    ``prediction`` is what the network outputs: "eps", the noise (the paper's parameterisation), or "v", from which
    eps is x_t through a fixed skip plus the scaled output; :mod:`diffaudit.diffusion.score` gives the formula and why
    a small U-Net needs it.

    ``patch`` p (a power of two) runs the network on the image's p x p patches stacked as channels, so its levels
    follow side / p; "auto" patches images above 32 px (:mod:`diffaudit.diffusion.unet`: 64 px in 2 x 2, 128 px and
    up in 4 x 4). 1, no patches, is the default, and what earlier model.json files without the key mean."""

    block_out_channels: tuple[int, ...] = (16, 32, 32)
    layers_per_block: int = 1
    attention_levels: tuple[bool, ...] = (False, False, False)
    mid_attention: bool = False
    norm_num_groups: int = 8
    num_classes: int = 0  # > 0: class-conditional on the dataset's labels (a learned class embedding)
    covariates: int = 0  # > 0: also conditioned on this many continuous attributes (diffusion.conditioning)
    levels: str = "auto"  # auto: levels from the image size; fixed: the listed levels at any size
    prediction: str = "eps"  # eps or v (the cpu preset's); eps is the default so that earlier model.json files read as eps
    patch: int | str = 1  # p x p patches as channels (a power of two), or "auto" (the cpu preset's)

    # added after configs were first saved: left out of the JSON at its default, so earlier runs' keys stay valid
    _OMIT_AT_DEFAULT = ("levels", "prediction", "patch", "covariates")
    LEVELS = ("auto", "fixed")
    PREDICTIONS = ("eps", "v")

    def _check(self) -> None:
        self._one_of("levels", self.LEVELS)
        self._one_of("prediction", self.PREDICTIONS)
        self._require("patch", self.patch == "auto" or (isinstance(self.patch, int) and self.patch >= 1
                                                        and self.patch & (self.patch - 1) == 0),
                      '"auto" or a power of two (1: no patches)')
        self._require("block_out_channels", len(self.block_out_channels) >= 1 and min(self.block_out_channels) >= 1,
                      "a non-empty list of positive channel counts")
        self._require("attention_levels", len(self.attention_levels) == len(self.block_out_channels),
                      f"one entry per level ({len(self.block_out_channels)})")
        self._at_least(1, "layers_per_block", "norm_num_groups")
        self._require("norm_num_groups", all(c % self.norm_num_groups == 0 for c in self.block_out_channels),
                      "a divisor of every channel count")
        self._at_least(0, "num_classes", "covariates")


LR_SCHEDULES = ("constant", "cosine")  # the score model's learning rate after its warm-up


@dataclass(frozen=True)
class TrainConfig(Checked):
    """Denoising score matching with AdamW, EMA and gradient clipping (Song et al. 2021 defaults for paper)."""

    _OMIT_AT_DEFAULT = ("lr_schedule", "decay_steps")

    steps: int = 3000
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    # constant after the warm-up, or cosine: a half cosine to 0 over the last decay_steps (None, or more than there
    # are: every step after the warm-up); a memorising model's samples come out sharper. A finished cosine run
    # cannot be extended with --resume.
    lr_schedule: str = "constant"
    decay_steps: int | None = None
    grad_clip: float = 1.0
    ema_decay: float = 0.995
    eps: float = 1e-5  # smallest training time (Song et al.: 1e-5)
    seed: int = 0
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10

    def _check(self) -> None:
        self._at_least(1, "steps", "batch_size", "checkpoint_every", "keep_checkpoints", "log_every")
        self._at_least(0, "warmup_steps", "weight_decay", "seed")
        self._positive("lr", "grad_clip")
        self._fraction("ema_decay")
        self._require("eps", 0 < self.eps < 1, "in (0, 1)")
        self._one_of("lr_schedule", LR_SCHEDULES)
        if self.decay_steps is not None:
            self._at_least(1, "decay_steps")
            self._require("decay_steps", self.lr_schedule == "cosine", "given with lr_schedule 'cosine'")


ACCOUNTANTS = ("prv", "rdp", "gdp")  # Opacus' accountants by name
DP_FINETUNE = ("all", "attention")  # which layers DP-SGD trains


@dataclass(frozen=True)
class DPConfig(Checked):
    """DP-SGD training of the score model (Opacus): a target (epsilon, delta), or a noise multiplier.

    The training config's ``batch_size`` is the expected logical batch (Poisson rate q = batch_size / N_D);
    ``physical_batch_size`` bounds the memory of one forward pass. ``noise_multiplicity`` K averages K noise
    draws (t, z) inside each example's loss before clipping. ``finetune='attention'`` trains the attention layers
    only; ``pretrained`` names the train/ folder of a (public) model to start from."""

    epsilon: float | None = None
    delta: float = 1e-5
    noise_multiplier: float | None = None
    max_grad_norm: float = 1.0
    noise_multiplicity: int = 1
    physical_batch_size: int = 64
    accountant: str = "prv"  # prv, rdp or gdp: the one that calibrates sigma to epsilon; all three are reported
    finetune: str = "all"  # all or attention
    pretrained: str | None = None

    def _check(self) -> None:
        self._positive("epsilon", "noise_multiplier", "max_grad_norm")
        self._require("delta", 0 < self.delta < 1, "in (0, 1)")
        self._at_least(1, "noise_multiplicity", "physical_batch_size")
        self._one_of("accountant", ACCOUNTANTS)
        self._one_of("finetune", DP_FINETUNE)


@dataclass(frozen=True)
class SampleConfig(Checked):
    n: int = 64
    sampler: str = "em"
    steps: int = 500
    eps: float = 1e-3  # last time of the grid (Song et al.: 1e-3 for VP and sub-VP)
    seed: int = 0
    batch_size: int = 64
    shard_size: int = 1000
    snr: float = 0.16  # predictor-corrector only
    corrector_steps: int = 1  # predictor-corrector only
    precision: str = "fp32"  # fp32, tf32 or bf16 (diffusion.precision)
    # torch.compile mode of the network: auto (default when the run is long enough to repay the compile, see
    # diffusion.precision.resolve_numerics), none, default, reduce-overhead, max-autotune
    compile: str = "auto"
    memory_format: str = "auto"  # the network's activations: auto (channels_last on a CPU), channels_last, contiguous
    # a conditional model's conditions: auto, classes (each in turn), training (the training set's), x_p (x_p's own);
    # data.conditions
    condition: str = "auto"

    # settings added after configs were first saved: left out of the JSON at their defaults, so the stage keys and
    # sample folders of earlier runs stay valid; a folder records the compile mode and memory format it was drawn in
    _OMIT_AT_DEFAULT = ("precision", "compile", "memory_format", "condition")
    CONDITIONS = ("auto", "classes", "training", "x_p")
    MEMORY_FORMATS = ("contiguous", "channels_last")

    def _check(self) -> None:
        self._at_least(1, "n", "steps", "batch_size", "shard_size", "corrector_steps")
        self._at_least(0, "seed")
        self._require("eps", 0 < self.eps < 1, "in (0, 1)")
        self._positive("snr")
        self._one_of("precision", PRECISIONS)
        self._one_of("compile", ("auto", *COMPILE_MODES))
        self._one_of("memory_format", ("auto", *self.MEMORY_FORMATS))
        self._one_of("condition", self.CONDITIONS)


@dataclass(frozen=True)
class CensusConfig(Checked):
    """The census stage (``audit --census``, :mod:`diffaudit.audit.census`): every sample matched to its nearest
    training image in ``space``, a copy below the threshold that flags at most ``fpr`` of held-out real images."""

    space: str = "pixel"  # pixel (RMSE with +-1 px shifts) or embedding (SimCLR trained on the run's real images)
    fpr: float = 0.001
    embedding_steps: int = 300

    def _check(self) -> None:
        self._one_of("space", ("pixel", "embedding"))
        self._require("fpr", 0 < self.fpr < 1, "strictly between 0 and 1 (--fpr 0.001)")
        self._at_least(1, "embedding_steps")


@dataclass(frozen=True)
class SequentialConfig(Checked):
    """The sequential count (``--sequential``, :mod:`diffaudit.audit.count.sequential`): shards of ``sample.shard_size``
    images are drawn and counted until the anytime-valid interval settles the question, at most ``sample.n``."""

    target_rate: float | None = None  # stop once the interval is wholly below or above it (else: once below 1/N_D)
    alpha: float = 0.05

    def _check(self) -> None:
        if self.target_rate is not None:
            self._require("target_rate", 0 < self.target_rate < 1, "in (0, 1)")
        self._require("alpha", 0 < self.alpha < 1, "in (0, 1)")


@dataclass(frozen=True)
class ClassifierConfig(Checked):
    """One adversary classifier (c_p or c_id): a torchvision ResNet trained from scratch (Sec. 5.2, App. A).

    Training examples are drawn afresh every step from the training images, so an "epoch" (a round) is
    ``epoch_size`` draws. After each round the classifier is scored on held-out data: noise-free copies of x_p shifted
    by up to 1/28 of the side (c_id: of x_p and of x_i) and real images of the val split. Training stops at the
    criterion, a recall of at least ``criterion_recall`` on the copies at a false-positive rate of at most
    ``criterion_fpr`` on the real images, or at the cap of ``max_epochs`` rounds (and ``max_steps`` optimiser steps,
    when set), keeping the round nearest the criterion. Without held-out data (``adversary.classifiers.fit`` called
    alone) it stops when the validation loss has not improved for ``patience`` rounds and keeps the best round.

    Pixel sizes scale with the image: ``max_shift`` is a fraction of the side, the random masks take the SAF's
    radius, AugMix's translations are a fraction of the side.
    """

    arch: str = "resnet18"  # resnet10 (BasicBlock [1,1,1,1]), resnet18, resnet34 or resnet50
    # the stem: True, a 3x3 stride-1 first convolution (the max-pool is kept); False, torchvision's 7x7 stride-2 one;
    # None, by the image side: the small stem below 64 px, torchvision's from 64 px up (recorded in model.json)
    small_input: bool | None = None
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    epoch_size: int = 2048
    max_epochs: int = 30
    patience: int = 5
    val_size: int = 512
    positive_share: float = 0.5  # share of positives among the training draws
    val_positive_share: float = 0.1  # and among the validation set
    augmix: bool = True
    augmix_severity: int = 3
    lr_schedule: str = "constant"  # constant, or cosine: decays to 0 over max_epochs (steadier near the end)
    mask_prob: float = 0.0  # probability of a random patch of the SAF's shape and a random grey (c_id)
    noise_std: float = 0.0  # Gaussian noise of std ~ U(0, noise_std) in [0, 1] pixel units (c_id and c_p)
    threshold: float = 0.5  # positive when sigmoid(logit) > threshold
    seed: int = 0
    max_shift: float = 0.0  # random translation of every training draw by up to this fraction of the side
    max_steps: int | None = None  # cap on optimiser steps besides max_epochs rounds (None: max_epochs alone)
    criterion_recall: float = 0.99  # stop once the held-out copies of x_p are recognised at least this often
    criterion_fpr: float = 0.01  # and held-out real images flagged at most this often

    def _check(self) -> None:
        self._at_least(1, "batch_size", "epoch_size", "max_epochs", "patience", "val_size", "max_steps")
        self._at_least(0, "weight_decay", "noise_std", "seed")
        self._require("max_shift", 0 <= self.max_shift < 0.25, "in [0, 0.25) (a fraction of the image side)")
        self._require("criterion_recall", 0 < self.criterion_recall <= 1, "in (0, 1]")
        self._fraction("criterion_fpr")
        self._positive("lr")
        for name in ("positive_share", "val_positive_share", "threshold"):
            self._require(name, 0 < getattr(self, name) < 1, "in (0, 1)")
        self._require("augmix_severity", 1 <= self.augmix_severity <= 10, "in 1..10 (torchvision's AugMix)")
        self._one_of("lr_schedule", ("constant", "cosine"))
        self._fraction("mask_prob", closed=True)


def _c_p(**kw: Any) -> ClassifierConfig:
    # App. A: SAFs on 50% of the training draws, 10% of the validation set. The paper adds noise for c_id only;
    # without it c_p found 57 of 200 copies of x_p with noise of std 0.05 and 4 of 200 at 0.1 (BreastMNIST,
    # N_D = 32), while the generated copies differ from x_p by a mean absolute error of 0.014-0.065, so c_p gets it too.
    return ClassifierConfig(positive_share=0.5, val_positive_share=0.1, noise_std=0.1, **kw)


def _c_id(**kw: Any) -> ClassifierConfig:
    # App. A: the identity in 10% of the training draws and 50% of the validation set; random SAF-shaped masks
    # and Gaussian noise (Sec. 5.2). Random shifts of up to 1/28 of the side (1 px at 28 px), as the copies of x_p
    # have: without them c_id never saw x_i off its grid, and one cpu-demo c_id (BreastMNIST, N_D = 64, seed 2)
    # gave three of the nine one-pixel shifts of x_p probabilities of 0.18-0.70 (149/200 copies found); with them
    # the same run met its criterion in 24 steps (200/200, lowest shift 0.91).
    return ClassifierConfig(positive_share=0.1, val_positive_share=0.5, mask_prob=0.5, noise_std=0.1,
                            max_shift=1 / 28, **kw)


#: Classifier presets: the pair (c_p, c_id) for each name.
CLASSIFIER_PRESETS: dict[str, dict[str, ClassifierConfig]] = {
    # A few minutes on 2 CPU cores (resnet10: 4.9 M parameters, 111 MFLOP per image; see benchmarks/). Each stops at
    # its criterion; max_epochs is the cap (c_p 480 steps, c_id 400). Patience only counts without held-out data.
    "cpu": {"c_p": _c_p(arch="resnet10", max_epochs=30, patience=8, epoch_size=1024),
            "c_id": _c_id(arch="resnet10", max_epochs=25, patience=5, epoch_size=1024)},
    # The paper: ResNet50 from scratch, until convergence with a patience of 20 epochs (Sec. 5.2).
    "paper": {"c_p": _c_p(arch="resnet50", max_epochs=200, patience=20, epoch_size=8192, batch_size=128),
              "c_id": _c_id(arch="resnet50", max_epochs=200, patience=20, epoch_size=8192, batch_size=128)},
}


def get_classifier_preset(name: str) -> dict[str, ClassifierConfig]:
    try:
        return CLASSIFIER_PRESETS[name]
    except KeyError:
        raise DiffauditError(f"unknown classifier preset '{name}'; choose one of {', '.join(CLASSIFIER_PRESETS)}") from None


#: torch-fidelity's port of the TF Inception-v3 weights, the standard FID's feature extractor
INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"


@dataclass(frozen=True)
class ExtractorConfig(Checked):
    """FID's feature extractor where no Inception weights exist: a ResNet10 classifier of the dataset's labels
    whose small bottleneck before the classification head is the feature."""

    features: int = 64
    steps: int = 60
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    shift: int = 2  # random translations of up to this many pixels
    seed: int = 0

    def _check(self) -> None:
        self._at_least(1, "features", "steps", "batch_size")
        self._at_least(0, "weight_decay", "shift", "seed")
        self._positive("lr")


@dataclass(frozen=True)
class UtilityConfig(Checked):
    """The downstream classifier under DP (``audit.utility``): the regimes real, synthetic, real with DP-SGD, real +
    synthetic with DP-SGD (``mix_ratio`` synthetic images per expected real image of a batch) and synthetic-pretrained
    then DP fine-tuned on real, each at every ε of ``epsilons`` (None: ∞, the regime without DP) and ``seeds`` seeds.
    The classifier is the FID domain extractor's ResNet10 with GroupNorm for BatchNorm (Opacus needs per-example
    gradients), ``width`` channels at its first level, ``steps`` logical steps of expected batch ``batch_size``."""

    epsilons: tuple[float | None, ...] = (1.0, 3.0, 10.0, None)
    mix_ratio: float = 0.5
    seeds: int = 3
    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-3
    max_grad_norm: float = 1.0
    delta: float = 1e-5
    physical_batch_size: int = 64
    shift: int = 2  # random translations of up to this many pixels, as the extractor's recipe
    width: int = 64  # channels of the ResNet10's first level (64: the extractor's; DP-SGD's cost grows with it)

    def _check(self) -> None:
        self._require("epsilons", bool(self.epsilons) and all(e is None or (math.isfinite(e) and e > 0)
                                                               for e in self.epsilons),
                      "positive numbers or inf (--classifier-epsilons 1,3,10,inf)")
        self._require("mix_ratio", 0 <= self.mix_ratio <= 1, "in [0, 1] (--mix-ratio)")
        self._require("epsilons", len(set(self.epsilons)) == len(self.epsilons), "distinct")
        self._at_least(3, "seeds")  # an interval over seeds needs a few of them
        self._at_least(1, "steps", "batch_size", "physical_batch_size", "width")
        self._at_least(0, "shift")
        self._positive("lr", "max_grad_norm")
        self._require("delta", 0 < self.delta < 1, "in (0, 1)")


def to_dict(cfg: Any) -> dict[str, Any]:
    """``cfg`` as JSON-ready dicts; a setting named in its class's ``_OMIT_AT_DEFAULT`` is left out at its default."""
    return _omit_defaults(cfg, dataclasses.asdict(cfg))


def _omit_defaults(cfg: Any, d: dict[str, Any]) -> dict[str, Any]:
    omit = getattr(cfg, "_OMIT_AT_DEFAULT", ())
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            d[f.name] = _omit_defaults(value, d[f.name])
        elif f.name in omit and value == f.default:
            del d[f.name]
    return d


def _nested_class(hint: Any) -> type | None:
    """The dataclass a field holds (``X`` or ``X | None``), or None."""
    if dataclasses.is_dataclass(hint):
        return hint
    if typing.get_origin(hint) in (Union, types.UnionType):
        found = [a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)]
        return found[0] if found else None
    return None


def from_dict(cls: type[C], d: dict[str, Any], *, where: str = "") -> C:
    """Build ``cls`` (and the configs nested in it) from a dict, refusing unknown keys and wrong types, and
    turning lists back into tuples."""
    where = where or cls.__name__
    if not isinstance(d, dict):
        raise DiffauditError(f"{where} must be a JSON object of settings, got {d!r}")
    hints = _hints(cls)
    unknown = set(d) - set(hints)
    if unknown:
        raise DiffauditError(f"{where} has no field(s) {sorted(unknown)}; known: {sorted(hints)}")
    kwargs = {}
    for key, value in d.items():
        nested = _nested_class(hints[key])
        if nested is not None and isinstance(value, dict):
            value = from_dict(nested, value, where=f"{where}.{key}")
        elif nested is not None and value is not None:
            raise DiffauditError(f"{where}.{key} must be a JSON object of settings, got {value!r}")
        kwargs[key] = tuple(value) if isinstance(value, list) else value
    return cls(**kwargs)


def override(cfg: C, **options: Any) -> C:
    """``cfg`` with the options that were given: like ``dataclasses.replace``, except that a None value means "not
    given" (an unset command-line flag) and keeps the config's own value."""
    return dataclasses.replace(cfg, **{k: v for k, v in options.items() if v is not None})  # type: ignore[type-var]


# ---- the audit's own stages ------------------------------------------------------------------------------
DETECTORS = ("classifiers", "nn")  # q = c_p+ and c_id+, or the reference nearest-neighbour detector alone
T_SEARCHES = ("fast", "exhaustive", "both")
FID_EXTRACTORS = ("auto", "inception", "domain")


@dataclass(frozen=True)
class TPrimeConfig(Checked):
    """The t' search (Algorithm 1): M reverse runs per time on a grid of step ``resolution`` up to ``t_max``."""

    M: int = 16
    resolution: float = 0.01
    t_max: float = 1.0
    steps: int = 500
    sampler: str = "em"
    search: str = "fast"
    alpha: float = 0.05
    chance: str = "full"  # p_0 of t'_alpha: full (1/N_D), measured (the count's 95% upper bound) or a number
    seed: int = 0

    def _check(self) -> None:
        self._at_least(1, "M", "steps")
        self._at_least(0, "seed")
        self._require("t_max", 0 < self.t_max <= 1, "in (0, 1] (the SDE's time T is 1)")
        self._require("resolution", 0 < self.resolution <= self.t_max, f"in (0, t_max = {self.t_max}]")
        self._one_of("search", T_SEARCHES)
        self._require("alpha", 0 < self.alpha < 1, "in (0, 1)")
        if self.chance not in ("full", "measured"):
            try:
                level = float(self.chance)
            except ValueError:
                level = math.nan
            self._require("chance", 0 < level < 1, "full, measured or a number in (0, 1)")


@dataclass(frozen=True)
class NLLConfig(Checked):
    """Exact NLL (Eq. 5) of x_p (``x_p_repeats`` dequantisation/Hutchinson draws), of training images other than
    x_p and of test images."""

    n_train: int = 64
    n_test: int = 64
    x_p_repeats: int = 8
    rtol: float = 1e-5
    atol: float = 1e-5
    eps: float = 1e-5
    batch_size: int = 64
    seed: int = 0

    def _check(self) -> None:
        self._at_least(0, "n_train", "n_test", "seed")
        self._at_least(1, "x_p_repeats", "batch_size")
        self._positive("rtol", "atol")
        self._require("eps", 0 < self.eps < 1, "in (0, 1)")


@dataclass(frozen=True)
class FIDConfig(Checked):
    extractor: str = "auto"  # auto (Inception when its weights are found, else domain), inception or domain
    inception_weights: str | None = None
    domain: ExtractorConfig = field(default_factory=ExtractorConfig)
    seed: int = 0  # the draw of test images as large as the training set

    def _check(self) -> None:
        self._one_of("extractor", FID_EXTRACTORS)
        self._at_least(0, "seed")


PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


@dataclass(frozen=True)
class ExternalConfig(Checked):
    """A model trained elsewhere, audited instead of one diffaudit trains (``--model``; see
    :mod:`diffaudit.models.load` for the formats). ``scheduler`` and ``prediction_type`` override what the saved model
    says (a bare UNet folder needs the scheduler)."""

    path: str
    scheduler: str | None = None  # a scheduler folder or scheduler_config.json, or ddpm/ddim for its defaults
    prediction_type: str | None = None  # epsilon, v_prediction or sample (default: the scheduler config's)

    def _check(self) -> None:
        self._require("path", bool(self.path.strip()), "the folder the model was saved to")
        if self.prediction_type is not None:
            self._one_of("prediction_type", PREDICTION_TYPES)


@dataclass(frozen=True)
class AuditConfig(Checked):
    """Every stage's settings of one audit (written to ``<run>/audit.json``)."""

    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sde: str = "subvp"
    c_p: ClassifierConfig = field(default_factory=lambda: CLASSIFIER_PRESETS["cpu"]["c_p"])
    c_id: ClassifierConfig = field(default_factory=lambda: CLASSIFIER_PRESETS["cpu"]["c_id"])
    sample: SampleConfig = field(default_factory=SampleConfig)
    detector: str = "classifiers"
    tprime: TPrimeConfig = field(default_factory=TPrimeConfig)
    nll: NLLConfig = field(default_factory=NLLConfig)
    fid: FIDConfig = field(default_factory=FIDConfig)
    dp: DPConfig | None = None  # DP-SGD training of the score model (None: non-private)
    pretrained: str | None = None  # train/ folder of a (public) model to start from, with or without DP
    external: ExternalConfig | None = None  # audit this model instead of training one (--model)
    # a control model, counted as the verdict's negatives: None (the default) trains one when diffaudit trains the
    # audited model, and uses ``control_model`` for a model trained elsewhere; True / False force it (--[no-]control)
    control: bool | None = None
    control_model: ExternalConfig | None = None  # the control model of a model trained elsewhere (--control-model)
    sequential: SequentialConfig | None = None  # draw and count shards until decided (--sequential), at most sample.n
    census: CensusConfig | None = None  # the census stage (--census): how many training images the samples copy
    utility: UtilityConfig | None = None  # the downstream classifier under DP (--classifier-epsilons, --dp-utility)

    _OMIT_AT_DEFAULT = ("sequential", "control_model", "census", "utility")

    @property
    def with_control(self) -> bool:
        """Whether the audit has a control model: trained by diffaudit beside its own model, or given."""
        if self.control is None:
            return (self.external is None and not self.prepare.many_canaries) or self.control_model is not None
        return self.control

    def _check(self) -> None:
        self._one_of("detector", DETECTORS)
        if self.external is not None and (self.dp is not None or self.pretrained is not None):
            raise DiffauditError("--model audits a model trained elsewhere; DP and pretraining train one, so leave them "
                                 "out")
        if self.control_model is not None and self.external is None:
            raise DiffauditError("--control-model is the control of a model trained elsewhere (--model); for a model "
                                 "diffaudit trains, --control trains its control model")
        if self.utility is not None and self.external is None and not self.model.num_classes:
            raise DiffauditError("the DP utility regimes (--dp-utility, --classifier-epsilons) need a class-conditional "
                                 "model: add --class-conditional")
        if self.prepare.many_canaries and (self.control or self.control_model is not None):
            raise DiffauditError("a run of many canaries has its controls inside: the candidates left out of training; "
                                 "leave out --control")
        if self.control_model is not None and self.control is False:
            raise DiffauditError("--no-control contradicts --control-model; give one of them")
        if self.external is not None and self.control and self.control_model is None:
            raise DiffauditError("a model trained elsewhere needs its control model given: train it with your recipe on "
                                 "the set 'diffaudit export --control' writes, and pass --control-model PATH")
        if self.dp is not None:
            if (self.dp.epsilon is None) == (self.dp.noise_multiplier is None):
                raise DiffauditError("DP training needs exactly one of a target epsilon (--dp-epsilon) or a noise "
                                     "multiplier (--dp-noise-multiplier)")
            n = self.prepare.n_train
            if n is not None and self.train.batch_size > n:
                raise DiffauditError(f"DP-SGD samples each image with rate batch size / N_D; the batch size "
                                     f"{self.train.batch_size} exceeds N_D = {n}: lower train.batch_size or raise --n-train")


#: The audit's stages, in order (``diffaudit audit`` runs them; ``audit.engine.pipeline`` knows what each depends on).
STAGES = ("prepare", "train", "classifiers", "sample", "control", "count", "census", "canaries", "tprime", "nll", "fid", "utility",
          "report")


def audit_from_dict(d: dict[str, Any]) -> AuditConfig:
    """An :class:`AuditConfig` from its JSON form (a run's ``audit.json``); unknown keys and wrong types are errors."""
    return from_dict(AuditConfig, d, where="the audit config")
