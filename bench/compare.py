"""Paired comparison of two scorings of the same test cases.

    python -m bench.compare A/Testing_standard B/Testing_standard [--labels base lever] [--out F.json]
                            [--also A2/Testing_standard B2/Testing_standard ...]
                            [--where hyperdense=false --volumes A/test_standard/volumes ...]

Each argument is a testing output folder (its `metrics.csv`, as testing.py
and bench/quality.py write it). Two configurations scored on the same
unseen cohort differ case by case far less than their separate confidence
intervals suggest, so a lever's effect is judged on the per-case
differences B - A: mean clot-case Dice difference with its bootstrap 95%
CI, how many clot cases got better / worse, clots found, false-positive
components per case and clot-free cases with a false alarm, each for A
and B. Only cases present in both folders are compared (a case missing from
one is reported, never silently dropped). `--also A2 B2` (repeatable) pools
further pairs, e.g. the same two configurations trained and tested with
another seed (`bench/quality.py --repeats`): their cases join the paired
figures as `2:CS1`, `3:CS1`, ... so cases of different cohorts never match.

`--where KEY=VALUE` compares a subgroup: only the cases whose phantom
sidecar (`<case>.json` in the cohort's volume folder, as bench/subgroups.py
reads it) has that value, e.g. `--where hyperdense=false` for the clots
that are not hyperdense (VALUE is read as JSON: false, 1.5, "M1_L"; else as
text). `--volumes DIR` (repeatable) names the volume folder of each pair in
order: the first pair's, then one per `--also`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from clotseg.errors import InputDataError  # noqa: E402
from clotseg.evaluation.report import read_metrics_csv  # noqa: E402
from clotseg.evaluation.stats import summarize  # noqa: E402


def read_metrics(folder: Path) -> dict[str, dict]:
    """case_id -> typed row of `folder/metrics.csv` (FileNotFoundError naming the file if absent)."""
    path = Path(folder) / "metrics.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics.csv (run testing.py or bench/quality.py first)")
    return {row["case_id"]: row for row in read_metrics_csv(path)}


def where(rows: dict[str, dict], volumes: Path, key: str, value) -> dict[str, dict]:
    """The rows whose case's sidecar `volumes/<case>.json` has `key` == `value`
    (a case without a sidecar is left out). FileNotFoundError for a missing
    folder; a sidecar that is not a JSON object raises InputDataError
    (`clotseg.cohort.read_sidecar`, one line naming the file)."""
    from clotseg.cohort import read_sidecar

    volumes = Path(volumes)
    if not volumes.is_dir():
        raise FileNotFoundError(f"{volumes}: no such folder (the cohort's volumes with <case>.json sidecars)")
    out = {}
    for cid, row in rows.items():
        path = volumes / f"{cid}.json"
        if not path.is_file():
            continue
        side = read_sidecar(path, cid)
        if key in side and side[key] == value and type(side[key]) is type(value):
            out[cid] = row
    return out


def parse_where(parser, prog: str, text: str | None):
    """`--where KEY=VALUE` as (key, value) (VALUE as `_where_value` reads it), None without it;
    one line and exit status 2 for anything else."""
    if text is None:
        return None
    key, sep, value = text.partition("=")
    if not sep or not key:
        parser.exit(2, f"{prog}: --where expects KEY=VALUE, got {text!r}\n")
    return key, _where_value(value)


def _where_value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def _f(row: dict, key: str) -> float:
    value = row.get(key)
    return float("nan") if value is None else float(value)


def compare(a: dict[str, dict], b: dict[str, dict], n_resamples: int = 5000) -> dict:
    """Paired figures of B against A over their common cases (see the module docstring)."""
    common = sorted(set(a) & set(b), key=lambda c: (len(c), c))
    clot = [c for c in common if _f(a[c], "true_voxels") > 0]
    free = [c for c in common if c not in clot]
    diffs = [_f(b[c], "dice") - _f(a[c], "dice") for c in clot]

    def side(rows):
        found = sum(_f(rows[c], "n_detected") > 0 for c in clot)
        alarms = sum(_f(rows[c], "pred_voxels") > 0 for c in free)
        fp = [_f(rows[c], "n_false_positive_components") for c in common]
        return {"clot_dice_mean": math.fsum(_f(rows[c], "dice") for c in clot) / len(clot) if clot else None,
                "clots_found": int(found), "false_alarms": int(alarms),
                "fp_components_per_case": float(sum(fp) / len(fp)) if fp else None}

    s = summarize(diffs, n_resamples) if diffs else None
    return {"n_common": len(common), "n_clot_cases": len(clot), "n_clot_free_cases": len(free),
            "only_in_a": sorted(set(a) - set(b)), "only_in_b": sorted(set(b) - set(a)),
            "a": side(a), "b": side(b),
            "dice_difference": None if s is None else
            {"mean": s["mean"], "ci": [s["ci_low"], s["ci_high"]], "median": s["median"],
             "better": int(sum(d > 1e-9 for d in diffs)), "worse": int(sum(d < -1e-9 for d in diffs))}}


def markdown(result: dict, labels: tuple[str, str]) -> str:
    a, b, d = result["a"], result["b"], result["dice_difference"]
    n_clot, n_free = result["n_clot_cases"], result["n_clot_free_cases"]
    lines = [f"| | {labels[0]} | {labels[1]} |", "| --- | --- | --- |",
             f"| clot-case Dice mean ({n_clot} cases) | {a['clot_dice_mean']:.3f} | {b['clot_dice_mean']:.3f} |",
             f"| clots found | {a['clots_found']}/{n_clot} | {b['clots_found']}/{n_clot} |",
             f"| FP components per case | {a['fp_components_per_case']:.2f} | {b['fp_components_per_case']:.2f} |",
             f"| clot-free cases with a false alarm | {a['false_alarms']}/{n_free} | {b['false_alarms']}/{n_free} |"]
    if d is not None:
        lines += ["", f"Paired Dice difference ({labels[1]} - {labels[0]}): {d['mean']:+.3f} "
                      f"[{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}] (95% bootstrap CI), median {d['median']:+.3f}; "
                      f"{d['better']} clot cases better, {d['worse']} worse."]
    for key in ("only_in_a", "only_in_b"):
        if result[key]:
            lines.append(f"Cases {key.replace('_', ' ')}, not compared: {', '.join(result[key])}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path, help="testing folder of the baseline")
    parser.add_argument("b", type=Path, help="testing folder of the configuration compared with it")
    parser.add_argument("--labels", nargs=2, default=("A", "B"))
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--also", nargs=2, type=Path, action="append", default=[], metavar=("A2", "B2"),
                        help="pool another pair of testing folders (e.g. a second seed); repeatable")
    parser.add_argument("--where", default=None, metavar="KEY=VALUE",
                        help="compare only the cases whose sidecar has this value, e.g. hyperdense=false")
    parser.add_argument("--volumes", type=Path, action="append", default=[], metavar="DIR",
                        help="with --where: each pair's volume folder with the sidecars, in order; repeatable")
    args = parser.parse_args(argv)
    if args.where is not None:
        key, value = parse_where(parser, "bench.compare", args.where)
        if len(args.volumes) != 1 + len(args.also):
            parser.exit(2, f"bench.compare: --where needs one --volumes folder per pair ({1 + len(args.also)}), "
                           f"got {len(args.volumes)}\n")
    elif args.volumes:
        parser.exit(2, "bench.compare: --volumes is only used with --where\n")
    try:  # a wrong folder is a user's mistake: one line, exit status 2
        pairs = [(args.a, args.b), *args.also]
        a, b = {}, {}
        for k, (folder_a, folder_b) in enumerate(pairs, start=1):
            rows_a, rows_b = read_metrics(folder_a), read_metrics(folder_b)
            if args.where is not None:
                rows_a = where(rows_a, args.volumes[k - 1], key, value)
                rows_b = where(rows_b, args.volumes[k - 1], key, value)
            prefix = "" if k == 1 else f"{k}:"
            a.update({f"{prefix}{c}": row for c, row in rows_a.items()})
            b.update({f"{prefix}{c}": row for c, row in rows_b.items()})
        result = compare(a, b)
    except (FileNotFoundError, InputDataError) as exc:
        parser.exit(2, f"bench.compare: {exc}\n")
    if not result["n_common"]:
        what = f" with {args.where}" if args.where is not None else ""
        parser.exit(2, f"bench.compare: {args.a} and {args.b} share no case{what}\n")
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text)
    print(markdown(result, tuple(args.labels)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
