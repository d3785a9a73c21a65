"""The reproduction count (Sec. 5.3, Table 1; the error maps of App. D, Fig. 10).

N generated images are streamed shard by shard (constant memory for any N) through the detectors; an image is
a reproduction of x_p, q-positive, when every detector flags it (q := c_p+ ∩ c_id+ with the two classifiers).
The count keeps every positive's index, the first few positive images of each detector for the grids, and
for each q-positive its mean absolute and squared error against x_p.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
from tqdm.auto import tqdm

from ...adversary.detectors import Detector, call_detector
from ...errors import DiffauditError
from ...images import save_grid
from .stats import reproduction_test

#: error maps show |x - x_p| multiplied by this gain (an error of 64/255 is drawn white)
ERROR_MAP_GAIN = 4


@dataclass
class Count:
    n: int = 0
    positives: dict[str, list[int]] = field(default_factory=dict)  # detector name -> image indices
    q: list[int] = field(default_factory=list)
    kept: dict[str, list[np.ndarray]] = field(default_factory=dict)  # detector name or "q" -> first images
    q_mae: list[float] = field(default_factory=list)  # in [0, 1] pixel units
    q_mse: list[float] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {**{name: len(idx) for name, idx in self.positives.items()}, "q": len(self.q)}


def count_reproductions(batches: Iterable[tuple[np.ndarray, np.ndarray]], detectors: Mapping[str, Detector], *,
                        target: np.ndarray | None = None, keep: int = 64, progress: bool = False,
                        total: int | None = None) -> Count:
    """Run ``detectors`` over (indices, uint8 images) batches; q = all detectors positive.

    ``target`` (x_p, uint8 [C, H, W]) adds each q-positive's MAE and MSE against it."""
    if not detectors:
        raise DiffauditError("counting needs at least one detector")
    out = Count(positives={name: [] for name in detectors}, kept={name: [] for name in [*detectors, "q"]})
    bar = tqdm(total=total, disable=not progress, desc="count", unit="img", dynamic_ncols=True)
    for indices, images in batches:
        if len(images) == 0:
            continue
        flags = {name: call_detector(det, images, name) for name, det in detectors.items()}
        q = np.logical_and.reduce(list(flags.values()))
        for name, f in [*flags.items(), ("q", q)]:
            room = keep - len(out.kept[name])
            if room > 0:
                out.kept[name].extend(images[f][:room])
            if name != "q":
                out.positives[name].extend(int(i) for i in indices[f])
        out.q.extend(int(i) for i in indices[q])
        if target is not None and q.any():
            diff = images[q].astype(np.float64) / 255.0 - target.astype(np.float64)[None] / 255.0
            out.q_mae.extend(np.abs(diff).reshape(len(diff), -1).mean(1).tolist())
            out.q_mse.extend((diff**2).reshape(len(diff), -1).mean(1).tolist())
        out.n += len(images)
        bar.update(len(images))
    bar.close()
    if out.n == 0:
        raise DiffauditError("there are no generated images to count (N = 0); sample first")
    return out


def error_maps(images: np.ndarray, target: np.ndarray) -> np.ndarray:
    """|x - x_p| * ERROR_MAP_GAIN as uint8 images [N, C, H, W]."""
    diff = np.abs(images.astype(np.int16) - target.astype(np.int16)[None]) * ERROR_MAP_GAIN
    return np.clip(diff, 0, 255).astype(np.uint8)


def save_figures(folder: Path, count: Count, target: np.ndarray | None) -> dict[str, str]:
    """Grids of each detector's positives and, for q-positives, x_p / sample / error-map rows (Fig. 10)."""
    written = {}
    for name, images in count.kept.items():
        if images:
            written[name] = save_grid(folder / f"positives_{name}.png", np.stack(images)).name
    if target is not None and count.kept["q"]:
        q = np.stack(count.kept["q"][:16])
        rows = np.concatenate([np.repeat(target[None], len(q), 0), q, error_maps(q, target)])
        written["error_maps"] = save_grid(folder / "error_maps_q.png", rows, ncol=len(q), scale=4).name
    return written


def reproduction_section(count: Count, n_train: int, *, detectors: Mapping[str, dict], rates: dict,
                         samples: str, figures: Mapping[str, str]) -> dict:
    """The ``reproduction`` section of results.json."""
    test = reproduction_test(len(count.q), count.n, n_train)
    counts = count.counts()
    return {
        "n_samples": count.n,
        "samples": samples,
        "c_p": counts.get("c_p"),
        "c_id": counts.get("c_id"),
        "q": counts["q"],
        "expected_q": test["expected_q"],
        "p_value": test["p_value"],
        "rate": test["rate"],
        "rate_ci95": test["rate_ci95"],
        "rate_upper95": test["rate_upper95"],
        "positives": {**count.positives, "q": count.q},
        "q_mae": count.q_mae,
        "q_mse": count.q_mse,
        "detectors": dict(detectors),
        **rates,
        "figures": dict(figures),
        "error_map_gain": ERROR_MAP_GAIN,
    }
