"""The ``tprime`` stage: t' of x_p for a run's model (results.json ``t_prime``), and the post-hoc audit of any
training images with the reference nearest-neighbour detector (``t_prime_posthoc``), no fingerprint needed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..adversary.detectors import NearestNeighbourDetector
from ..adversary.stage import AuditData, make_detectors
from ..data.prepare import build_training_set, load_manifest, training_labels
from ..device import resolve_device
from ..diffusion.score import with_labels
from ..diffusion.sde import SDE
from ..errors import DiffauditError
from ..io import read_json, write_json
from ..training.loop import load_score_model
from .plots import plot_q_m
from .results import update_results
from .tprime import QM, check_grid, search, summary

QM_EPS = 1e-3  # QM's default last time of the reverse run; grid times must lie above it


def posthoc(score_fn: Callable, sde: SDE, images: np.ndarray, positions: Sequence[int], *, grid: Sequence[float],
            m: int = 16, seed: int = 0, steps: int = 500, sampler: str = "em", p0: float | None = None,
            alpha: float = 0.05, device: torch.device | str = "cpu", progress: bool = True) -> list[dict]:
    """t' (fast search) of training images ``images[positions]`` of any score model, each with the reference
    detector calibrated on the other training images; sorted most at risk (largest t'_alpha, then t') first."""
    grid = check_grid(grid, t_min=QM_EPS, t_max=sde.T)
    if len(images) < 2:
        raise DiffauditError("the post-hoc audit needs at least 2 training images (the detector is calibrated on the others)")
    positions = list(positions)
    if len(set(positions)) != len(positions):
        raise DiffauditError(f"image positions must not repeat, got {positions}")
    p0 = 1.0 / len(images) if p0 is None else p0
    rows = []
    for pos in tqdm(positions, disable=not progress, desc="post-hoc t'", unit="image"):
        if not 0 <= pos < len(images):
            raise DiffauditError(f"image position {pos} is outside the training set of {len(images)} images")
        target, others = images[pos], np.delete(images, pos, axis=0)
        q_m = QM(score_fn, sde, target, {"nn": NearestNeighbourDetector(target, others)}, m=m, seed=seed,
                 steps=steps, sampler=sampler, device=device)
        s = search(q_m, grid, method="fast", p0=p0, alpha=alpha)
        rows.append({"position": int(pos), "t_prime": s.t_prime, "t_prime_alpha": s.t_prime_alpha, "nfe": s.nfe,
                     "non_monotone": s.non_monotone})
    return sorted(rows, key=lambda r: (-r["t_prime_alpha"], -r["t_prime"], r["position"]))


def x_p_label(manifest: dict, meta: dict, data_root=None) -> int | None:
    """x_p's class label (that of x_i) when the model of ``meta`` (its model.json) is class-conditional, else None."""
    if not meta["model"].get("num_classes"):
        return None
    return int(training_labels(manifest, data_root=data_root)[manifest["fingerprint"]["position"]])


def chance_level(run: Path, manifest: dict, how: str) -> float:
    """p_0: 'full' = 1/N_D, 'measured' = the count's one-sided 95% upper bound on the reproduction rate, or a number."""
    if how == "full":
        return 1.0 / manifest["n_train"]
    if how == "measured":
        path = run / "results.json"
        rep = read_json(path).get("reproduction") if path.exists() else None
        if rep is None:
            raise DiffauditError("--chance measured needs the count's result; run 'diffaudit count' first")
        return float(rep["rate_upper95"])
    try:
        value = float(how)
    except ValueError:
        raise DiffauditError(f"--chance must be full, measured or a number in (0, 1), got '{how}'") from None
    if not 0 < value < 1:
        raise DiffauditError(f"--chance must be in (0, 1), got {value}")
    return value


def run_tprime(run: Path, *, detector: str = "classifiers", grid: Sequence[float], m: int = 16, seed: int = 0,
               steps: int = 500, sampler: str = "em", method: str = "fast", chance: str = "full", alpha: float = 0.05,
               data_root=None, device: str = "auto", progress: bool = True, log=print) -> dict:
    manifest = load_manifest(run)
    model, meta = load_score_model(run / "train", device=device)
    dev = resolve_device(device)
    audit = AuditData(manifest, data_root)
    detectors = make_detectors(run, audit, detector, device=device)
    p0 = chance_level(run, manifest, chance)
    label = x_p_label(manifest, meta, data_root)  # a class-conditional model runs back as x_p's class
    q_m = QM(with_labels(model, label), model.sde, audit.x_p, detectors, m=m, seed=seed, steps=steps, sampler=sampler,
             device=dev)
    methods = ["exhaustive", "fast"] if method == "both" else [method]
    results = {}
    for name in methods:
        q_m.cache.clear()  # each search pays for its own evaluations, so the two costs can be compared
        log(f"t' search ({name}) over {len(grid)} times, M = {m}")
        with tqdm(total=len(grid) if name == "exhaustive" else None, disable=not progress, desc=f"t' ({name})",
                  unit="t") as bar:
            def counted(t, _q=q_m, _bar=bar):
                ev = _q(t)
                _bar.update(1)
                return ev
            results[name] = search(counted, grid, method=name, p0=p0, alpha=alpha)
    main = summary(results[methods[-1]], model.sde, p0=p0, alpha=alpha, m=m)
    main.update({"detector": detector, "sampler": sampler, "steps": steps, "seed": seed})
    if method == "both":
        ex, fa = results["exhaustive"], results["fast"]
        main["compare"] = {"exhaustive": summary(ex, model.sde, p0=p0, alpha=alpha, m=m),
                           "nfe_ratio": ex.nfe / max(fa.nfe, 1), "wall_ratio": ex.wall_s / max(fa.wall_s, 1e-9),
                           "same_t_prime": ex.t_prime == fa.t_prime}
    figure = plot_q_m([(f"N_D = {manifest['n_train']}", main)], run / "tprime" / "q_M.png")
    main["figure"] = str(figure.relative_to(run))
    write_json(run / "tprime" / "search.json", main)
    update_results(run, manifest, t_prime=without_timings(main))
    return main


def without_timings(section: dict) -> dict:
    """``section`` without wall-clock figures, so results.json depends only on the inputs and seeds (the timings
    stay in tprime/search.json)."""
    out = {k: v for k, v in section.items() if k not in ("wall_s", "wall_ratio")}
    if isinstance(out.get("compare"), dict):
        out["compare"] = without_timings(out["compare"])
    if isinstance(out.get("exhaustive"), dict):
        out["exhaustive"] = without_timings(out["exhaustive"])
    return out


def run_posthoc(run: Path, positions: Sequence[int] | None, *, grid: Sequence[float], m: int = 16, seed: int = 0,
                steps: int = 500, sampler: str = "em", alpha: float = 0.05, data_root=None, device: str = "auto",
                progress: bool = True) -> list[dict]:
    manifest = load_manifest(run)
    model, meta = load_score_model(run / "train", device=device)
    images = build_training_set(manifest, data_root=data_root)
    positions = range(len(images)) if positions is None else positions
    if meta["model"].get("num_classes"):
        raise DiffauditError("the post-hoc audit supports unconditional models only")
    rows = posthoc(model, model.sde, images, list(positions), grid=grid, m=m, seed=seed, steps=steps,
                   sampler=sampler, alpha=alpha, device=next(model.parameters()).device, progress=progress)
    for r in rows:
        r["index"] = manifest["indices"][r["position"]]
    update_results(run, manifest, t_prime_posthoc={"M": m, "grid": list(grid), "alpha": alpha, "images": rows})
    return rows
