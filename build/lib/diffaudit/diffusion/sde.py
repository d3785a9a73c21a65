"""Forward SDEs dx = f(x, t) dt + g(t) dw of Song et al. (2021), "Score-Based Generative Modeling through
Stochastic Differential Equations" (ICLR 2021), Sec. 3.4 and App. B.

Each SDE is one object with four methods: :meth:`SDE.sde` (drift and diffusion), :meth:`SDE.coefficients`
(the perturbation kernel p_0t(x_t | x_0) = N(alpha_t x_0, sigma_t^2 I), linear in x_0 for all three SDEs),
:meth:`SDE.prior_sample` and :meth:`SDE.prior_logp`. The reverse-time SDE (Song Eq. 6) and the probability-flow
ODE (Song Eq. 13) are derived once from these in :meth:`SDE.reverse_drift`; nothing elsewhere branches on the
kind of SDE.

Times are tensors of shape [B] (one per image); all outputs broadcast against x of shape [B, C, H, W].
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import torch

from ..errors import DiffauditError


def _expand(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape per-image values [B] to broadcast against x [B, ...]."""
    return v.reshape(-1, *([1] * (x.ndim - 1)))


class SDE(ABC):
    """A forward diffusion on [0, T] with a Gaussian perturbation kernel and a Gaussian prior."""

    name: ClassVar[str]
    T: float

    @abstractmethod
    def sde(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Drift f(x, t) (shape of x) and diffusion g(t) (shape [B])."""

    @abstractmethod
    def coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha_t, sigma_t), both [B], with p_0t(x_t | x_0) = N(alpha_t x_0, sigma_t^2 I)."""

    @property
    @abstractmethod
    def prior_std(self) -> float:
        """Standard deviation of the prior N(0, prior_std^2 I) that x_T is drawn from."""

    # ---- derived, shared by every SDE -------------------------------------------------------------
    def marginal(self, x0: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of the perturbation kernel p_0t(x_t | x_0) (Song Eq. 29 for sub-VP)."""
        alpha_t, sigma_t = self.coefficients(t)
        return _expand(alpha_t, x0) * x0, sigma_t

    def perturb(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Draw x_t ~ p_0t(x_t | x_0) given standard normal ``noise`` of the shape of x0."""
        mean, sigma_t = self.marginal(x0, t)
        return mean + _expand(sigma_t, x0) * noise

    def prior_sample(self, noise: torch.Tensor) -> torch.Tensor:
        """Map standard normal ``noise`` to a draw from the prior p_T."""
        return self.prior_std * noise

    def prior_logp(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, prior_std^2 I) per image, shape [B] (natural log)."""
        d = z[0].numel()
        s2 = self.prior_std**2
        return -0.5 * d * math.log(2 * math.pi * s2) - z.flatten(1).pow(2).sum(1) / (2 * s2)

    def reverse_drift(
        self, x: torch.Tensor, t: torch.Tensor, score: torch.Tensor, *, probability_flow: bool = False
    ) -> torch.Tensor:
        """Drift of the reverse-time SDE f - g^2 score (Song Eq. 6), or of the probability-flow ODE
        f - g^2 score / 2 (Song Eq. 13) when ``probability_flow``. Integrated from t = T down to 0."""
        drift, g = self.sde(x, t)
        weight = 0.5 if probability_flow else 1.0
        return drift - weight * _expand(g**2, x) * score

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **asdict(self)}  # type: ignore[call-overload]


@dataclass(frozen=True)
class VPSDE(SDE):
    """VP SDE (Song Eq. 11; the continuous DDPM): dx = -beta(t) x / 2 dt + sqrt(beta(t)) dw,
    beta(t) = beta_min + t (beta_max - beta_min).

    With B(t) = int_0^t beta(s) ds = beta_min t + t^2 (beta_max - beta_min) / 2 (Song Eq. 33):
    alpha_t = exp(-B(t)/2), sigma_t^2 = 1 - exp(-B(t)). Prior N(0, I).
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    T: float = 1.0
    name: ClassVar[str] = "vp"

    def __post_init__(self) -> None:
        if not (0 < self.beta_min < self.beta_max):
            raise DiffauditError(f"need 0 < beta_min < beta_max, got {self.beta_min}, {self.beta_max}")
        if self.T <= 0:
            raise DiffauditError(f"T must be positive, got {self.T}")

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def integrated_beta(self, t: torch.Tensor) -> torch.Tensor:
        """B(t) = int_0^t beta(s) ds."""
        return self.beta_min * t + 0.5 * t**2 * (self.beta_max - self.beta_min)

    def sde(self, x, t):
        beta_t = self.beta(t)
        return -0.5 * _expand(beta_t, x) * x, torch.sqrt(beta_t)

    def coefficients(self, t):
        b = self.integrated_beta(t)
        return torch.exp(-0.5 * b), torch.sqrt(-torch.expm1(-b))

    @property
    def prior_std(self) -> float:
        return 1.0


@dataclass(frozen=True)
class SubVPSDE(VPSDE):
    """sub-VP SDE (Song Eq. 12), the paper's choice for its likelihoods:
    dx = -beta(t) x / 2 dt + sqrt(beta(t) (1 - exp(-2 B(t)))) dw.

    Its perturbation kernel (Song Eq. 29) has the VP mean, alpha_t = exp(-B(t)/2), and
    sigma_t = 1 - exp(-B(t)). This is the *standard deviation*, although it looks like the VP variance:
    the kernel's covariance is (1 - exp(-B(t)))^2 I, which is below the VP's for every t > 0 (hence "sub").
    Prior N(0, I) (sigma_T = 1 - exp(-10.05) for the defaults).
    """

    name: ClassVar[str] = "subvp"

    def sde(self, x, t):
        beta_t = self.beta(t)
        discount = -torch.expm1(-2.0 * self.integrated_beta(t))  # 1 - exp(-2 B(t))
        return -0.5 * _expand(beta_t, x) * x, torch.sqrt(beta_t * discount)

    def coefficients(self, t):
        b = self.integrated_beta(t)
        return torch.exp(-0.5 * b), -torch.expm1(-b)  # std, not variance (see class docstring)


@dataclass(frozen=True)
class VESDE(SDE):
    """VE SDE (Song Eq. 9; continuous SMLD): dx = sqrt(d sigma^2(t)/dt) dw with
    sigma(t) = sigma_min (sigma_max / sigma_min)^t, so g(t) = sigma(t) sqrt(2 log(sigma_max / sigma_min)).

    alpha_t = 1 and sigma_t^2 = sigma(t)^2 - sigma_min^2: the exact kernel of this SDE started at x_0 (Song's
    code uses sigma(t), which treats sigma_min as noise already present in the data; the difference is below
    sigma_min). Prior N(0, sigma_max^2 I).
    """

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    T: float = 1.0
    name: ClassVar[str] = "ve"

    def __post_init__(self) -> None:
        if not (0 < self.sigma_min < self.sigma_max):
            raise DiffauditError(f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def sde(self, x, t):
        g = self.sigma(t) * math.sqrt(2 * math.log(self.sigma_max / self.sigma_min))
        return torch.zeros_like(x), g

    def coefficients(self, t):
        return torch.ones_like(t), torch.sqrt(self.sigma(t) ** 2 - self.sigma_min**2)

    @property
    def prior_std(self) -> float:
        return self.sigma_max


SDES: dict[str, type[SDE]] = {cls.name: cls for cls in (SubVPSDE, VPSDE, VESDE)}


def make_sde(name: str, **params: float) -> SDE:
    """Build an SDE by registry name ('subvp', 'vp', 've') with optional parameters."""
    try:
        cls = SDES[name]
    except KeyError:
        raise DiffauditError(f"unknown SDE '{name}'; choose one of {', '.join(SDES)}") from None
    allowed = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = set(params) - allowed
    if unknown:
        raise DiffauditError(f"SDE '{name}' has no parameter(s) {sorted(unknown)}; it takes {sorted(allowed)}")
    return cls(**params)


def sde_from_dict(d: dict[str, Any]) -> SDE:
    d = dict(d)
    return make_sde(d.pop("name"), **d)
