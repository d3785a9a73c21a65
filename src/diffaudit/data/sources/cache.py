"""The prepared set: every record of a source decoded, preprocessed and streamed into one ``.npy`` file.

:func:`prepare_cache` writes uint8 [N, C, S, S] in record order with ``np.lib.format.open_memmap`` into a
temporary file beside ``out_path`` and renames it into place once complete (:func:`diffaudit.io.atomic_path`),
so a cache is either absent or whole. It holds one batch of prepared images in memory beside the memory map,
plus the files the workers have open (a NIfTI volume or an ``.npz`` split is kept while its records are read).
Every file is re-hashed as it is read and refused if it changed since the scan, so the cache is the prepared form
of exactly the recorded files. The result carries the file's SHA-256, the preprocessing record (the manifest's
``preprocessing``) and the pixel digest of every image (:mod:`.duplicates`).

:func:`check_sources` is the rebuild check: every recorded file still there with its SHA-256.
:func:`load_images` is the same pipeline into memory.
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from tqdm.auto import tqdm

from ...errors import DiffauditError
from ...io import atomic_path
from .duplicates import pixel_digest
from .files import Unreadable, file_sha256, inside
from .geometry import check_geometry
from .preprocess import describe, preprocess, size_counts
from .records import Record, Source
from .scan import READERS, default_workers


@dataclass(frozen=True)
class Prepared:
    """A written cache: its path and SHA-256, the shape [N, C, S, S], the preprocessing record and the pixel
    digest of each image."""

    path: Path
    sha256: str
    shape: tuple[int, int, int, int]
    preprocessing: dict
    pixel_digests: tuple[str, ...]


def _changed(root: Path, record: Record) -> DiffauditError:
    return DiffauditError(f"{root / record.path} changed since the source was scanned (SHA-256 {record.sha256[:12]}... "
                          "recorded); restore the original file, or scan the source again")


class _Files:
    """The files the workers have open, the last few kept (a volume's slices come in one run)."""

    def __init__(self, source: Source, keep: int) -> None:
        self.root, self.keep, self.lock, self.open_ = source.root, keep, threading.Lock(), OrderedDict()
        self.readers = {k: READERS[k](source.options) for k in sorted({r.kind for r in source})}

    def get(self, record: Record):
        key = (record.kind, record.path)
        with self.lock:
            if key in self.open_:
                self.open_.move_to_end(key)
                return self.open_[key]
        path = inside(self.root, record.path)
        if not path.is_file():
            raise DiffauditError(f"{path} is missing; restore it, or scan the source again without it")
        try:
            handle = self.readers[record.kind].open(path, record.path)
        except Unreadable:
            raise _changed(self.root, record) from None
        if handle.sha256 != record.sha256:
            raise _changed(self.root, record)
        with self.lock:
            self.open_[key] = handle
            while len(self.open_) > self.keep:
                self.open_.popitem(last=False)
        return handle


def _runs(records, start: int, stop: int) -> list[list[int]]:
    """Indices start..stop-1 in runs of consecutive records of one file."""
    runs: list[list[int]] = []
    for i in range(start, stop):
        if runs and (records[runs[-1][0]].kind, records[runs[-1][0]].path) == (records[i].kind, records[i].path):
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def iter_batches(source: Source, *, size: int, channels: int, fit: str = "crop", batch: int = 256,
                 workers: int | None = None) -> Iterator[tuple[int, np.ndarray, list[str]]]:
    """(first index, uint8 [B, C, S, S], the intensity rule of each image) for consecutive batches of records."""
    check_geometry(size=size, channels=channels, fit=fit)
    if len(source) == 0:
        raise DiffauditError(f"the source {source.root} has no records; scan a folder that holds images")
    workers = max(1, workers or default_workers())
    files, records, window = _Files(source, keep=2 * workers), source.records, source.options.window

    def run(indices: list[int]) -> list[tuple[int, np.ndarray, str]]:
        handle = files.get(records[indices[0]])
        return [(i, *preprocess(handle.decode(records[i]), size=size, channels=channels, fit=fit, window=window,
                                name=str(source.root / records[i].path))) for i in indices]

    with ThreadPoolExecutor(workers) as pool:
        for start in range(0, len(records), batch):
            stop = min(start + batch, len(records))
            out, rules = np.empty((stop - start, channels, size, size), np.uint8), [""] * (stop - start)
            for done in pool.map(run, _runs(records, start, stop)):
                for i, image, rule in done:
                    out[i - start], rules[i - start] = image, rule
            yield start, out, rules


def load_images(source: Source, *, size: int, channels: int, fit: str = "crop", batch: int = 256,
                workers: int | None = None) -> np.ndarray:
    """Every record prepared, in memory: uint8 [N, C, S, S] (for small sets and tests)."""
    parts = [x for _, x, _ in iter_batches(source, size=size, channels=channels, fit=fit, batch=batch, workers=workers)]
    return np.concatenate(parts)


def _report_sizes(source: Source, sizes: Counter, *, size: int, fit: str, log: Callable[[str], None]) -> None:
    if len(sizes) > 1:
        (common, n), = sizes.most_common(1)
        odd = next(r for r in source if f"{r.shape[-2]}x{r.shape[-1]}" != common)
        log(f"input sizes differ: {len(sizes)} sizes, {n} of {len(source)} images at {common}, others such as "
            f"{odd.path} at {odd.shape[-2]}x{odd.shape[-1]}; every image is fitted ({fit}) and resized to {size}x{size}")


def prepare_cache(source: Source, out_path: str | Path, *, size: int, channels: int, fit: str = "crop",
                  batch: int = 256, workers: int | None = None, progress: bool = True,
                  log: Callable[[str], None] = print) -> Prepared:
    """Write every record of ``source``, prepared, to the ``.npy`` at ``out_path`` (atomically); see the module
    docstring. Returns the :class:`Prepared` record with the file's SHA-256."""
    check_geometry(size=size, channels=channels, fit=fit)
    out_path = Path(out_path)
    sizes = size_counts(r.shape for r in source)
    _report_sizes(source, sizes, size=size, fit=fit, log=log)
    shape = (len(source), channels, size, size)
    rules, digests = Counter(), []
    with atomic_path(out_path) as tmp:
        cache = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        with tqdm(total=len(source), disable=not progress, desc=f"preparing {out_path.name}", unit="img",
                  dynamic_ncols=True) as bar:
            for start, images, batch_rules in iter_batches(source, size=size, channels=channels, fit=fit,
                                                           batch=batch, workers=workers):
                cache[start:start + len(images)] = images
                rules.update(batch_rules)
                digests += [pixel_digest(x) for x in images]
                bar.update(len(images))
        cache.flush()
        del cache
        digest = file_sha256(tmp)
    pre = describe(size=size, channels=channels, fit=fit, window=source.options.window, rules=rules, sizes=sizes)
    return Prepared(path=out_path, sha256=digest, shape=shape, preprocessing=pre, pixel_digests=tuple(digests))


def check_sources(source: Source, *, workers: int | None = None) -> None:
    """Refuse a recorded file that is missing or whose SHA-256 changed, naming the first and the count."""
    expected = {}
    for r in source:
        expected.setdefault(r.path, r.sha256)

    def state(name: str) -> str | None:
        path = inside(source.root, name)
        if not path.is_file():
            return "has gone missing"
        return None if file_sha256(path) == expected[name] else "has changed"

    with ThreadPoolExecutor(max(1, workers or default_workers())) as pool:
        states = dict(zip(expected, pool.map(state, expected)))
    bad = [n for n, s in states.items() if s is not None]
    if bad:
        first = bad[0]
        raise DiffauditError(f"{source.root / first} {states[first]} since the source was scanned ({len(bad)} of "
                             f"{len(expected)} files missing or changed); restore the original files, or scan the "
                             "source again and prepare a new run")
