"""The report's census section: the share of samples that copy a training image, the training images, groups and
patients they copy, the threshold and what it promises on held-out images, the gallery of the closest pairs, and the
most-copied training images beside their post-hoc t' where it was computed."""

from __future__ import annotations

from typing import Callable

RANKED = 10  # copied training images listed


def _twins(cal: dict, fmt: Callable[..., str]) -> str:
    """The sentence on held-out images left out as duplicates of training images across the splits, if any."""
    twins = cal.get("split_duplicates") or {}
    found = [(name, t) for name, t in twins.items() if isinstance(t, dict) and t.get("n")]
    if not found:
        return ""
    parts = ", ".join(f"{t['n']} of the {name} split (distances {', '.join(fmt(v) for v in t['distances'][:5])})"
                      for name, t in found)
    with_them = twins.get("test_with_them") or {}
    kept = (f" With them kept, the test split's rate would be {with_them['test_false_positives']}/{with_them['n_test']}."
            if with_them else "")
    return f" Left out as duplicates of training images across the splits: {parts}; {twins['rule']}.{kept}"


def census_blocks(results: dict, fmt: Callable[..., str]) -> list[tuple]:
    c = results.get("census")
    if not c:
        return []
    cal, lo, hi = c["calibration"], *c["share_ci95"]
    tlo, thi = cal["test_rate_ci95"]
    out: list[tuple] = [
        ("h", 2, "Census: the training images the model gives back"),
        ("table", ["space", "N", "copies", "share", "95% interval", "training images copied", "groups", "patients",
                   "threshold", "false positives, held-out (test)"],
         [[c["space"]["space"], c["n_samples"], c["copies"], fmt(c["share"]), f"[{fmt(lo)}, {fmt(hi)}]",
           f"{c['n_copied']} of {c['n_train']}", f"{c['n_copied_groups']} of {c['n_groups']}", c["n_copied_patients"],
           fmt(c["threshold"]), f"{cal['test_false_positives']}/{cal['n_test']} ({fmt(cal['test_rate'])}, 95% "
                                f"[{fmt(tlo)}, {fmt(thi)}])"]]),
        ("p", f"Each sample is matched to its nearest training image ({c['space']['note'] if 'note' in c['space'] else c['space'].get('kind', c['space']['space'])}); "
              f"it is a copy when closer than the threshold, fitted so that at most {fmt(cal['fpr_target'])} of the "
              f"{cal['n_eval']} held-out images of the {cal['eval_split']} split are flagged and checked on the "
              f"{cal['n_test']} of the {cal['test_split']} split. Groups: training images closer than the threshold "
              "to each other, or of one patient, count once."
              + (f" {cal['note']}." if cal.get("note") else "") + _twins(cal, fmt)),
    ]
    if c.get("gallery"):
        out.append(("img", c["gallery"], "the closest pairs: sample, its nearest training image, their difference"))
    posthoc = {r["position"]: r for r in (results.get("t_prime_posthoc") or {}).get("images", [])}
    ranked = sorted(c["copied"], key=lambda r: -r["samples"])[:RANKED]
    if ranked:
        out.append(("table", ["training image (position)", "dataset index", "patient", "samples copying it", "t'"],
                    [[r["position"], r["index"], r["patient"] or "–", r["samples"],
                      fmt(posthoc[r["position"]]["t_prime"], 2) if r["position"] in posthoc else "–"]
                     for r in ranked]))
    if c.get("x_p"):
        x = c["x_p"]
        out.append(("p", f"x_p (position {x['position']}) is {'among' if x['copied'] else 'not among'} the copied "
                         f"images ({x['samples']} samples)."))
    return out
