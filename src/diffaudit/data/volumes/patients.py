"""Whose volume is which, their attributes, and splits that keep a patient's volumes together.

A volume's patient comes from its file name by a pattern with one group (``patient_pattern``; IXI's
``IXI012-HH-1211_T1.nii.gz`` is patient ``IXI012`` by :data:`IXI_PATIENT`), so that the splits, drawn as for 2D
images (:func:`diffaudit.data.sources.splits.assign_splits`: seeded, by patient, each patient in one split), never put
one person on both sides of train and test. A file the pattern does not match is refused by name: a volume of no known
patient could be that of any other.

The attributes a model may be conditioned on (IXI: age in years and sex, ``IXI_Demog_n181.csv`` with columns
``MRID,Age,Sex``) are read from a CSV keyed by the scan's ID (the file name up to ``_``); volumes without a row are
listed, not guessed.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Sequence

from ...errors import DiffauditError
from ..sources.records import Record, Source, SourceOptions
from ..sources.splits import RATIOS, assign_splits

IXI_PATIENT = r"^(IXI\d{3})"
KIND = "nifti-volume"


def patients_of(names: Sequence[str], pattern: str) -> list[str]:
    """The patient of each file name by ``pattern`` (a regular expression with one group, searched in the name)."""
    try:
        rx = re.compile(pattern)
    except re.error as err:
        raise DiffauditError(f"--patient-pattern {pattern!r} is not a regular expression ({err})") from None
    if rx.groups != 1:
        raise DiffauditError(f"--patient-pattern {pattern!r} needs exactly one group, the patient ID, e.g. '^(IXI\\d{{3}})'")
    out = []
    for name in names:
        m = rx.search(Path(name).name)
        if not m or not m.group(1):
            raise DiffauditError(f"{name}: --patient-pattern {pattern!r} finds no patient ID in the name; fix the "
                                 "pattern or rename the file")
        out.append(m.group(1))
    return out


def split_volumes(root: str | Path, names: Sequence[str], *, patients: Sequence[str] | None = None,
                  ratios=RATIOS, seed: int = 0) -> list[str]:
    """The split (train, val or test) of each volume file ``names`` (relative to ``root``), drawn by patient when
    ``patients`` are given, else by file: the draw of 2D sources, which depends on the names and patients only."""
    if patients is not None and len(patients) != len(names):
        raise DiffauditError(f"{len(patients)} patients for {len(names)} volumes; give one per volume")
    records = tuple(Record(path=name, sha256="", kind=KIND, shape=(), patient=None if patients is None else patients[i])
                    for i, name in enumerate(names))
    source = Source(root=Path(root), kind=KIND, records=records, options=SourceOptions())
    return [r.split for r in assign_splits(source, ratios=ratios, seed=seed, by_patient=patients is not None)]


HALF_SEED = "diffaudit-half-1"  # the patients' draw into halves: fixed, so every run of the data agrees on them


def public_patient(patient: str) -> bool:
    """Whether ``patient`` is in the public half: the parity of the SHA-256 of the seed and the ID alone, so no
    other patient, no added volume and no choice of columns moves anyone across."""
    import hashlib

    return hashlib.sha256(f"{HALF_SEED}:{patient}".encode()).digest()[0] % 2 == 0


def patient_half(names: Sequence[str], patients: Sequence[str] | None, half: str) -> list[int]:
    """The positions of the volumes whose patient (else file name) lies in ``half`` ("public" or "private"): each ID
    drawn by :func:`public_patient`, about half of them public. A patient's volumes stay on one side, so a public
    pretraining and a private audit of the same data never share a person."""
    who = list(patients) if patients is not None else list(names)
    keep = [k for k, p in enumerate(who) if public_patient(p) == (half == "public")]
    if not keep:
        raise DiffauditError(f"the {half} half of the {len(set(who))} patients is empty; --half needs more patients")
    return keep


def read_attributes(path: str | Path, *, key: str | None = None) -> dict[str, dict[str, str]]:
    """The rows of an attributes CSV by their ``key`` column (default: the first; IXI: ``MRID,Age,Sex``); a repeated
    key is refused."""
    path = Path(path)
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = list(reader.fieldnames or [])
    except OSError as err:
        raise DiffauditError(f"cannot read the attributes file {path} ({err.strerror})") from None
    except (csv.Error, UnicodeDecodeError) as err:
        raise DiffauditError(f"{path} is not a CSV file ({err}); give a CSV whose first column names the scan") from None
    key = key or (columns[0] if columns else "")
    if not rows or not key or key not in columns:
        raise DiffauditError(f"{path} has no '{key or 'ID'}' column or no rows; its first line must name the columns, "
                             "e.g. MRID,Age,Sex, and each further line describe one scan")
    table: dict[str, dict[str, str]] = {}
    for n, row in enumerate(rows, 2):
        k = (row.get(key) or "").strip()
        if k in table:
            raise DiffauditError(f"{path}, line {n}: {key} {k} appears twice; keep one row per scan")
        table[k] = {c: (v or "").strip() for c, v in row.items() if c != key and c is not None}
    return table


def attributes_for(names: Sequence[str], table: dict[str, dict[str, str]],
                   patients: Sequence[str] | None = None) -> tuple[list[dict[str, str] | None], list[str]]:
    """(each volume's attributes, or None; the names without a row): a volume's row is the one whose key is its file
    name up to the first ``_`` (IXI012-HH-1211_T1.nii.gz -> IXI012-HH-1211), else its file name without extension,
    else its patient (``patients``, one per name)."""
    found, missing = [], []
    for i, name in enumerate(names):
        base = Path(name).name
        keys = (base.split("_")[0], base.split(".")[0], patients[i] if patients is not None else None)
        row = next((table[k] for k in keys if k is not None and k in table), None)
        found.append(row)
        if row is None:
            missing.append(name)
    return found, missing
