"""Datalists: a file that names every image, its split and optionally its label and patient.

Two forms, with file names relative to the datalist's folder (the data root):

- JSON in MONAI's Decathlon style, ``{"training": [{"image": "a.png", "label": 1, "patient": "p7"}],
  "validation": [...], "test": [...]}``; an entry may also be just the file name (as Decathlon test lists are).
  A ``label`` that names a file (a segmentation mask) is not a class and is left out, with a note.
- CSV with a header ``file,split[,label][,patient]``.

Each file is read by the reader its name implies (images, ``.dcm`` or extensionless DICOM, NIfTI). A file named
twice — in one split or in two — is refused: it would otherwise be trained on and tested on at once.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import DiffauditError
from ...io import read_json
from .annotate import encode_labels, read_table
from .dicom import EXTENSIONS as DICOM_EXTENSIONS
from .files import normalise
from .images import EXTENSIONS as IMAGE_EXTENSIONS
from .nifti import EXTENSIONS as NIFTI_EXTENSIONS
from .records import SourceOptions, Source, split_name
from .scan import Entry, scan


def kind_of(name: str) -> str:
    """The reader a file name implies: ``folder`` (images), ``nifti``, or ``dicom`` (also for no extension)."""
    low = name.lower()
    if low.endswith(IMAGE_EXTENSIONS):
        return "folder"
    if low.endswith(NIFTI_EXTENSIONS):
        return "nifti"
    if low.endswith(DICOM_EXTENSIONS) or "." not in low.rsplit("/", 1)[-1]:
        return "dicom"
    return "folder"  # refused by the image reader as not an image file


def _json_rows(path: Path, root: Path) -> tuple[list[dict], list[str]]:
    data = read_json(path, expect=dict, fix="write it as {\"training\": [...], \"validation\": [...], \"test\": [...]}")
    rows, notes, masks = [], [], 0
    lists = {k: v for k, v in data.items() if split_name(k) and isinstance(v, list)}
    if not lists:
        raise DiffauditError(f"{path} has none of the lists 'training', 'validation', 'test'; write it as "
                             "{\"training\": [{\"image\": ..., \"label\": ...}], ...}")
    for key, entries in lists.items():
        for n, e in enumerate(entries):
            where = f"{path} {key}[{n}]"
            e = {"image": e} if isinstance(e, str) else e
            if not isinstance(e, dict) or not isinstance(e.get("image"), str):
                raise DiffauditError(f"{where} has no 'image' file name; give each entry one image (a string)")
            label = e.get("label")
            if isinstance(label, str) and "." in label.rsplit("/", 1)[-1]:
                label, masks = None, masks + 1
            elif label is not None and (isinstance(label, bool) or not isinstance(label, (int, str))):
                raise DiffauditError(f"{where} has the label {label!r}; a label is an integer or a class name")
            patient = e.get("patient")
            rows.append({"file": normalise(root, e["image"], where=where), "split": split_name(key), "label": label,
                         "patient": None if patient is None else str(patient), "where": where})
    if masks:
        notes.append(f"{masks} labels name files (segmentation masks, not classes) and were left out")
    return rows, notes


def _csv_rows(path: Path, root: Path) -> list[dict]:
    table = read_table(path, root=root, required=("file", "split"), optional=("label", "patient"))
    rows = []
    for name, cells in table.items():
        split = split_name(cells["split"])
        if split is None:
            raise DiffauditError(f"{path} gives {name} the split '{cells['split']}'; use train, val or test")
        rows.append({"file": name, "split": split, "label": cells.get("label") or None,
                     "patient": cells.get("patient") or None, "where": str(path)})
    return rows


def datalist_rows(path: Path) -> tuple[list[dict], list[str]]:
    """(the entries of the datalist ``path``: each one's ``file`` relative to its folder, ``split``, ``label`` and
    ``patient``; notes); a file named twice is refused."""
    root = path.parent
    if path.suffix.lower() == ".json":
        rows, notes = _json_rows(path, root)
    elif path.suffix.lower() == ".csv":
        rows, notes = _csv_rows(path, root), []
    else:
        raise DiffauditError(f"{path} is neither .json nor .csv; a datalist is one of the two")
    seen: dict[str, str] = {}
    for row in rows:
        if row["file"] in seen:
            raise DiffauditError(f"{path} names {row['file']} twice ({seen[row['file']]} and {row['where']}); keep one "
                                 "entry per file")
        seen[row["file"]] = row["where"]
    return rows, notes


def open_datalist(path: Path, *, options: SourceOptions, workers: int | None = None) -> Source:
    """The images a datalist names, with its splits, labels and patients."""
    root = path.parent
    rows, notes = datalist_rows(path)
    codes, classes = encode_labels(r["label"] for r in rows)
    entries = [Entry(r["file"], kind_of(r["file"]), split=r["split"], label=c, patient=r["patient"])
               for r, c in zip(rows, codes)]
    order = sorted(range(len(entries)), key=lambda i: entries[i].name)
    return scan(root, [entries[i] for i in order], kind="datalist", options=options, workers=workers,
                classes=classes, notes=notes)
