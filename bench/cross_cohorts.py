"""Every repeat's model scored on every repeat's test cohort; two configurations compared over all the models.

    python -m bench.cross_cohorts WORKDIR [WORKDIR_B] [--domain first-build] [--untuned]
                                  [--labels A B] [--where hyperdense=false] [--ncct-contrast :10]
                                  [--cohorts 3,4] [--out F.json]

WORKDIR is a `bench/quality.py --workdir` folder with two or more repeats
(repeat<i>/Trainings/<run>, its test cohort repeat<i>/test_<domain>/ and
that model's own scoring repeat<i>/Testing_<domain>/). Each model i is
scored on every other repeat's cohort j, testing.py's code path with the
run's own settings (`Relevant_Files/config.json`) and post-processing, into
repeat<i>/Cross_<domain>/cohort<j>/ (`--untuned`: also the plain
post-processing, 0.5, no TTA, no filter, into cohort<j>_untuned/, beside
bench/quality.py's Testing_<domain>_untuned/). Scorings already there are
kept, so a stopped call picks up where it stopped.

Why. bench/quality.py's repeats pair a training seed with a test seed, so
one repeat's figure mixes how good its model is with how hard its 32 clot
cases are. On the `cpu` preset's three repeats (0.657 / 0.725 / 0.802,
twenty-fifth round in docs/quality-rounds.md) every model scored within
0.02 of the others on each cohort while the cohorts' means differed by
0.15: the spread was the cohorts'. Printed per configuration: the model x
cohort table of clot-case mean Dice with row means (the models) and
column means (the cohorts).

With two workdirs of the same scale and test domain (the same test
cohorts: the seeds are 4000 + repeat for first-build; checked case by case
on the truth's voxel counts), each test case's Dice is averaged over the
models of each configuration (model i on cohort j, every i), and the
paired difference B - A is bootstrapped over the test cases (the case is
the unit; averaging over the models takes out most of the
training-to-training noise a single pairing leaves in). `--where
KEY=VALUE` keeps the cases whose phantom sidecar has that value, as
bench/compare.py does; `--ncct-contrast LOW:HIGH` keeps the clot cases
whose NCCT contrast, measured on the images (`bench.subgroups.contrast_hu`:
the clot against the soft tissue around it, in HU), is at least LOW and
below HIGH (either may be left out: `:10`, `20:`). Clots found and
controls with an alarm are given as means over the models. Two configurations with different numbers of
repeats are compared on the cohorts both hold, each case averaged over all
the models of each. `--cohorts J[,J...]` scores and compares on those
repeats' test cohorts only, every model on each: test seeds added after a
choice was made on the others confirm it on cases the choice never saw.

Bad input (a folder that is not a quality workdir, fewer than two repeats,
cohorts that differ between the configurations) is one line and exit
status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.compare import _f as _num, parse_where, read_metrics, where  # noqa: E402
from bench.quality import latest_run, log, plain_postprocessing  # noqa: E402
from clotseg.errors import ClotSegError  # noqa: E402


class CrossError(Exception):
    """A user's mistake in the arguments or the workdirs (one line, exit status 2)."""


def repeats(workdir: Path, domain: str) -> list[int]:
    """The repeats i of `workdir` with a finished run, a test cohort of `domain` and its own scoring."""
    found = []
    for project in sorted(Path(workdir).glob("repeat*")):
        tail = project.name[len("repeat"):]
        if not tail.isdigit():
            continue
        if (latest_run(project) is not None and (project / f"test_{domain}" / "volumes").is_dir()
                and (project / f"Testing_{domain}" / "metrics.csv").is_file()):
            found.append(int(tail))
    found.sort()
    if len(found) < 2:
        raise CrossError(f"{workdir}: {len(found)} repeat(s) with a finished run, a test_{domain} cohort and its "
                         f"Testing_{domain} scoring; cross-scoring needs at least two "
                         "(bench/quality.py --workdir ... --repeats 2 or more)")
    return found


def scoring_folder(workdir: Path, model: int, cohort: int, domain: str, plain: bool = False) -> Path:
    """Where model `model`'s scoring of cohort `cohort` lives (its own cohort: bench/quality.py's folder)."""
    suffix = "_untuned" if plain else ""
    project = Path(workdir) / f"repeat{model}"
    if model == cohort:
        return project / f"Testing_{domain}{suffix}"
    return project / f"Cross_{domain}" / f"cohort{cohort}{suffix}"


def cohorts_to_score(workdir: Path, domain: str, cohorts: list[int] | None = None) -> list[int]:
    """The repeats whose test cohorts are scored: all of `repeats`, or those of `cohorts`
    (CrossError for one the workdir does not hold)."""
    reps = repeats(workdir, domain)
    if cohorts is None:
        return reps
    missing = sorted(set(cohorts) - set(reps))
    if missing:
        raise CrossError(f"{workdir}: no finished repeat {', '.join(map(str, missing))} for --cohorts "
                         f"(it holds {', '.join(map(str, reps))})")
    return sorted(set(cohorts))


def score_missing(workdir: Path, domain: str, plain: bool = False, score=None,
                  cohorts: list[int] | None = None) -> list[Path]:
    """Score every model on every other repeat's cohort (or on `cohorts` only) where no
    metrics.csv is there yet; returns the folders written. `score(settings, run,
    cohort_folder, output)` defaults to testing.py's code path (`score_cohort`)."""
    from clotseg.layout import load_run_settings

    score = score or score_cohort
    written = []
    reps = repeats(workdir, domain)
    targets = cohorts_to_score(workdir, domain, cohorts)
    for i in reps:
        project = Path(workdir) / f"repeat{i}"
        run = latest_run(project)
        todo = [(j, is_plain) for j in targets for is_plain in ((False, True) if plain else (False,))
                if not (scoring_folder(workdir, i, j, domain, is_plain) / "metrics.csv").is_file()]
        if not todo:
            continue
        settings = load_run_settings(run, project)   # as testing.py would test this run
        for j, is_plain in todo:
            out = scoring_folder(workdir, i, j, domain, is_plain)
            log(f"[cross] model {i} on cohort {j}{' (plain post-processing)' if is_plain else ''}")
            score(plain_postprocessing(settings) if is_plain else settings, run,
                  Path(workdir) / f"repeat{j}" / f"test_{domain}", out)
            written.append(out)
    return written


def score_cohort(settings, run: Path, cohort: Path, output: Path) -> None:
    """Test `run` on a bench cohort folder (its volumes/ and masks/) with `settings`, as testing.py
    does, writing the scores and predictions into `output`; progress goes to stderr."""
    from clotseg.stages.evaluate import run_evaluation

    with contextlib.redirect_stdout(sys.stderr):   # progress bars; stdout keeps the JSON and the tables
        run_evaluation(settings, run_name=run.name, input_dir=cohort / "volumes", mask_dir=cohort / "masks",
                       output=output, log=lambda *a, **k: None)


def load_table(workdir: Path, domain: str, plain: bool = False, where_kv: tuple | None = None,
               cohorts: list[int] | None = None, contrast: tuple | None = None) -> dict:
    """{(model, cohort): {case: metrics row}} for every scored pair, on every cohort or on
    `cohorts` only (cases filtered by `where_kv`, and with `contrast` = (low, high) HU to the
    clot cases whose measured NCCT contrast lies in [low, high))."""
    reps = repeats(workdir, domain)
    table = {}
    for i in reps:
        for j in cohorts_to_score(workdir, domain, cohorts):
            rows = read_metrics(scoring_folder(workdir, i, j, domain, plain))
            if where_kv is not None:
                rows = where(rows, Path(workdir) / f"repeat{j}" / f"test_{domain}" / "volumes", *where_kv)
            if contrast is not None:
                measured = _ncct_contrasts(Path(workdir) / f"repeat{j}" / f"test_{domain}", rows)
                rows = {c: r for c, r in rows.items()
                        if measured.get(c) is not None and contrast[0] <= measured[c] < contrast[1]}
            table[(i, j)] = rows
    return table


_CONTRASTS: dict = {}


def _ncct_contrasts(cohort: Path, rows: dict) -> dict:
    """{case: NCCT contrast in HU or None} of a test cohort's clot cases, measured once per cohort."""
    from bench.subgroups import measure_contrasts

    key = str(cohort.resolve())
    missing = [c for c in rows if (key, c) not in _CONTRASTS]
    if missing:
        measured = measure_contrasts({c: rows[c] for c in missing}, cohort / "volumes", cohort / "masks")
        for c in missing:
            _CONTRASTS[(key, c)] = (measured.get(c) or {}).get("NCCT")
    return {c: _CONTRASTS[(key, c)] for c in rows}


def parse_contrast(parser, text: str | None):
    """`--ncct-contrast LOW:HIGH` (HU, either end optional) as (low, high); None without it."""
    if text is None:
        return None
    low, sep, high = text.partition(":")
    try:
        bounds = (float(low) if low.strip() else -math.inf, float(high) if high.strip() else math.inf)
    except ValueError:
        bounds = None
    if not sep or bounds is None or not bounds[0] < bounds[1]:
        parser.exit(2, f"bench.cross_cohorts: --ncct-contrast expects LOW:HIGH in HU with LOW < HIGH "
                       f"(either may be left out, e.g. :10 or 20:), got {text!r}\n")
    return bounds


def matrix(table: dict) -> dict:
    """Clot-case mean Dice per (model, cohort), with the models' and the cohorts' means."""
    models = sorted({i for i, _ in table})
    cohorts = sorted({j for _, j in table})
    cell = {}
    for (i, j), rows in table.items():
        dice = [_num(r, "dice") for r in rows.values() if _num(r, "true_voxels") > 0]
        cell[(i, j)] = math.fsum(dice) / len(dice) if dice else float("nan")
    return {"models": models, "cohorts": cohorts,
            "dice": [[cell[(i, j)] for j in cohorts] for i in models],
            "model_means": [_mean(cell[(i, j)] for j in cohorts) for i in models],
            "cohort_means": [_mean(cell[(i, j)] for i in models) for j in cohorts]}


def _mean(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return math.fsum(values) / len(values) if values else float("nan")


def averaged(table: dict) -> dict:
    """{"<cohort>:<case>": {"true_voxels", "dice", "found", "alarm", "fp"}}: each test case's figures
    averaged over the models (found: share of the models that found its clot; alarm: share that
    predicted anything on a clot-free case)."""
    models = sorted({i for i, _ in table})
    cohorts = sorted({j for _, j in table})
    out = {}
    for j in cohorts:
        cases = set.intersection(*(set(table[(i, j)]) for i in models))
        for case in sorted(cases, key=lambda c: (len(c), c)):
            rows = [table[(i, j)][case] for i in models]
            true = _num(rows[0], "true_voxels")
            out[f"{j}:{case}"] = {
                "true_voxels": true,
                "dice": _mean(_num(r, "dice") for r in rows),
                "found": _mean(float(_num(r, "n_detected") > 0) for r in rows) if true > 0 else None,
                "alarm": _mean(float(_num(r, "pred_voxels") > 0) for r in rows) if true == 0 else None,
                "fp": _mean(_num(r, "n_false_positive_components") for r in rows)}
    return out


def paired(a: dict, b: dict, n_resamples: int = 5000) -> dict:
    """B - A over the cases both hold (`averaged` of each); CrossError when a case's truth differs."""
    from clotseg.evaluation.stats import summarize

    common = [c for c in a if c in b]
    for case in common:
        if a[case]["true_voxels"] != b[case]["true_voxels"]:
            cohort, name = case.split(":", 1)
            raise CrossError(f"cohort {cohort} differs between the two workdirs ({name} has "
                             f"{a[case]['true_voxels']:g} vs {b[case]['true_voxels']:g} clot voxels): "
                             "not the same test cohorts (same --scale and test domain needed)")
    clot = [c for c in common if a[c]["true_voxels"] > 0]
    free = [c for c in common if a[c]["true_voxels"] == 0]
    diffs = [b[c]["dice"] - a[c]["dice"] for c in clot]

    def side(rows):
        return {"clot_dice_mean": _mean(rows[c]["dice"] for c in clot) if clot else None,
                "clots_found": math.fsum(rows[c]["found"] for c in clot),
                "controls_with_alarm": math.fsum(rows[c]["alarm"] for c in free),
                "fp_components_per_case": _mean(rows[c]["fp"] for c in common) if common else None}

    s = summarize(diffs, n_resamples) if diffs else None
    return {"n_clot_cases": len(clot), "n_clot_free_cases": len(free), "a": side(a), "b": side(b),
            "dice_difference": None if s is None else
            {"mean": s["mean"], "ci": [s["ci_low"], s["ci_high"]],
             "better": int(sum(d > 1e-9 for d in diffs)), "worse": int(sum(d < -1e-9 for d in diffs))}}


def markdown_matrix(m: dict, label: str) -> str:
    head = " | ".join(f"cohort {j}" for j in m["cohorts"])
    lines = [f"#### {label}: clot-case mean Dice, model (row) x test cohort (column)", "",
             f"| model | {head} | model mean |", "| --- |" + " --- |" * (len(m["cohorts"]) + 1)]
    for i, row, mean in zip(m["models"], m["dice"], m["model_means"]):
        lines.append(f"| {i} | " + " | ".join(f"{v:.3f}" for v in row) + f" | {mean:.3f} |")
    lines.append("| cohort mean | " + " | ".join(f"{v:.3f}" for v in m["cohort_means"]) + " | |")
    return "\n".join(lines) + "\n"


def markdown_paired(p: dict, labels: tuple[str, str], n_models: tuple[int, int]) -> str:
    a, b, d = p["a"], p["b"], p["dice_difference"]
    n_clot, n_free = p["n_clot_cases"], p["n_clot_free_cases"]
    models = f"{n_models[0]} models" if n_models[0] == n_models[1] else \
        f"{n_models[0]} models of {labels[0]}, {n_models[1]} of {labels[1]}"
    lines = [f"#### {labels[1]} - {labels[0]}, each test case averaged over {models}", "",
             f"| | {labels[0]} | {labels[1]} |", "| --- | --- | --- |",
             f"| clot-case Dice mean ({n_clot} cases) | {a['clot_dice_mean']:.3f} | {b['clot_dice_mean']:.3f} |",
             f"| clots found (mean over models) | {a['clots_found']:.1f}/{n_clot} | {b['clots_found']:.1f}/{n_clot} |",
             f"| FP components per case | {a['fp_components_per_case']:.2f} | {b['fp_components_per_case']:.2f} |",
             f"| controls with an alarm (mean over models) | {a['controls_with_alarm']:.1f}/{n_free} | "
             f"{b['controls_with_alarm']:.1f}/{n_free} |"]
    if d is not None:
        lines += ["", f"Paired Dice difference: {d['mean']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}] "
                      f"(95% bootstrap CI over the test cases); {d['better']} clot cases better, {d['worse']} worse."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path, help="bench/quality.py workdir of the baseline")
    parser.add_argument("b", type=Path, nargs="?", default=None, help="workdir of the configuration compared with it")
    parser.add_argument("--domain", default="first-build", help="the test cohorts' domain (default: first-build)")
    parser.add_argument("--untuned", action="store_true",
                        help="also score and compare the plain post-processing (0.5, no TTA, no filter)")
    parser.add_argument("--labels", nargs=2, default=None, metavar=("A", "B"))
    parser.add_argument("--where", default=None, metavar="KEY=VALUE",
                        help="only the cases whose sidecar has this value, e.g. hyperdense=false")
    parser.add_argument("--ncct-contrast", default=None, metavar="LOW:HIGH",
                        help="only the clot cases whose NCCT contrast measured on the images is in "
                             "[LOW, HIGH) HU, e.g. :10 (the clots next to invisible on the NCCT)")
    parser.add_argument("--cohorts", default=None, metavar="J[,J...]",
                        help="score and compare on these repeats' test cohorts only (every model on each), "
                             "e.g. seeds added after a choice was made on the others")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    where_kv = parse_where(parser, "bench.cross_cohorts", args.where)
    contrast = parse_contrast(parser, args.ncct_contrast)
    cohorts = None
    if args.cohorts is not None:
        parts = [s.strip() for s in args.cohorts.split(",")]
        if not all(s.isdigit() for s in parts):
            parser.exit(2, f"bench.cross_cohorts: --cohorts {args.cohorts!r}: give repeat numbers, e.g. 3 or 3,4\n")
        cohorts = [int(s) for s in parts]
    workdirs = [w for w in (args.a, args.b) if w is not None]
    labels = tuple(args.labels) if args.labels else tuple(w.name for w in workdirs)
    try:
        for workdir in workdirs:
            if not workdir.is_dir():
                raise CrossError(f"{workdir}: no such folder")
            score_missing(workdir, args.domain, args.untuned, cohorts=cohorts)   # checks the workdir's repeats first
        report = {"domain": args.domain, "where": args.where, "ncct_contrast": args.ncct_contrast,
                  "cohorts": cohorts, "workdirs": [str(w) for w in workdirs],
                  "labels": list(labels[:len(workdirs)]), "variants": {}}
        text = []
        for plain in (False, True) if args.untuned else (False,):
            name = "plain" if plain else "as reported"
            tables = [load_table(w, args.domain, plain, where_kv, cohorts, contrast) for w in workdirs]
            variant = {"matrices": [matrix(t) for t in tables]}
            subset = "".join(f", {s}" for s in (args.where, args.ncct_contrast and
                                                 f"NCCT contrast {args.ncct_contrast} HU") if s)
            text += [f"### {name} ({args.domain}{subset})", ""]
            text += [markdown_matrix(m, label) for m, label in zip(variant["matrices"], labels)]
            if len(tables) == 2:
                variant["paired"] = paired(averaged(tables[0]), averaged(tables[1]))
                text.append(markdown_paired(variant["paired"], labels,
                                            tuple(len(m["models"]) for m in variant["matrices"])))
            report["variants"][name] = variant
    except (CrossError, FileNotFoundError, ClotSegError) as exc:   # a run's bad config.json, a bad sidecar
        parser.exit(2, f"bench.cross_cohorts: {exc}\n")
    blob = json.dumps(report, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(blob + "\n", encoding="utf-8")
    print(blob)
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
