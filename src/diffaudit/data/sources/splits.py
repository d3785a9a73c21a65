"""Train / val / test splits that keep each patient's images together.

A source whose records all carry a split (a datalist, ``train/ val/ test/`` folders, a MedMNIST file) keeps it;
then a patient found in two splits is refused, as it would leak between training and test. Otherwise the split
is drawn: the records are grouped — by patient when known, else by file, so that the slices of one volume or the
frames of one file stay together — the groups put in a seeded random order, and each group goes, in turn, to the
split furthest below its target (ratio x number of images). A split with a positive ratio left empty is refused:
too few images (or patients) to split.

The test split is for evaluation only: :func:`training_indices` returns the train split alone.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ...errors import DiffauditError
from .records import SPLITS, Source

#: the default ratios of train, val and test
RATIOS = (0.8, 0.1, 0.1)


def _check_ratios(ratios) -> tuple[float, float, float]:
    r = tuple(float(x) for x in ratios)
    if len(r) != 3 or min(r) < 0 or r[0] <= 0 or abs(sum(r) - 1) > 1e-6:
        raise DiffauditError(f"ratios {ratios!r} must be three non-negative numbers (train, val, test) summing to 1, "
                             "with train > 0; e.g. ratios=(0.8, 0.1, 0.1)")
    return r


def _group(record, by_patient: bool) -> str:
    return f"patient:{record.patient}" if by_patient and record.patient else f"file:{record.path}"


def _check_given(source: Source) -> Source:
    where: dict[str, str] = {}
    for r in source:
        if r.patient is None:
            continue
        first = where.setdefault(r.patient, r.split)
        if first != r.split:
            raise DiffauditError(f"patient {r.patient} has images in both {first} and {r.split} (e.g. {r.path}); "
                                 "put all of a patient's images in one split")
    return source


def assign_splits(source: Source, *, ratios=RATIOS, seed: int = 0, by_patient: bool = True) -> Source:
    """``source`` with a split on every record: the given ones kept (and checked), else drawn as the module
    docstring says. Deterministic in (records, ratios, seed)."""
    given = [r.split is not None for r in source]
    if all(given):
        return _check_given(source)
    if any(given):
        first = next(r for r in source if r.split is None)
        raise DiffauditError(f"{first.path} has no split while other images have one; give every image a split "
                             "or none")
    r = _check_ratios(ratios)
    groups: dict[str, list[int]] = {}
    for i, rec in enumerate(source):
        groups.setdefault(_group(rec, by_patient), []).append(i)
    keys = sorted(groups)
    order = np.random.default_rng(seed).permutation(len(keys))
    target = np.asarray(r) * len(source)
    count = np.zeros(3)
    split_of = {}
    for k in order:
        members = groups[keys[k]]
        s = int(np.argmax(target - count))  # the split furthest below its target; ties to the earlier split
        count[s] += len(members)
        for i in members:
            split_of[i] = SPLITS[s]
    empty = [SPLITS[s] for s in range(3) if r[s] > 0 and count[s] == 0]
    if empty:
        unit = "patients or files" if by_patient else "files"
        raise DiffauditError(f"too few to split: {len(source)} images in {len(keys)} {unit} leave the {empty[0]} split "
                             f"empty at ratios {r} (under {source.root}); add images, or set that split's ratio to 0 "
                             "(--split-ratios)")
    return source.with_records([dataclasses.replace(rec, split=split_of[i]) for i, rec in enumerate(source)])


def split_indices(source: Source, split: str) -> np.ndarray:
    """Indices of the records in ``split`` (in source order)."""
    if split not in SPLITS:
        raise DiffauditError(f"unknown split '{split}'; choose one of {', '.join(SPLITS)}")
    return np.asarray([i for i, r in enumerate(source) if r.split == split], dtype=np.int64)


def training_indices(source: Source) -> np.ndarray:
    """The records a model may be trained on: the train split only, never val or test."""
    return split_indices(source, "train")
