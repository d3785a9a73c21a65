"""Volumes streamed into one memory-mappable array, with the record that can rebuild and check it.

:func:`write_volume_cache` reads each NIfTI file of a data root once, preprocesses it (:mod:`.steps`) and writes it
into row i of a ``.npy`` memory map (uint8 [N, 1, D, H, W]) opened on a temporary file beside the target, which is
renamed into place only when every volume is in: memory holds one volume at a time beside the map, and a failed
or interrupted run leaves nothing. Its record lists each source by its path relative to the data root with its
SHA-256, what was read from it (shape, spacing, orientation), every preprocessing step, and the SHA-256 of the
array. :func:`check_sources` refuses a rebuild when a listed file changed or is missing, naming it.

A file that cannot be read (truncated, not a NIfTI, NaN voxels, a 4D file without a volume index) is refused by
name, with the count of such files; with ``skip_unreadable`` it is left out and recorded with its reason.
MedMNIST 3D files are already uint8 [N, D, H, W] arrays: :func:`medmnist3d_volumes` gives them in the same form.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm.auto import tqdm

from ...errors import DiffauditError
from ...io import atomic_path
from ..sources.files import file_sha256, inside, is_ignored
from .steps import Unloadable, VolumeSteps, from_array, load, preprocess

VOLUME_EXTENSIONS = (".nii", ".nii.gz")
FORMAT = "diffaudit-volumes/1"


def list_volumes(root: str | Path) -> list[str]:
    """The NIfTI files under ``root``, as sorted POSIX paths relative to it (hidden files and notes ignored)."""
    root = Path(root)
    if not root.is_dir():
        raise DiffauditError(f"{root} is not a folder of NIfTI volumes; give the folder that holds the .nii/.nii.gz files")
    names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                   if p.is_file() and not is_ignored(p.name) and p.name.lower().endswith(VOLUME_EXTENSIONS))
    if len(names) < 2:
        raise DiffauditError(f"{root} holds {len(names)} NIfTI volume(s) (.nii, .nii.gz); an audit needs at least 2")
    return names


def list_series_folders(root: str | Path) -> list[str]:
    """The folders under ``root`` that hold DICOM files themselves (one volume each: its series), as sorted POSIX
    paths relative to it."""
    from ..sources.dicom import EXTENSIONS

    root = Path(root)
    folders = sorted({p.parent.relative_to(root).as_posix() for p in root.rglob("*")
                      if p.is_file() and not is_ignored(p.name) and p.name.lower().endswith(EXTENSIONS)})
    if len(folders) < 2:
        raise DiffauditError(f"{root} holds DICOM files in {len(folders)} folder(s); a volume audit of DICOM series "
                             "takes one folder per volume (its series), at least 2")
    return folders


def source_sha256(path: Path) -> str:
    """The SHA-256 of a volume's source: its NIfTI file, or a DICOM folder's files (each one's name and SHA-256, in
    order)."""
    if path.is_file():
        return file_sha256(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.iterdir() if p.is_file() and not is_ignored(p.name)):
        h.update(f"{f.name}\0{file_sha256(f)}\n".encode())
    return h.hexdigest()


def write_volume_cache(root: str | Path, names: Sequence[str], steps: VolumeSteps, out: str | Path, *,
                       skip_unreadable: bool = False, progress: bool = True) -> dict[str, Any]:
    """Preprocess the volumes ``names`` (relative to ``root``) into the ``.npy`` file ``out``, uint8
    [N, 1, D, H, W]; returns the record (module docstring)."""
    root, out = Path(root), Path(out)
    shape = (len(names), 1, *steps.size)
    files, skipped, rows = [], [], []
    arrays = MedMNIST3D(root) if steps.reader == "medmnist3d" else None
    with atomic_path(out) as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        for i, name in enumerate(tqdm(names, desc="volumes", unit="vol", disable=not progress, dynamic_ncols=True)):
            try:
                if arrays is not None:
                    raw = arrays.volume(name)
                    sha, volume = hashlib.sha256(raw.tobytes()).hexdigest(), from_array(raw)
                else:
                    path = inside(root, name)
                    sha, volume = source_sha256(path), load(path, steps)
                array[i], source = preprocess(volume, steps)
            except Unloadable as err:
                skipped.append({"file": name, "reason": str(err)})
                continue
            rows.append(i)
            files.append({"file": name, "sha256": sha, "source": source})
        if skipped and not skip_unreadable:
            raise DiffauditError(f"{root / skipped[0]['file']}: {skipped[0]['reason']} ({len(skipped)} of {len(names)} "
                                 "files could not be read; fix or remove them, or pass --skip-unreadable)")
        if len(rows) < 2:
            raise DiffauditError(f"only {len(rows)} of {len(names)} volumes in {root} could be read; an audit needs 2")
        if skipped:  # compact the rows that were read into the final array
            kept = np.lib.format.open_memmap(tmp.with_suffix(".kept"), mode="w+", dtype=np.uint8,
                                             shape=(len(rows), *shape[1:]))
            for j, i in enumerate(rows):
                kept[j] = array[i]
            kept.flush()
            del array, kept
            tmp.with_suffix(".kept").replace(tmp)
            array = np.load(tmp, mmap_mode="r")
        else:
            array.flush()
        digest = array_sha256(array)
        del array
    return {"format": FORMAT, "shape": [len(rows), *shape[1:]], "dtype": "uint8", "layout": "N, C, D, H, W (RAS+)",
            "steps": steps.record(), "files": files, "skipped": skipped, "sha256": digest}


def array_sha256(array: np.ndarray) -> str:
    """SHA-256 of the array's bytes in C order, one row at a time."""
    h = hashlib.sha256()
    for row in array:
        h.update(np.ascontiguousarray(row).tobytes())
    return h.hexdigest()


def check_sources(root: str | Path, record: dict[str, Any]) -> None:
    """Refuse, naming the file, when a source listed in ``record`` is missing under ``root`` or changed."""
    root = Path(root)
    if root.is_file():  # a MedMNIST 3D file: each volume's array
        arrays = MedMNIST3D(root)
        for entry in record["files"]:
            if hashlib.sha256(arrays.volume(entry["file"]).tobytes()).hexdigest() != entry["sha256"]:
                raise DiffauditError(f"{root}: volume {entry['file']} changed since the run was prepared; restore the "
                                     "original file, or prepare the run again in a new --run-dir")
        return
    for entry in record["files"]:
        path = inside(root, entry["file"])
        if not path.exists():
            raise DiffauditError(f"{path} is listed in the manifest but missing; restore it, or prepare the run again")
        if source_sha256(path) != entry["sha256"]:
            raise DiffauditError(f"{path} changed since the run was prepared (its SHA-256 differs from the manifest's); "
                                 "restore the original, or prepare the run again in a new --run-dir")


class MedMNIST3D:
    """A MedMNIST 3D file (``{split}_images`` uint8 [N, D, H, W], ``{split}_labels``) as named volumes: "train/0",
    "train/1", ..., "val/0", ..., "test/0", ... (its own splits, kept)."""

    SPLITS = ("train", "val", "test")

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            with np.load(self.path) as data:
                self.images = {s: data[f"{s}_images"] for s in self.SPLITS if f"{s}_images" in data}
                self.labels = {s: data[f"{s}_labels"] for s in self.SPLITS if f"{s}_labels" in data}
        except (OSError, ValueError, zipfile.BadZipFile) as err:
            raise DiffauditError(f"{self.path} is not a MedMNIST 3D .npz file ({err}); give the .npz that "
                                 "medmnist downloads (e.g. organmnist3d.npz)") from None
        if "train" not in self.images:
            raise DiffauditError(f"{self.path} has no train_images array; it is not a MedMNIST file")
        for split, images in self.images.items():
            if images.ndim != 4 or images.dtype != np.uint8:
                raise DiffauditError(f"{self.path}: {split}_images is {images.dtype} {list(images.shape)}, not uint8 "
                                     "[N, D, H, W]; a 2D MedMNIST file is prepared with --size S, not D,H,W")

    def names(self) -> list[tuple[str, str]]:
        """(name, split) of every volume, in the file's order."""
        return [(f"{s}/{i}", s) for s, images in self.images.items() for i in range(len(images))]

    def volume(self, name: str) -> np.ndarray:
        split, _, index = name.partition("/")
        try:
            return self.images[split][int(index)]
        except (KeyError, ValueError, IndexError):
            raise DiffauditError(f"{self.path} has no volume {name}") from None

    def label(self, name: str) -> int:
        split, _, index = name.partition("/")
        labels = self.labels.get(split)
        return -1 if labels is None else int(np.asarray(labels[int(index)]).reshape(-1)[0])


def medmnist3d_volumes(path: str | Path, split: str = "train") -> np.ndarray:
    """A MedMNIST 3D file's ``split`` as uint8 [N, 1, D, H, W] (its arrays are [N, D, H, W])."""
    path = Path(path)
    try:
        with np.load(path) as data:
            images = data[f"{split}_images"]
    except (OSError, ValueError, KeyError) as err:
        raise DiffauditError(f"{path} is not a MedMNIST 3D file with a '{split}_images' array ({err})") from None
    if images.ndim != 4 or images.dtype != np.uint8:
        raise DiffauditError(f"{path}: {split}_images is {images.dtype} {list(images.shape)}, not uint8 [N, D, H, W]; "
                             "is it a 2D MedMNIST file?")
    return images[:, None]
