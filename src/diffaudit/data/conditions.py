"""What a conditional score model is conditioned on, from the run's manifest: the training images' conditions, x_p's,
and the table a sampling run draws its conditions from.

**Attributes.** A volume audit with ``--attributes FILE.csv`` records every volume's row of that CSV (its first
column names the scan: :func:`~diffaudit.data.volumes.patients.attributes_for`). ``--condition-on Sex,Age`` picks the
columns the model is conditioned on: a column whose values are all numbers is continuous (standardised by the mean
and standard deviation of its values in the whole CSV, so every run of the data encodes an age alike), any other
categorical (its distinct values, sorted, over the whole CSV, are the classes); ``Sex:class`` takes a numeric code
(1/2) as classes. At most one column may be categorical: it is the networks' class embedding; the continuous
ones are covariates (:mod:`diffaudit.diffusion.conditioning`). A volume without a value in a condition column is
left out, and listed in the manifest.

**Sampling modes** (``SampleConfig.condition``), each a table whose row i mod K conditions image i, so an image is
still a function of (seed, index) alone:

* ``classes``: every class in turn (i mod C), what a class-conditional model has always drawn;
* ``training``: the training set's conditions, row i mod N_D: the attributes of the training set, as often as they
  occur in it. Under full memorisation a sample drawn with training image j's conditions is one of the N_match images
  that share them, so x_p comes back with probability sum_j (1/N_D)(1/N_match) over x_p's N_match = 1/N_D: the
  count's null hypothesis holds as for an unconditional model (with ``classes`` it would be 1/(C N_class), not 1/N_D);
* ``x_p``: x_p's own conditions: what an attacker who knows the patient's attributes samples;
* ``auto``: ``classes`` for a model with classes only, ``training`` for one with covariates.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from ..config import ModelConfig, SampleConfig
from ..errors import DiffauditError

SAMPLING_MODES = SampleConfig.CONDITIONS


def _number(value: str) -> float | None:
    try:
        v = float(value)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def encoding(table: dict[str, dict[str, str]], columns: Sequence[str], *, path: str = "the attributes file") -> list[dict]:
    """How each condition column is encoded (module docstring): categorical with its classes, or continuous with the
    mean and standard deviation of its values in the whole CSV (so every run of the data, either half of the
    patients included, encodes an age alike); the categorical column first."""
    known = set(next(iter(table.values()), {}))
    out = []
    for spec in columns:
        col, forced = column_of(spec), spec.endswith(CLASS_SUFFIX)
        if col not in known:
            raise DiffauditError(f"--condition-on {col}: {path} has no such column; it has {', '.join(sorted(known))}")
        values = [row[col] for row in table.values() if row.get(col, "") != ""]
        if not forced and values and all(_number(v) is not None for v in values):
            numbers = np.array([float(v) for v in values], dtype=np.float64)
            std = float(numbers.std()) if len(numbers) > 1 else 0.0
            out.append({"name": col, "kind": "continuous", "mean": float(numbers.mean()), "std": std if std > 0 else 1.0})
        else:
            out.append({"name": col, "kind": "categorical", "classes": sorted(set(values))})
    categorical = [e["name"] for e in out if e["kind"] == "categorical"]
    if len(categorical) > 1:
        raise DiffauditError(f"--condition-on names {len(categorical)} categorical columns ({', '.join(categorical)}); a "
                             "model takes one (its class embedding) and any number of numeric ones")
    return sorted(out, key=lambda e: e["kind"] != "categorical")


CLASS_SUFFIX = ":class"  # --condition-on Sex:class: a numeric code (1/2) taken as classes, not as a number


def column_of(spec: str) -> str:
    """The CSV column a ``--condition-on`` entry names (``Sex:class`` -> ``Sex``)."""
    return spec[: -len(CLASS_SUFFIX)] if spec.endswith(CLASS_SUFFIX) else spec


def encode(attributes: dict[str, str | float], encoded: Sequence[dict]) -> list[float]:
    """One condition row: the class index of the categorical column, then each continuous column standardised."""
    row = []
    for e in encoded:
        value = attributes[e["name"]]
        if e["kind"] == "categorical":
            row.append(float(e["classes"].index(str(value))))
        else:
            row.append((float(value) - e["mean"]) / e["std"])
    return row


def conditioned_model(cfg: ModelConfig, manifest: dict) -> ModelConfig:
    """``cfg`` with the classes and covariates the run's ``--condition-on`` columns give (``cfg`` as it is when the run
    is not conditioned on attributes)."""
    encoded = attribute_encoding(manifest)
    if encoded is None:
        return cfg
    classes = sum(len(e["classes"]) for e in encoded if e["kind"] == "categorical")
    covariates = sum(e["kind"] == "continuous" for e in encoded)
    if cfg.num_classes not in (0, classes):
        raise DiffauditError(f"the model has {cfg.num_classes} classes but the run is conditioned on "
                             f"{', '.join(e['name'] for e in encoded)} ({classes} classes); leave --class-conditional out")
    return dataclasses.replace(cfg, num_classes=classes, covariates=covariates)


def attribute_encoding(manifest: dict) -> list[dict] | None:
    """The encoding of the run's condition columns, or None for a run not conditioned on attributes."""
    attrs = (manifest.get("source") or {}).get("attributes") or {}
    return attrs.get("encoding") or None


def _train_files(manifest: dict) -> list[dict]:
    return [f for f in manifest["source"]["files"] if f["split"] == manifest["split"]]


def training_conditions(manifest: dict, labels=None) -> np.ndarray | None:
    """The conditions of D_p in training order (x_p has x_i's): float [N_D, W] for a run conditioned on attributes;
    else ``labels()`` (a callable giving the class labels, int64 [N_D]) when given; else None."""
    encoded = attribute_encoding(manifest)
    if encoded is None:
        return None if labels is None else np.asarray(labels())
    files = _train_files(manifest)
    return _as_rows([encode(files[i]["attributes"], encoded) for i in manifest["indices"]], encoded)


def _as_rows(rows: list[list[float]], encoded: Sequence[dict]) -> np.ndarray:
    """Condition rows as the model takes them: float32 [N, W] with a continuous column, else the class as int64 [N]
    (a model of one categorical attribute is a class-conditional model)."""
    if any(e["kind"] == "continuous" for e in encoded):
        return np.array(rows, dtype=np.float32).reshape(len(rows), -1)
    return np.array([r[0] for r in rows], dtype=np.int64)


def heldout_conditions(manifest: dict, split: str, labels=None) -> np.ndarray | None:
    """The conditions of the held-out images of ``split``, in its order (as :func:`training_conditions`)."""
    encoded = attribute_encoding(manifest)
    if encoded is None:
        return None if labels is None else np.asarray(labels())
    return _as_rows([encode(f["attributes"], encoded) for f in manifest["source"]["files"] if f["split"] == split],
                    encoded)


def raw_attributes(manifest: dict, position: int) -> dict | None:
    """The attributes the model is conditioned on of D_p's image at ``position`` (x_p: x_i's), and only those: the
    CSV's other columns stay out of results.json and the report. None when the run is not conditioned on attributes."""
    encoded = attribute_encoding(manifest)
    if encoded is None:
        return None
    row = _train_files(manifest)[manifest["indices"][position]].get("attributes") or {}
    return {e["name"]: row.get(e["name"]) for e in encoded}


def condition_table(manifest: dict, num_classes: int, covariates: int, mode: str,
                    labels=None) -> tuple[np.ndarray | None, dict]:
    """(the table a sampling run draws image i's condition from, row i mod K; what ``config.json`` records of it) for
    a model of ``num_classes`` classes and ``covariates`` continuous attributes on the run of ``manifest``; (None, {})
    for an unconditional model. ``labels()`` gives the training images' class labels (for a model of classes only)."""
    if mode not in SAMPLING_MODES:
        raise DiffauditError(f"unknown condition mode '{mode}'; choose one of {', '.join(SAMPLING_MODES)}")
    if not num_classes and not covariates:
        if mode not in ("auto", "classes"):
            raise DiffauditError(f"--condition {mode}: the model is unconditional; it has nothing to condition on")
        return None, {}
    if mode == "auto":
        mode = "training" if covariates else "classes"
    if mode == "classes":
        if covariates:
            raise DiffauditError("--condition classes draws every class in turn; a model with continuous attributes "
                                 "samples with the training set's (training) or x_p's (x_p)")
        return np.arange(num_classes, dtype=np.int64), {"labels": f"index mod {num_classes}"}
    rows = training_conditions(manifest, labels)
    if rows is None:
        raise DiffauditError("the run records no class labels or attributes of its training images")
    if mode == "x_p":
        if not manifest.get("fingerprint"):
            raise DiffauditError("--condition x_p: this run has no x_p (it was prepared without a fingerprint)")
        rows = rows[manifest["fingerprint"]["position"]:][:1]
    digest = hashlib.sha256(np.ascontiguousarray(rows).tobytes()).hexdigest()
    return rows, {"conditions": {"mode": mode, "rows": len(rows), "sha256": digest}}


def matching(rows: np.ndarray, row: np.ndarray) -> int:
    """How many of the training conditions ``rows`` equal ``row``: the images full memorisation chooses among when
    sampling with ``row``."""
    rows = np.asarray(rows).reshape(len(rows), -1)
    return int((rows == np.asarray(row).reshape(1, -1)).all(axis=1).sum())


def attributes_path(spec: str, root: Path) -> Path:
    """The attributes CSV ``spec`` names: a path, or a file name inside the data folder ``root``."""
    path = Path(spec).expanduser()
    if not path.is_absolute() and not path.exists():
        path = root / spec
    if not path.is_file():
        raise DiffauditError(f"--attributes {spec}: no such file (looked in the current folder and in {root}); give "
                             "the CSV of the scans' attributes, e.g. IXI_Demog_n181.csv")
    return path.resolve()
