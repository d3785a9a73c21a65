"""The white-box side of the many-canary audit, for a model one can run: q_M at one time t for every candidate, as
the score of the one-run ε bound, and t' of a stated subset of candidates.

q_M(t) of candidate j is the t' stage's :class:`~diffaudit.audit.tprime.search.QM` with x_p^(j) as its start and
candidate j's own reference detector (:class:`.score.CandidateDetectors`, thresholds independent of the inclusions):
M reverse runs from x_p^(j) perturbed to t, k_j of them flagged, score k_j / M. A model that memorised x_p^(j) brings
the perturbed image back to it at a t where one that never saw it brings it elsewhere, so the score ranks included
candidates above left-out ones with no samples drawn at all.

Cost. The count scores all m candidates with the same N samples, N x nfe(T) network evaluations in all; q_M(t) costs
M x nfe(t) per candidate, m M nfe(t) in all. The section records both, so a reader sees which was cheaper for this
run: the white-box score wins when m M t < N (with step counts equal), e.g. 64 candidates at M = 16 and t = 0.3
(307 full-run equivalents) against 512 samples.

Seeds. Candidate j's runs draw from ``derive_seed(seed, j)``, so its score does not depend on which other candidates
were scored or in what order, and is reproduced from (seed, j).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ...data.canaries import candidates_of, training_rows
from ...data.dataset import open_data
from ...data.prepare import load_manifest
from ...device import resolve_device
from ...diffusion.generative import Generative, is_conditional
from ...errors import DiffauditError
from ...io import read_json, run_relative
from ...models.load import provenance
from ...rng import derive_seed
from ..count.stats import clopper_pearson
from ..report.plots import plot_q_m
from ..results import update_results
from ..tprime.search import QM, check_grid, search
from .plots import plot_epsilon
from .score import CandidateDetectors
from .stage import bound_of, candidate_detectors, canary_manifest, model_delta

QM_EPS = 1e-3  # the reverse runs' last time (QM's default); t must lie above it


class OwnDetector:
    """Candidate j's reference detector alone, as a detector of the t' stage (images -> bool flags)."""

    def __init__(self, det: CandidateDetectors, j: int) -> None:
        self.det, self.j = det, j

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.det.own_flags(images, self.j)

    def describe(self) -> dict:
        return {"kind": "nn", "candidate": self.j, "threshold": float(self.det.thresholds[self.j])}


def _check_model(model: Generative, targets: np.ndarray) -> None:
    if is_conditional(model):
        raise DiffauditError("the white-box canary score runs an unconditional model; a conditional one would need "
                             "each candidate's condition (score this model by its samples: diffaudit canaries)")
    if tuple(model.image_shape) != tuple(targets.shape[1:]):
        raise DiffauditError(f"the model makes images of shape {tuple(model.image_shape)}, the candidates are "
                             f"{tuple(targets.shape[1:])}")


def _qm(model: Generative, det: CandidateDetectors, targets: np.ndarray, j: int, *, m: int, seed: int, steps: int,
        sampler: str, device) -> QM:
    return QM(model, targets[j], {"nn": OwnDetector(det, j)}, m=m, seed=derive_seed(seed, j), steps=steps,
              sampler=sampler, eps=QM_EPS, device=device)


def whitebox_scores(model: Generative, det: CandidateDetectors, targets: np.ndarray, *, t: float, m: int = 16,
                    seed: int = 0, steps: int = 100, sampler: str = "em", device: torch.device | str = "cpu",
                    progress: bool = True) -> dict:
    """q_M(t) of every candidate (module docstring): its positives of ``m`` runs, the score k_j / M, and the network
    evaluations spent."""
    _check_model(model, targets)
    check_grid([t], t_min=QM_EPS, t_max=model.T)
    model.check_sampler(sampler)
    positives, nfe = [], 0
    for j in tqdm(range(len(targets)), disable=not progress, desc=f"q_M({t:g}) per candidate", unit="candidate"):
        e = _qm(model, det, targets, j, m=m, seed=seed, steps=steps, sampler=sampler, device=device)(t)
        positives.append(e.positives)
        nfe += e.nfe
    k = np.asarray(positives, dtype=np.int64)
    return {"t": float(t), "M": int(m), "seed": int(seed), "steps": int(steps), "sampler": sampler,
            "positives": k.tolist(), "scores": (k / m).tolist(), "nfe": int(nfe),
            "nfe_per_candidate": model.nfe(sampler, steps, t) * m}


def candidate_tprime(model: Generative, det: CandidateDetectors, targets: np.ndarray, positions: Sequence[int], *,
                     grid: Sequence[float], p0: Sequence[float], m: int = 16, seed: int = 0, steps: int = 100,
                     sampler: str = "em", alpha: float = 0.05, device: torch.device | str = "cpu",
                     progress: bool = True) -> list[dict]:
    """t' and t'_alpha (fast search) of the candidates at ``positions``, each with its own detector and chance level
    ``p0[i]``, in the order given."""
    _check_model(model, targets)
    grid = check_grid(grid, t_min=QM_EPS, t_max=model.T)
    positions = [int(j) for j in positions]
    if len(set(positions)) != len(positions) or any(not 0 <= j < len(targets) for j in positions):
        raise DiffauditError(f"the candidates for t' must be distinct numbers in 0 .. {len(targets) - 1}, got "
                             f"{positions}")
    rows = []
    for j, chance in tqdm(list(zip(positions, p0, strict=True)), disable=not progress, desc="t' per candidate",
                          unit="candidate"):
        s = search(_qm(model, det, targets, j, m=m, seed=seed, steps=steps, sampler=sampler, device=device), grid,
                   method="fast", p0=chance, alpha=alpha)
        curve = [s.evaluations.get(t) for t in grid]
        rows.append({"candidate": j, "t_prime": s.t_prime, "t_prime_alpha": s.t_prime_alpha, "nfe": s.nfe,
                     "chance_level": float(chance), "non_monotone": s.non_monotone,
                     "q_M": [None if e is None else e.q for e in curve],
                     "q_M_ci95": [None if e is None else list(clopper_pearson(e.positives, e.m)) for e in curve]})
    return rows


def _count_cost(run: Path, model: Generative) -> dict | None:
    """The network evaluations of the count's samples (the run's ``canaries`` section), for the comparison."""
    section = (read_json(run / "results.json") if (run / "results.json").exists() else {}).get("canaries")
    if not section:
        return None
    config = run / section["samples"] / "config.json"
    sample = read_json(config).get("sample", {}) if config.exists() else {}
    if "steps" not in sample or "sampler" not in sample:
        return {"n_samples": section["n_samples"], "nfe": None}
    per = model.nfe(sample["sampler"], int(sample["steps"]), corrector_steps=int(sample.get("corrector_steps", 1)))
    return {"n_samples": section["n_samples"], "nfe": int(section["n_samples"] * per), "samples": section["samples"]}


def run_whitebox(run: Path, model: Generative, *, t: float = 0.3, m: int = 16, tprime: int = 0,
                 grid: Sequence[float] = (), seed: int = 0, steps: int = 100, sampler: str = "em", alpha: float = 0.05,
                 confidence: float = 0.95, delta: float | None = None, data_root=None, device="cpu",
                 progress: bool = True, log: Callable[[str], None] = print, write: bool = True) -> dict:
    """results.json's ``canaries_whitebox``: q_M(t) of every candidate and the one-run bound from it, and t' of the
    first ``tprime`` candidates (candidate order is drawn independently of inclusion, so the subset is too)."""
    run = Path(run)
    manifest = canary_manifest(run)
    dp, delta = model_delta(run, delta, confidence)
    device = resolve_device(device)
    cands = candidates_of(manifest)
    if not 0 <= tprime <= len(cands):
        raise DiffauditError(f"--tprime-candidates must be in 0 .. {len(cands)} (the candidates), got {tprime}")
    if tprime:
        grid = check_grid(grid, t_min=QM_EPS, t_max=model.T)  # before any run
    targets, det = candidate_detectors(manifest, open_data(manifest, data_root=data_root))
    score = whitebox_scores(model, det, targets, t=t, m=m, seed=seed, steps=steps, sampler=sampler, device=device,
                            progress=progress)
    eps = bound_of(np.asarray(score["scores"]), manifest, dp=dp, confidence=confidence, delta=delta, seed=seed,
                   score=f"q_M({t:g}) of the candidate, M = {m} reverse runs from it (white box)")
    count = _count_cost(run, model)
    section = {"m": len(cands), "model": provenance(model, run), "score": score, "epsilon": eps,
               "cost": {"whitebox_nfe": score["nfe"], "count": count}}
    if tprime:
        rows_n = len(training_rows(manifest))
        rows = candidate_tprime(model, det, targets, range(tprime), grid=grid, m=m, seed=seed, steps=steps,
                                sampler=sampler, alpha=alpha, device=device, progress=progress,
                                p0=[c["drawn"] / rows_n for c in cands[:tprime]])
        for r in rows:
            c = cands[r["candidate"]]
            r.update(index=c["index"], included=c["included"], duplicates=c["duplicates"])
        section["tprime"] = {"candidates": rows, "subset": f"the first {tprime} of the {len(cands)} candidates",
                             "grid": list(grid), "M": m, "alpha": alpha,
                             "chance_level": "d / rows of D_p: a full memoriser's rate of a candidate of d copies "
                                             "(the d drawn, for a left-out one)"}
    if not write:
        return section
    out = run / "canaries" / "whitebox"
    if tprime:
        curves = [(f"#{r['candidate']} ({'in' if r['included'] else 'out'}, d={r['duplicates']})",
                   {"grid": section["tprime"]["grid"], "q_M": r["q_M"], "q_M_ci95": r["q_M_ci95"],
                    "value": r["t_prime"], "value_alpha": r["t_prime_alpha"], "chance_level": r["chance_level"]})
                  for r in section["tprime"]["candidates"][:8]]
        section["figures"] = {"q_M": run_relative(run, plot_q_m(curves, out / "q_M.png"))}
    section["figures"] = {**section.get("figures", {}), "epsilon": run_relative(run, plot_epsilon(eps, out / "epsilon.png"))}
    update_results(run, manifest, canaries_whitebox=section)
    log(f"white-box canary score at t = {t:g}: {score['nfe']} network evaluations"
        + (f" (the count's samples: {count['nfe']})" if count and count.get("nfe") else ""))
    return section


def check_whitebox(run: Path, section: dict) -> list[tuple[str, object, object]]:
    """The recorded white-box bound recomputed from its recorded scores and the manifest's inclusions: (key,
    recorded, recomputed) for every figure that differs. The scores themselves need the model to recompute."""
    manifest = load_manifest(run)
    score, eps = section.get("score") or {}, section.get("epsilon") or {}
    scores = score.get("scores")
    if not isinstance(scores, list) or len(scores) != len(candidates_of(manifest)):
        return [("score.scores", "missing or of the wrong length", f"{len(candidates_of(manifest))} scores")]
    k, m = score.get("positives"), score.get("M")
    numbers = lambda v: isinstance(v, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool)  # noqa: E731
                                                    for x in v)
    if not (isinstance(m, int) and m >= 1 and numbers(k) and numbers(scores) and len(k) == len(scores)
            and all(isinstance(x, int) and 0 <= x <= m for x in k)):
        return [("score", "not M >= 1 and whole positives in [0, M] for every candidate", "a valid record")]
    out = []
    if not np.allclose(np.asarray(k) / m, scores):
        out.append(("score.scores", "as recorded", "positives / M"))
    again = bound_of(np.asarray(scores, dtype=np.float64), manifest, score="", dp=None,
                     confidence=eps.get("confidence", 0.95), delta=eps.get("delta", 0.0), seed=eps.get("tie_seed", 0))
    for key in ("epsilon_lower", "guesses", "correct"):
        if eps.get(key) != again[key] and not (isinstance(eps.get(key), float) and again[key] is not None
                                               and abs(eps[key] - again[key]) < 1e-9):
            out.append((f"epsilon.{key}", eps.get(key), again[key]))
    return out
