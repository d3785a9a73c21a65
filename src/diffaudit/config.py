"""Frozen configs for every stage, their JSON round trip, and the named presets.

A config is written next to every artefact it produced (``config.json``), and a stage whose artefact exists
with the same config is recognised as done. Unknown keys in a config file are an error, never ignored.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .errors import DiffauditError

C = TypeVar("C")


@dataclass(frozen=True)
class PrepareConfig:
    """Which images form the training set D_p, and the synthetic anatomical fingerprint (SAF) put on x_p."""

    dataset: str = "breastmnist"
    split: str = "train"
    n_train: int | None = None  # N_D; None takes the whole split
    channels: int = 1  # 1 keeps grey images grey; 3 repeats them to RGB as the paper did
    seed: int = 0
    fingerprint: bool = True  # False builds the control set without SAF (for false-positive rates)
    saf_shape: str = "disc"
    saf_radius: float = 3.0  # pixels
    saf_intensity: float = 0.5  # grey level in [0, 1] of the pixel range
    saf_width: float = 1.5  # ring only: thickness in pixels


@dataclass(frozen=True)
class ModelConfig:
    """diffusers UNet2DModel shape. At 28x28 three levels (28, 14, 7) is the most the grid allows (App. A)."""

    block_out_channels: tuple[int, ...] = (16, 32, 32)
    layers_per_block: int = 1
    attention_levels: tuple[bool, ...] = (False, False, False)
    mid_attention: bool = False
    norm_num_groups: int = 8
    num_classes: int = 0  # > 0: class-conditional on the dataset's labels (a learned class embedding)


@dataclass(frozen=True)
class TrainConfig:
    """Denoising score matching with AdamW, EMA and gradient clipping (Song et al. 2021 defaults for paper)."""

    steps: int = 3000
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    grad_clip: float = 1.0
    ema_decay: float = 0.995
    eps: float = 1e-5  # smallest training time (Song et al.: 1e-5)
    seed: int = 0
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10


@dataclass(frozen=True)
class DPConfig:
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


@dataclass(frozen=True)
class SampleConfig:
    n: int = 64
    sampler: str = "em"
    steps: int = 500
    eps: float = 1e-3  # last time of the grid (Song et al.: 1e-3 for VP and sub-VP)
    seed: int = 0
    batch_size: int = 64
    shard_size: int = 1000
    snr: float = 0.16  # predictor-corrector only
    corrector_steps: int = 1  # predictor-corrector only


@dataclass(frozen=True)
class ClassifierConfig:
    """One adversary classifier (c_p or c_id): a torchvision ResNet trained from scratch (Sec. 5.2, App. A).

    Training examples are drawn afresh every step from the training images, so an "epoch" is ``epoch_size``
    draws; training stops when the validation loss has not improved for ``patience`` epochs (or after
    ``max_epochs``) and keeps the weights of the best epoch.
    """

    arch: str = "resnet18"  # resnet10 (BasicBlock [1,1,1,1]), resnet18, resnet34 or resnet50
    small_input: bool = True  # 3x3 stride-1 first convolution for 28x28 inputs (the max-pool is kept)
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
    noise_std: float = 0.0  # Gaussian noise of std ~ U(0, noise_std) in [0, 1] pixel units (c_id)
    threshold: float = 0.5  # positive when sigmoid(logit) > threshold
    seed: int = 0


def _c_p(**kw: Any) -> ClassifierConfig:
    # App. A: SAFs on 50% of the training draws, 10% of the validation set. The paper adds noise for c_id only;
    # without it c_p found 57 of 200 copies of x_p with noise of std 0.05 and 4 of 200 at 0.1 (BreastMNIST,
    # N_D = 32), while the generated copies differ from x_p by a mean absolute error of 0.014-0.065, so c_p gets it too.
    return ClassifierConfig(positive_share=0.5, val_positive_share=0.1, noise_std=0.1, **kw)


def _c_id(**kw: Any) -> ClassifierConfig:
    # App. A: the identity in 10% of the training draws and 50% of the validation set; random SAF-shaped masks
    # and Gaussian noise (Sec. 5.2)
    return ClassifierConfig(positive_share=0.1, val_positive_share=0.5, mask_prob=0.5, noise_std=0.1, **kw)


#: Classifier presets: the pair (c_p, c_id) for each name.
CLASSIFIER_PRESETS: dict[str, dict[str, ClassifierConfig]] = {
    # A few minutes on 2 CPU cores (resnet10: 4.9 M parameters, 111 MFLOP per image; see benchmarks/). c_p's
    # validation loss jumps between epochs, so it gets more patience.
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
class ExtractorConfig:
    """FID's feature extractor where no Inception weights exist: a ResNet10 classifier of the dataset's labels
    whose small bottleneck before the classification head is the feature."""

    features: int = 64
    steps: int = 60
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    shift: int = 2  # random translations of up to this many pixels
    seed: int = 0


@dataclass(frozen=True)
class Preset:
    model: ModelConfig
    train: TrainConfig
    sample: SampleConfig = field(default_factory=SampleConfig)


PRESETS: dict[str, Preset] = {
    # Fits 2 CPU cores: 0.26 M parameters, three levels without attention (about 130 training images/s and
    # 390 images/s per network evaluation on 2 cores; see benchmarks/).
    "cpu": Preset(
        model=ModelConfig(),
        train=TrainConfig(),
        sample=SampleConfig(steps=500),
    ),
    # The paper's setting: three down/up levels at 28x28 (App. A), attention at 14x14, 30 000 steps (Sec. 5.3),
    # optimiser and EMA as in Song et al.'s sub-VP configs.
    "paper": Preset(
        model=ModelConfig(
            block_out_channels=(128, 256, 256),
            layers_per_block=2,
            attention_levels=(False, True, False),
            mid_attention=True,
            norm_num_groups=32,
        ),
        train=TrainConfig(
            steps=30_000, batch_size=128, lr=2e-4, warmup_steps=5000, grad_clip=1.0, ema_decay=0.9999,
            checkpoint_every=2500, log_every=50,
        ),
        sample=SampleConfig(steps=1000, batch_size=500, shard_size=5000),
    ),
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise DiffauditError(f"unknown preset '{name}'; choose one of {', '.join(PRESETS)}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(cls: type[C], d: dict[str, Any]) -> C:
    """Build ``cls`` from a dict, refusing unknown keys and turning lists back into tuples."""
    names = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(d) - set(names)
    if unknown:
        raise DiffauditError(f"{cls.__name__} has no field(s) {sorted(unknown)}; known: {sorted(names)}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    return cls(**kwargs)


def replace(cfg: C, **changes: Any) -> C:
    """``dataclasses.replace`` that ignores None values (unset command-line options)."""
    return dataclasses.replace(cfg, **{k: v for k, v in changes.items() if v is not None})  # type: ignore[type-var]
