"""The downstream label classifier in five regimes, with DP-SGD where the regime names it.

| regime | training |
|---|---|
| ``real`` | the real training set D, without DP (train on real, test on real) |
| ``synthetic`` | the generated images with their labels, without DP (train on synthetic, test on real) |
| ``real_dp`` | D with DP-SGD at ε |
| ``mixed_dp`` | D with DP-SGD at ε; each logical step also takes round(mix_ratio x batch) synthetic images |
| ``pretrained_dp`` | the ``synthetic`` classifier of the same seed, fine-tuned on D with DP-SGD at ε |

Every regime trains the same network, the FID domain extractor's ResNet10 (:class:`~diffaudit.audit.quality.fid.
DomainFeatures`) with its BatchNorm layers replaced by GroupNorm (Opacus' ``ModuleValidator.fix``: DP-SGD needs
per-example gradients), with the same optimiser, steps, batch and random shifts, through the one DP-SGD loop of
:func:`diffaudit.privacy.dpsgd.dp_sgd`. ε = ∞ (None) runs that loop without Opacus on the same Poisson batches, so the
DP regimes at ∞ are their non-private counterparts.

Only the real records are accounted. The synthetic images of ``mixed_dp`` are the same on neighbouring real datasets:
their gradients shift the noisy sum by a quantity that does not depend on any real record, so the sensitivity to one
record stays the clipping norm and q, σ and the steps give ε as for ``real_dp``. Their own privacy is the generator's.
"""

from __future__ import annotations

import enum

import numpy as np
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from ...config import DPConfig, UtilityConfig
from ...errors import DiffauditError
from ...extras import require
from ...privacy.dpsgd import dp_sgd, epsilons, poisson_rate
from ...rng import derive_seed
from ..quality.fid import DomainFeatures, evaluate_classifier, shift_images

REGIMES = ("real", "synthetic", "real_dp", "mixed_dp", "pretrained_dp")
DP_REGIMES = ("real_dp", "mixed_dp", "pretrained_dp")


class Stream(enum.IntEnum):
    """What a seed derived from a regime's seed is for; the values never change."""

    INIT = 41  # the classifier's initial weights
    SHIFT = 42  # the random translations of a batch
    SYNTH = 43  # the synthetic images a mixed step takes


class _Block(BasicBlock):
    """torchvision's BasicBlock with its residual sum out of place (the same parameters and state dict)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


def classifier(channels: int, n_classes: int, seed: int, features: int = 64, width: int = 64) -> DomainFeatures:
    """The regimes' network: the domain extractor's ResNet10 with GroupNorm for BatchNorm, ``width`` channels at its
    first level, seeded."""
    require("opacus", "the DP classifier regimes")
    from opacus.validators import ModuleValidator

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, Stream.INIT))
        net = ModuleValidator.fix(DomainFeatures(channels, n_classes, features, width))
    for m in net.modules():  # Opacus' backward hooks forbid in-place operations on their outputs' views
        if isinstance(m, nn.ReLU):
            m.inplace = False
        if isinstance(m, BasicBlock):
            m.__class__ = _Block
    errors = ModuleValidator.validate(net, strict=False)
    if errors:  # never expected: fix() replaces every BatchNorm
        raise DiffauditError(f"the classifier cannot be trained with DP-SGD: {errors[0]}")
    return net


def check_classes(labels: np.ndarray, n_classes: int, batch_size: int, what: str = "real") -> None:
    """Refuse a real set DP-SGD cannot learn from: fewer images than the expected batch, or a class of which a batch
    expects less than one image."""
    n = len(labels)
    if n < batch_size:
        raise DiffauditError(f"DP-SGD's expected batch of {batch_size} needs at least that many {what} images, and D "
                             f"has {n}; lower the utility batch size (utility.batch_size in --config)")
    counts = np.bincount(labels.astype(np.int64), minlength=n_classes)
    rare = int(counts.argmin())
    if counts[rare] * batch_size / n < 1:
        raise DiffauditError(f"class {rare} has {counts[rare]} of the {n} {what} images: a DP-SGD batch of {batch_size} "
                             f"expects {counts[rare] * batch_size / n:.2f} of them, too few to learn the class; raise "
                             "the batch size or audit a training set with more images of each class")


def noise_for(epsilon: float, q: float, cfg: UtilityConfig) -> float:
    """σ that reaches ``epsilon`` at δ with rate q over the steps (PRV accountant), refused in one line where no σ
    does (an ε so large that the calibration fails)."""
    from opacus.accountants.utils import get_noise_multiplier

    try:
        return float(get_noise_multiplier(target_epsilon=epsilon, target_delta=cfg.delta, sample_rate=q,
                                          steps=cfg.steps, accountant="prv", epsilon_tolerance=0.01))
    except (ValueError, RuntimeError, OverflowError) as err:
        raise DiffauditError(f"no noise multiplier reaches classifier epsilon {epsilon:g} at delta {cfg.delta:g} with "
                             f"rate {q:.3g} over {cfg.steps} steps ({err}); use a smaller epsilon, or inf for no DP") from None


def train_regime(regime: str, *, real: tuple[np.ndarray, np.ndarray], synthetic: tuple[np.ndarray, np.ndarray],
                 n_classes: int, cfg: UtilityConfig, epsilon: float | None, seed: int, device,
                 init: dict | None = None, progress: bool = False) -> tuple[DomainFeatures, dict]:
    """Train one classifier of ``regime`` (module docstring) at ``epsilon`` (None: ∞) with ``seed``; ``init`` the
    weights to start from (``pretrained_dp``: the ``synthetic`` classifier's). Returns the network and its record
    (σ, q, steps and ε by each accountant for a DP regime)."""
    if regime not in REGIMES:
        raise DiffauditError(f"unknown regime '{regime}'; one of {', '.join(REGIMES)}")
    x, y = synthetic if regime == "synthetic" else real
    sx, sy = (torch.from_numpy(synthetic[0]), torch.from_numpy(synthetic[1].astype(np.int64)))
    data, target = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    net = classifier(x.shape[1], n_classes, seed, width=cfg.width)
    if init is not None:
        net.load_state_dict(init)
    net = net.to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    private = regime in DP_REGIMES and epsilon is not None
    n, batch = len(x), min(cfg.batch_size, len(x))
    dp = DPConfig(epsilon=epsilon if private else 1.0, delta=cfg.delta, max_grad_norm=cfg.max_grad_norm,
                  physical_batch_size=cfg.physical_batch_size)
    q = poisson_rate(n, batch)
    sigma = noise_for(epsilon, q, cfg) if private else 0.0
    extra = round(cfg.mix_ratio * batch) if regime == "mixed_dp" else 0

    def loss_of(module: nn.Module, idx: torch.Tensor, step: int, chunk: int):
        xs, ys = data[idx], target[idx]
        if extra and chunk == 0:  # the synthetic rows of this logical step, once, also when no real record came
            g = torch.Generator().manual_seed(derive_seed(seed, step, Stream.SYNTH))
            pick = torch.randint(0, len(sx), (extra,), generator=g)
            xs, ys = torch.cat([xs, sx[pick]]), torch.cat([ys, sy[pick]])
        g = torch.Generator().manual_seed(derive_seed(seed, step, chunk, Stream.SHIFT))
        inputs = shift_images(xs.float() / 127.5 - 1.0, cfg.shift, g).to(device)
        inner = getattr(module, "_module", module)  # Opacus' GradSampleModule wraps the classifier
        return nn.functional.cross_entropy(inner.head(module(inputs)), ys.to(device)), len(ys)

    run = dp_sgd(net, opt, n=n, batch_size=batch, steps=cfg.steps, sigma=sigma, dp=dp, seed=seed, device=device,
                 loss_of=loss_of, private=private, progress=progress, desc=f"{regime} (seed {seed})",
                 public_rows=extra > 0)
    record = {"regime": regime, "epsilon_target": epsilon, "seed": seed, "n_real": len(real[0]),
              "n_train": int(n), "synthetic_per_step": extra, "steps": run.steps}
    if private:
        record["dp"] = {"noise_multiplier": sigma, "sample_rate": q, "steps": run.steps, "delta": cfg.delta,
                        "max_grad_norm": cfg.max_grad_norm, "epsilon": epsilons(sigma, q, run.steps, cfg.delta),
                        "epsilon_engine": run.epsilon_engine, "accountant": dp.accountant}
    if hasattr(run.module, "_close"):  # Opacus' hooks off the classifier
        run.module._close()
    return net.eval(), record


def evaluate(net: DomainFeatures, test: tuple[np.ndarray, np.ndarray], n_classes: int, device) -> dict:
    """Accuracy and AUROC on the real test split (the extractor's evaluation)."""
    return evaluate_classifier(net, test[0], test[1], n_classes, device)
