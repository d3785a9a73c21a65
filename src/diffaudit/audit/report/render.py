"""The audit report: ``report.md`` (figures by relative path) and ``report.html`` (self-contained: figures
embedded), built from results.json, the classifiers' metrics and the run's figures. Both start with the verdict
in one sentence, then Table 1 and Table 2 of the paper for this run, the detectors' error rates, q_M(t), sample
grids, the positives with their error maps, NLL and FID, and the full config.

A report is a list of blocks rendered twice, so the two files always say the same thing.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any, Sequence

from ...adversary.criterion import criterion_verdict
from ...data.prepare import load_manifest
from ...errors import DiffauditError
from ...io import atomic_path, read_json, run_relative, write_json
from ..count.verdict import check_derived, derived_figures, dig, per_thousand, primary_counts, provenance_section, sensitivity, verdict_section
from ..results import RESULTS, update_results
from .canaries import canary_blocks, whitebox_blocks
from .census import census_blocks
from .dp_utility import dp_utility_blocks
from .conditioned import conditioned_blocks
from .plots import plot_roc

Block = tuple  # ("h", level, text) | ("p", text) | ("table", headers, rows) | ("img", path, caption) | ("pre", text)


def fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def verdict(results: dict) -> str:
    """The report's first sentence: was x_p reproduced, how often against full memorisation, with what certainty."""
    r = results.get("reproduction")
    census = (results.get("census") or {}).get("verdict")
    if r is None and census is not None:
        return f"Census (no canary): {census['statement']}"
    if r is None:
        return "No reproduction count yet: the audit has not reached its count stage."
    lo, hi = r["rate_ci95"]
    n_d = results["n_train"]
    seq = r.get("sequential") if r.get("design") == "sequential" else None
    test = (f"anytime-valid p = {fmt(r['p_value'])} for H0: p = 1/N_D = 1/{n_d}" if seq else
            f"one-sided p = {fmt(r['p_value'])} for H0: p = 1/N_D = 1/{n_d}")
    interval = "95% interval"
    if seq:
        interval = (f"95% confidence sequence (valid after the sequential count stopped at {seq['n_samples']} of at most "
                    f"{seq['max_n']} images: {seq['reason'].replace('_', ' ')})")
    if r["q"] > 0:
        return (f"The model reproduces the identifiable training image x_p: {r['q']} of {r['n_samples']} samples are "
                f"x_p (expected {fmt(r['expected_q'])} under full memorisation; {test}), and the {interval} for "
                f"its reproduction probability is [{fmt(lo)}, {fmt(hi)}].")
    return (f"No reproduction of x_p was found in {r['n_samples']} samples (expected {fmt(r['expected_q'])} under "
            f"full memorisation; {test}), so its reproduction probability is below {fmt(r['rate_upper95'])} with 95% "
            f"confidence{' (a confidence sequence, valid after the sequential stop)' if seq else ''}; this bounds the "
            "rate, it does not prove anonymity.")


def detector_warning(results: dict, metrics: dict, *, least: float = 0.9) -> str | None:
    """A warning when a classifier missed its recorded training criterion at its cap, or, for classifiers that
    record none, when the detectors together found fewer than ``least`` of the clean copies of x_p: then a small
    count says more about the detectors than about the model."""
    criterion = criterion_verdict(metrics)
    if criterion is not None:
        return None if criterion[0] else (
            f"Caution: {criterion[1]}; train the classifiers with a higher cap (train-classifiers --max-epochs) or "
            "count with the reference detector (--detector nn) before relying on the count.")
    copies = dig(metrics, "true_positive_rate", "copies_of_x_p", "0") or {}
    rate = sensitivity(metrics)
    if rate is None or rate >= least:
        return None
    return (f"Caution: the detectors together recognised only {dig(copies, 'q', 'positives')} of "
            f"{dig(copies, 'q', 'n')} copies of x_p "
            f"(c_p {dig(copies, 'c_p', 'positives')}, c_id {dig(copies, 'c_id', 'positives')}), so the count "
            "above can miss reproductions; train the classifiers longer (train-classifiers --max-epochs, --patience) or "
            "count with the reference detector (--detector nn) before relying on it.")


def excess_warning(results: dict) -> str | None:
    """A warning when the count is significantly above full memorisation (the interval's lower limit above
    1/N_D): a model of D_p that returns x_p more often than a perfect copy of D_p would is implausible, and the
    usual cause is detectors firing on generated images unlike any real one (their false-positive rate was
    measured on real images only)."""
    rep = results.get("reproduction")
    if not rep or rep["rate_ci95"][0] <= 1.0 / results["n_train"]:
        return None
    return (f"Caution: {rep['q']} of {rep['n_samples']} is significantly more than full memorisation predicts "
            f"({fmt(rep['expected_q'])}); look at the positives and their error maps before reading this as reproduction. "
            "On generated images unlike real ones (an undertrained or heavily noised model) the detectors' false-positive "
            "rate is not controlled; measure it on a control model's samples (count --control-samples).")


#: the results.json sections made by a model, each recording its digest under "model"
MODEL_SECTIONS = ("reproduction", "reproduction_x_p", "t_prime", "t_prime_posthoc", "nll_bpd", "fid", "census", "canaries",
                  "utility_dp")


def model_of(results: dict) -> dict | None:
    """The model the run's numbers come from (its provenance record), refusing results that mix models: one row of
    the report must never put one model's count beside another's t'."""
    found = {name: results[name]["model"] for name in MODEL_SECTIONS
             if isinstance(results.get(name), dict) and isinstance(results[name].get("model"), dict)
             and results[name]["model"].get("digest")}
    digests = {m["digest"] for m in found.values()}
    if len(digests) > 1:
        which = "; ".join(f"{name} from {m['digest']}" for name, m in found.items())
        raise DiffauditError(f"results.json mixes models ({which}); a report covers one model: rerun the stages of the "
                             "others on this run's model, or audit each model in its own --run-dir")
    return max(found.values(), key=len) if found else None


def _rate_text(d: dict | None) -> str:
    return "–" if not d else f"{d['positives']}/{d['n']} ({fmt(d['rate'])})"


def cautions_of(results: dict, metrics: dict) -> list[str]:
    """Everything a reader of the verdict must know before relying on it."""
    out = [w for w in (detector_warning(results, metrics), excess_warning(results)) if w]
    model = model_of(results)
    if model is not None and model.get("training_data_confirmed") is False:
        out.append("Caution: nothing beside the model confirms which set it was trained on; the audit assumes it is this "
                   "run's exported training set (copy export.json beside the model when training).")
    return out


def current_verdict(run: Path) -> tuple[dict, dict | None]:
    """(results, verdict): the run's results.json and its verdict recomputed from the primary counts, writing
    nothing (what ``report --json``, the release gate and ``compare`` rely on; a stored verdict is never read)."""
    path = Path(run) / "results.json"
    results = read_json(path)
    if not isinstance(results, dict):
        raise DiffauditError(f"{path} must hold a JSON object, got {type(results).__name__}: the file was edited or "
                             "damaged; rerun 'diffaudit count'")
    metrics_path = Path(run) / "classifiers" / "metrics.json"
    metrics = read_json(metrics_path) if metrics_path.exists() else {}
    if not isinstance(metrics, dict):
        raise DiffauditError(f"{metrics_path} must hold a JSON object: rerun 'diffaudit train-classifiers'")
    counts = primary_counts(results)  # the counts and their figures checked before the cautions read them
    if counts is not None:
        check_derived(results["reproduction"], derived_figures(counts))
    return results, verdict_section(results, metrics, cautions=cautions_of(results, metrics))


def stamp(run: Path, *, write: bool = True) -> dict:
    """Add ``verdict`` and ``provenance`` to the run's results.json (the report stage, and ``diffaudit report``);
    with ``write=False`` only return the stamped results."""
    results, v = current_verdict(run)
    manifest = load_manifest(run)
    sections = {"provenance": provenance_section(run, results, manifest, model_of(results))}
    if v is not None:
        sections["verdict"] = v
    return update_results(run, manifest, write=write, **sections)


def verdict_blocks(results: dict) -> list[Block]:
    """The first screen: the risk level, what it means for release, the rate as "at most X in 1 000", the scope and
    the cautions; then the paper's sentence."""
    v = results.get("verdict")
    out: list[Block] = []
    if v is not None:
        out += [("verdict", v["level"], f"Risk level: {v['level'].upper()}. {v['release']}"),
                ("p", f"**{v['statement']}**"),
                ("p", f"Why: {v['reason']}. Scope: {v['scope']}.")]
        d = v.get("decision") or {}
        if d.get("negatives"):
            neg = d["negatives"]
            what = {"control_samples": "samples of a control model trained without x_p",
                    "heldout_real": "held-out real images"}.get(neg["source"], neg["source"])
            test = f"p = {fmt(d['p_value'])}, " if d.get("p_value") is not None else ""
            out.append(("p", f"Decision: {v['flagged']} flagged of {v['n_samples']} audited samples against "
                             f"{neg['positives']} of {neg['n']} {what} ({d['test']}; {test}reproduction "
                             f"{'shown' if d['shown'] else 'not shown'} at the 5% level). Detectable rate: "
                             + ("none up to 1" if v.get("detectable_rate") is None else
                                f"{per_thousand(v['detectable_rate'])} in 1 000")
                             + " (the smallest reproduction rate this audit shows with 80% probability, given its "
                               "samples, its negatives and the detectors' sensitivity)."))
        net = v.get("net_of_control")
        if net:
            lo, hi = net["interval"]
            out.append(("p", f"Net of the control model's false positives ({fmt(net['control_rate'])} of its samples "
                             f"were flagged): {fmt(net['rate'])}, 95% interval [{fmt(lo)}, {fmt(hi)}] "
                             f"({net['method']})."))
        out += [("p", f"**{c}**") for c in v.get("cautions", [])]
    census = (results.get("census") or {}).get("verdict")
    if v is None and census is not None:  # a post-hoc audit: the census gives the level
        out += [("verdict", census["level"], f"Risk level: {census['level'].upper()} (census). {census['release']}"),
                ("p", f"**{census['statement']}**"),
                ("p", f"Why: {census['reason']}. Scope: {census['scope']}.")]
        return out
    out.append(("p", f"**In the paper's terms.** {verdict(results)}"))
    model = model_of(results)
    if model is not None:
        where = f"{model.get('format')} model at {model.get('path')}" if model.get("path") else "model"
        if model.get("format") == "diffaudit":
            where = f"model diffaudit trained ({model.get('path') or 'train'}/)"
        trained = {True: "; its folder confirms it was trained on this run's exported set",
                   False: "; nothing in its folder confirms which set it was trained on"}.get(
            model.get("training_data_confirmed"), "")
        out.append(("p", f"**Model audited:** the {where}, weights digest {model['digest']}{trained}."))
    prov = results.get("provenance")
    if prov:
        out.append(("p", f"Made by diffaudit {prov.get('diffaudit')} on {prov.get('created')} (torch "
                         f"{prov['versions'].get('torch')}, diffusers {prov['versions'].get('diffusers')}, device "
                         f"{prov.get('device')}); data {prov['data'].get('file')} (MD5 {prov['data'].get('md5')}), "
                         f"manifest {prov.get('manifest_digest')}, config {prov.get('config_digest')}."))
    return out


def fid_cell(fid: dict | None, name: str) -> str:
    """FID ``name`` (train or test) of results.json ``fid`` with its 95% bootstrap interval, starred when the FID is
    unreliable (``fid["reliable"]`` false: the reference set is smaller than the feature dimension); e.g.
    "5.81 [3.2, 9.1]*". Sections written before the intervals show the value alone."""
    if not fid or fid.get(name) is None:
        return fmt(None)
    ci = fid.get(f"{name}_ci95")
    interval = f" [{fmt(ci[0], 3)}, {fmt(ci[1], 3)}]" if ci else ""
    return f"{fmt(fid[name], 4)}{interval}{'*' if fid.get('reliable') is False else ''}"


def fid_gap_sentence(fid: dict) -> str:
    """Whether FID_test - FID_train is significantly above 0 (results.json ``fid.gap``), in one sentence; empty for
    sections written before the test."""
    gap = fid.get("gap")
    if not gap:
        return ""
    verdict = "significantly above 0" if fid.get("gap_significant") else "not significantly above 0"
    return (f" FID_test − FID_train = {fmt(gap['value'], 3)}, one-sided 95% lower bound {fmt(gap['lower95'], 3)} "
            f"(paired bootstrap): {verdict}.")


def blocks_for_run(run: Path, *, title: str | None = None, results: dict | None = None) -> list[Block]:
    """The report of ``run`` from its results.json (or ``results``, about to be written there); a results.json
    that is not as diffaudit writes it (an edited or damaged file) is refused with one line."""
    try:
        return _blocks_for_run(run, title=title, results=read_json(run / "results.json") if results is None else results)
    except (KeyError, TypeError, AttributeError, IndexError, ValueError) as err:
        raise DiffauditError(f"{run / 'results.json'} is not as diffaudit writes it ({type(err).__name__}: {err}), so no "
                             "report can be drawn from it: the file was edited or damaged; run 'diffaudit verify' "
                             "and rerun the stage that writes the damaged section") from None


def _placement_sentence(placed: dict | None, noun: str = "image") -> str:
    """Where the SAF was placed and why (``manifest.json`` ``fingerprint.placement``); empty for older runs."""
    if not placed:
        return ""
    return (f" It differs from x_i under it by {fmt(placed['contrast'], 3)} on average (grey-level rule: {placed['rule']}); "
            f"it lies on the foreground ({placed['mask_rule']}; {fmt(100 * placed['foreground_fraction'], 3)}% of the "
            f"{noun}).")


def _fingerprint_blocks(run: Path, results: dict) -> list[Block]:
    """Which image is x_p, its SAF and where it was placed, and the picture of x_i, x_p and the foreground."""
    fp = results.get("fingerprint") or {}
    if not fp:
        return [("p", "This run has no canary (prepared without a fingerprint): its verdict, if any, is the census's.")]
    volume = len(results.get("image_shape") or ()) == 4
    noun, unit = ("volume", "voxels") if volume else ("image", "px")
    radius = fp.get("radius")
    out: list[Block] = []
    out.append(("p", f"x_p is {noun} {fp.get('index')} of the {results.get('split')} split (position {fp.get('position')} "
                     f"in the training set) carrying a {fp.get('shape')} of radius "
                     f"{fmt(radius, 3) if isinstance(radius, float) else radius} {unit} and grey level "
                     f"{fp.get('intensity')} at {fp.get('centre')}; its clean original x_i is not in the training set."
                     + _placement_sentence(fp.get("placement"), noun)))
    if (run / "prepare" / "x_i_and_x_p.png").exists():
        where = (" (each volume as its sagittal, coronal and axial slices through the SAF's centre)" if volume else "")
        out.append(("img", "prepare/x_i_and_x_p.png", "x_i (clean original, not trained on), x_p (with the SAF) and, "
                    "in runs prepared with a placement rule, the foreground mask the SAF lies on (white) with the SAF "
                    f"(grey){where}"))

    return out


def _quality_blocks(results: dict, metrics: dict) -> list[Block]:
    """Table 2: the NLL, the FID with its intervals or why it was not computed, and the classifiers' accuracies."""
    nll, fid = results.get("nll_bpd"), results.get("fid")
    out: list[Block] = []
    out.append(("h", 2, "Model quality and memorisation gap (Table 2)"))
    saf = metrics.get("c_p", {}).get("test_accuracy")
    ident = metrics.get("c_id", {}).get("train_accuracy")
    out.append(("table", ["dataset", "NLL x_p", "NLL train", "NLL test", "FID train", "FID test", "SAF %", "ID %"],
                [[results["dataset"], fmt(nll and nll["x_p"] and nll["x_p"]["mean"], 4),
                  fmt(nll and nll["train"]["mean"], 4), fmt(nll and nll["test"]["mean"], 4),
                  fid_cell(fid, "train"), fid_cell(fid, "test"),
                  fmt(saf and 100 * saf, 3), fmt(ident and 100 * ident, 3)]]))
    if nll:
        sem = lambda s: "" if s is None or s.get("sem") is None else f" ± {fmt(s['sem'], 2)}"  # noqa: E731
        out.append(("p", f"NLL in {nll.get('unit', 'bits/dim')} by the probability-flow ODE ({nll['solver']['method']}, rtol "
                         f"{nll['solver']['rtol']}, {nll['solver']['divergence']}), dequantisation {nll['dequantisation']}; "
                         f"x_p {fmt(nll['x_p'] and nll['x_p']['mean'], 4)}{sem(nll['x_p'])} "
                         f"({nll['x_p'] and nll['x_p']['n']} draws), "
                         f"train {fmt(nll['train']['mean'], 4)}{sem(nll['train'])} (n = {nll['train']['n']}), "
                         f"test {fmt(nll['test']['mean'], 4)}{sem(nll['test'])} (n = {nll['test']['n']}); "
                         "± is one standard error."))
    if fid and fid.get("skipped"):
        out.append(("p", f"FID not computed: {fid['skipped']}."))
    elif fid:
        boot = fid.get("bootstrap")
        intervals = (f" Intervals: 95% bootstrap, {boot['resamples']} resamples of the generated and reference "
                     "features, re-centred on the value." if boot else "")
        out.append(("p", f"FID extractor: {fid['extractor']['note']}. {fid['n_generated']} generated images against "
                         f"{fid['n_reference']} reference images each ({fid['reference']}).{intervals}"
                         f"{fid_gap_sentence(fid)}"))
        if fid.get("reliable") is False:
            out.append(("p", f"**Caution: the FIDs marked * are unreliable: {fid['unreliable_reason']}.**"))
    return out


def _blocks_for_run(run: Path, *, title: str | None, results: dict) -> list[Block]:
    metrics = read_json(run / "classifiers" / "metrics.json") if (run / "classifiers" / "metrics.json").exists() else {}
    rep, tp = results.get("reproduction"), results.get("t_prime")
    out: list[Block] = [("h", 1, title or f"diffaudit report: {results['dataset']}, N_D = {results['n_train']}")]
    out += verdict_blocks(results)
    out += _fingerprint_blocks(run, results)
    out.append(("h", 2, "Reproductions (Table 1)"))
    if rep:
        out.append(("table", ["N_D", "N", "|c_p+|", "|c_id+|", "|q|", "E|q|", "p-value", "rate", "95% interval", "t'",
                              "t'_α", "Eq. 9 indicator"],
                    [[results["n_train"], rep["n_samples"], fmt(rep["c_p"]), fmt(rep["c_id"]), rep["q"],
                      fmt(rep["expected_q"]), fmt(rep["p_value"]), fmt(rep["rate"]),
                      f"[{fmt(rep['rate_ci95'][0])}, {fmt(rep['rate_ci95'][1])}]",
                      fmt(tp and tp["value"], 2), fmt(tp and tp["value_alpha"], 2), fmt(tp and tp["bound"])]]))
        kinds = ", ".join(f"{k}: {v.get('kind')}" for k, v in rep["detectors"].items())
        out.append(("p", "H0: p = 1/N_D (full memorisation) against p < 1/N_D, exact one-sided binomial test; "
                         f"Clopper–Pearson interval. q = images flagged by every detector ({kinds})."))
        out += conditioned_blocks(results, fmt)
    out += _quality_blocks(results, metrics)

    util = results.get("utility")
    if util:
        out.append(("h", 2, "Utility of the synthetic data"))
        out.append(("table", ["classifier trained on", "images", "accuracy", "AUROC"],
                    [[name, util[name]["n_train"], fmt(util[name]["accuracy"]), fmt(util[name]["auroc"])]
                     for name in ("synthetic", "real")]))
        out.append(("p", f"Both tested on the real {util['test_split']} split ({util['synthetic']['n_test']} images, "
                         f"{util['classes']} classes; always answering the majority class scores an accuracy of "
                         f"{fmt(util.get('majority_class_share'))} and an AUROC of 0.5); {util['classifier']}."))
    priv = results.get("privacy")
    if priv:
        out.append(("h", 2, "Differential privacy: formal bound beside the audit"))
        eps = ", ".join(f"{k.upper()} {fmt(v)}" for k, v in priv["epsilon"].items())
        out.append(("p", f"DP-SGD with noise multiplier {fmt(priv['noise_multiplier'])}, Poisson rate "
                         f"{fmt(priv['sample_rate'])} and {priv['steps']} steps: epsilon at delta = {fmt(priv['delta'])}: "
                         f"{eps}. Baseline kappa = {fmt(priv['kappa'])} ({priv['kappa_note']})."))
        lo, hi = priv["empirical_rate_ci95"]
        out.append(("table", ["probability that one sample is x_p", "value"],
                    [["formal upper bound, DP-SGD trade-off (numerical)", f"{fmt(priv['bound_dpsgd'])} "
                      f"(numerical error {fmt(priv['bound_numerical_error'], 2)})"],
                     ["formal upper bound, (epsilon, delta) of the PRV accountant", fmt(priv["bound_eps_delta"].get("prv"))],
                     ["central-limit mu-GDP approximation (not a bound)", fmt(priv["bound_clt_gdp"])],
                     ["audit: measured rate with 95% interval", f"{fmt(priv['empirical_rate'])} [{fmt(lo)}, {fmt(hi)}]"]]))
        if lo > priv["bound_dpsgd"]:
            out.append(("p", "**The measured rate is significantly above the formal bound, which DP rules out if kappa is "
                             "right: the detectors' false-positive rate on this model's images is higher than on real "
                             "images, so these positives are not evidence of reproduction (see the caution above).**"))
    if metrics:
        out.append(("h", 2, "Detector error rates"))
        fpr = metrics.get("false_positive_rate", {})
        real = fpr.get("heldout_real", {})
        rows = [["false positives, held-out real test images", _rate_text(real.get("c_p")), _rate_text(real.get("c_id")),
                 _rate_text(real.get("q")), _rate_text(real.get("nearest_neighbour"))]]
        control = (rep or {}).get("false_positive_rate", {}).get("control_samples")
        if control:
            rows.append(["false positives, samples of the control model", _rate_text(control.get("c_p")),
                         _rate_text(control.get("c_id")), _rate_text(control.get("q")), "–"])
        for noise, d in metrics.get("true_positive_rate", {}).get("copies_of_x_p", {}).items():
            rows.append([f"detected copies of x_p (±1 px, noise std {noise})", _rate_text(d.get("c_p")), _rate_text(d.get("c_id")),
                         _rate_text(d.get("q")), _rate_text(d.get("nearest_neighbour"))])
        out.append(("table", ["", "c_p", "c_id", "q (both)", "nearest neighbour (reference)"], rows))
        nn = metrics.get("nearest_neighbour") or {}
        if nn:
            out.append(("p", f"The reference detector flags an image when one of its translations by up to "
                             f"{nn.get('shift_px', 0)} px lies within RMSE {fmt(nn['threshold'])} of x_p (half the "
                             "distance from x_p to its nearest other training image, or less), so a flag never stands "
                             "for another training image; post-hoc audits of models without a canary rest on it."))

    roc = metrics.get("roc")
    if roc:
        out += roc_blocks(run, roc, (rep or {}).get("roc_control_samples"))

    if tp and tp.get("figure"):
        out.append(("h", 2, "q_M(t) (Algorithm 1, Fig. 6)"))
        out.append(("img", tp["figure"], f"q_M(t) with M = {tp['M']}: t' = {fmt(tp['value'], 2)}, t'_α = "
                                         f"{fmt(tp['value_alpha'], 2)} (α = {tp['alpha']}, chance level "
                                         f"{fmt(tp['chance_level'])}); {tp['nfe']} network evaluations ({tp['search']} search)"
                                         + ("; q_M was not monotone in t" if tp.get("non_monotone") else "")))
        out.append(("p", f"Bound on q(p) (Eq. 9, upper Darboux sum): {fmt(tp['bound'])}; with the upper 95% limits of "
                         f"q_M: {fmt(tp['bound_ci95_upper'])}. {tp['bound_note']}."))

    ph = results.get("t_prime_posthoc")
    if ph:
        out += posthoc_blocks(ph)
    out += census_blocks(results, fmt)
    out += canary_blocks(results, fmt)
    out += whitebox_blocks(results, fmt)
    out += dp_utility_blocks(results, fmt)

    if rep:
        out.append(("h", 2, "Samples and positives"))
        grid = run / rep["samples"] / "grid.png"  # a run-relative path, or an absolute one outside the run
        if grid.exists():
            out.append(("img", run_relative(run, grid), "the first generated samples"))
        figs = rep.get("figures", {})
        for key, caption in (("q", "q-positives: samples flagged by every detector"),
                             ("error_maps", f"x_p, the q-positives, and |sample - x_p| × {rep.get('error_map_gain')}"),
                             ("c_p", "c_p-positives (a SAF)"), ("c_id", "c_id-positives (x_p's identity)")):
            if key in figs:
                out.append(("img", figs[key], caption))
        if rep.get("q_mae"):
            out.append(("p", "Mean absolute error of each q-positive to x_p (pixel range [0, 1]): "
                             + ", ".join(fmt(v, 2) for v in rep["q_mae"][:32]) + ("…" if len(rep["q_mae"]) > 32 else "")))
    if (run / "audit.json").exists():
        out.append(("h", 2, "Configuration"))
        out.append(("pre", json.dumps(read_json(run / "audit.json"), indent=1)))
    if results.get("verdict"):
        out.append(("note", results["verdict"]["definitions"]))
    return out


def roc_blocks(run: Path, roc: dict, control: dict | None = None) -> list[Block]:
    """Detector curves: AUC, TPR at 1% and 0.1% FPR, where each threshold sits, and the ROC figure; against the
    control model's samples too when they were counted."""
    figure = plot_roc(roc, run / "classifiers" / "roc.png")
    rows = []
    for negatives, curves in (("held-out real", roc), ("control samples", control or {})):
        for name in ("c_p", "c_id", "q"):
            r = curves.get(name)
            if r:
                t = r["threshold"]
                rows.append([name, negatives, fmt(r["auc"], 4), fmt(r["tpr_at_fpr_1pct"]), fmt(r["tpr_at_fpr_0.1pct"]),
                             f"{fmt(t['value'])} (FPR {fmt(t['fpr'])}, TPR {fmt(t['tpr'])})"])
    n_neg = next((roc[k]["n_negatives"] for k in ("c_p", "c_id", "q") if roc.get(k)), None)
    return [("h", 2, "Detector curves"),
            ("table", ["detector", "negatives", "AUC", "TPR at 1% FPR", "TPR at 0.1% FPR", "threshold used (its FPR, TPR)"],
             rows),
            ("p", f"Negatives: {roc.get('negatives')} ({n_neg}); positives: {roc.get('positives')}. q's score is the "
                  "smaller of the two classifiers' (q fires when both do). A TPR at an FPR below 1/(number of "
                  "negatives) cannot be measured and is shown as –."),
            ("img", str(figure.relative_to(run)), "ROC curves with a log-scale false-positive axis")]


def posthoc_blocks(ph: dict, *, shown: int = 20) -> list[Block]:
    """The post-hoc audit (``tprime --images``): training images ranked by t'_alpha and t', their q_M curves and the
    generated samples nearest to each."""
    rows = [[r["position"], r.get("index"), fmt(r["t_prime"], 2), fmt(r["t_prime_alpha"], 2), r["nfe"],
             fmt(min(r["nearest_rmse"]), 3) if r.get("nearest_rmse") else "–"] for r in ph["images"][:shown]]
    out: list[Block] = [
        ("h", 2, "Post-hoc audit of training images (reference detector, no fingerprint)"),
        ("p", f"t' and t'_α of {len(ph['images'])} training images, each with the nearest-neighbour detector calibrated "
              f"on the other training images (M = {ph['M']}, α = {ph['alpha']}, {ph.get('sampler', 'em')} sampler, "
              f"{ph.get('steps', '–')} steps), most at risk first"
              + (f"; the first {shown} are shown" if len(ph["images"]) > shown else "") + ". A large t'_α means the "
              "model returns the image from heavy noise significantly more often than chance: it is stored."),
        ("table", ["position", "image index", "t'", "t'_α", "NFE", "nearest sample (RMSE)"], rows)]
    figs = ph.get("figures", {})
    if "q_M" in figs:
        out.append(("img", figs["q_M"], f"q_M(t) of the {min(len(ph['images']), 5)} images most at risk"))
    if "nearest" in figs:
        out.append(("img", figs["nearest"], "each row: a training image most at risk, then the generated samples "
                                            f"nearest to it ({figs.get('nearest_samples')})"))
    return out


def _md(text: Any) -> str:
    """Text for Markdown with ``&``, ``<`` and ``>`` escaped: markup that came with results.json (``<script>``) is
    shown literally, never rendered. (Code blocks are shown literally already and are not escaped.)"""
    return html.escape(str(text), quote=False)


def render_md(blocks: Sequence[Block]) -> str:
    lines: list[str] = []
    for b in blocks:
        if b[0] == "h":
            lines += ["#" * b[1] + " " + _md(b[2]), ""]
        elif b[0] == "p":
            lines += [_md(b[1]), ""]
        elif b[0] == "table":
            cell = lambda v: _md(v).replace("|", "\\|")  # noqa: E731  (|q| must not end a Markdown cell)
            lines += ["| " + " | ".join(map(cell, b[1])) + " |", "|" + "---|" * len(b[1])]
            lines += ["| " + " | ".join(map(cell, r)) + " |" for r in b[2]] + [""]
        elif b[0] == "img":
            lines += [f"![{_md(b[2])}]({_md(b[1])})", f"*{_md(b[2])}*", ""]
        elif b[0] == "pre":
            lines += ["```json", b[1], "```", ""]
        elif b[0] == "verdict":
            lines += [f"> **{_md(b[2])}**", ""]
        elif b[0] == "note":
            lines += ["---", "", f"<sub>{_md(b[1])}</sub>", ""]
    return "\n".join(lines)


def _inline(text: str) -> str:
    parts = html.escape(text).split("**")
    return "".join(f"<strong>{p}</strong>" if k % 2 else p for k, p in enumerate(parts))


def render_html(blocks: Sequence[Block], base: Path) -> str:
    title = next((b[2] for b in blocks if b[0] == "h"), "diffaudit report")
    body: list[str] = []
    for b in blocks:
        if b[0] == "h":
            body.append(f"<h{b[1]}>{html.escape(b[2])}</h{b[1]}>")
        elif b[0] == "p":
            body.append(f"<p>{_inline(b[1])}</p>")
        elif b[0] == "table":
            head = "".join(f"<th>{html.escape(str(h))}</th>" for h in b[1])
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in b[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif b[0] == "img":
            path = base / b[1]
            if path.is_file():
                data = _png(path)
                body.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(b[2])}" />'
                            f"<figcaption>{html.escape(b[2])}</figcaption></figure>")
        elif b[0] == "pre":
            body.append(f"<pre>{html.escape(b[1])}</pre>")
        elif b[0] == "verdict":
            body.append(f'<p class="verdict level-{html.escape(b[1])}"><strong>{html.escape(b[2])}</strong></p>')
        elif b[0] == "note":
            body.append(f'<footer class="note">{html.escape(b[1])}</footer>')
    style = ("body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em;line-height:1.45}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:.25em .6em;text-align:right}"
             "th{background:#eee}img{max-width:100%;image-rendering:pixelated}figcaption{font-size:.9em;color:#444}"
             "pre{background:#f6f6f6;padding:1em;overflow:auto;font-size:.8em}"
             ".verdict{font-size:1.15em;padding:.6em .9em;border-left:.5em solid #888;background:#f4f4f4}"
             ".level-high{border-color:#b00020;background:#fdecee}.level-elevated{border-color:#c75b00;background:#fff3e6}"
             ".level-low{border-color:#2e7d32;background:#edf7ee}.level-inconclusive{border-color:#666}"
             ".note{font-size:.85em;color:#444;border-top:1px solid #bbb;margin-top:2em;padding-top:.5em}"
             "@media print{body{max-width:none;margin:0;font-size:10pt}pre{white-space:pre-wrap;overflow:visible}"
             "table,figure,tr,.verdict{break-inside:avoid}h1,h2{break-after:avoid}img{max-width:60%}}")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8" /><title>{html.escape(title)}</title>'
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _png(path: Path) -> str:
    """The base64 of the PNG figure ``path`` for report.html. Only a PNG image is embedded: a figure path that
    results.json names (or a link in the run directory) pointing at any other file is refused, so a report never
    carries a file that is not a figure."""
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head != PNG_SIGNATURE:
        raise DiffauditError(f"figure {path} is not a PNG image: results.json names it (edited?) or a link points "
                             "elsewhere; rerun the stage that draws it, or run 'diffaudit verify'")
    return base64.b64encode(path.read_bytes()).decode()


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _rendered(folder: Path, blocks: Sequence[Block]) -> dict[str, str]:
    return {"md": render_md(blocks), "html": render_html(blocks, folder)}


def _write_rendered(folder: Path, texts: dict[str, str]) -> dict[str, Path]:
    paths = {kind: folder / f"report.{kind}" for kind in texts}
    for kind, text in texts.items():
        with atomic_path(paths[kind]) as tmp:
            tmp.write_text(text, encoding="utf-8")
    return paths


def write_blocks(folder: Path, blocks: Sequence[Block]) -> dict[str, Path]:
    return _write_rendered(folder, _rendered(folder, blocks))


def write_report(run: str | Path) -> dict[str, Path]:
    """Add the verdict and the provenance to results.json, then write ``report.md`` and ``report.html`` into the run
    directory. Both reports are drawn before anything is written: a results.json they cannot be drawn from changes
    nothing."""
    run = Path(run)
    for name in (RESULTS, "report.md", "report.html"):
        if (run / name).exists() and not (run / name).is_file():
            raise DiffauditError(f"{run / name} is not a file (a folder?); move it away and rerun")
    results = stamp(run, write=False)
    texts = _rendered(run, blocks_for_run(run, results=results))
    write_json(run / RESULTS, results)
    return _write_rendered(run, texts)
