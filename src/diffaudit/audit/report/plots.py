"""Figures with matplotlib (Agg backend: no display needed), written atomically."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ...io import atomic_path


def _save(fig, path: str | Path) -> Path:
    """Write ``fig`` as a PNG atomically and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def q_m_curve(s: dict) -> dict:
    """What :func:`plot_q_m` draws of a ``t_prime`` section, as numbers: raises KeyError, TypeError or ValueError
    for a section that is not as the t' stage writes it (callers name the file)."""
    pts = [(float(t), float(q), (float(ci[0]), float(ci[1])))
           for t, q, ci in zip(s["grid"], s["q_M"], s["q_M_ci95"], strict=True) if q is not None]
    return {"t": [p[0] for p in pts], "q": [p[1] for p in pts],
            "err": [[q - ci[0] for _, q, ci in pts], [ci[1] - q for _, q, ci in pts]],
            **{k: float(s[k]) for k in ("value", "value_alpha", "chance_level")}}


def plot_q_m(curves: Sequence[tuple[str, dict]], path: str | Path) -> Path:
    """q_M(t) with its 95% intervals against t, t' (solid) and t'_alpha (dashed) marked: Fig. 6 of the paper,
    one curve per (label, ``t_prime`` section) — several models can be compared in one figure."""
    import matplotlib  # here, not at the top: its import and backend choice are paid only when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for k, (label, s) in enumerate(curves):
        color = f"C{k}"
        c = q_m_curve(s)
        ax.errorbar(c["t"], c["q"], yerr=c["err"], fmt="o-", ms=3, lw=1, capsize=2, color=color,
                    label=f"{label}: t'={c['value']:.2f}, t'_α={c['value_alpha']:.2f}")
        ax.axvline(c["value"], color=color, lw=1)
        ax.axvline(c["value_alpha"], color=color, lw=1, ls="--")
        ax.axhline(c["chance_level"], color=color, lw=0.8, ls=":")
    ax.set_xlabel("t (start of the reverse process from x_p)")
    ax.set_ylabel("q_M(t): share of runs returning x_p")
    ax.set_ylim(-0.03, 1.03)
    ax.set_title("q_M(t) with 95% Clopper–Pearson intervals (dotted: chance level)", fontsize=9)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_roc(roc: dict, path: str | Path) -> Path:
    """ROC curves of c_p, c_id and q with a log-scale FPR axis (as membership-inference audits draw them), each
    detector's operating threshold marked; FPR 0 is drawn at the axis' left end."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    floor = 1e-3
    fig, ax = plt.subplots(figsize=(5.2, 4.0), dpi=120)
    for k, name in enumerate(("c_p", "c_id", "q")):
        r = roc.get(name)
        if not r:
            continue
        fpr = [max(v, floor) for v in r["curve"]["fpr"]]
        ax.step(fpr, r["curve"]["tpr"], where="post", color=f"C{k}", lw=1.2, label=f"{name}: AUC {r['auc']:.3f}")
        t = r["threshold"]
        ax.plot([max(t["fpr"], floor)], [t["tpr"]], "o", color=f"C{k}", ms=5)
    ax.set_xscale("log")
    ax.set_xlim(floor, 1.0)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(f"false-positive rate ({roc.get('negatives', 'negatives')}; 0 drawn at {floor:g})")
    ax.set_ylabel("true-positive rate (copies of x_p)")
    ax.set_title("Detector ROC curves; dots: the thresholds the count uses", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)
