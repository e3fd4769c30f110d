"""Stage 1: case-level, seeded Training / Validation / Testing split.

The split depends only on the sorted case ids, the seed, the percentages and
(with STRATIFY_SPLIT) whether each case has a clot, never on directory
listing order. Stratifying spreads clot-free cases over all cohorts, so the
test report can measure false alarms. It is saved to Processed/split.json
and reused as long as those do not change.
"""

from __future__ import annotations

import numpy as np

from clotseg.errors import InputDataError, StageError
from clotseg.helpers import natural_key
from clotseg.io import atomic_write_json, fingerprint, read_json
from clotseg.layout import COHORTS, SPLIT_FILE, TESTING, TRAINING, VALIDATION, split_path  # noqa: F401
from clotseg.settings import Settings


def cohort_sizes(n: int, train_perc: float, val_perc: float) -> tuple[int, int, int]:
    """(n_train, n_val, n_test) for n cases: rounded shares; with 3 or more
    cases each cohort gets at least one (taken from the larger of the others)."""
    n_train, n_val = int(round(n * train_perc)), int(round(n * val_perc))
    if n >= 3:
        n_train, n_val = max(1, n_train), max(1, n_val)
        while n_train + n_val > n - 1:
            if n_train >= n_val and n_train > 1:
                n_train -= 1
            else:
                n_val -= 1
    n_train = min(n_train, n)
    n_val = min(n_val, n - n_train)
    return n_train, n_val, n - n_train - n_val


def split_cases(case_ids: list[str], train_perc: float, val_perc: float, seed: int,
                strata: dict | None = None) -> dict[str, list[str]]:
    """Assign case ids to cohorts.

    Sizes: round(n * TRAIN_PERC) training, round(n * VAL_PERC) validation,
    the rest testing; with 3 or more cases every cohort gets at least one.
    `strata` ({case_id: label}, e.g. has-clot) splits each label group on
    its own by the same rule, so a label with 3 or more cases (e.g. the
    clot-free controls) appears in every cohort; if that would leave a cohort
    empty, the split falls back to ignoring the labels.
    Returns {"Training": [...], "Validation": [...], "Testing": [...]}, each
    sorted; the union is `case_ids` and the cohorts are disjoint.
    """
    ids = sorted(set(case_ids))
    if len(ids) != len(case_ids):
        raise InputDataError("duplicate case ids in the cohort")
    n = len(ids)
    if n < 3:
        raise InputDataError(f"the cohort has {n} case(s); the split needs at least 3 "
                             "(one each for training, validation and testing)")
    rng = np.random.default_rng(seed)
    groups = [ids] if strata is None else [
        [c for c in ids if str(strata[c]) == label] for label in sorted({str(strata[c]) for c in ids})]
    cohorts = {name: [] for name in COHORTS}
    for group in groups:
        shuffled = [group[i] for i in rng.permutation(len(group))]
        n_train, n_val, _ = cohort_sizes(len(group), train_perc, val_perc)
        cohorts[TRAINING] += shuffled[:n_train]
        cohorts[VALIDATION] += shuffled[n_train:n_train + n_val]
        cohorts[TESTING] += shuffled[n_train + n_val:]
    if strata is not None and not all(cohorts.values()):
        return split_cases(ids, train_perc, val_perc, seed)
    return {name: sorted(v, key=natural_key) for name, v in cohorts.items()}


def run_split(settings: Settings, case_ids: list[str], log=print, strata: dict | None = None) -> dict[str, list[str]]:
    """Run or reuse the split; return the cohorts.

    TRAIN_TEST_SPLIT=True: computes the split; an identical saved split is
    kept as is. TRAIN_TEST_SPLIT=False: reuses Processed/split.json, which
    must exist and name only cases that still exist.
    """
    path = split_path(settings)
    strata = strata if settings.stratify_split else None
    key = fingerprint({"cases": sorted(case_ids), "seed": settings.random_seed,
                       "train": settings.train_perc, "val": settings.val_perc,
                       "strata": None if strata is None else {c: str(strata[c]) for c in sorted(case_ids)}})
    saved = _read(path)
    if not settings.train_test_split:
        if saved is None:
            raise StageError(f"TRAIN_TEST_SPLIT is False but there is no saved split at {path}; "
                             "set TRAIN_TEST_SPLIT = True in config.py to create it")
        missing = sorted(set(sum(saved["cohorts"].values(), [])) - set(case_ids))
        if missing:
            raise StageError(f"the saved split {path} names cases that no longer exist: {missing}; "
                             "set TRAIN_TEST_SPLIT = True to split again")
        new = sorted(set(case_ids) - set(sum(saved["cohorts"].values(), [])))
        if new:
            log(f"note: {len(new)} case(s) are not in the saved split and are left out: {new[:5]}")
        log(f"[split] reusing {path}")
        return saved["cohorts"]
    if saved is not None and saved.get("fingerprint") == key:
        log(f"[split] up to date: {path}")
        return saved["cohorts"]
    cohorts = split_cases(case_ids, settings.train_perc, settings.val_perc, settings.random_seed, strata)
    atomic_write_json(path, {
        "complete": True,
        "fingerprint": key,
        "random_seed": settings.random_seed,
        "train_perc": settings.train_perc,
        "val_perc": settings.val_perc,
        "counts": {k: len(v) for k, v in cohorts.items()},
        "stratified_by": None if strata is None else "has_clot",
        "strata_counts": None if strata is None else {
            k: {label: sum(1 for c in v if str(strata[c]) == label) for label in sorted({str(x) for x in strata.values()})}
            for k, v in cohorts.items()},
        "cohorts": cohorts,
    })
    log(f"[split] {len(case_ids)} cases -> " + ", ".join(f"{k} {len(v)}" for k, v in cohorts.items())
        + f"; saved {path}")
    return cohorts


def load_split(settings: Settings) -> dict[str, list[str]]:
    """The saved cohorts, or StageError telling the user to run the split."""
    saved = _read(split_path(settings))
    if saved is None:
        raise StageError(f"no saved split at {split_path(settings)}; "
                         "run `python training.py` with TRAIN_TEST_SPLIT = True first")
    return saved["cohorts"]


def _read(path):
    if not path.is_file():
        return None
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return None
    if not (isinstance(data, dict) and data.get("complete") and isinstance(data.get("cohorts"), dict)
            and set(data["cohorts"]) == set(COHORTS)):
        return None
    return data
