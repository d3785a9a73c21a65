"""What the synthetic data is worth under DP: the downstream classifier in the five regimes of
:mod:`.regimes` at every classifier ε and seed, tested on the real test split; results.json's ``utility_dp``.

Each (regime, ε) gets the mean accuracy and AUROC over the seeds with a 95% t-interval (the seeds retrain everything
the regime trains: its initial weights, batches, shifts, noise). Beside the classifier's ε stands the generator's:
the synthetic images carry the generator's privacy, not the classifier's (∞ for a non-private generator).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import stats

from ...config import UtilityConfig
from ...data.dataset import open_data
from ...data.prepare import build_training_set, heldout_split, labelled_classes, load_manifest, split_images, training_labels
from ...device import resolve_device
from ...errors import DiffauditError
from ...generate import iter_labelled_shards
from ...io import read_json, run_relative, write_json
from ..results import update_results
from .plots import plot_utility
from ...privacy.dpsgd import poisson_rate
from ..count.stage import samples_model
from .regimes import DP_REGIMES, check_classes, evaluate, noise_for, train_regime

LABEL = {"real": "real", "synthetic": "synthetic", "real_dp": "real, DP", "mixed_dp": "real + synthetic, DP",
         "pretrained_dp": "synthetic → real, DP"}


def _interval(values: list[float]) -> dict:
    """Mean over the seeds with a 95% t-interval (None with one seed)."""
    v = np.asarray(values, dtype=np.float64)
    mean = float(v.mean())
    if len(v) < 2:
        return {"mean": mean, "ci95": None, "values": v.tolist()}
    half = float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return {"mean": mean, "ci95": [mean - half, mean + half], "values": v.tolist()}


def generator_privacy(run: Path) -> dict:
    """The generator's ε: from its DP training record, ∞ for diffaudit's non-private model, unknown for a model
    trained elsewhere."""
    meta = run / "train" / "model.json"
    if not meta.exists():
        return {"epsilon": None, "private": None, "note": "a model trained elsewhere: its privacy is not recorded here"}
    dp = read_json(meta).get("dp")
    if dp is None:
        return {"epsilon": None, "private": False, "note": "trained without DP: ε = ∞"}
    return {"epsilon": dp["epsilon"][dp["accountant"]], "private": True, "delta": dp["delta"],
            "accountant": dp["accountant"]}


def _labelled_samples(samples: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        parts = list(iter_labelled_shards(samples))
    except DiffauditError as err:
        if "no class labels" not in str(err):
            raise
        parts = []
    if not parts:
        raise DiffauditError(f"the samples in {samples} carry no class labels: the DP utility regimes need a "
                             "class-conditional model (--class-conditional, or a --model whose labels are known)")
    return np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts]).astype(np.int64)


def winners(table: dict, epsilons) -> list[str]:
    """One sentence per ε: the DP regime of the highest mean AUROC, and whether its interval clears the others'."""
    out = []
    for eps in epsilons:
        key = "inf" if eps is None else f"{eps:g}"
        rows = {r: table[r][key] for r in DP_REGIMES if key in table.get(r, {})}
        if not rows:
            continue
        best = max(rows, key=lambda r: rows[r]["auroc"]["mean"])
        lo = (rows[best]["auroc"]["ci95"] or [rows[best]["auroc"]["mean"]])[0]
        clear = all(lo > (rows[r]["auroc"]["ci95"] or [0, rows[r]["auroc"]["mean"]])[1] for r in rows if r != best)
        out.append(f"ε = {'∞' if eps is None else f'{eps:g}'}: {LABEL[best]} has the highest mean AUROC "
                   f"({rows[best]['auroc']['mean']:.3f})" + (", its interval above the others'" if clear else
                                                              ", within the others' intervals"))
    return out


def run_dp_utility(run: Path, samples: Path, cfg: UtilityConfig, *, data_root=None, device: str = "auto",
                   progress: bool = True, log: Callable[[str], None] = print) -> dict:
    run = Path(run)
    manifest = load_manifest(run)
    synth_x, synth_y = _labelled_samples(Path(samples))
    data = open_data(manifest, data_root=data_root)
    n_classes = labelled_classes(manifest, data_root=data_root)
    if n_classes < 2:
        raise DiffauditError("the DP utility regimes need labelled data of at least two classes")
    real = (build_training_set(manifest, data=data), training_labels(manifest, data=data))
    if real[0].ndim != 4:
        raise DiffauditError("the DP utility regimes train a 2D image classifier; this run holds volumes")
    if synth_x.shape[1:] != real[0].shape[1:]:
        raise DiffauditError(f"the samples are {list(synth_x.shape[1:])} but the real images {list(real[0].shape[1:])}; "
                             "sample the run's model at the run's image shape")
    if synth_y.ndim != 1 or synth_y.min(initial=0) < 0 or synth_y.max(initial=0) >= n_classes:
        raise DiffauditError(f"the samples' labels must be classes 0 .. {n_classes - 1}, one per image (a model "
                             "conditioned on continuous attributes has none)")
    check_classes(real[1], n_classes, cfg.batch_size)
    for eps in cfg.epsilons:  # every noise multiplier before any training: an unreachable epsilon fails at once
        if eps is not None:
            noise_for(eps, poisson_rate(len(real[0]), min(cfg.batch_size, len(real[0]))), cfg)
    test_split = heldout_split(manifest, "test")
    test = (split_images(manifest, test_split, data=data), np.asarray(data.labels(test_split)).reshape(-1))
    dev = resolve_device(device)
    records = []
    for seed in range(cfg.seeds):
        common = {"real": real, "synthetic": (synth_x, synth_y), "n_classes": n_classes, "cfg": cfg, "seed": seed,
                  "device": dev, "progress": progress}
        done: dict[tuple[str, float | None], tuple] = {}
        for regime in ("real", "synthetic"):
            done[regime, None] = train_regime(regime, epsilon=None, **common)
        pretrained = {k: v.detach().clone() for k, v in done["synthetic", None][0].state_dict().items()}
        for eps in cfg.epsilons:
            for regime in DP_REGIMES:
                if regime == "real_dp" and eps is None:
                    continue  # the same loop, seed and batches as ``real``
                done[regime, eps] = train_regime(regime, epsilon=eps, init=pretrained if regime == "pretrained_dp"
                                                 else None, **common)
        for (regime, eps), (net, record) in done.items():
            records.append({**record, **evaluate(net, test, n_classes, dev)})
        log(f"utility seed {seed}: {len(done)} classifiers trained and tested on the {len(test[1])} {test_split} images")
    table: dict = {}
    for regime in ("real", "synthetic", *DP_REGIMES):
        for eps in ((None,) if regime in ("real", "synthetic") else cfg.epsilons):
            rows = [r for r in records if r["regime"] == (("real" if regime == "real_dp" and eps is None else regime))
                    and r["epsilon_target"] == eps]
            if not rows:
                continue
            cell = {"accuracy": _interval([r["accuracy"] for r in rows]), "auroc": _interval([r["auroc"] for r in rows]),
                    "seeds": len(rows)}
            dp = [r["dp"] for r in rows if "dp" in r]
            if dp:
                cell["classifier_epsilon"] = dp[0]["epsilon"]
                cell["noise_multiplier"] = dp[0]["noise_multiplier"]
            table.setdefault(regime, {})["inf" if eps is None else f"{eps:g}"] = cell
    out = run / "utility_dp"
    section = {
        "regimes": {r: LABEL[r] for r in table}, "table": table, "epsilons": list(cfg.epsilons),
        "generator": generator_privacy(run), "samples": run_relative(run, Path(samples)),
        "n_real": int(len(real[0])), "n_synthetic": int(len(synth_x)), "n_test": int(len(test[1])),
        "test_split": test_split, "classes": n_classes, "seeds": cfg.seeds, "mix_ratio": cfg.mix_ratio,
        "synthetic_per_step": round(cfg.mix_ratio * min(cfg.batch_size, len(real[0]))),
        "classifier": f"ResNet10 (the FID domain extractor's) of width {cfg.width}, GroupNorm for BatchNorm; "
                      f"{cfg.steps} steps of expected batch {cfg.batch_size}, clipping {cfg.max_grad_norm}, δ {cfg.delta:g}",
        "accounting": "only the real records: the synthetic images' privacy is the generator's",
        "winners": winners(table, cfg.epsilons),
        "records": run_relative(run, out / "records.json"), "model": samples_model(Path(samples)),
        "figure": run_relative(run, out / "utility_vs_epsilon.png"),
    }
    write_json(out / "records.json", {"records": records})
    plot_utility(section, out / "utility_vs_epsilon.png")
    update_results(run, manifest, utility_dp=section)
    return section
