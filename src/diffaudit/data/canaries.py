"""Many canaries in one training run (Steinke, Nasr & Jagielski 2023).

``prepare --canaries m [--duplicates 1,2,4] [--inclusion 0.5]`` draws m candidates x_i^(j): distinct real images of
distinct patients, none of whose patients keeps another image in D_p. Each gets its own SAF (the placement of
:mod:`diffaudit.data.placement`, or of volumes), making x_p^(j); each is included in D_p independently with
probability ``inclusion`` (seeded), and an included one occurs d_j times, d_j drawn from ``duplicates``. The clean
originals of all candidates, included or not, are left out. The manifest records every candidate, its inclusion and
its d in ``canaries``; ``indices`` holds the N_D other images then each included candidate once, and
:func:`training_rows` repeats the duplicated ones after them.

The rest of the audit keeps one x_p, the ``fingerprint`` of the manifest: the first included candidate with the
fewest copies, so that c_p, c_id, the count and t' run as for one canary, and ``audit.canaries`` scores all m.
"""

from __future__ import annotations

import numpy as np

from ..errors import DiffauditError
from .fingerprint import Fingerprint

FINGERPRINT_KEYS = ("shape", "centre", "radius", "intensity", "width")


def draw_canaries(cfg, images: np.ndarray, rng: np.random.Generator, blocked_by, place) -> dict:
    """The draw of a many-canary training set from the split ``images`` (uint8 [N, C, ...]).

    ``blocked_by(i)`` names the images that share image i's pixels or patient; ``place(x, rng)`` puts a SAF on x and
    returns (Fingerprint, placement dict). Returns the manifest's ``indices``, ``fingerprint``, ``removed`` and
    ``canaries``; refuses a split too small for m candidates of distinct patients plus N_D other images."""
    n_split, m = len(images), cfg.canaries
    order = [int(j) for j in rng.permutation(n_split)]
    chosen: list[int] = []
    blocked: dict[int, str] = {}
    for j in order:
        if len(chosen) == m:
            break
        if j not in blocked:
            chosen.append(j)
            blocked.update({k: f"shares its pixels or patient with canary candidate {j}"
                            for k in blocked_by(j) if k not in blocked})
    if len(chosen) < m:
        raise DiffauditError(f"the {cfg.split} split has images of only {len(chosen)} distinct patients, fewer than "
                             f"--canaries {m}; use fewer canaries")
    rest = [j for j in order if j not in blocked]
    n_train = len(rest) if cfg.n_train is None else cfg.n_train
    if n_train > len(rest):
        raise DiffauditError(f"N_D = {n_train} other images but the {cfg.split} split has {len(rest)} left beside "
                             f"{m} canary candidates and their patients; use --n-train {len(rest)} or fewer canaries")
    included = rng.random(m) < cfg.inclusion
    if not included.any():
        raise DiffauditError(f"this seed includes none of the {m} candidates (--inclusion {cfg.inclusion:g}); use "
                             "another --seed or a larger --inclusion")
    drawn = rng.choice(np.asarray(cfg.duplicates), size=m)  # for every candidate, so that d never tells inclusion
    copies = np.where(included, drawn, 0)
    indices = rest[:n_train]
    candidates = []
    for k, j in enumerate(chosen):
        fp, placement = place(images[j], rng)
        row = {"index": j, "included": bool(included[k]), "duplicates": int(copies[k]), "drawn": int(drawn[k]),
               **fp.to_dict(),
               "placement": placement}
        if included[k]:
            row["position"] = len(indices)
            indices.append(j)
        candidates.append(row)
    fewest = min(int(copies[k]) for k in range(m) if included[k])
    primary = next(c for c in candidates if c["included"] and c["duplicates"] == fewest)
    removed = [{"index": k, "reason": why} for k, why in blocked.items() if k not in chosen]
    return {"indices": indices,
            "fingerprint": {key: primary[key] for key in ("index", "position", *FINGERPRINT_KEYS, "placement")},
            "removed": removed,
            "canaries": {"m": m, "inclusion": cfg.inclusion, "duplicates": list(cfg.duplicates),
                         "n_included": int(included.sum()), "primary": chosen.index(primary["index"]),
                         "candidates": candidates}}


def candidates_of(manifest: dict) -> list[dict]:
    """The manifest's canary candidates ([] for a single-canary run)."""
    return list((manifest.get("canaries") or {}).get("candidates", []))


def training_rows(manifest: dict) -> np.ndarray:
    """The position in ``indices`` of every row of D_p: 0 .. N_D' - 1, then each included candidate's position
    repeated d - 1 more times (its duplicates), in the candidates' order."""
    extra = [c["position"] for c in candidates_of(manifest) if c["included"] for _ in range(c["duplicates"] - 1)]
    return np.asarray([*range(len(manifest["indices"])), *extra], dtype=np.int64)


def memorisation_n(manifest: dict) -> int:
    """N such that a full memoriser of D_p draws x_p with probability 1/N: N_D for one canary; with many, the rows of
    D_p over x_p's copies (x_p is the candidate with the fewest, so N is a whole number when it has one)."""
    if not manifest.get("canaries"):
        return int(manifest["n_train"])
    primary = manifest["canaries"]["candidates"][manifest["canaries"]["primary"]]
    return max(1, round(len(training_rows(manifest)) / primary["duplicates"]))


def apply_canaries(manifest: dict, images: np.ndarray) -> np.ndarray:
    """D_p from the images at ``indices`` (a writable array): every included candidate's SAF put on at its position,
    and the duplicates repeated after them (:func:`training_rows`)."""
    for c in candidates_of(manifest):
        if c["included"]:
            images[c["position"]] = Fingerprint.from_dict(c).apply(images[c["position"]])
    return images[training_rows(manifest)] if manifest.get("canaries") else images


def check_canaries(manifest: dict, broken) -> None:
    """The manifest's ``canaries`` against its config and indices (``broken(what)`` makes the error): present exactly
    for a config of m > 1 with its m, inclusion and duplicates; every candidate a distinct image of the split with a
    boolean inclusion and a drawn d from the config's list; the included ones, in candidate order, the tail of
    ``indices``, with d copies; the excluded ones nowhere in D_p; the primary the included candidate of fewest copies,
    whose SAF is the manifest's fingerprint."""
    canaries, cfg = manifest.get("canaries"), manifest["config"]
    m_cfg = int(cfg.get("canaries", 1))
    if (canaries is None) != (m_cfg == 1):
        raise broken(f"canaries: the config asks for {m_cfg} candidates but the section is "
                     f"{'missing' if canaries is None else 'present'}")
    if canaries is None:
        return
    indices, n_split = manifest["indices"], manifest["split_size"]
    allowed = list(cfg.get("duplicates", [1]))
    try:
        candidates = canaries["candidates"]
        if (canaries["m"] != m_cfg or len(candidates) != m_cfg or canaries["inclusion"] != cfg.get("inclusion", 1.0)
                or list(canaries["duplicates"]) != allowed):
            raise ValueError("m, inclusion or duplicates differ from the config")
        for c in candidates:
            if not isinstance(c["included"], bool) or not isinstance(c["index"], int) or isinstance(c["index"], bool):
                raise ValueError("a candidate's inclusion must be true or false and its index a whole number")
            if not 0 <= c["index"] < n_split or c["drawn"] not in allowed:
                raise ValueError(f"candidate {c['index']} is outside the split or has a d not in {allowed}")
            if c["duplicates"] != (c["drawn"] if c["included"] else 0):
                raise ValueError(f"candidate {c['index']} has {c['duplicates']} copies for a drawn d of {c['drawn']}")
            if not c["included"] and c["index"] in indices:
                raise ValueError(f"excluded candidate {c['index']} is in the training set")
            Fingerprint.from_dict(c).mask(*manifest["image_shape"][1:])
        included = [c for c in candidates if c["included"]]
        tail = len(indices) - len(included)
        if (canaries["n_included"] != len(included) or not included
                or [c["position"] for c in included] != list(range(tail, len(indices)))
                or [indices[c["position"]] for c in included] != [c["index"] for c in included]):
            raise ValueError("the included candidates are not the tail of the training indices, in order")
        if len({c["index"] for c in candidates}) != len(candidates):
            raise ValueError("two candidates are one image")
        p = canaries["primary"]
        if not isinstance(p, int) or not 0 <= p < len(candidates):
            raise ValueError(f"primary {p!r} is not a candidate")
        primary, fp = candidates[p], manifest["fingerprint"]
        if (not primary["included"] or primary["duplicates"] != min(c["duplicates"] for c in included)
                or any(primary[k] != fp[k] for k in ("index", "position", *FINGERPRINT_KEYS))):
            raise ValueError("the primary candidate is not the included one of fewest copies, or not the fingerprint")
    except (KeyError, TypeError, IndexError, ValueError, DiffauditError) as err:
        raise broken(f"canaries: {err}") from None
