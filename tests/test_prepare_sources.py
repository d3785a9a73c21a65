"""The prepare stage on the user's own images (``PrepareConfig.data``): the cache, the manifest that rebuilds it,
patients and twins kept away from x_p, the control set's reuse of the cache, and the export round trip."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffaudit.config import PrepareConfig
from diffaudit.data.dataset import CACHE
from diffaudit.data.export import export_run
from diffaudit.data.prepare import build_training_set, clean_original, load_manifest, prepare_run, split_images
from diffaudit.data.sources import assign_splits, load_images, open_source, pixel_digest
from diffaudit.errors import DiffauditError


def _body(rng: np.random.Generator, h: int = 48, w: int = 40) -> np.ndarray:
    """A bright textured ellipse (the body) on a black background (the air)."""
    yy, xx = np.mgrid[:h, :w]
    inside = ((yy - h / 2) / (0.45 * h)) ** 2 + ((xx - w / 2) / (0.45 * w)) ** 2 < 1
    x = np.zeros((h, w), np.uint8)
    x[inside] = rng.integers(90, 200, size=int(inside.sum()))
    return x


def _folder(root: Path, *, n: dict[str, int], seed: int = 0, sixteen_bit: bool = False) -> Path:
    rng = np.random.default_rng(seed)
    for split, count in n.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            x = _body(rng)
            if sixteen_bit:
                Image.fromarray(x.astype(np.uint16) * 200).save(root / split / f"{split}_{i:03d}.png")
            else:
                Image.fromarray(x).save(root / split / f"{split}_{i:03d}.png")
    return root


def _quiet(_msg: str) -> None:
    pass


def test_a_folder_is_prepared_into_the_run_and_rebuilt_from_the_manifest(tmp_path):
    data = _folder(tmp_path / "scans", n={"train": 20, "val": 4, "test": 6})
    cfg = PrepareConfig(data=str(data), n_train=12, seed=1, size=32)
    m = prepare_run(tmp_path / "run", cfg, log=_quiet, progress=False)
    assert m["dataset"] == "folder:scans" and m["n_train"] == 12 and m["split_size"] == 20
    assert m["image_shape"] == [1, 32, 32] and m["cache"]["shape"] == [30, 1, 32, 32]
    assert [r["split"] for r in m["source"]["records"]] == ["train"] * 20 + ["val"] * 4 + ["test"] * 6
    assert all(len(r["sha256"]) == 64 for r in m["source"]["records"])
    assert (tmp_path / "run" / "prepare" / "x_i_and_x_p.png").is_file()
    d_p = build_training_set(load_manifest(tmp_path / "run"))
    assert d_p.shape == (12, 1, 32, 32) and d_p.flags.writeable
    # the SAF lies on the body: every one of its pixels was inside the ellipse of x_i
    fp = m["fingerprint"]
    x_i = clean_original(load_manifest(tmp_path / "run"))
    from diffaudit.data.fingerprint import Fingerprint

    under = x_i[0][Fingerprint.from_dict(fp).mask(32, 32)]
    assert under.min() > 0 and fp["placement"]["contrast"] >= cfg.saf_contrast
    # a deleted cache is rebuilt from the recorded files, bit for bit
    (tmp_path / "run" / CACHE).unlink()
    again = build_training_set(load_manifest(tmp_path / "run"))
    assert np.array_equal(again, d_p)
    assert len(split_images(load_manifest(tmp_path / "run"), "test")) == 6


def test_a_changed_source_file_is_refused_by_name_when_the_cache_is_rebuilt(tmp_path):
    data = _folder(tmp_path / "scans", n={"train": 8, "test": 3})
    prepare_run(tmp_path / "run", PrepareConfig(data=str(data), n_train=4, size=32), log=_quiet, progress=False)
    (tmp_path / "run" / CACHE).unlink()
    Image.fromarray(np.full((48, 40), 7, np.uint8)).save(data / "train" / "train_003.png")
    with pytest.raises(DiffauditError, match="train_003.png has changed"):
        build_training_set(load_manifest(tmp_path / "run"))


def test_an_edited_cache_is_refused(tmp_path):
    data = _folder(tmp_path / "scans", n={"train": 8, "test": 3})
    prepare_run(tmp_path / "run", PrepareConfig(data=str(data), n_train=4, size=32), log=_quiet, progress=False)
    cache = np.load(tmp_path / "run" / CACHE, mmap_mode="r+")
    cache[0, 0, 0, 0] ^= 1
    cache.flush()
    del cache
    with pytest.raises(DiffauditError, match="SHA-256"):
        build_training_set(load_manifest(tmp_path / "run"))


def test_a_refused_prepare_leaves_nothing_behind(tmp_path):
    data = _folder(tmp_path / "scans", n={"train": 5, "test": 2})
    with pytest.raises(DiffauditError, match="N_D = 50"):
        prepare_run(tmp_path / "run", PrepareConfig(data=str(data), n_train=50, size=32), log=_quiet, progress=False)
    assert not (tmp_path / "run").exists()


def test_x_i_patient_and_twins_never_train_beside_x_p(tmp_path):
    rng = np.random.default_rng(3)
    root = tmp_path / "scans"
    (root / "img").mkdir(parents=True)
    rows = ["file,label,patient"]
    images = [_body(rng) for _ in range(24)]
    for i in range(24):
        Image.fromarray(images[i]).save(root / "img" / f"{i:02d}.png")
        rows.append(f"img/{i:02d}.png,{i % 2},P{i // 3}")  # three images per patient
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    cfg = PrepareConfig(data=str(root), n_train=None, seed=0, size=32, split_ratios=(1.0, 0.0, 0.0))
    m = prepare_run(tmp_path / "run", cfg, log=_quiet, progress=False)
    recs = m["source"]["records"]
    x_i = m["fingerprint"]["index"]
    patient = recs[x_i]["patient"]
    in_d_p = [recs[i]["patient"] for i in m["indices"]]
    assert in_d_p.count(patient) == 1  # x_p alone for its patient
    assert m["n_train"] == 22 and len(m["removed"]) == 2
    assert all("same patient" in r["reason"] for r in m["removed"])
    # a twin of x_i (the same pixels under another name) is kept out as well
    twin_root = tmp_path / "twins"
    (twin_root / "train").mkdir(parents=True)
    (twin_root / "test").mkdir()
    for i in range(10):
        Image.fromarray(images[i]).save(twin_root / "train" / f"{i:02d}.png")
    for i in range(10):
        Image.fromarray(images[i]).save(twin_root / "train" / f"copy_{i:02d}.png")
    Image.fromarray(images[20]).save(twin_root / "test" / "t.png")
    m = prepare_run(tmp_path / "run2", PrepareConfig(data=str(twin_root), n_train=None, size=32),
                    log=_quiet, progress=False)
    assert m["n_train"] == 19 and [r["reason"] for r in m["removed"]] == ["same pixels as x_i"]
    d_p = build_training_set(load_manifest(tmp_path / "run2"))
    x_i_digest = pixel_digest(clean_original(load_manifest(tmp_path / "run2")))
    assert x_i_digest not in {pixel_digest(x) for x in d_p}
    assert m["duplicates"]["groups_in_training_set"] == 9


def test_the_control_set_reuses_the_cache_and_leaves_x_i_out(tmp_path):
    data = _folder(tmp_path / "scans", n={"train": 12, "test": 3})
    cfg = PrepareConfig(data=str(data), n_train=6, size=32)
    m = prepare_run(tmp_path / "run", cfg, log=_quiet, progress=False)
    messages = []
    c = prepare_run(tmp_path / "run" / "control", dataclasses.replace(cfg, fingerprint=False), log=messages.append,
                    progress=False, same_data=tmp_path / "run")
    assert not any("images from" in msg for msg in messages)  # nothing scanned again
    assert c["cache"]["sha256"] == m["cache"]["sha256"] and c["excluded_index"] == m["fingerprint"]["index"]
    assert m["fingerprint"]["index"] not in c["indices"] and len(c["indices"]) == 6


def test_sixteen_bit_images_are_scaled_by_percentiles_and_recorded(tmp_path):
    data = _folder(tmp_path / "scans", n={"train": 6, "test": 2}, sixteen_bit=True)
    m = prepare_run(tmp_path / "run", PrepareConfig(data=str(data), n_train=4, size=32), log=_quiet, progress=False)
    assert "percentiles" in m["preprocessing"]["intensity"]["other"]
    assert sum(m["preprocessing"]["rules"].values()) == 8
    assert json.loads(json.dumps(m["config"]))["data"] == str(data)


def test_export_then_prepare_gives_the_identical_training_set(tmp_path, data_root):
    run = tmp_path / "run"
    prepare_run(run, PrepareConfig(dataset="breastmnist", n_train=16, seed=2), data_root=data_root, log=_quiet)
    d_p = build_training_set(load_manifest(run), data_root=data_root)
    export_run(run, out=tmp_path / "exported", data_root=data_root)
    again = prepare_run(tmp_path / "again", PrepareConfig(data=str(tmp_path / "exported"), split_ratios=(1.0, 0.0, 0.0),
                                                         size=28, n_train=None, fingerprint=False),
                        log=_quiet, progress=False)
    cache = np.load(tmp_path / "again" / CACHE)
    assert sorted(pixel_digest(x) for x in cache) == sorted(pixel_digest(x) for x in d_p)
    source = assign_splits(open_source(tmp_path / "exported", log=_quiet), ratios=(1.0, 0.0, 0.0))
    assert np.array_equal(np.sort(load_images(source, size=28, channels=1).reshape(16, -1), axis=0),
                          np.sort(d_p.reshape(16, -1), axis=0))
    assert again["split_size"] == 16


def test_medmnist_plus_sizes_read_their_own_file(tmp_path, data_root):
    from conftest import write_synthetic_medmnist

    root = tmp_path / "plus"
    root.mkdir()
    write_synthetic_medmnist(root / "breastmnist.npz", sizes=(20, 4, 6), channels=1, classes=2)
    with pytest.raises(DiffauditError, match="breastmnist_64.npz"):
        prepare_run(tmp_path / "r64", PrepareConfig(dataset="breastmnist", size=64, n_train=8), data_root=root,
                    log=_quiet)
    with pytest.raises(DiffauditError, match="size"):
        PrepareConfig(dataset="breastmnist", size=100)
