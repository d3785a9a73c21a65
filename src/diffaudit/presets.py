"""The presets by name: the score model's (``diffaudit train --preset``: the U-Net, its training and its sampling) and
the whole audit's (``diffaudit audit --preset``), with the overrides the command line applies on top of them. The
sections they are made of, and their checks, are in :mod:`diffaudit.config`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .config import (
    CLASSIFIER_PRESETS,
    AuditConfig,
    ExtractorConfig,
    FIDConfig,
    ModelConfig,
    NLLConfig,
    PrepareConfig,
    SampleConfig,
    TPrimeConfig,
    TrainConfig,
)
from .errors import DiffauditError


@dataclass(frozen=True)
class Preset:
    model: ModelConfig
    train: TrainConfig
    sample: SampleConfig = field(default_factory=SampleConfig)


PRESETS: dict[str, Preset] = {
    # Fits 2 CPU cores: 0.26 M parameters, three levels without attention (about 130 training images/s and
    # 438 images/s per network evaluation on 2 cores at batch 128; see benchmarks/). It predicts v: with eps, this
    # small network leaves the samples' mean brightness to drift (ModelConfig). Images above 32 px enter as 2 x 2
    # (up to 4 x 4) patches, so the same three levels run on a grid of at most 32 px (diffusion.unet).
    "cpu": Preset(
        model=ModelConfig(prediction="v", patch="auto"),
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


def _cpu_demo() -> AuditConfig:
    # About 7.5 minutes on 2 CPU cores with its control model (the README's benchmark; 9.5 at 64 px, where the cpu
    # network takes 2 x 2 patches): 16 BreastMNIST images, a short training that already memorises them, 256 samples
    # with 100 Euler-Maruyama steps, a coarse t' grid, few NLL images. Each step takes the whole set (batch 16): at
    # 28 px as many images as 1250 steps of 32 at less than half the cost (README: the 64-px demo).
    cpu = PRESETS["cpu"]
    return AuditConfig(
        prepare=PrepareConfig(dataset="breastmnist", n_train=16, seed=0),
        model=cpu.model,
        train=dataclasses.replace(cpu.train, steps=2500, batch_size=16, checkpoint_every=500),
        # c_p with AugMix severity 1 and a cosine learning rate: with severity 3 and a constant rate, 10 such epochs
        # found 0 of 200 copies of x_p; this finds 200/200 at noise std 0-0.05 with 0 false positives on the 156 test
        # images (README: the cpu-demo benchmark)
        c_p=dataclasses.replace(CLASSIFIER_PRESETS["cpu"]["c_p"], max_epochs=30, patience=20, epoch_size=512,
                                val_size=256, augmix_severity=1, lr_schedule="cosine"),
        c_id=dataclasses.replace(CLASSIFIER_PRESETS["cpu"]["c_id"], max_epochs=12, patience=3, epoch_size=512,
                                 val_size=256),
        sample=SampleConfig(n=256, steps=100, batch_size=128),
        tprime=TPrimeConfig(M=8, resolution=0.05, steps=100),
        nll=NLLConfig(n_train=8, n_test=8, x_p_repeats=4, rtol=1e-4, atol=1e-4),
        fid=FIDConfig(domain=ExtractorConfig(steps=60)),
    )


def _cpu() -> AuditConfig:
    # The README's BreastMNIST N_D = 32 audit: about an hour on 2 CPU cores.
    cpu = PRESETS["cpu"]
    return AuditConfig(prepare=PrepareConfig(dataset="breastmnist", n_train=32, seed=0), model=cpu.model,
                       train=cpu.train, sample=SampleConfig(n=512, steps=250),
                       tprime=TPrimeConfig(M=16, steps=250), nll=NLLConfig(n_train=32, n_test=32),
                       fid=FIDConfig(domain=ExtractorConfig(steps=300)))


def _paper() -> AuditConfig:
    # Sec. 5.3 and App. A: 30 000 steps, 150 000 samples, M = 16, ResNet50 classifiers; for a GPU.
    paper = PRESETS["paper"]
    return AuditConfig(prepare=PrepareConfig(dataset="breastmnist", n_train=None, channels=3, seed=0),
                       model=paper.model, train=paper.train, c_p=CLASSIFIER_PRESETS["paper"]["c_p"],
                       c_id=CLASSIFIER_PRESETS["paper"]["c_id"],
                       sample=dataclasses.replace(paper.sample, n=150_000),
                       tprime=TPrimeConfig(M=16, steps=1000), nll=NLLConfig(n_train=1000, n_test=1000, batch_size=250),
                       fid=FIDConfig(domain=ExtractorConfig(steps=3000, batch_size=128)))


def _cpu_demo_3d() -> AuditConfig:
    # Volumes at 32^3 (give the folder with --data; README, 3D volumes): 16 volumes, the cpu network on 2 x 2 x 2
    # patches (a 16^3 grid, diffusion.unet3d), the reference nearest-neighbour detector as the count's detector (the
    # 3D c_p did not reach its criterion at this scale on 2 cores), 128 samples and 128 of the control model, few NLL
    # volumes. 7000 training steps, the last 1000 a cosine decay of the learning rate to 0 (about 50 minutes on 2
    # cores): after 6000 steps at the constant rate the samples of the 16 IXI volumes were near-copies (median RMSE to
    # the nearest 0.077, x_p's 0.073, above its reference threshold 0.071); the decay brought them to 0.066 (x_p's
    # 0.064) in 1000 more steps (README, 3D volumes).
    cpu = PRESETS["cpu"]
    return AuditConfig(
        prepare=PrepareConfig(n_train=16, seed=0, size=(32, 32, 32), fit="resize"),
        model=cpu.model,
        train=dataclasses.replace(cpu.train, steps=VOLUME_DEMO_STEPS, batch_size=16, checkpoint_every=1000,
                                  lr_schedule="cosine", decay_steps=1000),
        detector="nn",
        sample=SampleConfig(n=128, steps=100, batch_size=32),
        tprime=TPrimeConfig(M=8, resolution=0.05, steps=100),
        nll=NLLConfig(n_train=4, n_test=4, x_p_repeats=2, rtol=1e-3, atol=1e-3),
        fid=FIDConfig(domain=ExtractorConfig(steps=60, batch_size=32)),
    )


def _gpu_3d(size: tuple[int, int, int]) -> AuditConfig:
    # Volumes on one GPU: MONAI's tutorial scale (64^3, or BraTS' 96 x 96 x 64), a network of (64, 128, 256) with
    # attention at the coarsest level on 4^3 patches, c_p and c_id as 3D ResNet18s.
    return AuditConfig(
        prepare=PrepareConfig(n_train=64, seed=0, size=size, fit="crop"),
        model=ModelConfig(block_out_channels=(64, 128, 256), layers_per_block=2, attention_levels=(False, False, True),
                          norm_num_groups=32, prediction="v", patch="auto"),
        train=TrainConfig(steps=20_000, batch_size=16, lr=2e-4, warmup_steps=1000, ema_decay=0.999,
                          checkpoint_every=2500, log_every=50),
        c_p=dataclasses.replace(CLASSIFIER_PRESETS["cpu"]["c_p"], arch="resnet18", max_epochs=40),
        c_id=dataclasses.replace(CLASSIFIER_PRESETS["cpu"]["c_id"], arch="resnet18"),
        sample=SampleConfig(n=2048, steps=500, batch_size=64, shard_size=512),
        tprime=TPrimeConfig(M=16, resolution=0.02, steps=250),
        nll=NLLConfig(n_train=32, n_test=32, batch_size=8),
        fid=FIDConfig(domain=ExtractorConfig(steps=1000, batch_size=32)),
    )


#: the training steps of the cpu-demo-3d preset (see its comment)
VOLUME_DEMO_STEPS = 7000

#: Audit presets by name (``diffaudit audit --preset``); the first is the default.
AUDIT_PRESETS: dict[str, AuditConfig] = {"cpu-demo": _cpu_demo(), "cpu": _cpu(), "paper": _paper(),
                                         "cpu-demo-3d": _cpu_demo_3d(), "gpu-3d-64": _gpu_3d((64, 64, 64)),
                                         "gpu-3d-96x96x64": _gpu_3d((96, 96, 64))}


def get_audit_preset(name: str, **overrides: dict[str, Any] | None) -> AuditConfig:
    """A preset with section overrides, e.g. ``prepare={"n_train": 64}`` or ``sample={"n": 1000}``."""
    try:
        cfg = AUDIT_PRESETS[name]
    except KeyError:
        raise DiffauditError(f"unknown audit preset '{name}'; choose one of {', '.join(AUDIT_PRESETS)}") from None
    return apply_overrides(cfg, **overrides)


def apply_overrides(cfg: AuditConfig, **overrides: dict[str, Any] | None) -> AuditConfig:
    """``cfg`` with the non-None settings of each section replaced, e.g. ``sample={"n": 1000, "seed": None}``."""
    for section, changes in overrides.items():
        changes = {k: v for k, v in (changes or {}).items() if v is not None}
        if changes:
            cfg = dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **changes)})
    return cfg
