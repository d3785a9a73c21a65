"""Records: what a data source holds, one entry per 2D image, without the pixels.

A record names its file relative to the data root (so a manifest can be shared without the data and the set
rebuilt on another machine), the file's SHA-256 (so a changed file is recognised), the reader that decodes it,
and what is known of the image: its split, class label, patient, frame (of a multi-frame DICOM or TIFF, slice of
a NIfTI volume, row of an ``.npz`` split) and shape [C, H, W] as decoded. A 3D source later keeps the same
record, with a frame of None for the whole volume and a shape of rank 4.

A :class:`Source` is the records of one data root plus how they were found: its kind, the reader options, the
class names, and the files skipped or ignored on the way. It is plain data (see :meth:`Source.to_dict`), so
the manifest can carry it and the cache can be rebuilt from it alone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from ...errors import DiffauditError

#: the split names a record may carry; "validation" (MONAI's Decathlon lists) and "valid" are read as "val"
SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                  "test": "test", "testing": "test"}


def split_name(name: str) -> str | None:
    """``name`` as one of :data:`SPLITS` (case-insensitive, aliases allowed), or None when it is not a split."""
    return _SPLIT_ALIASES.get(str(name).strip().lower())


@dataclass(frozen=True)
class Record:
    """One 2D image of a source; ``path`` is relative to the data root, with '/' separators."""

    path: str
    sha256: str
    kind: str
    shape: tuple[int, ...]
    split: str | None = None
    label: int | None = None
    patient: str | None = None
    frame: int | None = None

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: dict) -> "Record":
        return cls(**{**d, "shape": tuple(d["shape"])})


@dataclass(frozen=True)
class Skipped:
    """A file left out with ``skip_unreadable=True``, and why."""

    path: str
    reason: str


@dataclass(frozen=True)
class SourceOptions:
    """How a source is read; everything here changes which images the source yields or their pixels.

    ``labels``: "auto" (a ``labels.csv`` at the root, else class subfolders for a folder of images), "folders",
    "none", or the path of a CSV ``file,label[,patient]`` relative to the root. ``frames``: "single" refuses a
    multi-frame file, "all" takes one image per frame. ``slice``: the NIfTI slice, ``"AXIS[:INDEX|mid|all]"``.
    ``window``: (center, width) in the source's own units (Hounsfield units after a DICOM's rescale), applied to
    every image instead of the file's window or the percentile scaling."""

    labels: str = "auto"
    skip_unreadable: bool = False
    frames: str = "single"
    slice: str = "2:mid"
    window: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.frames not in ("single", "all"):
            raise DiffauditError(f"frames='{self.frames}' is unknown; pass frames='single' or frames='all'")
        if self.window is not None:
            try:
                center, width = (float(v) for v in self.window)
            except (TypeError, ValueError):
                raise DiffauditError(f"window={self.window!r} must be a pair (center, width) of numbers") from None
            if not width >= 1:  # DICOM's linear window (PS3.3 C.11.2.1.2.1) needs width >= 1
                raise DiffauditError(f"window width {width:g} must be at least 1; pass window=(center, width)")
            object.__setattr__(self, "window", (center, width))

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "window": None if self.window is None else list(self.window)}


@dataclass(frozen=True)
class Source:
    """The records of one data root, in a fixed order (sorted paths, then frames), and how they were found."""

    root: Path
    kind: str
    records: tuple[Record, ...]
    options: SourceOptions = field(default_factory=SourceOptions)
    classes: tuple[str, ...] | None = None
    skipped: tuple[Skipped, ...] = ()
    ignored: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    def __getitem__(self, i: int) -> Record:
        return self.records[i]

    def select(self, indices: Sequence[int]) -> "Source":
        """The same source restricted to ``records[i]`` for i in ``indices``, in that order."""
        return dataclasses.replace(self, records=tuple(self.records[int(i)] for i in indices))

    def with_records(self, records: Sequence[Record]) -> "Source":
        return dataclasses.replace(self, records=tuple(records))

    def to_dict(self) -> dict:
        """JSON-ready: what a manifest records of the source (the root as given, not resolved)."""
        return {"root": str(self.root), "kind": self.kind, "options": self.options.to_dict(),
                "classes": None if self.classes is None else list(self.classes),
                "records": [r.to_dict() for r in self.records],
                "skipped": [dataclasses.asdict(s) for s in self.skipped],
                "ignored": list(self.ignored), "notes": list(self.notes)}

    @classmethod
    def from_dict(cls, d: dict, *, root: str | Path | None = None) -> "Source":
        """The source a manifest recorded; ``root`` moves it to another folder holding the same files."""
        opts = dict(d["options"])
        opts["window"] = None if opts.get("window") is None else tuple(opts["window"])
        return cls(root=Path(root if root is not None else d["root"]), kind=d["kind"],
                   records=tuple(Record.from_dict(r) for r in d["records"]), options=SourceOptions(**opts),
                   classes=None if d.get("classes") is None else tuple(d["classes"]),
                   skipped=tuple(Skipped(**s) for s in d.get("skipped", [])),
                   ignored=tuple(d.get("ignored", [])), notes=tuple(d.get("notes", [])))
