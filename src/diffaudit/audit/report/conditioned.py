"""The report's side-by-side count of a conditional model: x_p's reproductions among samples drawn with the training
set's classes or attributes (``reproduction``) and among samples drawn with x_p's own (``reproduction_x_p``), each
against full memorisation among the training images that share the conditions sampled with."""

from __future__ import annotations

from typing import Any, Callable

MODES = {"training": "the training set's", "classes": "every class in turn", "x_p": "x_p's own"}


def conditioned_blocks(results: dict, fmt: Callable[..., str]) -> list[tuple]:
    """Report blocks (``("h", ...)``, ``("table", ...)``, ``("p", ...)``) comparing the two counts; none for a run
    without the second count."""
    rep, own = results.get("reproduction"), results.get("reproduction_x_p")
    if not rep or not own:
        return []
    rows = []
    for r in (rep, own):
        mode = (r.get("conditions") or {}).get("mode", "training")
        matching = (r.get("conditions") or {}).get("matching", results["n_train"])
        lo, hi = r["rate_ci95"]
        rows.append([MODES.get(mode, mode), matching, r["n_samples"], r["q"], fmt(r["expected_q"]), fmt(r["p_value"]),
                     fmt(r["rate"]), f"[{fmt(lo)}, {fmt(hi)}]"])
    attrs = (own.get("conditions") or {}).get("x_p") or {}
    shown = ", ".join(f"{k} {_value(v, fmt)}" for k, v in attrs.items())
    return [
        ("h", 3, "Sampling with x_p's own attributes"),
        ("table", ["conditions sampled with", "N_match", "N", "|q|", "E|q|", "p-value", "rate", "95% interval"], rows),
        ("p", f"The model is conditioned on the patient's attributes, so an attacker who knows x_p's ({shown}) samples "
              "with them. N_match: the training images full memorisation chooses among when sampling with those "
              "conditions (all N_D for the training set's; those sharing x_p's for its own, x_p among them); E|q| = "
              "N / N_match; H0: p = 1/N_match, exact one-sided binomial test. A rate well above the first row's says "
              "that knowing the attributes brings the attacker closer to x_p."),
    ]


def _value(v: Any, fmt: Callable[..., str]) -> str:
    return fmt(v) if isinstance(v, float) else str(v)
