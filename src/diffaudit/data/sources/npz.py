"""MedMNIST ``.npz`` files as a source, through the project's own loader (:mod:`diffaudit.data.medmnist`).

``<flag>.npz`` holds 28x28 images; MedMNIST+ files ``<flag>_<size>.npz`` hold 64, 128 or 224. A record is one
row of a split (``frame`` is the row), with the file's split and, for single-label datasets, its label. Whether
the file is the official release is looked up by its MD5 in medmnist's INFO (``MD5`` for 28, ``MD5_<size>``
otherwise) and kept as a note. The images are uint8 display values and pass unchanged. The reader holds one
split's array at a time: the files are compressed, so they cannot be memory-mapped.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ...config import SPLITS
from ...errors import DiffauditError
from ..medmnist import MedMNISTFile, _info
from .files import file_sha256
from .intensity import Decoded
from .records import Record, Source, SourceOptions

SIZES = (28, 64, 128, 224)
_NAME = re.compile(r"^(?P<flag>[a-z0-9]+?)(?:_(?P<size>64|128|224))?$")


def parse_name(path: Path) -> tuple[str, int]:
    """(flag, image side) of a MedMNIST file name.

    >>> parse_name(Path("breastmnist.npz")), parse_name(Path("chestmnist_224.npz"))
    (('breastmnist', 28), ('chestmnist', 224))
    """
    m = _NAME.match(path.name[:-4] if path.name.endswith(".npz") else path.name)
    if not m:
        raise DiffauditError(f"{path} is not named <flag>.npz or <flag>_<size>.npz (size 64, 128 or 224) as MedMNIST "
                             "files are; rename it, e.g. breastmnist_64.npz")
    return m.group("flag"), int(m.group("size") or 28)


class _File:
    def __init__(self, path: Path, sha256: str) -> None:
        self.data, self.sha256, self.patient, self.frames = MedMNISTFile(path), sha256, None, [None]
        self._split: tuple[str, np.ndarray] | None = None

    def decode(self, record) -> Decoded:
        if self._split is None or self._split[0] != record.split:
            self._split = (record.split, self.data.images(record.split))
        return Decoded(self._split[1][record.frame])


class NpzReader:
    """Reader of the ``medmnist`` kind."""

    kind = "medmnist"

    def open(self, path: Path, name: str) -> _File:
        return _File(path, file_sha256(path))


def open_medmnist(path: Path, *, options: SourceOptions) -> Source:
    """Every image of every split of a MedMNIST ``.npz``, as records."""
    flag, side = parse_name(path)
    handle = NpzReader().open(path, path.name)
    f = handle.data
    info = _info().get(flag)
    official = None if info is None else info.get("MD5" if side == 28 else f"MD5_{side}") == f.md5
    records, notes = [], [f"MedMNIST {flag} at {side}x{side}; official release: "
                          f"{'unknown' if official is None else 'yes' if official else 'no (MD5 differs)'}"]
    for split in SPLITS:
        images, labels = f.images(split), np.asarray(f.labels(split))
        if images.shape[-1] != side or images.shape[-2] != side:
            raise DiffauditError(f"{path} holds {images.shape[-2]}x{images.shape[-1]} images, not {side}x{side} as its "
                                 "name says; rename it to match its size")
        single = labels.ndim == 1 or (labels.ndim == 2 and labels.shape[1] == 1)
        if not single and split == "train":
            notes.append(f"{flag} is multi-label ({labels.shape[1]} labels per image); records carry no label")
        for i in range(len(images)):
            records.append(Record(path=path.name, sha256=handle.sha256, kind="medmnist", shape=images.shape[1:],
                                  split=split, label=int(labels.reshape(len(labels), -1)[i, 0]) if single else None,
                                  frame=i))
    return Source(root=path.parent, kind="medmnist", records=tuple(records), options=options, notes=tuple(notes))
