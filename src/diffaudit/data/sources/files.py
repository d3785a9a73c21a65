"""Files under a data root: listing them, keeping every read inside the root, hashing, and refusing bad files.

Every file a source reads is named relative to the data root, and a name that leads outside it — ``..``, an
absolute path, or a symlink whose target lies elsewhere — is refused, so a datalist or a planted link cannot
make an audit read (and its manifest describe) files outside the data it claims to be about.

Files that are clearly not data (hidden files, ``Thumbs.db``, ``desktop.ini``, ``DICOMDIR``, README, LICENSE and
checksum files, and notes or sidecars: .txt .md .json .jsonl .csv .tsv) are ignored and listed as such; every other file must be
readable by the source's reader. A file that is not (corrupt, truncated, of another format) is an
:class:`Unreadable`: a source collects them all, then refuses naming the first and their count, or, with
``skip_unreadable=True``, leaves them out and records each with its reason.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path, PurePosixPath
from typing import Sequence

from ...errors import DiffauditError
from ...io import file_digest
from .records import Skipped

_IGNORED_NAMES = {"thumbs.db", "desktop.ini", "dicomdir"}
_IGNORED_PREFIXES = ("readme", "license", "licence", "sha256sum", "sha1sum", "md5sum")
_IGNORED_SUFFIXES = (".txt", ".md", ".json", ".jsonl", ".csv", ".tsv", ".sha256", ".md5")


class Unreadable(Exception):
    """A file the reader cannot take as an image; the message is the reason, without the file's name."""


def is_ignored(name: str) -> bool:
    low = name.lower()
    return (low.startswith(".") or low in _IGNORED_NAMES or low.startswith(_IGNORED_PREFIXES)
            or low.endswith(_IGNORED_SUFFIXES))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    return file_digest(path, "sha256")


def inside(root: Path, name: str, *, what: str = "the data root") -> Path:
    """The file ``root/name``, refused when the name or a symlink on the way leads outside ``root``."""
    rel = PurePosixPath(name.replace("\\", "/"))
    if rel.is_absolute() or ".." in rel.parts:
        raise DiffauditError(f"{name} lies outside {what} {root}; name files relative to it, without '..'")
    path = root.joinpath(*rel.parts)
    target = path.resolve()
    if not target.is_relative_to(root.resolve()):
        raise DiffauditError(f"{path} is a symlink to {target}, outside {what} {root}; copy the file into "
                             "the data root or remove the link")
    return path


def normalise(root: Path, name: str, *, where: str) -> str:
    """``name`` from a list (``where``) as a path relative to ``root`` with '/' separators; an absolute name is
    accepted when it lies inside the root."""
    text = str(name).strip().replace("\\", "/")
    if not text:
        raise DiffauditError(f"{where} has an empty file name; give every entry a file")
    p = PurePosixPath(text)
    if p.is_absolute():
        try:
            p = PurePosixPath(Path(text).resolve().relative_to(root.resolve()).as_posix())
        except ValueError:
            raise DiffauditError(f"{where} names {text}, outside the data root {root}; name files relative to "
                                 "it") from None
    parts = [q for q in p.parts if q != "."]
    if not parts or ".." in parts:
        raise DiffauditError(f"{where} names {text}, outside the data root {root}; name files relative to it, "
                             "without '..'")
    return "/".join(parts)


def list_files(root: Path) -> tuple[list[str], list[str]]:
    """(files, ignored) under ``root``, recursively, as sorted '/'-separated names relative to it. Symlinked
    folders are not followed (they are listed as ignored); a symlink out of the root is refused."""
    if not root.is_dir():
        raise DiffauditError(f"{root} is not a folder; pass the folder that holds the images")
    files, ignored = [], []
    for here, dirs, names in os.walk(root):
        base = Path(here)
        rel_dir = base.relative_to(root)
        for d in list(dirs):
            if (base / d).is_symlink() or is_ignored(d):
                dirs.remove(d)
                if (base / d).is_symlink():
                    inside(root, (rel_dir / d).as_posix())  # refuses a link out of the root
                ignored.append((rel_dir / d).as_posix() + "/")
        for n in names:
            rel = (rel_dir / n).as_posix()
            if (base / n).is_symlink():
                inside(root, rel)
            (ignored if is_ignored(n) else files).append(rel)
    return sorted(files), sorted(ignored)


def refuse_unreadable(bad: Sequence[Skipped], total: int, *, root: Path, kind: str,
                      skip: bool) -> tuple[Skipped, ...]:
    """Refuse the unreadable files ``bad`` (of ``total``), naming the first and their count; with ``skip`` they
    are returned, to be recorded as skipped."""
    if bad and not skip:
        first = bad[0]
        raise DiffauditError(f"{root / first.path}: {first.reason}; {len(bad)} of {total} files under {root} cannot "
                             f"be read as {kind}: repair or remove them, or pass skip_unreadable=True (--skip-unreadable) "
                             "to leave them out (each is recorded)")
    return tuple(bad)
