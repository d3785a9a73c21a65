"""Atomic writes: an artefact is either absent or complete, never half-written.

Every file is written to a temporary sibling and renamed into place (``os.replace`` is atomic on POSIX and
Windows), so a run killed mid-write leaves the previous state intact.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .errors import DiffauditError

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, on failure delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; artefacts are meant to be shared
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Like :func:`atomic_path` for a directory: fill the yielded folder, then it replaces ``path`` whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_name(name: str, what: str = "--name") -> str:
    """``name`` as the name of an artefact folder inside a run directory: one path component of letters, digits,
    '.', '_' and '-' (no '/', no '..'), so that nothing is ever written outside the run directory."""
    if not _NAME.fullmatch(name or "") or set(name) == {"."}:
        raise DiffauditError(f"{what} '{name}' must be one folder name of letters, digits, '.', '_' and '-' "
                             "(no '/' or '..'); it names a folder inside the run directory")
    return name


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, indent=2) + "\n"


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(canonical_json(obj))


def read_json(path: str | os.PathLike, *, expect: type | None = None,
              fix: str = "delete it and rerun the stage that writes it") -> Any:
    """The JSON in ``path``. A file that is not UTF-8 JSON, or (with ``expect``, e.g. ``dict``) whose top level is
    not of that type, is refused with one line naming the file and ``fix``."""
    path = Path(path)
    if not path.is_file():
        raise DiffauditError(f"{path} does not exist; run the stage that writes it first")
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise DiffauditError(f"{path} is not a JSON text file (not UTF-8: a binary file?); {fix}") from None
    except (json.JSONDecodeError, RecursionError) as err:
        why = str(err).splitlines()[0] if str(err) else "nested too deeply"
        raise DiffauditError(f"{path} is not valid JSON ({why}); {fix}") from None
    if expect is not None and not isinstance(value, expect):
        want = {dict: "a JSON object ({...})", list: "a JSON list ([...])"}.get(expect, expect.__name__)
        raise DiffauditError(f"{path} holds a JSON {_json_kind(value)}, not {want}; {fix}")
    return value


def _json_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "list"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    return "boolean" if isinstance(value, bool) else "number"


def config_differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The settings that differ between two JSON configs, as ``"train.lr: 0.002 -> 0.001"`` (nested keys dotted)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            out += config_differences(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


def _without(d: Any, dotted: str) -> Any:
    head, _, rest = dotted.partition(".")
    if not isinstance(d, dict) or head not in d:
        return d
    if not rest:
        return {k: v for k, v in d.items() if k != head}
    return {**d, head: _without(d[head], rest)}


def existing_artefact(path: str | os.PathLike, record: dict, *, what: str, fix: str,
                      ignore: tuple[str, ...] = ()) -> dict | None:
    """The one rule for an artefact that may already exist: "same config: keep; another config: refuse".

    ``path`` is the JSON an earlier run wrote beside the artefact (``config.json``, ``model.json``,
    ``manifest.json``) and ``record`` the config this run would write. They are compared on the keys of ``record``
    (the file may hold more, such as metrics), both taken through JSON (tuples become lists), without the dotted keys
    in ``ignore``: settings that change no result already made, such as the number of samples. Returns the file's
    content when they match (keep it), None when there is no file (make it), and otherwise refuses with the settings
    that differ and ``fix``."""
    path = Path(path)
    if not path.is_file():
        return None
    previous = read_json(path)
    want = json.loads(json.dumps(record))
    have = {k: previous.get(k) for k in want}
    for key in ignore:
        want, have = _without(want, key), _without(have, key)
    differs = config_differences(have, want)
    if differs:
        shown = "; ".join(differs[:3]) + ("; ..." if len(differs) > 3 else "")
        raise DiffauditError(f"{path.parent} holds {what} of another config ({shown}); {fix}")
    return previous


def config_hash(obj: Any) -> str:
    """Short stable hash of a JSON-serialisable config (sorted keys), used to recognise finished stages."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Save tensors as safetensors (no pickled code), atomically."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_tensors(path: str | os.PathLike, *, check_finite: bool = True) -> dict[str, torch.Tensor]:
    """Load a safetensors file; refuse one with NaN or Inf weights, which only a diverged run writes."""
    path = Path(path)
    if not path.is_file():
        raise DiffauditError(f"checkpoint {path} does not exist; train first or point to the right run directory")
    try:
        tensors = load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        raise DiffauditError(f"checkpoint {path} is not a readable safetensors file ({err}); it is corrupt or truncated") from None
    if check_finite:
        for name, value in tensors.items():
            if value.is_floating_point() and not torch.isfinite(value).all():
                raise DiffauditError(
                    f"checkpoint {path} has NaN/Inf values in '{name}'; it comes from a diverged run, "
                    "retrain (lower --lr) or use an earlier checkpoint"
                )
    return tensors


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """The hex digest of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_md5(path: str | os.PathLike) -> str:
    return file_digest(path, "md5")


def check_state_dict(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: Path) -> None:
    """Refuse weights that do not match the model's parameter names and shapes."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    if expected != got:
        missing = sorted(set(expected) - set(got))[:3]
        wrong = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])[:3]
        raise DiffauditError(
            f"{source} does not fit the model in its config (missing {missing}, wrong shapes {wrong}); "
            "the weights and model.json come from different runs"
        )


def run_relative(run: Path, path: Path) -> str:
    """``path`` relative to the run directory when inside it (results.json then does not depend on the working
    directory), else as given."""
    try:
        return str(Path(path).resolve().relative_to(Path(run).resolve()))
    except ValueError:
        return str(path)
