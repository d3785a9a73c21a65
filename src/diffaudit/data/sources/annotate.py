"""What the layout of a folder, or a table beside it, says of its images: split, class label and patient.

- Split folders: when the top-level folders of the files are ``train/``, ``val/`` (or ``validation/``) and
  ``test/``, each file's split is its top folder; a file outside them is then refused.
- Class folders: when every image lies exactly one folder below the root (or below its split folder), that
  folder's name is its class.
- A table ``file,label[,patient]`` (CSV with a header; ``labels.csv`` at the root is found by itself) names
  every image once; an image without a row, a row without an image and a file named twice are refused.

Labels that are all integers are kept as such; otherwise the sorted distinct names become classes 0, 1, ...
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterable, Sequence

from ...errors import DiffauditError
from .files import normalise
from .records import split_name

LABELS_FILE = "labels.csv"


def split_folders(files: Sequence[str]) -> dict[str, str] | None:
    """file -> split when the files' top folders are split names, else None."""
    tops = {f.split("/", 1)[0] for f in files if "/" in f}
    if not tops or not all(split_name(t) for t in tops):
        return None
    outside = [f for f in files if "/" not in f]
    if outside:
        raise DiffauditError(f"{outside[0]} lies outside the split folders {', '.join(sorted(tops))}/ of the data root; "
                             "move it into one of them")
    return {f: split_name(f.split("/", 1)[0]) for f in files}


def class_folders(files: Sequence[str], *, under_split: bool) -> dict[str, str] | None:
    """file -> class name when every file lies one folder below the root (or its split folder), else None."""
    depth = 2 if under_split else 1
    parts = [f.split("/") for f in files]
    if not parts or any(len(p) != depth + 1 for p in parts):
        return None
    return {f: p[depth - 1] for f, p in zip(files, parts)}


def encode_labels(values: Iterable[object]) -> tuple[list[int | None], tuple[str, ...] | None]:
    """(integer labels, class names or None): integers stay, names become their index among the sorted names.

    >>> encode_labels(["3", "1"]), encode_labels(["tumour", "normal", "tumour"])
    (([3, 1], None), ([1, 0, 1], ('normal', 'tumour')))
    """
    values = list(values)
    texts = [None if v is None else str(v).strip() for v in values]
    try:
        return [None if t is None else int(t) for t in texts], None
    except ValueError:
        classes = tuple(sorted({t for t in texts if t is not None}))
        index = {c: i for i, c in enumerate(classes)}
        return [None if t is None else index[t] for t in texts], classes


def read_table(path: Path, *, root: Path, required: tuple[str, ...], optional: tuple[str, ...]) -> dict[str, dict]:
    """Rows of the CSV ``path`` keyed by their file (relative to ``root``), columns lower-cased; a file named
    twice, a missing or unknown column, or an empty cell of a required column is refused."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DiffauditError(f"{path} is not a readable CSV text file ({err}); fix or replace it") from None
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        raise DiffauditError(f"{path} is empty; it needs a header ({','.join(required + optional)}) and a row per image")
    header = [h.strip().lower() for h in rows[0]]
    known = required + optional
    unknown = [h for h in header if h not in known]
    missing = [h for h in required if h not in header]
    if unknown or missing:
        what = f"the unknown column '{unknown[0]}'" if unknown else f"no column '{missing[0]}'"
        raise DiffauditError(f"{path} has {what}; its header must name the columns {', '.join(required)}"
                             f"{' and optionally ' + ', '.join(optional) if optional else ''}")
    table, first_row = {}, {}
    for n, row in enumerate(rows[1:], start=2):
        cells = {h: (row[i].strip() if i < len(row) else "") for i, h in enumerate(header)}
        for h in required:
            if not cells[h]:
                raise DiffauditError(f"{path} row {n} has no '{h}'; fill it in or remove the row")
        name = normalise(root, cells["file"], where=f"{path} row {n}")
        if name in table:
            raise DiffauditError(f"{path} names {name} twice (rows {first_row[name]} and {n}); keep one row per file")
        table[name], first_row[name] = cells, n
    return table


def match_table(table: dict[str, dict], files: Sequence[str], *, path: Path, skipped: Sequence[str] = ()) -> None:
    """Refuse a table that misses an image or names a file that is not one (a skipped file may keep its row)."""
    lacking = [f for f in files if f not in table]
    if lacking:
        raise DiffauditError(f"{lacking[0]} has no row in {path} ({len(lacking)} images lack one); add a row for each "
                             "image or remove the images")
    present = set(files) | set(skipped)
    extra = [f for f in table if f not in present]
    if extra:
        raise DiffauditError(f"{path} names {extra[0]}, which is not an image under the data root ({len(extra)} such "
                             "rows); remove those rows or add the files")
