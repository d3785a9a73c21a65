"""Samplers for the reverse-time SDE and the probability-flow ODE (Song et al. 2021, Sec. 4).

Every sampler is a plain function with one signature::

    sampler(score_fn, sde, x, ts, *, noise, callback=None) -> x_0

``x`` is the state at time ``ts[0]`` and ``ts`` a decreasing time grid ending at a small eps > 0. Starting at
ts[0] = T from a prior draw is ordinary sampling; starting at ts[0] = t < T from x_p perturbed by the SDE's
kernel is the partial diffusion of the t' search (Algorithm 1) — the same code, a shorter grid. ``noise()``
returns the next standard normal draw of each image's own stream (:class:`~diffaudit.diffusion.rng.ImageNoise`),
so a sample depends only on (seed, index). ``score_fn(x, t)`` is any callable returning grad_x log p_t(x) for
x of shape [B, C, H, W] and t of shape [B]: a trained network, or an analytic score.

Each sampler returns the noise-free mean of its last step (Song's "denoising" of the final step).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from ..errors import DiffauditError
from .precision import in_precision, numerics
from .rng import ImageNoise
from .sde import SDE, _expand

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Optional[Callable[[int, torch.Tensor, torch.Tensor], None]]


def time_grid(sde: SDE, steps: int, *, t_start: float | None = None, eps: float = 1e-3) -> torch.Tensor:
    """Decreasing uniform grid t_start = t_0 > t_1 > ... > t_steps = eps (float64 for exact spacing)."""
    t_start = sde.T if t_start is None else float(t_start)
    if steps < 1:
        raise DiffauditError(f"the number of sampling steps must be at least 1, got {steps}")
    if not (0 < eps < t_start <= sde.T):
        raise DiffauditError(f"need 0 < eps < t_start <= T = {sde.T}, got eps={eps}, t_start={t_start}")
    return torch.linspace(t_start, eps, steps + 1, dtype=torch.float64)


def _vec(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), float(t), device=x.device, dtype=x.dtype)


def _reverse_step(score_fn: ScoreFn, sde: SDE, x: torch.Tensor, ts: torch.Tensor, i: int,
                  noise: Callable[[], torch.Tensor]) -> torch.Tensor:
    """One Euler–Maruyama step of the reverse-time SDE from ts[i] to ts[i+1]; the last step returns the mean."""
    t = _vec(ts[i], x)
    dt = float(ts[i + 1] - ts[i])  # negative: integrating backwards in time
    x_mean = x + sde.reverse_drift(x, t, score_fn(x, t)) * dt
    if i == len(ts) - 2:
        return x_mean
    _, g = sde.sde(x, t)
    return x_mean + _expand(g, x) * (-dt) ** 0.5 * noise()


def euler_maruyama(score_fn: ScoreFn, sde: SDE, x: torch.Tensor, ts: torch.Tensor, *,
                   noise: Callable[[], torch.Tensor], callback: Callback = None) -> torch.Tensor:
    """Euler–Maruyama on the reverse-time SDE dx = [f - g^2 score] dt + g dw_bar (Song Eq. 6).

    One score evaluation per step; ``len(ts) - 2`` noise draws (none on the last step)."""
    for i in range(len(ts) - 1):
        x = _reverse_step(score_fn, sde, x, ts, i, noise)
        if callback is not None:
            callback(i, _vec(ts[i], x), x)
    return x


def predictor_corrector(score_fn: ScoreFn, sde: SDE, x: torch.Tensor, ts: torch.Tensor, *,
                        noise: Callable[[], torch.Tensor], callback: Callback = None,
                        snr: float = 0.16, corrector_steps: int = 1) -> torch.Tensor:
    """Predictor–corrector sampling (Song Alg. 1): ``corrector_steps`` Langevin MCMC steps at each time
    (Song Alg. 4/5 with the step size set by the signal-to-noise ratio ``snr``), then one Euler–Maruyama
    predictor step. Song's code takes the norm of the score averaged over the batch; here it is per image, so
    an image does not depend on its batch mates. That step size relies on norms concentrating, as they do for
    images (hundreds of pixels); for data of a few dimensions prefer 'em' or 'ode'.
    (1 + corrector_steps) score evaluations per step."""
    if snr <= 0 or corrector_steps < 0:
        raise DiffauditError(f"need snr > 0 and corrector_steps >= 0, got {snr}, {corrector_steps}")
    n = len(ts) - 1
    for i in range(n):
        t = _vec(ts[i], x)
        for _ in range(corrector_steps):
            grad = score_fn(x, t)
            z = noise()
            grad_norm = grad.flatten(1).norm(dim=1)
            z_norm = z.flatten(1).norm(dim=1)
            step = 2 * (snr * z_norm / grad_norm.clamp_min(1e-12)) ** 2
            x = x + _expand(step, x) * grad + _expand(torch.sqrt(2 * step), x) * z
        x = _reverse_step(score_fn, sde, x, ts, i, noise)
        if callback is not None:
            callback(i, t, x)
    return x


def probability_flow(score_fn: ScoreFn, sde: SDE, x: torch.Tensor, ts: torch.Tensor, *,
                     noise: Callable[[], torch.Tensor] | None = None, callback: Callback = None) -> torch.Tensor:
    """Heun's second-order method on the probability-flow ODE dx = [f - g^2 score / 2] dt (Song Eq. 13).

    Deterministic given x (``noise`` is unused, kept for the common signature); two score evaluations per
    step. The exact-likelihood computation uses an adaptive solver instead (see the likelihood module)."""
    n = len(ts) - 1
    for i in range(n):
        t, t_next = _vec(ts[i], x), _vec(ts[i + 1], x)
        dt = float(ts[i + 1] - ts[i])
        d = sde.reverse_drift(x, t, score_fn(x, t), probability_flow=True)
        x_euler = x + d * dt
        d_next = sde.reverse_drift(x_euler, t_next, score_fn(x_euler, t_next), probability_flow=True)
        x = x + 0.5 * (d + d_next) * dt
        if callback is not None:
            callback(i, t, x)
    return x


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "em": euler_maruyama,
    "pc": predictor_corrector,
    "ode": probability_flow,
}

def nfe_per_step(sampler: str, *, corrector_steps: int = 1) -> int:
    """Score evaluations per step: Euler-Maruyama 1, Heun 2, predictor-corrector 1 + its corrector steps.

    >>> nfe_per_step("em"), nfe_per_step("ode"), nfe_per_step("pc"), nfe_per_step("pc", corrector_steps=3)
    (1, 2, 2, 4)
    """
    get_sampler(sampler)
    return 1 + corrector_steps if sampler == "pc" else {"em": 1, "ode": 2}[sampler]


def get_sampler(name: str) -> Callable[..., torch.Tensor]:
    try:
        return SAMPLERS[name]
    except KeyError:
        raise DiffauditError(f"unknown sampler '{name}'; choose one of {', '.join(SAMPLERS)}") from None


@torch.no_grad()
def sample(
    score_fn: ScoreFn,
    sde: SDE,
    *,
    shape: tuple[int, ...],
    indices: list[int] | range,
    seed: int,
    sampler: str = "em",
    steps: int = 1000,
    eps: float = 1e-3,
    t_start: float | None = None,
    x_start: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
    callback: Callback = None,
    precision: str = "fp32",
    **sampler_options,
) -> torch.Tensor:
    """Generate images ``indices`` of run ``seed``, each reproducible from (seed, index) alone.

    Args:
        score_fn: any callable (x [B,C,H,W], t [B]) -> grad_x log p_t(x).
        sde: the forward SDE the score belongs to.
        shape: (C, H, W) of one image.
        indices: the image indices to generate (one stream each); their count is the batch size.
        sampler: 'em' (reverse-SDE Euler–Maruyama), 'pc' (predictor–corrector) or 'ode' (probability flow).
        steps: number of time steps from the start time to ``eps``.
        t_start: start time (default T). Below T, ``x_start`` is required.
        x_start: clean images [B,C,H,W] (or one image [C,H,W], repeated) to perturb to ``t_start`` with the SDE's
            kernel before running the sampler (partial diffusion, Algorithm 1 of the paper).
        precision: fp32 (default), tf32 or bf16 (the network under autocast); see :mod:`diffaudit.diffusion.precision`.

    Returns:
        x_0 in model space (float, [B, C, H, W]); images live in [-1, 1] but are not clipped here.

    Example:
        >>> from diffaudit.diffusion.sde import SubVPSDE
        >>> sde = SubVPSDE()
        >>> def score_fn(x, t):  # exact score of N(0, I) data under this SDE: -x / (alpha^2 + sigma^2)
        ...     alpha, sigma = sde.coefficients(t)
        ...     return -x / (alpha**2 + sigma**2).view(-1, 1, 1, 1)
        >>> x = sample(score_fn, sde, shape=(1, 4, 4), indices=range(8), seed=0, steps=50)
        >>> tuple(x.shape)
        (8, 1, 4, 4)
    """
    run = get_sampler(sampler)
    indices = list(indices)
    if not indices:
        raise DiffauditError("nothing to sample: the list of image indices is empty")
    ts = time_grid(sde, steps, t_start=t_start, eps=eps)
    noise = ImageNoise(seed=seed, indices=indices, shape=shape, device=device)
    t0 = torch.full((len(indices),), float(ts[0]), device=device)
    if x_start is not None:
        x_start = x_start.to(device=device, dtype=torch.float32)
        if x_start.ndim == len(shape):
            x_start = x_start.expand(len(indices), *shape)
        if tuple(x_start.shape) != (len(indices), *shape):
            raise DiffauditError(f"x_start has shape {tuple(x_start.shape)}, expected {(len(indices), *shape)}")
        x = sde.perturb(x_start, t0, noise())
    elif float(ts[0]) < sde.T:
        raise DiffauditError(f"starting below T (t_start={float(ts[0])}) needs x_start, the images to diffuse from")
    else:
        x = sde.prior_sample(noise())
    # deterministic convolutions keep image i a function of (seed, i) within a precision (diffusion.precision)
    with numerics(precision):
        return run(in_precision(score_fn, precision), sde, x, ts, noise=noise, callback=callback, **sampler_options)
