"""The many-canary figures: the reproduction rate by duplication count, and ε_lower against the number of guesses
(as ML Privacy Meter draws it)."""

from __future__ import annotations

from pathlib import Path

from ..report.plots import _save


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_dose(dose: dict, path: str | Path) -> Path:
    """The pooled reproduction rate per d with its 95% interval, the excluded candidates' rate at d = 0."""
    plt = _pyplot()
    rows = [{"d": 0, **dose["excluded"]}, *dose["by_d"]] if dose.get("excluded", {}).get("candidates") else dose["by_d"]
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    xs = [str(r["d"]) for r in rows]
    rates = [r["rate"] for r in rows]
    err = [[r["rate"] - r["rate_ci95"][0] for r in rows], [r["rate_ci95"][1] - r["rate"] for r in rows]]
    ax.errorbar(xs, rates, yerr=err, fmt="o-", capsize=3)
    ax.set_xlabel("copies of the canary in D_p (0: left out)")
    ax.set_ylabel("reproductions per sample")
    trend = dose.get("trend")
    if trend:
        separated = trend["slope"] is None or trend.get("separated")
        slope = "not finite (separation)" if separated else f"{trend['slope']:.2f}"
        ax.set_title(f"slope per doubling {slope}, p = {trend['p_value']:.2g}", fontsize=9)
    return _save(fig, path)


def plot_epsilon(eps: dict, path: str | Path) -> Path:
    """ε_lower against the number of guesses r = k₊ + k₋: the best grid point of each r."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    if eps["epsilon_lower"] is None:
        ax.text(0.5, 0.5, "no bound:\n" + eps["note"], ha="center", va="center", wrap=True, fontsize=8)
        ax.set_axis_off()
        return _save(fig, path)
    best: dict[int, float] = {}
    for p in eps["points"]:
        best[p["guesses"]] = max(best.get(p["guesses"], 0.0), p["epsilon"])
    rs = sorted(best)
    ax.plot(rs, [best[r] for r in rs], "o-", ms=3, label="best (k+, k-) with r guesses")
    for name, value in (eps.get("accountant") or {}).get("epsilon", {}).items():
        ax.axhline(value, ls="--", color="grey", lw=1)
        ax.text(ax.get_xlim()[0], value, f" {name} ε = {value:.3g}", va="bottom", fontsize=7, color="grey")
        break  # one accountant line keeps the figure readable; the table gives all
    ax.set_xscale("log", base=2)
    ax.set_xlabel("guesses r")
    ax.set_ylabel(f"ε lower bound ({eps['confidence']:.0%}, Bonferroni over {eps['grid_size']})")
    ax.legend(fontsize=7)
    return _save(fig, path)
