"""Exact likelihood of images under the score model, in bits per dimension (the paper's Eq. 5; Song et al. 2021,
Sec. 4.3 and App. D.2).

**Continuous density.** The probability-flow ODE dx/dt = f~(x, t) = f(x, t) - g(t)^2 s_theta(x, t) / 2 is a
continuous normalising flow from the data at t = eps to the prior at t = T, so by the instantaneous change of
variables (Chen et al. 2018)

    log p_eps(x(eps)) = log p_T(x(T)) + int_eps^T div f~(x(t), t) dt,

integrated jointly with x(t) by an adaptive Runge-Kutta solver (scipy's RK45, relative and absolute tolerance
1e-5 as in Song et al.). The divergence is either exact (D backward passes; small D only) or the Hutchinson
estimate div f~ ~= e^T (d f~ / dx) e with one Rademacher vector e per image, fixed along the path, so that the
estimate of log p is unbiased.

**Dequantisation of 8-bit images.** The model works in z = k / 127.5 - 1 for grey levels k in {0, ..., 255}, and
a generated z is mapped back to the level nearest to it, so level k owns the cell [z_k - 1/255, z_k + 1/255) of
width w = 2/255 in every dimension. The probability the model gives to a discrete image k is the mass of its cell,

    P(k) = int_cell p(z) dz = w^D E_{z ~ U(cell)} [p(z)] >= w^D exp(E_{z ~ U(cell)} [log p(z)])   (Jensen),

so with uniform dequantisation z = (k + u - 1/2) / 127.5 - 1, u ~ U[0, 1)^D, the negative log-likelihood in bits
per dimension is bounded by

    -log2 P(k) / D <= -E_u[log p(z)] / (D ln 2) - log2 w = -E_u[log p(z)] / (D ln 2) + log2(127.5),

with log2(127.5) = 6.9944. This is the bound reported. Each image's value uses one draw of u (and of the
Hutchinson probe), so it is an unbiased one-sample estimate of the bound; means over images or draws estimate it
closely. Ho et al. 2020 and Song et al. use the same uniform dequantisation; Song's code maps k to (k + u) / 256,
cells of width 2/256 in [-1, 1], and adds 7 bits, so its numbers are 0.0056 bits per dimension larger than ours on
the same model for that reason alone.

Each image's dequantisation noise u and Hutchinson vector e are drawn from its own stream, seeded by
(seed, index), so a likelihood is reproducible whatever the batch it was computed in.
"""

from __future__ import annotations

import enum
import math
from typing import Callable, Sequence

import numpy as np
import torch
from scipy.integrate import solve_ivp

from ...diffusion.conditioning import as_condition
from ...diffusion.score import with_labels
from ...diffusion.sde import SDE
from ...errors import DiffauditError
from ...rng import derive_seed

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: log2 of the inverse cell width 2/255 of the model space [-1, 1] (see the module docstring)
DEQUANTISATION_BITS = math.log2(127.5)


class Stream(enum.IntEnum):
    """What a seed derived from this stage's seed is for (``derive_seed(seed, ..., Stream.X)``). The values are part
    of every run's numbers, so they never change; streams of other stages may share a value, since each stage derives
    from its own seed."""

    DEQUANT = 11  # image i's uniform dequantisation noise
    PROBE = 12  # image i's Hutchinson probe


def _divergence(drift: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                probe: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(f(x), div f(x)) per image; Hutchinson with ``probe`` [B, ...] or exact when ``probe`` is None."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        f = drift(x)
        if probe is not None:
            (grad,) = torch.autograd.grad((f * probe).sum(), x)
            div = (grad * probe).flatten(1).sum(1)
        else:
            flat = f.flatten(1)
            div = torch.zeros(len(x), dtype=f.dtype, device=f.device)
            for d in range(flat.shape[1]):
                (grad,) = torch.autograd.grad(flat[:, d].sum(), x, retain_graph=d < flat.shape[1] - 1)
                div = div + grad.flatten(1)[:, d]
    return f.detach(), div.detach()


def log_likelihood(
    score_fn: ScoreFn,
    sde: SDE,
    x: torch.Tensor,
    *,
    probe: torch.Tensor | None = None,
    eps: float = 1e-5,
    rtol: float = 1e-5,
    atol: float = 1e-5,
) -> tuple[np.ndarray, int]:
    """log p(x) in nats for a batch of continuous images ``x`` [B, C, H, W] in model space, and the number of
    network evaluations (each with one backward pass). ``probe`` [B, C, H, W] (Rademacher or Gaussian) selects
    the Hutchinson estimator; without it the divergence is exact (D backward passes per evaluation).

    >>> from diffaudit.diffusion.sde import SubVPSDE
    >>> from diffaudit.diffusion.score import gaussian_score
    >>> sde = SubVPSDE()
    >>> x = torch.zeros(1, 1, 2, 2)
    >>> logp, _ = log_likelihood(gaussian_score(sde, 0.0, 0.5), sde, x)
    >>> round(float(logp[0]), 3), round(-2 * math.log(2 * math.pi * 0.25), 3)  # log N(0; 0, 0.25 I_4)
    (-0.903, -0.903)
    """
    if x.ndim not in (4, 5):
        raise DiffauditError(f"images must be [B, C, H, W] (or volumes [B, C, D, H, W]), got shape {tuple(x.shape)}")
    if not 0 < eps < sde.T:
        raise DiffauditError(f"the ODE starts at eps in (0, T), got {eps}")
    shape, device, dtype = x.shape, x.device, x.dtype
    b, d = shape[0], x[0].numel()
    nfe = 0

    def ode(t: float, state: np.ndarray) -> np.ndarray:
        nonlocal nfe
        nfe += 1
        xt = torch.from_numpy(state[: b * d]).to(device=device, dtype=dtype).reshape(shape)
        tt = torch.full((b,), t, device=device, dtype=dtype)

        def drift(y: torch.Tensor) -> torch.Tensor:
            return sde.reverse_drift(y, tt, score_fn(y, tt), probability_flow=True)

        f, div = _divergence(drift, xt, probe)
        return np.concatenate([f.flatten().cpu().double().numpy(), div.cpu().double().numpy()])

    start = np.concatenate([x.detach().flatten().cpu().double().numpy(), np.zeros(b)])
    sol = solve_ivp(ode, (eps, sde.T), start, rtol=rtol, atol=atol, method="RK45")
    if not sol.success:
        raise DiffauditError(f"the probability-flow ODE solver failed: {sol.message}")
    end = sol.y[:, -1]
    z = torch.from_numpy(end[: b * d]).reshape(shape)
    delta = end[b * d:]
    return sde.prior_logp(z.double()).numpy() + delta, nfe


def dequantise(images: np.ndarray, indices: Sequence[int], seed: int) -> torch.Tensor:
    """Uniform dequantisation of uint8 ``images`` into their cells of the model space, z = (k + u - 1/2)/127.5 - 1,
    with u of image i drawn from the stream (seed, index_i)."""
    u = torch.stack([torch.rand(images.shape[1:], generator=torch.Generator().manual_seed(derive_seed(seed, i, Stream.DEQUANT)),
                                dtype=torch.float64) for i in indices])
    return ((torch.from_numpy(images.astype(np.float64)) + u - 0.5) / 127.5 - 1.0).float()


def rademacher(shape: Sequence[int], indices: Sequence[int], seed: int) -> torch.Tensor:
    """Hutchinson probes in {-1, +1}, one per image, drawn from the stream (seed, index_i)."""
    return torch.stack([torch.randint(0, 2, tuple(shape), generator=torch.Generator().manual_seed(derive_seed(seed, i, Stream.PROBE)))
                        for i in indices]).float() * 2 - 1


def bits_per_dim(
    score_fn: ScoreFn,
    sde: SDE,
    images: np.ndarray,
    *,
    indices: Sequence[int] | None = None,
    seed: int = 0,
    batch_size: int = 64,
    exact_divergence: bool = False,
    device: torch.device | str = "cpu",
    progress: Callable[[int], None] | None = None,
    labels: Sequence[int] | None = None,
    **solver: float,
) -> tuple[np.ndarray, int]:
    """Negative log-likelihood bound in bits per dimension of uint8 ``images`` [N, C, H, W] (module docstring; of a
    volume [N, C, D, H, W] in bits per voxel),
    one value per image, and the total number of network evaluations. ``indices`` (default 0..N-1) name each
    image's random stream; ``progress(n)`` is called after each batch of n images. For a class-conditional
    ``score_fn`` (a ScoreModel), ``labels`` give each image's class (or condition row): the result is then -log2 p(x | y) / D."""
    if images.ndim not in (4, 5) or images.dtype != np.uint8:
        raise DiffauditError(f"NLL needs uint8 images [N, C, H, W] or volumes [N, C, D, H, W], got {images.dtype} "
                             f"{images.shape}")
    indices = list(range(len(images))) if indices is None else [int(i) for i in indices]
    if len(indices) != len(images):
        raise DiffauditError(f"{len(indices)} indices for {len(images)} images")
    d = int(np.prod(images.shape[1:]))
    out, nfe = [], 0
    for lo in range(0, len(images), batch_size):
        idx = indices[lo:lo + batch_size]
        z = dequantise(images[lo:lo + batch_size], idx, seed).to(device)
        probe = None if exact_divergence else rademacher(images.shape[1:], idx, seed).to(device)
        fn = score_fn if labels is None else with_labels(score_fn, as_condition(labels[lo:lo + batch_size], z.device))
        logp, n = log_likelihood(fn, sde, z, probe=probe, **solver)
        out.append(-logp / (d * math.log(2)) + DEQUANTISATION_BITS)
        nfe += n
        if progress is not None:
            progress(len(idx))
    return np.concatenate(out), nfe


def summarise(values: np.ndarray) -> dict:
    """Mean, standard error and count of per-image bits/dim."""
    v = np.asarray(values, dtype=np.float64)
    sem = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else None
    return {"mean": float(v.mean()), "sem": sem, "n": int(len(v)), "values": [float(x) for x in v]}
