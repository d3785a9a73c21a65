"""The ``tprime`` stage: t' of x_p for a run's model (results.json ``t_prime``), and the post-hoc audit of any
training images with the reference nearest-neighbour detector (``t_prime_posthoc``), no fingerprint needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ...adversary.detectors import NearestNeighbourDetector, rmse
from ...adversary.stage import AuditData, make_detectors
from ...data.conditions import training_conditions
from ...data.canaries import memorisation_n
from ...data.prepare import build_training_set, labelled_classes, load_manifest, training_labels
from ...device import resolve_device
from ...diffusion.generative import Generative, is_conditional
from ...errors import DiffauditError
from ...generate import iter_shards
from ...images import save_grid
from ...io import read_json, write_json
from ...models.load import provenance, run_model
from ..count.stats import clopper_pearson
from ..report.plots import plot_q_m
from ..results import update_results
from .search import QM, check_grid, search, summary

QM_EPS = 1e-3  # QM's default last time of the reverse run; grid times must lie above it


def posthoc(model: Generative, images: np.ndarray, positions: Sequence[int], *, grid: Sequence[float],
            m: int = 16, seed: int = 0, steps: int = 500, sampler: str = "em", p0: float | None = None,
            alpha: float = 0.05, device: torch.device | str = "cpu", progress: bool = True,
            keep: bool = False) -> list[dict]:
    """t' (fast search) of training images ``images[positions]`` of any model, each with the reference detector
    calibrated on the other training images; sorted most at risk (largest t'_alpha, then t') first. With ``keep``
    each row also holds its q_M curve."""
    grid = check_grid(grid, t_min=QM_EPS, t_max=model.T)
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
        q_m = QM(model, target, {"nn": NearestNeighbourDetector(target, others)}, m=m, seed=seed,
                 steps=steps, sampler=sampler, device=device)
        s = search(q_m, grid, method="fast", p0=p0, alpha=alpha)
        row = {"position": int(pos), "t_prime": s.t_prime, "t_prime_alpha": s.t_prime_alpha, "nfe": s.nfe,
               "non_monotone": s.non_monotone}
        if keep:  # the q_M curve on the grid (None where the search did not evaluate)
            row["q_M"] = [s.evaluations[t].q if t in s.evaluations else None for t in grid]
            row["q_M_ci95"] = [list(clopper_pearson(s.evaluations[t].positives, s.evaluations[t].m)) if t in s.evaluations else None
                               for t in grid]
        rows.append(row)
    return sorted(rows, key=lambda r: (-r["t_prime_alpha"], -r["t_prime"], r["position"]))


def x_p_label(manifest: dict, model: Generative, data_root=None) -> int | list[float] | None:
    """x_p's condition (that of x_i) when ``model`` is conditional: its class label, or its condition row for a model
    with covariates; else None."""
    if not is_conditional(model):
        return None
    rows = training_conditions(manifest, lambda: training_labels(manifest, data_root=data_root))
    row = rows[manifest["fingerprint"]["position"]]
    return int(row) if np.ndim(row) == 0 else [float(v) for v in row]


def chance_level(run: Path, manifest: dict, how: str) -> float:
    """p_0: 'full' = 1/N_D (many canaries: data.canaries.memorisation_n), 'measured' = the count's one-sided 95%
    upper bound on the reproduction rate, or a number."""
    if how == "full":
        return 1.0 / memorisation_n(manifest)
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


def load_run_model(run: Path, manifest: dict, *, model: str | None = None, scheduler: str | None = None,
                   prediction_type: str | None = None, data_root=None, device: str = "auto") -> Generative:
    """The model ``run`` audits (:func:`diffaudit.models.load.run_model`), with the dataset's classes to check an
    external model against."""
    classes = labelled_classes(manifest, data_root=data_root) if model is not None else None
    return run_model(run, manifest=manifest, model=model, scheduler=scheduler, prediction_type=prediction_type,
                     num_classes=classes, device=device)


def run_tprime(run: Path, *, detector: str = "classifiers", grid: Sequence[float], m: int = 16, seed: int = 0,
               steps: int = 500, sampler: str = "em", method: str = "fast", chance: str = "full", alpha: float = 0.05,
               data_root=None, device: str = "auto", progress: bool = True, log=print, model: str | None = None,
               scheduler: str | None = None, prediction_type: str | None = None, net: Generative | None = None) -> dict:
    manifest = load_manifest(run)
    if net is None:
        net = load_run_model(run, manifest, model=model, scheduler=scheduler, prediction_type=prediction_type,
                             data_root=data_root, device=device)
    dev = resolve_device(device)
    audit = AuditData(manifest, data_root)
    detectors = make_detectors(run, audit, detector, device=device)
    p0 = chance_level(run, manifest, chance)
    label = x_p_label(manifest, net, data_root)  # a conditional model runs back with x_p's class or attributes
    q_m = QM(net, audit.x_p, detectors, m=m, seed=seed, steps=steps, sampler=sampler, device=dev, label=label)
    methods = ["exhaustive", "fast"] if method == "both" else [method]
    results = {}
    for name in methods:
        q_m.cache.clear()  # each search pays for its own evaluations, so the two costs can be compared
        log(f"t' search ({name}) over {len(grid)} times, M = {m}")
        with tqdm(total=len(grid) if name == "exhaustive" else None, disable=not progress, desc=f"t' ({name})",
                  unit="t") as bar:
            results[name] = search(q_m, grid, method=name, p0=p0, alpha=alpha, on_point=lambda t, _b=bar: _b.update(1))
    main = summary(results[methods[-1]], q_m.sigma, p0=p0, alpha=alpha, m=m)
    main.update({"detector": detector, "sampler": sampler, "steps": steps, "seed": seed, "model": provenance(net, run)})
    if not net.continuous:  # where each grid time's runs start (module docstring of diffaudit.diffusion.discrete)
        main["start_times"] = [net.start_time(t, sampler, steps) for t in grid]
    if method == "both":
        ex, fa = results["exhaustive"], results["fast"]
        main["compare"] = {"exhaustive": summary(ex, q_m.sigma, p0=p0, alpha=alpha, m=m),
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
                progress: bool = True, model: str | None = None, scheduler: str | None = None,
                prediction_type: str | None = None, net: Generative | None = None) -> list[dict]:
    manifest = load_manifest(run)
    if net is None:
        net = load_run_model(run, manifest, model=model, scheduler=scheduler, prediction_type=prediction_type,
                             data_root=data_root, device=device)
    images = build_training_set(manifest, data_root=data_root)[:len(manifest["indices"])]  # a canary's copies once
    positions = range(len(images)) if positions is None else positions
    if is_conditional(net):
        raise DiffauditError("the post-hoc audit supports unconditional models only")
    rows = posthoc(net, images, list(positions), grid=grid, m=m, seed=seed, steps=steps, sampler=sampler,
                   alpha=alpha, device=resolve_device(device), progress=progress, keep=True)
    for r in rows:
        r["index"] = manifest["indices"][r["position"]]
    section = {"M": m, "grid": list(grid), "alpha": alpha, "sampler": sampler, "steps": steps, "images": rows,
               "model": provenance(net, run), "chance_level": 1.0 / len(images)}
    section["figures"] = posthoc_figures(run, section, images)
    update_results(run, manifest, t_prime_posthoc=section)
    return rows


POSTHOC_SHOWN = 5  # images of the post-hoc audit drawn in the report (the most at risk)


def posthoc_figures(run: Path, section: dict, images: np.ndarray) -> dict[str, str]:
    """The q_M curves of the images most at risk and, when the run has samples, the samples nearest to each (rows:
    the training image, then its nearest samples by RMSE)."""
    top = section["images"][:POSTHOC_SHOWN]
    curves = [(f"#{r['position']}", {"grid": section["grid"], "q_M": r["q_M"], "q_M_ci95": r["q_M_ci95"],
                                     "value": r["t_prime"], "value_alpha": r["t_prime_alpha"],
                                     "chance_level": section["chance_level"]}) for r in top]
    out = {"q_M": str(plot_q_m(curves, run / "tprime" / "posthoc_q_M.png").relative_to(run))}
    folders = sorted(p for p in (run / "samples").glob("*") if p.is_dir()) if (run / "samples").is_dir() else []
    if folders:
        samples = np.concatenate([x for _, x in iter_shards(folders[0])])
        d = rmse(images[[r["position"] for r in top]], samples)  # [top, N]
        nearest = np.argsort(d, axis=1)[:, :NEAREST_SHOWN]
        rows = np.concatenate([np.concatenate([images[r["position"]][None], samples[nearest[k]]])
                               for k, r in enumerate(top)])
        out["nearest"] = str(save_grid(run / "tprime" / "posthoc_nearest.png", rows, ncol=1 + NEAREST_SHOWN,
                                       scale=4).relative_to(run))
        out["nearest_samples"] = str(folders[0].relative_to(run))
        for k, r in enumerate(top):
            r["nearest_rmse"] = [float(v) for v in np.sort(d[k])[:NEAREST_SHOWN]]
    return out


NEAREST_SHOWN = 4
