"""Stage 1: case-level, seeded Training / Validation / Testing split.

The split depends only on the sorted case ids, the seed, the percentages and
(with STRATIFY_SPLIT) whether each case has a clot, never on directory
listing order. Stratifying spreads clot-free cases over all cohorts, so the
test report can measure false alarms. It is saved to Processed/split.json
and reused as long as those do not change.

SPLIT_FILE: the user's own split, honoured as given (JSON {case: cohort} or
{"cohorts": {cohort: [cases]}} as in split.json, or CSV rows case,cohort);
every case of the cohort must be named once, with one of the three cohort
names. GROUP_BY: a sidecar field (e.g. "source", "site"); every case with
the same value goes to the same cohort (no site leaks into testing).
FOLD = k: the same Testing cohort, and the other cases dealt into
(TRAIN_PERC + VAL_PERC) / VAL_PERC seeded folds with fold k as Validation
(`fold_cohorts`), so the runs of the folds can be tested as one ensemble.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

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


def fold_cohorts(cohorts: dict[str, list[str]], fold: int, n_folds: int, seed: int,
                 strata: dict | None = None) -> dict[str, list[str]]:
    """Fold `fold` of `n_folds` (FOLD): the cases outside Testing dealt into `n_folds` seeded folds,
    fold `fold` the Validation cohort and the others Training; Testing unchanged, so every fold's
    run is tested on the same held-out cases and their models can be averaged (nnU-Net's
    cross-validation folds). With `strata` each label is dealt on its own, continuing the round,
    so the clot-free cases spread over the folds. StageError when a fold would be empty.
    """
    pool = sorted(cohorts[TRAINING] + cohorts[VALIDATION], key=natural_key)
    if len(pool) < n_folds:
        raise StageError(f"FOLD = {fold}: the {len(pool)} case(s) outside Testing make fewer than "
                         f"{n_folds} folds; set FOLD = None or add cases")
    rng = np.random.default_rng([seed, n_folds])
    groups = [pool] if strata is None else [
        [c for c in pool if str(strata[c]) == label] for label in sorted({str(strata[c]) for c in pool})]
    assigned, dealt = {}, 0
    for group in groups:
        for i in rng.permutation(len(group)):
            assigned[group[i]] = dealt % n_folds
            dealt += 1
    return {TRAINING: [c for c in pool if assigned[c] != fold],
            VALIDATION: [c for c in pool if assigned[c] == fold],
            TESTING: list(cohorts[TESTING])}


# ------------------------------------------------------------ user split
_COHORT_ALIASES = {"training": TRAINING, "train": TRAINING, "validation": VALIDATION, "val": VALIDATION,
                   "testing": TESTING, "test": TESTING}


def _few(items, n: int = 5) -> str:
    items = list(items)
    return ", ".join(map(str, items[:n])) + (f" and {len(items) - n} more" if len(items) > n else "")


def _split_file_pairs(path: Path) -> list[tuple[str, str]]:
    """(case, cohort) pairs of a split file, as written (InputDataError, one line)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputDataError(f"SPLIT_FILE {path} does not exist; fix SPLIT_FILE in config.py or set it to None") \
            from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputDataError(f"SPLIT_FILE {path} cannot be read as text: {exc}") from exc
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputDataError(f"SPLIT_FILE {path} is not valid JSON: {exc.msg} at line {exc.lineno}") from exc
        if isinstance(data, dict) and isinstance(data.get("cohorts"), dict) and all(
                isinstance(v, list) for v in data["cohorts"].values()):
            return [(str(c), str(k)) for k, cases in data["cohorts"].items() for c in cases]
        if isinstance(data, dict) and isinstance(data.get("cohorts"), dict):
            data = data["cohorts"]
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise InputDataError(f"SPLIT_FILE {path} must hold {{\"CS1\": \"Training\", ...}} or "
                                 f"{{\"cohorts\": {{\"Training\": [\"CS1\", ...], ...}}}}")
        return [(str(c), v) for c, v in data.items()]
    if path.suffix.lower() != ".csv":
        raise InputDataError(f"SPLIT_FILE {path} must be a .json or .csv file (case,cohort per row)")
    rows = [r for r in csv.reader(io.StringIO(text)) if any(cell.strip() for cell in r)]
    if rows and rows[0] and rows[0][0].strip().lower() in ("case", "case_id", "id") and len(rows[0]) >= 2:
        rows = rows[1:]
    bad = [i + 1 for i, r in enumerate(rows) if len([c for c in r if c.strip()]) != 2]
    if bad:
        raise InputDataError(f"SPLIT_FILE {path}: every row must be case,cohort; row(s) {_few(bad)} are not")
    return [(r[0].strip(), r[1].strip()) for r in rows]


def read_split_file(path: Path, case_ids: list[str]) -> dict[str, list[str]]:
    """The cohorts of a user's split file, checked against the cohort's case ids.

    Case names match case-insensitively; cohort names are Training,
    Validation, Testing (any case; train/val/test also). Unknown, missing or
    twice-named cases, other cohort names, or an empty Training or Validation
    cohort raise InputDataError with one line naming them.
    """
    path = Path(path)
    pairs = _split_file_pairs(path)
    by_lower = {c.lower(): c for c in case_ids}
    cohorts = {name: [] for name in COHORTS}
    seen: dict[str, str] = {}
    unknown, bad_names, twice = [], [], []
    for raw_case, raw_cohort in pairs:
        cohort = _COHORT_ALIASES.get(raw_cohort.strip().lower())
        if cohort is None:
            bad_names.append(f"{raw_case}: {raw_cohort!r}")
            continue
        case = by_lower.get(raw_case.strip().lower())
        if case is None:
            unknown.append(raw_case)
            continue
        if case in seen:
            if seen[case] != cohort:
                twice.append(case)
            continue
        seen[case] = cohort
        cohorts[cohort].append(case)
    missing = sorted(set(case_ids) - set(seen), key=natural_key)
    problems = []
    if bad_names:
        problems.append(f"cohort names other than Training/Validation/Testing ({_few(bad_names)})")
    if unknown:
        problems.append(f"{len(unknown)} case(s) not in the cohort ({_few(unknown)})")
    if missing:
        problems.append(f"{len(missing)} case(s) of the cohort not named ({_few(missing)})")
    if twice:
        problems.append(f"case(s) named in two cohorts ({_few(twice)})")
    if not problems:
        empty = [name for name in (TRAINING, VALIDATION) if not cohorts[name]]
        if empty:
            problems.append(f"no case in {' or '.join(empty)} (training needs both)")
    if problems:
        raise InputDataError(f"SPLIT_FILE {path}: " + "; ".join(problems))
    return {name: sorted(v, key=natural_key) for name, v in cohorts.items()}


# ------------------------------------------------------------ group split
def case_groups(cases, field_name: str) -> dict[str, str]:
    """{case_id: value of the sidecar field `field_name`} for GROUP_BY; a case
    without a sidecar or without the field raises InputDataError (one line)."""
    from clotseg.cohort import read_sidecar

    groups, lacking = {}, []
    for case in cases:
        value = read_sidecar(case.sidecar, case.case_id).get(field_name) if case.sidecar else None
        if value is None or (isinstance(value, str) and not value.strip()):
            lacking.append(case.case_id)
        else:
            groups[case.case_id] = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    if lacking:
        raise InputDataError(f"GROUP_BY = {field_name!r}: {len(lacking)} case(s) have no {field_name!r} in their "
                             f"<case>.json sidecar ({_few(sorted(lacking, key=natural_key))}); add it or set "
                             "GROUP_BY = None")
    return groups


def split_groups(case_ids: list[str], groups: dict[str, str], train_perc: float, val_perc: float,
                 seed: int) -> dict[str, list[str]]:
    """Assign whole groups to cohorts: groups in seeded random order, each to the
    cohort furthest below its target size (in cases); with 3 or more groups
    every cohort gets at least one. Needs 3 groups (InputDataError otherwise)."""
    ids = sorted(set(case_ids))
    members: dict[str, list[str]] = {}
    for c in ids:
        members.setdefault(groups[c], []).append(c)
    names = sorted(members, key=natural_key)
    if len(names) < 3:
        raise InputDataError(f"GROUP_BY gives {len(names)} group(s) ({_few(names)}); keeping each group in one "
                             "cohort needs at least 3 (one each for training, validation and testing)")
    rng = np.random.default_rng(seed)
    order = [names[i] for i in rng.permutation(len(names))]
    target = dict(zip(COHORTS, cohort_sizes(len(ids), train_perc, val_perc)))
    cohorts = {name: [] for name in COHORTS}
    for i, g in enumerate(order):
        empty = [k for k in COHORTS if not cohorts[k]]
        if empty and len(order) - i <= len(empty):      # just enough groups left for the empty cohorts
            k = empty[0]
        else:
            k = max(COHORTS, key=lambda name: (target[name] - len(cohorts[name])) / max(target[name], 1))
        cohorts[k] += members[g]
    return {name: sorted(v, key=natural_key) for name, v in cohorts.items()}


def run_split(settings: Settings, case_ids: list[str], log=print, strata: dict | None = None,
              groups: dict | None = None) -> dict[str, list[str]]:
    """Run or reuse the split; return the cohorts.

    TRAIN_TEST_SPLIT=True: computes the split (or takes SPLIT_FILE, or keeps
    GROUP_BY groups whole); an identical saved split is kept as is.
    TRAIN_TEST_SPLIT=False: reuses Processed/split.json, which must exist
    and name only cases that still exist.
    """
    path = split_path(settings)
    strata = strata if settings.stratify_split and groups is None else None
    user_file = settings.split_file_path
    key = fingerprint({"cases": sorted(case_ids), "seed": settings.random_seed,
                       "train": settings.train_perc, "val": settings.val_perc,
                       "strata": None if strata is None else {c: str(strata[c]) for c in sorted(case_ids)},
                       **({"fold": settings.fold, "folds": settings.n_folds} if settings.fold is not None else {}),
                       **({"groups": {c: groups[c] for c in sorted(case_ids)}} if groups is not None else {}),
                       **({"split_file": str(user_file), "split_file_text": _file_text(user_file)}
                          if user_file is not None else {})})
    saved = _read(path)
    if not settings.train_test_split:
        if saved is None:
            raise StageError(f"TRAIN_TEST_SPLIT is False but there is no saved split at {path}; "
                             "set TRAIN_TEST_SPLIT = True in config.py to create it")
        if saved.get("fold") != settings.fold:   # a split saved before FOLD existed has none
            raise StageError(f"TRAIN_TEST_SPLIT is False but the saved split {path} is "
                             f"{'fold ' + str(saved.get('fold')) if saved.get('fold') is not None else 'without FOLD'}"
                             f", not FOLD = {settings.fold}; set TRAIN_TEST_SPLIT = True to deal the folds")
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
    if user_file is not None:
        cohorts = read_split_file(user_file, case_ids)
        how = f"as given in SPLIT_FILE {user_file}"
    elif groups is not None:
        cohorts = split_groups(case_ids, groups, settings.train_perc, settings.val_perc, settings.random_seed)
        how = f"keeping each {settings.group_by} in one cohort ({len(set(groups.values()))} groups)"
    else:
        cohorts = split_cases(case_ids, settings.train_perc, settings.val_perc, settings.random_seed, strata)
        how = None
        if settings.fold is not None:
            cohorts = fold_cohorts(cohorts, settings.fold, settings.n_folds, settings.random_seed, strata)
            how = f"(fold {settings.fold} of {settings.n_folds}: Validation is that fold, Testing as without FOLD)"
    atomic_write_json(path, {
        "complete": True,
        "fingerprint": key,
        "random_seed": settings.random_seed,
        "train_perc": settings.train_perc,
        "val_perc": settings.val_perc,
        "fold": settings.fold,
        "folds": None if settings.fold is None else settings.n_folds,
        "counts": {k: len(v) for k, v in cohorts.items()},
        "stratified_by": None if strata is None else "has_clot",
        "strata_counts": None if strata is None else {
            k: {label: sum(1 for c in v if str(strata[c]) == label) for label in sorted({str(x) for x in strata.values()})}
            for k, v in cohorts.items()},
        "split_file": None if user_file is None else str(user_file),
        "group_by": None if groups is None else settings.group_by,
        "groups": None if groups is None else {k: sorted({groups[c] for c in v}, key=natural_key)
                                                for k, v in cohorts.items()},
        "cohorts": cohorts,
    })
    log(f"[split] {len(case_ids)} cases -> " + ", ".join(f"{k} {len(v)}" for k, v in cohorts.items())
        + (f" {how}" if how else "") + f"; saved {path}")
    return cohorts


def _file_text(path: Path) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError):
        return None


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
