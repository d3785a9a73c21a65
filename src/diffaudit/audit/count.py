"""The ``count`` stage: detectors over a run's samples (and a control run's), Table 1's test, results.json.

Detectors: ``classifiers`` (q = c_p+ ∩ c_id+, the paper) or ``nn`` (the reference nearest-neighbour identity
detector alone, no training). Control samples — from a model trained on the control set of ``prepare
--no-fingerprint``, which holds neither x_p nor x_i — give the false-positive rates on generated images (App. B).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..adversary.stage import AuditData, make_detectors
from ..data.prepare import load_manifest
from ..errors import DiffauditError
from ..generate import iter_shards
from ..io import read_json, run_relative
from .privacy import privacy_section
from .reproduction import count_reproductions, reproduction_section, save_figures
from .results import update_results


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


def run_count(run: Path, *, samples: str | None = None, detector: str = "classifiers", control_samples: str | None = None,
              data_root=None, device: str = "auto", keep: int = 64, progress: bool = True,
              log: Callable[[str], None] = print) -> dict:
    manifest = load_manifest(run)
    audit = AuditData(manifest, data_root)
    folder = _with_shards(find_samples(run, samples))
    detectors = make_detectors(run, audit, detector, device=device)
    described = {name: d.describe() for name, d in detectors.items()}
    rates: dict = {}
    if detector == "classifiers":
        metrics = read_json(run / "classifiers" / "metrics.json")
        rates = {"false_positive_rate": dict(metrics["false_positive_rate"]),
                 "true_positive_rate": metrics["true_positive_rate"]}
    count = count_reproductions(iter_shards(folder), detectors, target=audit.x_p, keep=keep, progress=progress,
                                total=_total(folder))
    if control_samples is not None:
        control = _with_shards(find_samples(run, control_samples))
        _check_control(control, manifest, log)
        c = count_reproductions(iter_shards(control), detectors, keep=0, progress=progress, total=_total(control))
        counts = c.counts()  # each detector's positives, and q: the images every detector flagged
        rates.setdefault("false_positive_rate", {})["control_samples"] = {
            **{name: {"positives": k, "n": c.n, "rate": k / c.n} for name, k in counts.items()},
            "samples": run_relative(run, control)}
    figures = save_figures(run / "count" / folder.name, count, audit.x_p)
    section = reproduction_section(count, manifest["n_train"], detectors=described, rates=rates,
                                   samples=run_relative(run, folder),
                                   figures={k: f"count/{folder.name}/{v}" for k, v in figures.items()})
    section["model"] = samples_model(folder)
    sections = {"reproduction": section}
    model_json = run / "train" / "model.json"
    dp = read_json(model_json).get("dp") if model_json.exists() else None
    if dp is not None and detector == "classifiers":
        sections["privacy"] = privacy_section(dp, section)
    update_results(run, manifest, **sections)
    return section
