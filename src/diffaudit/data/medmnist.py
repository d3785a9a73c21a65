"""MedMNIST v2 files in the official ``.npz`` format (the ``medmnist`` package's files and names).

Data root, in order: an explicit ``data_root``; the ``DIFFAUDIT_DATA`` environment variable;
``../shared/data/medmnist`` beside the working directory or the source checkout when present; medmnist's
default folder (``~/.medmnist``). Nothing is downloaded unless asked (``download=True``), and then through
medmnist's own download (Zenodo URL and MD5 from ``medmnist.INFO``).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

from ..config import SPLITS
from ..errors import DiffauditError
from ..io import file_md5

KEYS = tuple(f"{split}_{kind}" for split in SPLITS for kind in ("images", "labels"))
_SHARED = Path("..") / "shared" / "data" / "medmnist"


def _info() -> dict:
    from medmnist import INFO  # imported lazily: medmnist pulls in pandas and scikit-image

    return INFO


def default_root() -> Path:
    from medmnist.info import DEFAULT_ROOT

    return Path(DEFAULT_ROOT)


def resolve_root(data_root: str | os.PathLike | None = None) -> Path:
    """The folder that holds (or will hold) the ``.npz`` files; see the module docstring for the order."""
    if data_root is not None:
        return Path(data_root).expanduser()
    if os.environ.get("DIFFAUDIT_DATA"):
        return Path(os.environ["DIFFAUDIT_DATA"]).expanduser()
    source_checkout = Path(__file__).resolve().parents[3]  # <checkout>/src/diffaudit/data/medmnist.py
    for candidate in (Path.cwd() / _SHARED, source_checkout / _SHARED):
        if candidate.is_dir():
            return candidate.resolve()
    return default_root()


def file_name(dataset: str, size: int | None = None) -> str:
    """``<flag>.npz`` at 28 px (or no size), ``<flag>_<size>.npz`` for the MedMNIST+ sizes 64, 128 and 224."""
    return f"{dataset}.npz" if size in (None, 28) else f"{dataset}_{size}.npz"


def dataset_path(dataset: str, root: Path, size: int | None = None) -> Path:
    return root / file_name(dataset, size)


def download(dataset: str, root: Path, *, size: int | None = None, log: Callable[[str], None] = print) -> Path:
    """Fetch ``dataset`` at ``size`` (default 28x28) into ``root`` with medmnist's downloader, which checks the MD5."""
    info = _info()
    if dataset not in info:
        raise DiffauditError(f"'{dataset}' is not a MedMNIST dataset; known 2D ones include {', '.join(_known_2d())}")
    import medmnist

    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DiffauditError(f"cannot create the data folder {root} ({err.strerror}); pass --data-root DIR") from None
    name = file_name(dataset, size)
    log(f"{name} not found locally; downloading it into {root} (MD5 checked)")
    try:
        getattr(medmnist, info[dataset]["python_class"])(split="train", root=str(root), download=True, size=size or 28)
    except (RuntimeError, OSError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise DiffauditError(
            f"download of {name} failed ({first}); check the internet connection, or put {name} "
            f"from {info[dataset].get('url' if size in (None, 28) else f'url_{size}', 'MedMNIST+')} into {root} and run again"
        ) from None
    path = dataset_path(dataset, root, size)
    log(f"downloaded {dataset} to {path}")
    return path


def _known_2d() -> list[str]:
    return sorted(k for k, v in _info().items() if not k.endswith("3d") and "python_class" in v)


class MedMNISTFile:
    """One validated MedMNIST ``.npz``: images as uint8 [N, C, H, W] (channels first) per split."""

    def __init__(self, path: str | os.PathLike, *, dataset: str | None = None, size: int | None = None) -> None:
        self.path = Path(path)
        self.dataset = dataset or self.path.stem
        if not self.path.is_file():
            raise DiffauditError(
                f"{self.path} not found; add --download to fetch it into {self.path.parent}, or pass --data-root DIR "
                f"(or set DIFFAUDIT_DATA) to a folder holding {self.path.name}"
            )
        try:
            self._npz = np.load(self.path, allow_pickle=False)
            keys = set(self._npz.files)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, MemoryError) as err:
            raise DiffauditError(
                f"{self.path} is not a readable .npz ({err}); the file is truncated or corrupt, delete it and "
                "download it again (--download)"
            ) from None
        missing = [k for k in KEYS if k not in keys]
        if missing:
            raise DiffauditError(
                f"{self.path} lacks the MedMNIST key(s) {', '.join(missing)} (it has {', '.join(sorted(keys)) or 'none'}); "
                "it is not a MedMNIST file"
            )
        self.md5 = file_md5(self.path)
        info = _info().get(self.dataset)
        self.official_md5 = (info or {}).get("MD5" if size in (None, 28) else f"MD5_{size}")

    @property
    def is_official(self) -> bool | None:
        """True/False when medmnist knows this dataset's MD5, None for a dataset it does not list."""
        return None if self.official_md5 is None else self.md5 == self.official_md5

    def images(self, split: str) -> np.ndarray:
        if split not in SPLITS:
            raise DiffauditError(f"unknown split '{split}'; choose one of {', '.join(SPLITS)}")
        try:
            x = self._npz[f"{split}_images"]
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, MemoryError) as err:
            raise DiffauditError(
                f"{self.path}: '{split}_images' cannot be read ({err}); the file is truncated or corrupt, "
                "download it again (--download)"
            ) from None
        if x.dtype != np.uint8 or x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[-1] not in (1, 3)):
            raise DiffauditError(
                f"{self.path}: '{split}_images' is {x.dtype} {x.shape}; MedMNIST images are uint8 (N,H,W) or (N,H,W,3)"
            )
        return x[:, None] if x.ndim == 3 else np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    def labels(self, split: str) -> np.ndarray:
        return np.asarray(self._npz[f"{split}_labels"])


def open_dataset(dataset: str, *, data_root: str | os.PathLike | None = None, download_missing: bool = False,
                 size: int | None = None, log: Callable[[str], None] = print) -> MedMNISTFile:
    """Open ``<root>/<dataset>.npz`` (``<dataset>_<size>.npz`` for the MedMNIST+ sizes), downloading it first only
    when ``download_missing`` (and saying where)."""
    root = resolve_root(data_root)
    path = dataset_path(dataset, root, size)
    if not path.is_file():
        if dataset not in _info():
            raise DiffauditError(f"no {path.name} in {root}, and '{dataset}' is not a MedMNIST dataset that could be "
                                 f"downloaded; check the name (known 2D ones: {', '.join(_known_2d())})")
        if download_missing:
            download(dataset, root, size=size, log=log)
    return MedMNISTFile(path, dataset=dataset, size=size)


