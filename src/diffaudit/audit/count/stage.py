"""The ``count`` stage: detectors over a run's samples (and a control run's), Table 1's test, results.json.

Detectors: ``classifiers`` (q = c_p+ ∩ c_id+, the paper) or ``nn`` (the reference nearest-neighbour identity
detector alone, no training). Control samples — from a model trained on the control set of ``prepare
--no-fingerprint``, which holds neither x_p nor x_i — give the false-positive rates on generated images (App. B).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from ...adversary.roc import threshold_for_fpr
from ...adversary.stage import AuditData, make_detectors, roc_of
from ...data.conditions import matching, raw_attributes, training_conditions
from ...data.canaries import memorisation_n
from ...data.prepare import load_manifest, training_labels
from ...errors import DiffauditError
from ...generate import iter_shards
from ...io import read_json, run_relative
from ..report.privacy import privacy_section
from ..results import update_results
from .reproduction import count_reproductions, reproduction_section, save_figures
from .sequential import read_sequential, sequential_fields


def find_samples(run: Path, name: str | None) -> Path:
    """The samples folder: ``name`` as a path, or as a folder under <run>/samples/, or the only one there."""
    if name is not None:
        for candidate in (Path(name), run / "samples" / name):
            if candidate.is_dir():
                return candidate
        raise DiffauditError(f"no samples folder '{name}' (looked in . and {run / 'samples'}); run 'diffaudit sample'")
    found = sorted(p for p in (run / "samples").glob("*") if p.is_dir()) if (run / "samples").is_dir() else []
    if len(found) != 1:
        raise DiffauditError(f"{run / 'samples'} holds {len(found)} sample folders; choose one with --samples "
                             f"({', '.join(p.name for p in found) or 'run diffaudit sample first'})")
    return found[0]


def _with_shards(folder: Path) -> Path:
    if not any(folder.glob("shard_*.npz")):
        raise DiffauditError(f"{folder} holds no sample shards; run 'diffaudit sample' first")
    return folder


def _total(folder: Path) -> int | None:
    cfg = folder / "config.json"
    return read_json(cfg)["sample"]["n"] if cfg.exists() else None


def samples_model(folder: Path) -> dict:
    """Which model made the samples in ``folder`` (the digest its config.json records), for the provenance."""
    cfg = folder / "config.json"
    return {"digest": read_json(cfg).get("model") if cfg.exists() else None}


def _check_control(folder: Path, manifest: dict, log: Callable[[str], None]) -> None:
    control = folder.parent.parent / "manifest.json"
    if not control.exists():
        log(f"warning: no manifest.json beside {folder}; cannot confirm it is a control run without x_i")
        return
    other = read_json(control)
    if other.get("fingerprint") is not None or other.get("excluded_index") != manifest["fingerprint"]["index"]:
        raise DiffauditError(f"{folder} does not come from a control run of this audit: prepare it with the same "
                             "--dataset, --n-train and --seed and --no-fingerprint, then train and sample")


def conditioned_on(folder: Path, manifest: dict, data_root=None) -> dict | None:
    """What a conditional model's samples in ``folder`` were drawn with (its ``config.json``): the mode (classes,
    training or x_p), and N_match, the training images full memorisation chooses among: N_D, or for x_p's own
    conditions those sharing them (x_p among them). None for an unconditional model's samples."""
    record = read_json(folder / "config.json")
    if "conditions" not in record and "labels" not in record:
        return None
    mode = (record.get("conditions") or {}).get("mode", "classes")
    out = {"mode": mode, "matching": memorisation_n(manifest)}
    if mode == "x_p":
        rows = training_conditions(manifest, lambda: training_labels(manifest, data_root=data_root))
        out["matching"] = matching(rows, rows[manifest["fingerprint"]["position"]])
        out["x_p"] = raw_attributes(manifest, manifest["fingerprint"]["position"])
        if out["x_p"] is None:
            out["x_p"] = {"class": int(rows[manifest["fingerprint"]["position"]])}
    return out


def at_target_fpr(detectors: dict, negatives, target: float) -> dict:
    """Set each classifier's threshold so that it flags at most ``target`` of ``negatives`` (the held-out real test
    images), and return the false positives of each and of q at those thresholds."""
    if not 0 < target < 1:
        raise DiffauditError(f"--target-fpr must be in (0, 1), got {target}")
    if target < 1.0 / len(negatives):
        raise DiffauditError(f"--target-fpr {target:g} is below 1/{len(negatives)}, the finest false-positive rate "
                             f"{len(negatives)} held-out images can measure; use at least {1 / len(negatives):.3g}")
    flags = {}
    for name, det in detectors.items():
        det.threshold = threshold_for_fpr(det.probabilities(negatives), target)
        flags[name] = det(negatives)
    q = np.logical_and.reduce(list(flags.values()))
    rate = lambda f: {"positives": int(f.sum()), "n": int(len(f)), "rate": float(f.mean())}  # noqa: E731
    return {**{name: rate(f) for name, f in flags.items()}, "q": rate(q)}


def run_count(run: Path, *, samples: str | None = None, detector: str = "classifiers", control_samples: str | None = None,
              data_root=None, device: str = "auto", keep: int = 64, progress: bool = True,
              log: Callable[[str], None] = print, target_fpr: float | None = None,
              section_name: str = "reproduction") -> dict:
    """Count x_p's reproductions among the samples of ``samples`` (and false positives among ``control_samples``)
    into results.json's ``section_name``. Samples a conditional model drew with x_p's own class or attributes are
    tested against full memorisation among the training images that share them (1 / N_match, not 1 / N_D)."""
    manifest = load_manifest(run)
    audit = AuditData(manifest, data_root)
    folder = _with_shards(find_samples(run, samples))
    drawn_with = conditioned_on(folder, manifest, data_root)
    if drawn_with is not None and drawn_with["mode"] == "x_p" and section_name == "reproduction":
        # samples drawn with x_p's own conditions are tested against 1/N_match: their own section, never the verdict's
        section_name = "reproduction_x_p"
        log(f"{folder.name} was drawn with x_p's own conditions: counted into results.json's reproduction_x_p")
    if drawn_with is not None and drawn_with["mode"] == "x_p" and control_samples is not None:
        raise DiffauditError("samples drawn with x_p's own conditions are counted without --control-samples (the "
                             "control model has no x_p); count the training-conditioned samples with it")
    detectors = make_detectors(run, audit, detector, device=device)
    rates: dict = {}
    if detector == "classifiers":
        metrics = read_json(run / "classifiers" / "metrics.json")
        rates = {"false_positive_rate": dict(metrics["false_positive_rate"]),
                 "true_positive_rate": metrics["true_positive_rate"]}
        if target_fpr is not None:  # the thresholds, and the false positives at them, replace the default ones
            rates["false_positive_rate"]["heldout_real"] = at_target_fpr(detectors, audit.test, target_fpr)
            rates["target_fpr"] = target_fpr
            rates["true_positive_rate"] = {"note": "measured at the default thresholds; see classifiers/metrics.json roc"}
    elif target_fpr is not None:
        raise DiffauditError("--target-fpr sets the classifiers' thresholds; the nearest-neighbour detector has its own")
    described = {name: d.describe() for name, d in detectors.items()}
    seq = read_sequential(folder)  # a sequential count stopped at images 0 .. n-1
    limit = int(seq["n_samples"]) if seq else None
    count = count_reproductions(iter_shards(folder, limit), detectors, target=audit.x_p, keep=keep, progress=progress,
                                total=limit or _total(folder))
    if limit is not None and count.n != limit:
        raise DiffauditError(f"{folder / 'sequential.json'} says the count stopped at {limit} images, but the folder "
                             f"holds {count.n} of them: shards are missing or it was edited; run the sequential count "
                             "again")
    if control_samples is not None:
        control = _with_shards(find_samples(run, control_samples))
        _check_control(control, manifest, log)
        c = count_reproductions(iter_shards(control), detectors, keep=0, progress=progress, total=_total(control))
        counts = c.counts()  # each detector's positives, and q: the images every detector flagged
        rates.setdefault("false_positive_rate", {})["control_samples"] = {
            **{name: {"positives": k, "n": c.n, "rate": k / c.n} for name, k in counts.items()},
            "samples": run_relative(run, control)}
        if detector == "classifiers":  # the detector curves against the control model's images as negatives
            images = np.concatenate([x for _, x in iter_shards(control)])
            rates["roc_control_samples"] = roc_of(detectors, images, audit, seed=detectors["c_p"].meta["config"]["seed"])
    figures = save_figures(run / "count" / folder.name, count, audit.x_p)
    n_match = drawn_with["matching"] if drawn_with else memorisation_n(manifest)
    section = reproduction_section(count, n_match, detectors=described, rates=rates,
                                   samples=run_relative(run, folder),
                                   figures={k: f"count/{folder.name}/{v}" for k, v in figures.items()})
    section["model"] = samples_model(folder)
    if drawn_with:
        section["conditions"] = drawn_with
    if seq is not None:  # the anytime-valid interval and p-value replace the fixed-N ones
        fixed = {k: section[k] for k in ("p_value", "rate_ci95", "rate_upper95")}
        section.update(sequential_fields(seq, count.q, count.n, memorisation_n(manifest), fixed))
    sections = {section_name: section}
    model_json = run / "train" / "model.json"
    dp = read_json(model_json).get("dp") if model_json.exists() else None
    if dp is not None and detector == "classifiers" and section_name == "reproduction":
        sections["privacy"] = privacy_section(dp, section)
    update_results(run, manifest, **sections)
    return section
