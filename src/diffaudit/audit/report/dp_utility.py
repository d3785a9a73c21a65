"""The report's section on what the synthetic data is worth under DP: the downstream classifier's AUROC and accuracy
in each regime at each classifier ε, with intervals over seeds, the generator's ε beside, and which regime wins."""

from __future__ import annotations

from typing import Callable


def _cell(c: dict | None, fmt: Callable[..., str]) -> str:
    if c is None:
        return "–"
    a = c["auroc"]
    ci = f" [{fmt(a['ci95'][0])}, {fmt(a['ci95'][1])}]" if a["ci95"] else ""
    return f"{fmt(a['mean'])}{ci} / {fmt(c['accuracy']['mean'])}"


def dp_utility_blocks(results: dict, fmt: Callable[..., str]) -> list[tuple]:
    u = results.get("utility_dp")
    if not u:
        return []
    keys = ["inf" if e is None else f"{e:g}" for e in u["epsilons"]]
    gen = u["generator"]
    gen_eps = (f"ε = {fmt(gen['epsilon'])} (δ = {fmt(gen['delta'])}, {gen['accountant']})" if gen.get("private")
               else gen["note"])
    rows = [[label] + [_cell(u["table"][r].get("inf"), fmt) if set(u["table"][r]) == {"inf"}
                       else _cell(u["table"][r].get(k), fmt) for k in keys]
            for r, label in u["regimes"].items()]
    return [
        ("h", 2, "What the synthetic data is worth under DP"),
        ("p", f"A label classifier ({u['classifier']}) trained in five regimes, {u['seeds']} seeds each, and tested on "
              f"the {u['n_test']} real images of the {u['test_split']} split: AUROC [95% interval over seeds] / "
              f"accuracy. Real: the {u['n_real']} training images; synthetic: {u['n_synthetic']} generated images with "
              f"their labels; real + synthetic adds {u['synthetic_per_step']} synthetic images to every step "
              f"(mix ratio {fmt(u['mix_ratio'])}). Accounting: {u['accounting']}. The generator: {gen_eps}. Rows "
              "without DP hold the same value in every column."),
        ("table", ["regime"] + [f"classifier ε = {'∞' if k == 'inf' else k}" for k in keys], rows),
        ("p", "Which regime wins: " + "; ".join(u["winners"]) + "."),
        ("img", u["figure"], "AUROC against the classifier's ε, one line per regime"),
    ]
