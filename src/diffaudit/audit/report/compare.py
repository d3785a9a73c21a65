"""``diffaudit compare``: one report across audited runs — any mix of diffaudit-trained and external models, datasets
and N_D — one row per run with its risk level, rate and interval, t' and t'_alpha, FID and the NLL gap, and their
q_M(t) curves overlaid. Nothing in the runs is changed; the comparison lives in its own folder (new, empty, or an
earlier comparison's, never a run directory). Each run's verdict is recomputed from its counts, never read from its
results.json.

Numbers from different detectors are not comparable as they stand (a count is only as good as the detectors that
made it), so the table names each run's detectors and the report says so when they differ.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import DiffauditError
from ...io import read_json, write_json
from ..count.verdict import DEFINITIONS, per_thousand, verdict_section
from ..engine.verify import check_results
from .plots import plot_q_m, q_m_curve
from .render import Block, cautions_of, fid_cell, fmt, model_of, write_blocks

#: files that make a folder a run directory, which ``--out`` must never be
RUN_FILES = ("results.json", "manifest.json", "audit.json")


def _row(run: Path) -> dict:
    path = run / "results.json"
    if not path.is_file():
        raise DiffauditError(f"{run} has no results.json; audit it first (diffaudit audit --run-dir {run})")
    results = check_results(read_json(path), path)
    if "reproduction" not in results:
        raise DiffauditError(f"{run} has no reproduction count; run its count stage first")
    metrics_path = run / "classifiers" / "metrics.json"
    metrics = read_json(metrics_path) if metrics_path.exists() else {}
    if not isinstance(metrics, dict):
        raise DiffauditError(f"{metrics_path} holds no JSON object; rerun 'diffaudit train-classifiers' in {run}")
    try:  # recomputed from the counts: a stored verdict is never trusted
        v = verdict_section(results, metrics, cautions=cautions_of(results, metrics))
        if results.get("t_prime"):
            q_m_curve(results["t_prime"])  # its curve can be drawn, before the comparison's folder is made
        return _fields(run, results, v)
    except DiffauditError as err:
        raise DiffauditError(f"{run}: {err}") from None
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as err:
        raise DiffauditError(f"{path} is not what the audit writes ({type(err).__name__}: {err}); the file was edited "
                             "or damaged: rerun the stage that writes it") from None


def _fields(run: Path, results: dict, v: dict) -> dict:
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
            "fid_reliable": fid and fid.get("reliable"), "fid_gap_significant": fid and fid.get("gap_significant"),
            "fid_extractor": fid and (fid.get("extractor") or {}).get("name"), "nll_gap": gap, "t_prime_section": tp, "fid_section": fid}


def check_out(out: Path, runs: list[Path]) -> None:
    """Refuse an ``--out`` that would mix the comparison with other files: a run directory, a folder inside one of the
    compared runs, or an existing folder that holds anything but an earlier comparison (which is rewritten)."""
    out = Path(out)
    for p in (out, *out.parents):
        if p.exists() and not p.is_dir():
            raise DiffauditError(f"--out {out}: {p} is a file, not a folder; choose another --out")
    inside = next((r for r in runs if out.resolve() == r.resolve() or r.resolve() in out.resolve().parents), None)
    if inside is not None:
        raise DiffauditError(f"--out {out} lies in the compared run {inside}, which compare never changes; choose a "
                             "folder outside the runs")
    if not out.is_dir():
        return
    run_files = [name for name in RUN_FILES if (out / name).exists()]
    if run_files:
        raise DiffauditError(f"--out {out} is a run directory (it holds {run_files[0]}); choose a new folder for the "
                             "comparison")
    if (out / "compare.json").is_file():
        return
    if any(p.name != ".lock" for p in out.iterdir()):
        raise DiffauditError(f"--out {out} is a folder with other files (and no compare.json of an earlier "
                             "comparison); choose a new or empty folder")


def compare_runs(runs: list[Path], out: Path) -> dict:
    """Write ``<out>/report.html``, ``report.md``, ``compare.json`` and ``q_M.png`` across ``runs``."""
    if len(runs) < 2:
        raise DiffauditError("compare needs at least two run directories")
    if len({Path(r).resolve() for r in runs}) != len(runs):
        raise DiffauditError("a run directory is given twice")
    check_out(Path(out), [Path(r) for r in runs])
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
    unreliable = [name for name, r in zip(names, rows, strict=True) if r["fid_reliable"] is False]
    if unreliable:
        blocks.append(("p", f"**FIDs marked * ({', '.join(unreliable)}) rest on fewer reference images than feature "
                            "dimensions: they are shown, but no comparison of FIDs across runs is drawn from them.**"))
    blocks.append(("table", ["run", "dataset", "N_D", "model", "risk level", "|q| / N", "at most, in 1 000", "t'",
                             "t'_α", "FID train", "FID test", "NLL gap (test − train)", "detectors"],
                   [[name, r["dataset"], r["n_train"], f"{r['model']} {r['digest'] or ''}".strip(), r["level"],
                     f"{r['q']} / {r['n']}", per_thousand(r["interval"][1]), fmt(r["t_prime"], 2),
                     fmt(r["t_prime_alpha"], 2), fid_cell(r["fid_section"], "train"), fid_cell(r["fid_section"], "test"), fmt(r["nll_gap"], 3),
                     r["detectors"]] for name, r in zip(names, rows, strict=True)]))
    curves = [(name, r["t_prime_section"]) for name, r in zip(names, rows, strict=True) if r["t_prime_section"]]
    out.mkdir(parents=True, exist_ok=True)
    if curves:
        figure = plot_q_m(curves, out / "q_M.png")
        blocks.append(("img", figure.name, "q_M(t) of each run (solid: t', dashed: t'_α, dotted: chance level)"))
    blocks.append(("note", DEFINITIONS))
    summary = {"runs": [{k: v for k, v in r.items() if k not in ("t_prime_section", "fid_section")} for r in rows]}
    write_json(out / "compare.json", summary)
    write_blocks(out, blocks)
    return summary
