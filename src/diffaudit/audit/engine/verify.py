"""``diffaudit verify RUN``: recompute what can be recomputed from a run directory's artefacts and compare it with what
the run records, so that a release gate (``diffaudit report --fail-above``) rests on numbers nobody edited.

**The digest records.** Every file an audited number depends on has its SHA-256 recorded by the code that writes it,
in ``digests.json`` in the file's folder (``{"format": "diffaudit-digests/1", "algorithm": "sha256", "files":
{name: hex digest}}``, names relative to that folder):

==================================  ========================================================  ========================
folder                              files                                                     recorded by
==================================  ========================================================  ========================
``train/``                          ``model.safetensors``, ``model.json``                     ``train``, the audit's
                                                                                              train and control stages
``classifiers/``                    ``c_p/`` and ``c_id/`` ``model.safetensors`` and          ``train-classifiers``
                                    ``model.json``, ``metrics.json``                          (the classifiers stage)
``samples/<name>/``                 every ``shard_*.npz``                                     ``sample`` (and the
                                                                                              sequential count), when
                                                                                              the folder is finished
==================================  ========================================================  ========================

A model trained elsewhere is recorded by the digest ``train/external.json`` holds (the SHA-256 of its weight files
and scheduler config, :func:`diffaudit.models.load.digest`), and the manifest by its own ``digest``. The audit's stage
records (``audit/stages/<stage>.json``) repeat, under ``files``, the digests of what their stage wrote (paths relative
to the run directory): :func:`stage_files`.

**The checks**, in order; the first that fails names its artefact and the command exits with
:data:`~diffaudit.errors.VERIFY_FAILED`:

1. the manifest's digest (and the rest of :func:`~diffaudit.data.prepare.check_manifest`);
2. the model's weights, every sample shard (of every folder under ``samples/``, the counted one, and a control
   model's counted one) and the detectors against their recorded digests; the samples against the model that made
   them (``config.json`` ``model``);
3. every stage record against the files it names;
4. the count: the counted shards (and a control model's) recounted with the stored detectors, against results.json
   ``reproduction`` (N, |c_p+|, |c_id+|, |q| and which images) and the detectors' false positives;
5. the derived figures: the interval, upper limit and p-value recomputed from the counts (the anytime-valid ones of
   :mod:`~diffaudit.audit.count.sequential` for a sequential count), and the stored verdict's level and interval against
   :func:`~diffaudit.audit.count.verdict.verdict_section`.

A run made before digests were recorded has none to check against: verify says which artefact is unrecorded and
fails; it never passes what it could not check. A digest is unkeyed: it recognises accidents and edits, not a forger
who rewrites an artefact and its record together (see the README).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, NoReturn

from ...data.canaries import memorisation_n
from ...digests import CLASSIFIER_FILES, DIGESTS, MODEL_FILES, SHARDS, sha256_file
from ...errors import DiffauditError, VerifyFailed
from ...io import read_json, run_relative

def _recorded(folder: Path) -> dict[str, str]:
    path = folder / DIGESTS
    if not path.is_file():
        return {}
    record = read_json(path)
    files = record.get("files") if isinstance(record, dict) else None
    return files if isinstance(files, dict) else {}


def stage_files(run: Path, stage: str, samples_name: str) -> dict[str, str]:
    """The digests of what ``stage`` of the audit in ``run`` wrote, by path relative to the run directory, as their
    writers recorded them (the manifest and an external model's record are hashed here): a stage record's ``files``."""
    def under(folder: str) -> dict[str, str]:
        return {f"{folder}/{name}": digest for name, digest in _recorded(run / folder).items()}

    def own(*names: str) -> dict[str, str]:
        return {name: sha256_file(run / name) for name in names if (run / name).is_file()}

    samples = f"samples/{samples_name}"
    if stage == "prepare":
        return own("manifest.json")
    if stage == "train":
        return {**own("train/external.json"), **under("train")}
    if stage == "classifiers":
        return under("classifiers")
    if stage == "sample":  # and a conditional model's samples with x_p's own conditions
        return {**under(samples), **under(f"{samples}-x_p")}
    if stage == "control":
        return {**own("control/manifest.json", "control/train/external.json"), **under("control/train"),
                **under(f"control/{samples}")}
    if stage == "count" and (run / samples / "sequential.json").is_file():  # the sequential count draws the shards
        return {**under(samples), **own(f"{samples}/sequential.json")}
    return {}


# ---- checking -----------------------------------------------------------------------------------------------
def _fail(artefact: str, what: str) -> NoReturn:
    raise VerifyFailed(f"{artefact}: {what}")


def _read(run: Path, path: Path) -> Any:
    """A JSON artefact of the run; an unreadable one is an artefact that disagrees."""
    try:
        return read_json(path)
    except DiffauditError as err:
        _fail(run_relative(run, path), str(err))


def check_recorded(run: Path, folder: Path, required: Iterable[str], what: str) -> None:
    """Every file of ``folder`` in ``required`` and in its ``digests.json`` exists and has its recorded SHA-256."""
    rel = lambda p: run_relative(run, p)  # noqa: E731
    path = folder / DIGESTS
    required = sorted(required)
    if not path.is_file():
        first = folder / (required[0] if required else DIGESTS)
        _fail(rel(first), f"no SHA-256 recorded for it ({rel(path)} is missing: {what} was written by a diffaudit "
                          "that did not record digests yet, or the record was deleted), so it cannot be verified; "
                          "audit the model again in a new run directory with this version")
    record = _read(run, path)
    files = record.get("files") if isinstance(record, dict) else None
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        _fail(rel(path), "is not a digest record ({\"files\": {name: SHA-256}})")
    for name in sorted({*required, *files}):
        target = folder / name
        if name not in files:
            _fail(rel(target), f"its SHA-256 is not recorded in {rel(path)}, so it cannot be verified")
        if not target.is_file():
            _fail(rel(target), f"missing (its SHA-256 is recorded in {rel(path)})")
        got = sha256_file(target)
        if got != files[name]:
            _fail(rel(target), f"its SHA-256 {got[:16]}… differs from the {files[name][:16]}… recorded in {rel(path)} "
                               "when it was written: it was changed since")


#: the type each results.json section must have (None: may be null)
SECTIONS = {"reproduction": (dict,), "verdict": (dict, type(None)), "provenance": (dict, type(None)),
            "t_prime": (dict, type(None)), "t_prime_posthoc": (dict, type(None)), "nll_bpd": (dict, type(None)),
            "fid": (dict, type(None)), "utility": (dict, type(None)), "privacy": (dict, type(None)),
            "fingerprint": (dict, type(None)), "dataset": (str,), "split": (str,), "n_train": (int,)}
_NUMBER = (int, float)
REPRODUCTION_FIELDS = {"q": (int,), "n_samples": (int,), "c_p": (int, type(None)), "c_id": (int, type(None)),
                       "rate": _NUMBER, "rate_upper95": _NUMBER, "p_value": _NUMBER, "expected_q": _NUMBER,
                       "samples": (str,), "detectors": (dict,), "false_positive_rate": (dict,), "positives": (dict,),
                       "model": (dict,), "design": (str,), "sequential": (dict,)}
VERDICT_FIELDS = {"level": (str,), "interval": (list,), "rate": _NUMBER}


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    return {dict: "object", list: "list", str: "string", int: "number", float: "number", type(None): "null"}.get(
        type(value), type(value).__name__)


def _wanted(types: tuple) -> str:
    """The JSON kinds ``types`` allow, for a message: an int-only field is a whole number."""
    return " or ".join(sorted({"whole number" if t is int and float not in types else _kind(t()) for t in types}))


def _typed(value: Any, types: tuple) -> bool:
    return isinstance(value, types) and not (isinstance(value, bool) and bool not in types)


def check_results(results: Any, where: str | os.PathLike = "results.json") -> dict:
    """``results`` (results.json's content) with every section of the type the audit writes; refused, naming the
    section, otherwise (an edited or damaged file)."""
    fix = "the file was edited or damaged; rerun the stage that writes it"
    if not isinstance(results, dict):
        raise DiffauditError(f"{where} holds a JSON {_kind(results)}, not an object; {fix}")
    for name, types in SECTIONS.items():
        if name in results and not _typed(results[name], types):
            raise DiffauditError(f"{where}: section '{name}' is a JSON {_kind(results[name])}, not "
                                 f"{_wanted(types)}; {fix}")
    for section, fields in (("reproduction", REPRODUCTION_FIELDS), ("verdict", VERDICT_FIELDS)):
        body = results.get(section)
        for name, types in fields.items():
            if isinstance(body, dict) and name in body and not _typed(body[name], types):
                raise DiffauditError(f"{where}: '{section}.{name}' is a JSON {_kind(body[name])}, not "
                                     f"{_wanted(types)}; {fix}")
    rep = results.get("reproduction")
    if isinstance(rep, dict):
        detectors = rep.get("detectors")
        if isinstance(detectors, dict) and not all(isinstance(v, dict) for v in detectors.values()):
            raise DiffauditError(f"{where}: 'reproduction.detectors' must map each detector to an object; {fix}")
        ci = rep.get("rate_ci95")
        if "rate_ci95" in rep and not (isinstance(ci, list) and len(ci) == 2 and all(_typed(v, _NUMBER) for v in ci)):
            raise DiffauditError(f"{where}: 'reproduction.rate_ci95' must be a list of two numbers; {fix}")
    return results


def _same(a: Any, b: Any) -> bool:
    """Equal, floats up to rounding (rel. 1e-9)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, _NUMBER) and isinstance(b, _NUMBER):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-15) or (math.isnan(a) and math.isnan(b))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def _samples_folder(run: Path, where: str) -> Path:
    path = Path(where)
    return path if path.is_absolute() else run / path


def _check_model(run: Path, manifest: dict) -> str:
    """The model's weights against their record; returns the model's digest (``Generative.model_id``)."""
    from ...models.load import EXTERNAL, run_model

    external = run / "train" / EXTERNAL
    if external.is_file():
        record = _read(run, external)
        try:
            return run_model(run, manifest=manifest, device="cpu").model_id
        except DiffauditError as err:
            where = record.get("path") if isinstance(record, dict) else None
            _fail(f"the model at {where} (train/{EXTERNAL})", str(err))
    if not (run / "train" / "model.json").is_file():
        _fail("train/model.safetensors", "missing: the run has no model (and no train/external.json)")
    check_recorded(run, run / "train", MODEL_FILES, "the model")
    try:
        return run_model(run, manifest=manifest, device="cpu").model_id
    except DiffauditError as err:
        _fail("train/model.safetensors", str(err))


def _check_stage_records(run: Path) -> None:
    from ...config import STAGES

    folder = run / "audit" / "stages"
    records = sorted(folder.glob("*.json"), key=lambda p: (STAGES.index(p.stem) if p.stem in STAGES else len(STAGES),
                                                           p.name)) if folder.is_dir() else []
    for path in records:
        where = run_relative(run, path)
        record = _read(run, path)
        files = record.get("files") if isinstance(record, dict) else None
        if files is None:
            _fail(where, "records no digests of its stage's files (written by a diffaudit that did not record them "
                         "yet), so they cannot be verified; audit the model again in a new run directory")
        if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
            _fail(where, "its 'files' is not an object of SHA-256 digests")
        for name, want in sorted(files.items()):
            target = run / name
            if not target.is_file():
                _fail(name, f"missing (named by {where})")
            got = sha256_file(target)
            if got != want:
                _fail(name, f"its SHA-256 {got[:16]}… differs from the {want[:16]}… recorded in {where}: it was "
                            "changed after its stage")


def _differs(artefact: str, field: str, stored: Any, found: Any, how: str) -> NoReturn:
    _fail(artefact, f"{field} is {stored!r}, but {how} gives {found!r}")


def _counted(run: Path, folder: Path, count):
    """``count()``, with a shard that cannot be read reported as an artefact that disagrees."""
    try:
        return count()
    except VerifyFailed:
        raise
    except DiffauditError as err:
        _fail(run_relative(run, folder), str(err))


def _recount(run: Path, rep: dict, manifest: dict, metrics: dict, *, data_root, device: str,
             progress: bool) -> None:
    """Count the counted shards (and a control model's) again with the stored detectors, and compare."""
    from ...adversary.stage import AuditData, make_detectors
    from ...generate import iter_shards
    from ..count.stage import at_target_fpr
    from ..count.reproduction import count_reproductions
    from ..count.sequential import read_sequential

    kinds = {d.get("kind") for d in rep.get("detectors", {}).values() if isinstance(d, dict)}
    kind = "nn" if kinds == {"nearest-neighbour"} else "classifiers"
    audit = AuditData(manifest, data_root)
    try:
        detectors = make_detectors(run, audit, kind, device=device)
    except VerifyFailed:
        raise
    except DiffauditError as err:
        _fail("classifiers/" if kind == "classifiers" else "the reference detector", str(err))
    fp = rep.get("false_positive_rate") or {}
    if kind == "classifiers":
        real = fp.get("heldout_real")
        if rep.get("target_fpr") is not None:
            found = at_target_fpr(detectors, audit.test, rep["target_fpr"])
            how = f"setting the thresholds at --target-fpr {rep['target_fpr']} again"
        else:
            found = ((metrics.get("false_positive_rate") or {}).get("heldout_real"))
            how = "classifiers/metrics.json"
        if not _same(real, found):
            _differs("results.json", "reproduction.false_positive_rate.heldout_real", real, found, how)

    described = json.loads(json.dumps({name: d.describe() for name, d in detectors.items()}))
    if not _same(rep.get("detectors"), described):
        _differs("results.json", "reproduction.detectors", rep.get("detectors"), described, "the stored detectors")

    folder = _samples_folder(run, rep["samples"])
    try:
        seq = read_sequential(folder)
    except DiffauditError as err:
        _fail(run_relative(run, folder / "sequential.json"), str(err))
    if (seq is not None) != (rep.get("design") == "sequential"):
        _differs("results.json", "reproduction.design", rep.get("design"), "sequential" if seq else None,
                 f"{run_relative(run, folder)} (a sequential count writes sequential.json)")
    limit = int(seq["n_samples"]) if seq else None
    total = limit
    if total is None and (folder / "config.json").is_file():
        total = ((_read(run, folder / "config.json") or {}).get("sample") or {}).get("n")
    count = _counted(run, folder, lambda: count_reproductions(iter_shards(folder, limit), detectors, keep=0,
                                                              progress=progress, total=total))
    how = f"recounting {run_relative(run, folder)} with the stored detectors"
    counts = count.counts()
    found = {"n_samples": count.n, "q": counts["q"], "c_p": counts.get("c_p"), "c_id": counts.get("c_id")}
    for key, value in found.items():
        if rep.get(key) != value:
            _differs("results.json", f"reproduction.{key}", rep.get(key), value, how)
    stored = rep.get("positives")
    if isinstance(stored, dict) and stored.get("q") != count.q:
        _differs("results.json", "reproduction.positives.q", stored.get("q"), count.q, how)

    control = fp.get("control_samples")
    if isinstance(control, dict) and control.get("samples"):
        folder = _samples_folder(run, control["samples"])
        c = _counted(run, folder, lambda: count_reproductions(iter_shards(folder), detectors, keep=0, progress=progress))
        for name, k in c.counts().items():
            want = {"positives": k, "n": c.n, "rate": k / c.n}
            if not _same(control.get(name), want):
                _differs("results.json", f"reproduction.false_positive_rate.control_samples.{name}", control.get(name),
                         want, f"recounting {run_relative(run, folder)} with the stored detectors")


def _recount_x_p(run: Path, rep: dict, manifest: dict, *, data_root, device: str, progress: bool) -> None:
    """A conditional model's count of the samples it drew with x_p's own conditions: counted again with the stored
    detectors, and its test against full memorisation among the training images sharing them recomputed."""
    from ...adversary.stage import AuditData, make_detectors
    from ...generate import iter_shards
    from ..count.reproduction import count_reproductions
    from ..count.stage import conditioned_on
    from ..count.stats import reproduction_test

    name = "reproduction_x_p"
    if not isinstance(rep, dict) or not isinstance(rep.get("samples"), str):
        _fail("results.json", f"{name} names no samples; the file was edited or damaged")
    folder = _samples_folder(run, rep["samples"])
    if not folder.is_dir():
        _fail(run_relative(run, folder), f"missing: the samples results.json's {name} counted are gone")
    check_recorded(run, folder, [p.name for p in folder.glob(SHARDS)], "the samples")
    kinds = {d.get("kind") for d in (rep.get("detectors") or {}).values() if isinstance(d, dict)}
    try:
        detectors = make_detectors(run, AuditData(manifest, data_root),
                                   "nn" if kinds == {"nearest-neighbour"} else "classifiers", device=device)
        drawn = conditioned_on(folder, manifest, data_root)
    except DiffauditError as err:
        _fail(run_relative(run, folder), str(err))
    if not drawn or drawn.get("mode") != "x_p":
        _fail(run_relative(run, folder / "config.json"), f"does not record samples drawn with x_p's own conditions, "
                                                         f"which results.json's {name} counted")
    count = _counted(run, folder, lambda: count_reproductions(iter_shards(folder), detectors, keep=0,
                                                              progress=progress))
    counts = count.counts()
    test = reproduction_test(counts["q"], count.n, drawn["matching"])
    how = f"recounting {run_relative(run, folder)} with the stored detectors"
    for key, value in {"n_samples": count.n, "q": counts["q"], "c_p": counts.get("c_p"), "c_id": counts.get("c_id"),
                       "expected_q": test["expected_q"], "p_value": test["p_value"]}.items():
        if not _same(rep.get(key), value):
            _differs("results.json", f"{name}.{key}", rep.get(key), value, how)


CENSUS_FIELDS = ("n_samples", "n_train", "threshold", "copies", "share", "share_ci95", "n_copied", "n_copied_groups",
                 "n_copied_patients", "copied", "x_p")


def _recount_census(run: Path, census: dict, *, data_root) -> None:
    """The census recomputed from its samples in its space (the embedding the census trained is reloaded, the user's
    encoder read again), without writing, and compared field by field, its verdict included."""
    from ..census.stage import run_census

    if not isinstance(census, dict) or not isinstance(census.get("samples"), str):
        _fail("results.json", "census names no samples; the file was edited or damaged")
    space = census.get("space") or {}
    user = space.get("path") if space.get("space") == "embedding (user)" else None
    try:
        again = run_census(run, samples=str(_samples_folder(run, census["samples"])),
                           space="embedding" if str(space.get("space", "")).startswith("embedding") else "pixel",
                           fpr=(census.get("calibration") or {}).get("fpr_target", 0.001), embedding=user,
                           embedding_size=space.get("input_side") if user else None,
                           embedding_steps=space.get("steps", 300), data_root=data_root, progress=False,
                           log=lambda _: None, write=False)
    except DiffauditError as err:
        _fail("results.json", f"census: {err}")
    how = "the census recomputed from its samples"
    for key in CENSUS_FIELDS:
        if not _same(census.get(key), again.get(key)):
            _differs("results.json", f"census.{key}", census.get(key), again.get(key), how)
    if (census.get("verdict") or {}).get("level") != again["verdict"]["level"]:
        _differs("results.json", "census.verdict.level", (census.get("verdict") or {}).get("level"),
                 again["verdict"]["level"], how)


CANARY_FIELDS = ("n_samples", "m", "n_included", "reproduced", "excluded_flagged")


def _recount_canaries(run: Path, canaries: dict, *, data_root, device: str = "cpu") -> None:
    """The many-canary section recomputed from its samples, without writing: the counts, the dose-response and
    ε_lower (with the candidates' classifier, once its files match their recorded digests)."""
    from ..canaries.identity import IDENTITY_FILES
    from ..canaries.stage import CANARY_DETECTORS, run_canaries

    if not isinstance(canaries, dict) or not isinstance(canaries.get("samples"), str):
        _fail("results.json", "canaries names no samples; the file was edited or damaged")
    detector = canaries.get("detector_option", "nn")
    if detector not in CANARY_DETECTORS:
        _fail("results.json", f"canaries.detector_option {detector!r} is not one of {', '.join(CANARY_DETECTORS)}")
    if detector == "classifier":  # never retrained here: a missing or changed classifier is named
        check_recorded(run, run / "canaries" / "identity", IDENTITY_FILES, "the candidates' classifier")
    eps = canaries.get("epsilon") or {}
    try:
        again = run_canaries(run, samples=str(_samples_folder(run, canaries["samples"])),
                             confidence=eps.get("confidence", 0.95), delta=eps.get("delta", 0.0),
                             seed=eps.get("tie_seed", 0), detector=detector, data_root=data_root, device=device,
                             progress=False, log=lambda _: None, write=False)
    except DiffauditError as err:
        _fail("results.json", f"canaries: {err}")
    how = "the canaries recounted from their samples"
    model_json = run / "train" / "model.json"
    dp = read_json(model_json).get("dp") if model_json.exists() else None
    if dp is not None and not _same(eps.get("delta"), dp["delta"]):
        _differs("results.json", "canaries.epsilon.delta", eps.get("delta"), dp["delta"], "the DP model's δ")
    for key in CANARY_FIELDS:
        if not _same(canaries.get(key), again.get(key)):
            _differs("results.json", f"canaries.{key}", canaries.get(key), again.get(key), how)
    for key in ("epsilon_lower", "guesses", "correct"):
        if not _same(eps.get(key), again["epsilon"][key]):
            _differs("results.json", f"canaries.epsilon.{key}", eps.get(key), again["epsilon"][key], how)
    if not _same((canaries.get("dose_response") or {}).get("by_d"), again["dose_response"]["by_d"]):
        _differs("results.json", "canaries.dose_response.by_d", "as recorded", "as recounted", how)


def _check_whitebox(run: Path, section: dict, model: str) -> None:
    """The white-box canary bound against its recorded scores (recomputing the scores needs the model's runs)."""
    from ..canaries.whitebox import check_whitebox

    if not isinstance(section, dict):
        _fail("results.json", "canaries_whitebox is not a section; the file was edited or damaged")
    for key, recorded, again in check_whitebox(run, section):
        _differs("results.json", f"canaries_whitebox.{key}", recorded, again, "its recorded scores")
    model_json = run / "train" / "model.json"
    dp = read_json(model_json).get("dp") if model_json.exists() else None
    delta = (section.get("epsilon") or {}).get("delta")
    if dp is not None and not _same(delta, dp["delta"]):
        _differs("results.json", "canaries_whitebox.epsilon.delta", delta, dp["delta"], "the DP model's δ")
    if (section.get("model") or {}).get("digest") != model:
        _differs("results.json", "canaries_whitebox.model.digest", (section.get("model") or {}).get("digest"), model,
                 "the run's model")


def _check_figures(results: dict, manifest: dict, metrics: dict) -> None:
    """The derived figures of results.json against their recomputation from its counts."""
    from ..report.render import cautions_of
    from ..count.sequential import sequential_fields
    from ..count.stats import reproduction_test
    from ..count.verdict import verdict_section

    rep = results["reproduction"]
    n_train = memorisation_n(manifest)
    if results.get("n_train") != n_train:
        _differs("results.json", "n_train", results.get("n_train"), n_train, "manifest.json")
    try:
        test = reproduction_test(rep["q"], rep["n_samples"], n_train)
    except DiffauditError as err:
        _fail("results.json", f"reproduction: {err}")
    fixed = {k: test[k] for k in ("p_value", "rate_ci95", "rate_upper95")}
    expected = {**fixed, "rate": test["rate"], "expected_q": test["expected_q"]}
    how = "the exact binomial test of its counts"
    if rep.get("design") == "sequential":
        seq = rep.get("sequential")
        if not isinstance(seq, dict) or not isinstance((rep.get("positives") or {}).get("q"), list):
            _fail("results.json", "reproduction: a sequential count without its sequential record or positives")
        try:
            expected.update(sequential_fields({**seq, "looks": []}, rep["positives"]["q"], rep["n_samples"], n_train,
                                              fixed))
        except (KeyError, TypeError, ValueError) as err:
            _fail("results.json", f"reproduction.sequential is incomplete ({type(err).__name__}: {err})")
        expected.pop("sequential")
        expected["fixed_n"] = {k: v for k, v in expected["fixed_n"].items() if k != "note"}
        how = "the anytime-valid confidence sequence of its counts"
    for key, value in expected.items():
        stored = rep.get(key)
        if key == "fixed_n" and isinstance(stored, dict):
            stored = {k: v for k, v in stored.items() if k != "note"}
        if not _same(stored, value):
            _differs("results.json", f"reproduction.{key}", stored, value, how)
    stored = results.get("verdict")
    if stored is None:
        return
    try:
        v = verdict_section(results, metrics, cautions=cautions_of(results, metrics)) or {}
    except DiffauditError as err:
        _fail("results.json", f"verdict: {err}")
    except (KeyError, TypeError, ValueError, IndexError) as err:
        _fail("results.json", f"verdict: its counts cannot be read ({type(err).__name__}: {err})")
    for key in ("level", "interval"):
        if not _same(stored.get(key), v.get(key)):
            _differs("results.json", f"verdict.{key}", stored.get(key), v.get(key), "the verdict of its counts")


def verify_run(run: str | os.PathLike, *, data_root=None, device: str = "auto", progress: bool = True) -> dict:
    """Run every check of the module docstring on run directory ``run``; raises :class:`VerifyFailed` naming the first
    artefact that disagrees, and returns a summary when all agree."""
    from ...data.prepare import load_manifest

    run = Path(run)
    if not run.is_dir():
        raise DiffauditError(f"{run} is not a run directory; give the folder of an audited run")
    try:
        manifest = load_manifest(run)
    except DiffauditError as err:
        _fail("manifest.json", str(err))
    if not (run / "results.json").is_file():
        _fail("results.json", "missing: the run has no count to verify")
    try:
        results = check_results(_read(run, run / "results.json"))
    except VerifyFailed:
        raise
    except DiffauditError as err:
        _fail("results.json", str(err).removeprefix("results.json: "))
    rep = results.get("reproduction")
    if not rep and results.get("census"):  # a post-hoc audit: the census is what there is to verify
        model = _check_model(run, manifest)
        census = results["census"]
        folder = _samples_folder(run, str(census.get("samples")))
        check_recorded(run, folder, [p.name for p in folder.glob(SHARDS)], "the samples")
        if (census.get("model") or {}).get("digest") not in (None, model):
            _differs("results.json", "census.model.digest", census["model"]["digest"], model, "the run's model")
        _recount_census(run, census, data_root=data_root)
        return {"model": model, "q": None, "n": census["n_samples"], "level": (census.get("verdict") or {}).get("level")}
    if not rep:
        _fail("results.json", "has no reproduction count to verify; run the count stage first")
    missing = [k for k in ("samples", "q", "n_samples", "detectors") if k not in rep]
    if missing:
        _fail("results.json", f"reproduction has no '{missing[0]}'; the file was edited or damaged")
    metrics_path = run / "classifiers" / "metrics.json"
    metrics = _read(run, metrics_path) if metrics_path.exists() else {}
    if not isinstance(metrics, dict):
        _fail("classifiers/metrics.json", "holds no JSON object")

    model = _check_model(run, manifest)
    counted = _samples_folder(run, rep["samples"])
    control = ((rep.get("false_positive_rate") or {}).get("control_samples") or {}).get("samples")
    own = sorted(p for p in (run / "samples").glob("*") if p.is_dir()) if (run / "samples").is_dir() else []
    folders = {p.resolve(): p for p in [*own, counted]}
    for folder in sorted(folders.values()):
        if not folder.is_dir():
            _fail(run_relative(run, folder), "missing: the samples results.json counted are gone")
        check_recorded(run, folder, [p.name for p in folder.glob(SHARDS)], "the samples")
        config = _read(run, folder / "config.json") if (folder / "config.json").is_file() else {}
        made_by = config.get("model") if isinstance(config, dict) else None
        if made_by != model:
            _fail(run_relative(run, folder / "config.json"), f"records samples of model {made_by}, but the run's model "
                                                           f"is {model}")
    if control:
        folder = _samples_folder(run, control)
        if not folder.is_dir():
            _fail(run_relative(run, folder), "missing: the control samples results.json counted are gone")
        check_recorded(run, folder, [p.name for p in folder.glob(SHARDS)], "the control samples")
    if (rep.get("model") or {}).get("digest") != model:
        _differs("results.json", "reproduction.model.digest", (rep.get("model") or {}).get("digest"), model,
                 "the run's model")
    kinds = {d.get("kind") for d in rep.get("detectors", {}).values() if isinstance(d, dict)}
    if (run / "classifiers").is_dir() or "classifier" in kinds:
        check_recorded(run, run / "classifiers", CLASSIFIER_FILES, "the classifiers")
    _check_stage_records(run)

    _recount(run, rep, manifest, metrics, data_root=data_root, device=device, progress=progress)
    _check_figures(results, manifest, metrics)
    if results.get("reproduction_x_p") is not None:
        _recount_x_p(run, results["reproduction_x_p"], manifest, data_root=data_root, device=device,
                     progress=progress)
    if results.get("census") is not None:
        _recount_census(run, results["census"], data_root=data_root)
    if results.get("canaries") is not None:
        _recount_canaries(run, results["canaries"], data_root=data_root, device=device)
    if results.get("canaries_whitebox") is not None:
        _check_whitebox(run, results["canaries_whitebox"], model)
    level = (results.get("verdict") or {}).get("level")
    return {"model": model, "q": rep["q"], "n": rep["n_samples"], "level": level}
