"""``<run>/results.json``: one file, one section per stage, updated atomically.

Top level: ``dataset``, ``n_train``, ``fingerprint`` (index, position, centre, radius, intensity, shape, width),
then a section per stage (``reproduction`` from ``count``; later stages add theirs). A stage replaces only its
own section, so rerunning one stage leaves the others intact.
"""

from __future__ import annotations

from pathlib import Path

from ..data.canaries import memorisation_n
from ..io import read_json, write_json

RESULTS = "results.json"


def update_results(run: Path, manifest: dict, *, write: bool = True, **sections: dict) -> dict:
    """results.json with ``sections`` replaced (and the run's data recorded), written unless ``write`` is False."""
    path = run / RESULTS
    results = read_json(path) if path.exists() else {}
    fp = manifest.get("fingerprint")
    results.update({
        "dataset": manifest["dataset"],
        "split": manifest["split"],
        "n_train": memorisation_n(manifest),  # N_D; with many canaries, N of the full-memorisation rate 1/N
        "image_shape": manifest["image_shape"],
        "fingerprint": None if fp is None else {k: fp[k] for k in ("index", "position", "centre", "radius",
                                                                    "intensity", "shape", "width", "placement")
                                                if k in fp},
    })
    results.update(sections)
    if write:
        write_json(path, results)
    return results
