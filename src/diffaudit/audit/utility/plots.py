"""Utility against the classifier's ε, one line per regime (AUROC, mean over seeds with its 95% interval)."""

from __future__ import annotations

from pathlib import Path

from ..report.plots import _save


def plot_utility(section: dict, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eps = section["epsilons"]
    keys = ["inf" if e is None else f"{e:g}" for e in eps]
    xs = list(range(len(keys)))
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    bands = iter([("0.3", "--"), ("tab:purple", ":"), ("tab:brown", "-.")])  # the regimes without DP, told apart
    for regime, label in section["regimes"].items():
        cells = section["table"][regime]
        if set(cells) == {"inf"}:  # a regime without DP: a band across the figure
            a = cells["inf"]["auroc"]
            color, style = next(bands, ("0.5", "--"))
            line = ax.axhline(a["mean"], color=color, ls=style, lw=1.2, label=f"{label} (no DP)")
            if a["ci95"]:
                ax.axhspan(*a["ci95"], color=line.get_color(), alpha=0.12)
            continue
        pts = [(x, cells[k]["auroc"]) for x, k in zip(xs, keys) if k in cells]
        err = [[a["mean"] - (a["ci95"] or [a["mean"]] * 2)[0] for _, a in pts],
               [(a["ci95"] or [a["mean"]] * 2)[1] - a["mean"] for _, a in pts]]
        ax.errorbar([x for x, _ in pts], [a["mean"] for _, a in pts], yerr=err, fmt="o-", capsize=3, label=label)
    ax.axhline(0.5, color="grey", lw=0.8)
    ax.set_xticks(xs, ["∞" if k == "inf" else k for k in keys])
    ax.set_xlabel("classifier ε (DP-SGD on the real images)")
    ax.set_ylabel(f"AUROC on the real {section['test_split']} split")
    ax.legend(fontsize=7)
    return _save(fig, path)
