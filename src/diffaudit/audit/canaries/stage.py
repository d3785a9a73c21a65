"""The ``canaries`` stage of a run prepared with ``--canaries m``: every candidate's count in one pass over the
samples, each detector's recall and false positives, the dose–response by duplication count, and the one-run lower
bound on ε (beside the accountant's ε for a DP-trained model). Writes results.json's ``canaries``, and under
``<run>/canaries/<samples>/`` the per-candidate table and the two figures."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from ...adversary.examples import COPY_SHIFT, pixels, shifted_copies
from ...data.canaries import candidates_of
from ...data.dataset import open_data
from ...data.fingerprint import Fingerprint
from ...config import SPLITS
from ...data.prepare import as_channels, load_manifest, split_images
from ...errors import DiffauditError
from ...generate import iter_shards
from ...io import read_json, run_relative, write_json
from ..count.stage import _total, _with_shards, find_samples, samples_model
from ..count.stats import clopper_pearson
from ..results import update_results
from .dose import dose_response
from .epsilon import audit_epsilon
from .plots import plot_dose, plot_epsilon
from .score import CandidateDetectors

CANARY_DETECTORS = ("nn", "classifier")
GROUP_NOTE = ("The bound counts only the candidates drawn with d = 1, included or not (d is drawn for every candidate, "
              "so the subset does not depend on inclusion): a candidate included d > 1 times is a group of d records, "
              "whose privacy is the group's (at most d ε under ε-DP), not one record's.")


def _epsilon(scores: np.ndarray, included: np.ndarray, *, inclusion: float, confidence: float, delta: float,
             seed: int) -> dict:
    """:func:`audit_epsilon` on the candidates drawn with d = 1, or why there is no bound: the theorem needs each
    candidate included with probability ½, and candidates to guess on."""
    why = None
    if inclusion != 0.5:
        why = (f"the candidates were included with probability {inclusion:g}; the one-run bound assumes ½ "
               "(prepare with --inclusion 0.5)")
    elif len(scores) == 0:
        why = "no candidate was drawn with d = 1 (--duplicates without 1): nothing to bound one record's ε with"
    if why is not None:
        return {"epsilon_lower": None, "note": why, "confidence": confidence, "delta": delta, "candidates": int(len(scores)),
                "guesses": 0, "correct": 0, "k_plus": 0, "k_minus": 0, "grid_size": 0, "points": []}
    return audit_epsilon(scores, included, confidence=confidence, delta=delta, seed=seed)


def candidate_images(manifest: dict, data) -> tuple[np.ndarray, np.ndarray]:
    """(x_p^(j) of every candidate [m, C, ...], the N_D base training images)."""
    split = data.images(manifest["split"])
    cands = candidates_of(manifest)
    targets = np.stack([Fingerprint.from_dict(c).apply(as_channels(manifest, np.array(split[c["index"]])))
                        for c in cands])
    n_base = len(manifest["indices"]) - sum(c["included"] for c in cands)
    base = as_channels(manifest, split[np.asarray(manifest["indices"][:n_base])])
    return targets, np.ascontiguousarray(base)


def candidate_detectors(manifest: dict, data) -> tuple[np.ndarray, CandidateDetectors]:
    """(x_p^(j) of every candidate, their reference detectors), as the count and the white-box score use them."""
    targets, base = candidate_images(manifest, data)
    side = min(targets.shape[2:])
    return targets, CandidateDetectors(targets, base, shift=max(1, pixels(COPY_SHIFT, side)))


def canary_manifest(run: Path) -> dict:
    """The manifest of a run prepared with many canaries, or a refusal that says how to prepare one."""
    manifest = load_manifest(run)
    if not manifest.get("canaries"):
        raise DiffauditError(f"{run} was prepared with one canary; prepare a run with --canaries m (e.g. --canaries 64 "
                             "--inclusion 0.5) for the many-canary audit")
    return manifest


def model_delta(run: Path, delta: float | None, confidence: float) -> tuple[dict | None, float]:
    """(the DP-trained model's record or None, δ of the bound: ``delta``, else the DP model's δ, else 0), checked."""
    model_json = run / "train" / "model.json"
    dp = read_json(model_json).get("dp") if model_json.exists() else None
    if delta is None:
        delta = float(dp["delta"]) if dp is not None else 0.0
    if not 0 < confidence < 1 or not 0 <= delta < 1:
        raise DiffauditError(f"--confidence must be in (0, 1) and --delta in [0, 1); got {confidence} and {delta}")
    return dp, delta


def bound_of(scores: np.ndarray, manifest: dict, *, score: str, dp: dict | None, confidence: float, delta: float,
             seed: int) -> dict:
    """The one-run ε bound from a score per candidate (the candidates drawn with d = 1), with its notes."""
    cands = candidates_of(manifest)
    included = np.array([c["included"] for c in cands])
    single = np.array([c["drawn"] == 1 for c in cands])  # drawn for every candidate: independent of inclusion
    eps = _epsilon(np.asarray(scores)[single], included[single], inclusion=manifest["canaries"]["inclusion"],
                   confidence=confidence, delta=delta, seed=seed)
    eps.update(group_note=GROUP_NOTE, tie_seed=seed, score=score)
    if dp is not None:
        eps["accountant"] = {"epsilon": dp["epsilon"], "delta": dp["delta"]}
    return eps


def _error_rates(det: CandidateDetectors, targets: np.ndarray, heldout: np.ndarray,
                 negatives: str = "held-out real images (val and test splits), against every candidate") -> dict:
    """Each detector's recall on its candidate's noise-free shifted copies and its false positives on held-out real
    images, per candidate and overall."""
    copies = [shifted_copies(t, det.shift) for t in targets]
    recall = np.array([det.own_flags(c, j).mean() for j, c in enumerate(copies)])
    flags = det.flags(heldout)
    fp, images = flags.sum(0), int(flags.any(1).sum())
    total = int(fp.sum())
    return {"recall": recall, "false_positives": fp,
            "summary": {"recall_min": float(recall.min()), "recall_mean": float(recall.mean()),
                        "copies_per_candidate": len(copies[0]), "n_heldout": int(len(heldout)),
                        "false_positives": total, "false_positive_rate": total / (len(heldout) * len(targets)),
                        "false_positive_rate_ci95": list(clopper_pearson(total, len(heldout) * len(targets))),
                        "false_positives_max": int(fp.max()), "images_flagged": images,
                        "image_false_positive_rate": images / len(heldout),
                        "positives": f"noise-free copies of each x_p^(j) shifted by up to {det.shift} px",
                        "negatives": negatives}}


def _classifier(run: Path, manifest: dict, data, targets: np.ndarray, *, device: str, progress: bool):
    """The c_id over the candidates (:mod:`.identity`), "none" drawn from the base images and the split's images
    outside D_p and the candidates, its threshold chosen on the val split; (detector, the test split's images for its
    false positives)."""
    from ...device import resolve_device
    from .identity import train_identity

    eval_split, test_split = [s for s in SPLITS if s != manifest["split"]]  # two splits, neither the training one
    val, test = (split_images(manifest, s, data=data) for s in (eval_split, test_split))
    if len(val) < 1 or len(test) < 1:
        raise DiffauditError(f"the candidates' classifier chooses its threshold on the {eval_split} split and is checked "
                             f"on the {test_split} split; this run lacks one (use --detector nn)")
    _, base = candidate_images(manifest, data)
    taken = set(manifest["indices"]) | {c["index"] for c in candidates_of(manifest)}
    split = data.images(manifest["split"])
    rest = np.asarray([i for i in range(len(split)) if i not in taken], dtype=np.int64)
    if len(rest):  # the split's other images: "none" needs more than the N_D base images (identity.py)
        base = np.concatenate([base, as_channels(manifest, np.asarray(split[rest]))])
    det = train_identity(run / "canaries" / "identity", targets, base, val,
                         Fingerprint.from_dict(manifest["fingerprint"]), device=resolve_device(device),
                         progress=progress)
    return det, test, test_split


def run_canaries(run: Path, *, samples: str | None = None, confidence: float = 0.95, delta: float | None = None,
                 seed: int = 0, detector: str = "nn", data_root=None, device: str = "auto", progress: bool = True,
                 log: Callable[[str], None] = print, write: bool = True) -> dict:
    """The stage (module docstring); returns results.json's ``canaries`` section (written unless ``write`` is
    False). ``delta`` None takes the δ of a DP-trained model (so that ε_lower and the accountant's ε speak of one
    (ε, δ)), else 0. ``detector``: "nn", the reference detector per candidate, or "classifier", one c_id over the
    candidates and "none" (:mod:`.identity`)."""
    if detector not in CANARY_DETECTORS:
        raise DiffauditError(f"--detector must be one of {', '.join(CANARY_DETECTORS)}, got '{detector}'")
    run = Path(run)
    manifest = canary_manifest(run)
    dp, delta = model_delta(run, delta, confidence)
    folder = _with_shards(find_samples(run, samples))
    record = read_json(folder / "config.json") if (folder / "config.json").exists() else {}
    if (record.get("conditions") or {}).get("mode") == "x_p":
        raise DiffauditError(f"{folder.name} was drawn with x_p's own attributes, and x_p is an included candidate: "
                             "scores from it would depend on the inclusions; score the samples drawn with the "
                             "training set's attributes")
    data = open_data(manifest, data_root=data_root)
    targets, det = candidate_detectors(manifest, data)
    if detector == "classifier":
        det, test, test_split = _classifier(run, manifest, data, targets, device=device, progress=progress)
        rates = _error_rates(det, targets, test, f"the {test_split} split's real images, against every candidate (the "
                                                 "threshold was chosen on the other held-out split)")
        described = det.describe()
        if not described["criterion_met"]:
            log(f"warning: the candidates' classifier missed its criterion (every candidate's copies found, at most "
                f"1% of the held-out images flagged) at its cap; its counts stand with the shortfall in the record")
    else:
        heldout = np.concatenate([split_images(manifest, s, data=data) for s in SPLITS if s != manifest["split"]])
        rates = _error_rates(det, targets, heldout)
        described = {"kind": "nearest-neighbour per candidate", "metric": "rmse", "shift_px": det.shift,
                     "median_train_nn_distance": det.median_nn}
    total = _total(folder)
    batches = (x for _, x in iter_shards(folder))
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=f"score {len(targets)} canaries", unit="shard")
    counts, n = det.count(batches)
    if total is not None and n != total:
        log(f"warning: {folder} holds {n} of the {total} samples its config.json asks for")
    cands = candidates_of(manifest)
    included = np.array([c["included"] for c in cands])
    dup = np.array([c["duplicates"] for c in cands])
    eps = bound_of(counts, manifest, score=f"the candidate's count of copies among the samples ({described['kind']})",
                   dp=dp, confidence=confidence, delta=delta, seed=seed)
    dose = dose_response(counts[included], dup[included], n)
    out_k = int(counts[~included].sum())
    dose["excluded"] = {"candidates": int((~included).sum()), "samples": out_k,
                        "reproduced": int((counts[~included] > 0).sum()),
                        "rate": out_k / (n * max(1, int((~included).sum()))),
                        "rate_ci95": list(clopper_pearson(out_k, n * max(1, int((~included).sum()))))}
    out = run / "canaries" / folder.name
    table = [{"candidate": j, "index": c["index"], "included": c["included"], "duplicates": c["duplicates"],
              "count": int(counts[j]), "rate": counts[j] / n, "rate_ci95": list(clopper_pearson(int(counts[j]), n)),
              "threshold": float(det.thresholds[j]), "recall": float(rates["recall"][j]),
              "false_positives": int(rates["false_positives"][j])} for j, c in enumerate(cands)]
    section = {
        "samples": run_relative(run, folder), "model": samples_model(folder), "n_samples": n, "m": len(cands),
        "n_included": int(included.sum()), "inclusion": manifest["canaries"]["inclusion"],
        "duplicates": manifest["canaries"]["duplicates"],
        "detector": {**described, **rates["summary"]}, "detector_option": detector,
        "reproduced": int((counts[included] > 0).sum()), "excluded_flagged": int((counts[~included] > 0).sum()),
        "dose_response": dose, "epsilon": eps,
        "candidates": run_relative(run, out / "candidates.json"),
        "figures": {"dose": run_relative(run, out / "dose.png"), "epsilon": run_relative(run, out / "epsilon.png")},
    }
    if not write:
        return section
    write_json(out / "candidates.json", {"candidates": table})
    plot_dose(dose, out / "dose.png")
    plot_epsilon(eps, out / "epsilon.png")
    update_results(run, manifest, canaries=section)
    return section
