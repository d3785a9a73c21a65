"""The report's many-canary section: the candidates' detector, the reproductions by duplication count with the
trend test, and the one-run lower bound on ε beside the accountant's ε of a DP-trained model."""

from __future__ import annotations

from typing import Callable


def canary_blocks(results: dict, fmt: Callable[..., str]) -> list[tuple]:
    c = results.get("canaries")
    if not c:
        return []
    det, dose, eps = c["detector"], c["dose_response"], c["epsilon"]
    flo, fhi = det["false_positive_rate_ci95"]
    out: list[tuple] = [
        ("h", 2, f"Many canaries: {c['m']} candidates, {c['n_included']} included"),
        ("p", f"Each of the {c['m']} candidates (a real image with its own SAF) was included in training with "
              f"probability {fmt(c['inclusion'])}, and an included one {', '.join(map(str, c['duplicates']))} times "
              f"(drawn per candidate). Every candidate is scored by its count among the {c['n_samples']} samples "
              f"({det['kind']}: recall at least {fmt(det['recall_min'])} on each candidate's "
              f"{det['copies_per_candidate']} shifted copies; {det['false_positives']} false positives in "
              f"{det['n_heldout']} held-out images × {c['m']} candidates, rate {fmt(det['false_positive_rate'])} "
              f"[{fmt(flo)}, {fmt(fhi)}]). {c['reproduced']} included candidates were reproduced at least once; "
              f"{c['excluded_flagged']} left-out candidates were flagged."
              + (" The classifier missed its criterion at its cap (threshold "
                 f"{fmt(det['threshold'])}, after {det['rounds']} rounds): read its counts with that shortfall."
                 if det.get("criterion_met") is False else "")),
        ("table", ["copies d", "candidates", "reproduced (≥ 1 sample)", "samples", "rate per sample", "95% interval"],
         [[0 if r is dose.get("excluded") else r["d"], r["candidates"], r["reproduced"], r["samples"], fmt(r["rate"]),
           f"[{fmt(r['rate_ci95'][0])}, {fmt(r['rate_ci95'][1])}]"]
          for r in ([dose["excluded"]] if dose.get("excluded", {}).get("candidates") else []) + dose["by_d"]]),
    ]
    t = dose.get("trend")
    if t and (t.get("slope") is None or t.get("separated")):  # no finite slope (results.json before this read gave
        # the fit's last iterate): only its direction and the likelihood-ratio test
        rises = t.get("direction", 1 if (t.get("slope") or 0) >= 0 else -1) > 0
        slope = (f"the rate {'rises' if rises else 'falls'} with d and the slope has no finite "
                 "estimate (the rates of some d are 0 or 1: separation), so no interval or odds ratio")
    elif t:
        slope = (f"slope {fmt(t['slope'])} per doubling of d, 95% [{fmt(t['slope_ci95'][0])}, "
                 f"{fmt(t['slope_ci95'][1])}], odds ratio {fmt(t['odds_ratio_per_doubling'])}")
    out.append(("p", (f"Trend ({t['model']}): {slope}; likelihood-ratio p = {fmt(t['p_value'])} (dispersion "
                      f"{fmt(t['dispersion'])}). d = 0 is the left-out candidates, shown for reference.")
                     if t else f"Trend: {dose.get('trend_note', 'not tested')}."))
    out.append(("img", c["figures"]["dose"], "reproductions per sample by the number of copies in D_p"))
    accountant = eps.get("accountant")
    beside = (" The accountant's ε for this DP-trained model: "
              + ", ".join(f"{name} {fmt(v)}" for name, v in accountant["epsilon"].items())
              + f" at δ = {fmt(accountant['delta'])}; ε_lower at or below it is what a correct DP training allows."
              if accountant else "")
    if eps["epsilon_lower"] is None:
        return out + [("p", f"ε lower bound: none. {eps['note']}.")]
    out += [
        ("table", ["ε lower bound", "confidence", "δ", "guesses r (k+, k-)", "right", "candidates counted",
                   "grid (Bonferroni)"],
         [[fmt(eps["epsilon_lower"]), fmt(eps["confidence"]), fmt(eps["delta"]),
           f"{eps['guesses']} ({eps['k_plus']}, {eps['k_minus']})", eps["correct"], eps["candidates"],
           eps["grid_size"]]]),
        ("p", "The one-run audit of Steinke, Nasr & Jagielski (2023): guess 'in' for the k+ highest counts and 'out' "
              f"for the k- lowest; the bound is the largest ε whose binomial tail still explains the right guesses. "
              f"Score: {eps['score']}. {eps['group_note']}{beside}"),
        ("img", c["figures"]["epsilon"], "ε lower bound against the number of guesses"),
    ]
    return out


def whitebox_blocks(results: dict, fmt: Callable[..., str]) -> list[tuple]:
    w = results.get("canaries_whitebox")
    if not w:
        return []
    s, eps, cost = w["score"], w["epsilon"], w["cost"]
    count = cost.get("count") or {}
    versus = (f", against {count['nfe']} for the count's {count['n_samples']} samples" if count.get("nfe") else "")
    out: list[tuple] = [
        ("h", 3, f"White box: q_M({fmt(s['t'])}) of every candidate"),
        ("p", f"Each of the {w['m']} candidates was perturbed to t = {fmt(s['t'])} and run back {s['M']} times "
              f"({s['sampler']}, {s['steps']} steps over the whole interval); its score is the share of runs its own "
              f"reference detector flags. {cost['whitebox_nfe']} network evaluations in all{versus}."),
    ]
    if eps["epsilon_lower"] is None:
        out.append(("p", f"ε lower bound from this score: none. {eps['note']}."))
    else:
        out.append(("table", ["ε lower bound (white box)", "confidence", "δ", "guesses r (k+, k-)", "right",
                              "candidates counted"],
                    [[fmt(eps["epsilon_lower"]), fmt(eps["confidence"]), fmt(eps["delta"]),
                      f"{eps['guesses']} ({eps['k_plus']}, {eps['k_minus']})", eps["correct"], eps["candidates"]]]))
    tp = w.get("tprime")
    if tp:
        out += [
            ("p", f"t' of {tp['subset']} (M = {tp['M']}, level α = {fmt(tp['alpha'])}; chance level: "
                  f"{tp['chance_level']})."),
            ("table", ["candidate", "included", "copies d", "t'", "t'_α", "network evaluations"],
             [[r["candidate"], "yes" if r["included"] else "no", r["duplicates"] if r["included"] else 0,
               fmt(r["t_prime"]), fmt(r["t_prime_alpha"]), r["nfe"]] for r in tp["candidates"]]),
        ]
        if w.get("figures", {}).get("q_M"):
            out.append(("img", w["figures"]["q_M"], "q_M(t) of the candidates (at most eight shown)"))
    return out
