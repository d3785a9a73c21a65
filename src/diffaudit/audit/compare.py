"""``diffaudit compare``: one report across audited runs — any mix of diffaudit-trained and external models, datasets
and N_D — one row per run with its risk level, rate and interval, t' and t'_alpha, FID and the NLL gap, and their
q_M(t) curves overlaid. Nothing in the runs is changed; the comparison lives in its own folder.

Numbers from different detectors are not comparable as they stand (a count is only as good as the detectors that
made it), so the table names each run's detectors and the report says so when they differ.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DiffauditError
from ..io import read_json, write_json
from .plots import plot_q_m
from .report import Block, cautions_of, fmt, model_of, write_blocks
from .verdict import DEFINITIONS, per_thousand, verdict_section


def _row(run: Path) -> dict:
    path = run / "results.json"
    if not path.is_file():
        raise DiffauditError(f"{run} has no results.json; audit it first (diffaudit audit --run-dir {run})")
    results = read_json(path)
    if "reproduction" not in results:
        raise DiffauditError(f"{run} has no reproduction count; run its count stage first")
    metrics_path = run / "classifiers" / "metrics.json"
    metrics = read_json(metrics_path) if metrics_path.exists() else {}
    v = results.get("verdict") or verdict_section(results, metrics, cautions=cautions_of(results, metrics))
    rep, tp, nll, fid = (results.get(k) for k in ("reproduction", "t_prime", "nll_bpd", "fid"))
    model = model_of(results) or {}
    gap = None
    if nll and nll.get("train") and nll.get("test"):
        gap = nll["test"]["mean"] - nll["train"]["mean"]
    return {"run": str(run), "dataset": results["dataset"], "n_train": results["n_train"],
            "model": model.get("format") or "diffaudit", "digest": model.get("digest"),
            "detectors": ", ".join(f"{k}: {d.get('kind')}" for k, d in sorted(rep["detectors"].items())),
            "level": v["level"], "q": rep["q"], "n": rep["n_samples"], "rate": rep["rate"], "interval": v["interval"],
            "t_prime": tp and tp["value"], "t_prime_alpha": tp and tp["value_alpha"],
            "fid_train": fid and fid["train"], "fid_test": fid and fid["test"],
            "fid_extractor": fid and fid["extractor"]["name"], "nll_gap": gap, "t_prime_section": tp}


def compare_runs(runs: list[Path], out: Path) -> dict:
    """Write ``<out>/report.html``, ``report.md``, ``compare.json`` and ``q_M.png`` across ``runs``."""
    if len(runs) < 2:
        raise DiffauditError("compare needs at least two run directories")
    if len({Path(r).resolve() for r in runs}) != len(runs):
        raise DiffauditError("a run directory is given twice")
    rows = [_row(Path(r)) for r in runs]
    names = [Path(r["run"]).name for r in rows]
    if len(set(names)) != len(names):
        names = [r["run"] for r in rows]
    blocks: list[Block] = [("h", 1, f"diffaudit comparison of {len(rows)} audits")]
    detectors = {r["detectors"] for r in rows}
    extractors = {r["fid_extractor"] for r in rows if r["fid_extractor"]}
    if len(detectors) > 1:
        blocks.append(("p", "**The runs were counted with different detectors; their rates are comparable only as far "
                            "as the detectors' sensitivities and false-positive rates agree (see each run's report).**"))
    if len(extractors) > 1:
        blocks.append(("p", f"**FIDs come from different feature extractors ({', '.join(sorted(extractors))}) and are "
                            "not comparable across those runs.**"))
    blocks.append(("table", ["run", "dataset", "N_D", "model", "risk level", "|q| / N", "at most, in 1 000", "t'",
                             "t'_α", "FID train", "FID test", "NLL gap (test − train)", "detectors"],
                   [[name, r["dataset"], r["n_train"], f"{r['model']} {r['digest'] or ''}".strip(), r["level"],
                     f"{r['q']} / {r['n']}", per_thousand(r["interval"][1]), fmt(r["t_prime"], 2),
                     fmt(r["t_prime_alpha"], 2), fmt(r["fid_train"], 4), fmt(r["fid_test"], 4), fmt(r["nll_gap"], 3),
                     r["detectors"]] for name, r in zip(names, rows, strict=True)]))
    curves = [(name, r["t_prime_section"]) for name, r in zip(names, rows, strict=True) if r["t_prime_section"]]
    out.mkdir(parents=True, exist_ok=True)
    if curves:
        figure = plot_q_m(curves, out / "q_M.png")
        blocks.append(("img", figure.name, "q_M(t) of each run (solid: t', dashed: t'_α, dotted: chance level)"))
    blocks.append(("note", DEFINITIONS))
    summary = {"runs": [{k: v for k, v in r.items() if k != "t_prime_section"} for r in rows]}
    write_json(out / "compare.json", summary)
    write_blocks(out, blocks)
    return summary
