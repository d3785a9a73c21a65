"""The SHA-256 digests every writer records beside its artefacts (``digests.json`` in the artefact's folder), which
``diffaudit verify`` (:mod:`diffaudit.audit.engine.verify`) checks: the weights of a trained model, the detectors, the
sample shards. Kept here, below every writer, so that training, the adversary and sampling can record what they write.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from .io import file_digest, write_json

DIGESTS = "digests.json"
DIGESTS_FORMAT = "diffaudit-digests/1"
MODEL_FILES = ("model.safetensors", "model.json")
CLASSIFIER_FILES = ("c_p/model.safetensors", "c_p/model.json", "c_id/model.safetensors", "c_id/model.json",
                    "metrics.json")
SHARDS = "shard_*.npz"


def sha256_file(path: str | os.PathLike) -> str:
    return file_digest(path, "sha256")


def record_digests(folder: str | os.PathLike, names: Iterable[str]) -> dict[str, str]:
    """Write ``<folder>/digests.json`` with the SHA-256 of each of ``names`` (relative to ``folder``); returns them."""
    folder = Path(folder)
    files = {name: sha256_file(folder / name) for name in sorted(names)}
    write_json(folder / DIGESTS, {"format": DIGESTS_FORMAT, "algorithm": "sha256", "files": files})
    return files


def record_model_digests(train_dir: str | os.PathLike) -> dict[str, str] | None:
    """Record the digests of the model diffaudit trained into ``train_dir`` (nothing when it holds none)."""
    train_dir = Path(train_dir)
    if not all((train_dir / name).is_file() for name in MODEL_FILES):
        return None
    return record_digests(train_dir, MODEL_FILES)


def record_shard_digests(folder: str | os.PathLike) -> dict[str, str]:
    """Record the digests of every sample shard in ``folder``."""
    return record_digests(folder, [p.name for p in Path(folder).glob(SHARDS)])
