"""Scanning: every file of a source read once, fully decoded, hashed, and turned into records.

Decoding every file here, not only its header, is what finds the truncated and corrupt ones before anything is
prepared, so that the refusal can name the first and count them all. The files are read in a thread pool
(``workers``): Pillow, zlib, pydicom's decoders and hashlib release the GIL.

:func:`open_folder` is the ``folder``, ``dicom`` and ``nifti`` sources: a folder walked recursively, with splits
and labels from its layout or a table (:mod:`.annotate`). A single file of those kinds is a source of one file.
"""

from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ...errors import DiffauditError
from .annotate import LABELS_FILE, class_folders, encode_labels, match_table, read_table, split_folders
from .dicom import DicomReader
from .files import Unreadable, inside, list_files, refuse_unreadable
from .images import ImageReader
from .nifti import NiftiReader
from .npz import NpzReader
from .records import Record, Skipped, Source, SourceOptions

#: the reader of each kind, built from the source's options (internal: a user picks a source, see registry.py)
READERS: dict[str, Callable[[SourceOptions], object]] = {
    "folder": lambda o: ImageReader(frames=o.frames),
    "dicom": lambda o: DicomReader(frames=o.frames),
    "nifti": lambda o: NiftiReader(slice=o.slice),
    "medmnist": lambda o: NpzReader(),
}


def default_workers() -> int:
    return min(4, os.cpu_count() or 1)


@dataclass(frozen=True)
class Entry:
    """A file to scan, and what is already known of it."""

    name: str
    kind: str
    split: str | None = None
    label: int | None = None
    patient: str | None = None


def _probe(root: Path, reader, entry: Entry) -> list[Record] | Skipped:
    if not reader.accepts(entry.name):
        return Skipped(entry.name, f"not a file the {entry.kind} source reads (by its extension)")
    path = inside(root, entry.name)
    if not path.is_file():
        return Skipped(entry.name, "missing, or a broken link")
    try:
        h = reader.open(path, entry.name)
        return [Record(path=entry.name, sha256=h.sha256, kind=entry.kind, shape=tuple(int(n) for n in h.shape(f)),
                       split=entry.split, label=entry.label, patient=entry.patient or h.patient, frame=f)
                for f in h.frames]
    except Unreadable as err:
        return Skipped(entry.name, " ".join(str(err).split()))  # one line, whatever the library wrote
    except MemoryError:
        return Skipped(entry.name, "too large to decode in memory")


def scan(root: Path, entries: Sequence[Entry], *, kind: str, options: SourceOptions, workers: int | None = None,
         classes: tuple[str, ...] | None = None, ignored: Sequence[str] = (), notes: Sequence[str] = ()) -> Source:
    """The records of ``entries`` (files relative to ``root``); unreadable files refused or, with
    ``options.skip_unreadable``, skipped and recorded."""
    if not entries:
        raise DiffauditError(f"{root} holds no {kind} files; point the source at the folder of images")
    readers = {k: READERS[k](options) for k in sorted({e.kind for e in entries})}
    with ThreadPoolExecutor(max(1, workers or default_workers())) as pool:
        results = list(pool.map(lambda e: _probe(root, readers[e.kind], e), entries))
    records = [r for res in results if isinstance(res, list) for r in res]
    bad = [res for res in results if isinstance(res, Skipped)]
    skipped = refuse_unreadable(bad, len(entries), root=root, kind=kind, skip=options.skip_unreadable)
    if not records:
        raise DiffauditError(f"none of the {len(entries)} files under {root} is a readable {kind} image; "
                             f"the first: {bad[0].path} ({bad[0].reason})")
    return Source(root=root, kind=kind, records=tuple(records), options=options, classes=classes,
                  skipped=skipped, ignored=tuple(ignored), notes=tuple(notes))


def _label_table(root: Path, options: SourceOptions, files: list[str]) -> Path | None:
    if options.labels in ("folders", "none"):
        return None
    if options.labels == "auto":
        return root / LABELS_FILE if (root / LABELS_FILE).is_file() else None
    path = inside(root, options.labels, what="the data root")
    if not path.is_file():
        raise DiffauditError(f"the labels table {path} does not exist; pass labels= (--labels) a CSV under the data root, "
                             "'folders', 'none' or 'auto'")
    return path


def open_folder(path: Path, *, kind: str, options: SourceOptions, workers: int | None = None) -> Source:
    """The ``folder``, ``dicom`` or ``nifti`` source at ``path`` (a folder, or one file)."""
    if path.is_file():
        return scan(path.parent, [Entry(path.name, kind)], kind=kind, options=options, workers=workers)
    root = path
    files, ignored = list_files(root)
    table_path = _label_table(root, options, files)
    if table_path is not None:
        table_name = table_path.relative_to(root).as_posix()
        files = [f for f in files if f != table_name]
    splits = split_folders(files)
    folders = None
    if table_path is None and (options.labels == "folders" or (options.labels == "auto" and kind == "folder")):
        folders = class_folders(files, under_split=splits is not None)
        if folders is None and options.labels == "folders":
            raise DiffauditError(f"labels='folders' but the images under {root} do not all lie one folder below "
                                 f"{'their split folder' if splits else 'the root'}; arrange them so, or pass "
                                 "labels='none' (--labels none)")
    labels, classes = [None] * len(files), None
    if folders is not None:
        labels, classes = encode_labels(folders[f] for f in files)
    entries = [Entry(f, kind, split=None if splits is None else splits[f], label=lab)
               for f, lab in zip(files, labels)]
    source = scan(root, entries, kind=kind, options=options, workers=workers, classes=classes, ignored=ignored)
    if table_path is None:
        return source
    table = read_table(table_path, root=root, required=("file",), optional=("label", "patient"))
    match_table(table, sorted({r.path for r in source}), path=table_path, skipped=[s.path for s in source.skipped])
    names = list(table)
    codes, classes = encode_labels(table[n].get("label") or None for n in names)
    label_of = dict(zip(names, codes))
    records = [dataclasses.replace(r, label=label_of[r.path], patient=table[r.path].get("patient") or r.patient)
               for r in source]
    return dataclasses.replace(source, records=tuple(records), classes=classes,
                               notes=source.notes + (f"labels from {table_path.name}",))
