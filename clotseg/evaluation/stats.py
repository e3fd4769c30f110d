"""Summary statistics over cases: bootstrap CIs and lesion/case detection rates.

`summarize` gives mean, median, std and a percentile-bootstrap confidence
interval of the mean (resampling cases with replacement, fixed seed, so the
same numbers come out every run). `detection_summary` pools the lesion counts
of `clotseg.evaluation.metrics.case_metrics` rows.
"""

from __future__ import annotations

import math

import numpy as np

# Bound on the int64 index matrix drawn at once (resamples x cases), ~16 MB.
_MAX_DRAW = 2_000_000


def summarize(values, n_resamples: int = 5000, seed: int = 0, ci: float = 0.95) -> dict:
    """Mean, median, std and percentile-bootstrap CI of the mean.

    Args:
        values: 1-D array-like of per-case numbers (any unit); NaN/None ignored.
        n_resamples: bootstrap resamples of the cases.
        seed: seed of `np.random.default_rng`; same seed, same interval.
        ci: confidence level in (0, 1).
    Returns:
        dict mean, median, std (sample std, ddof=1; 0 for one value), ci_low,
        ci_high, n (values used), n_missing (NaN/None dropped), ci (level).
        With n = 0 every statistic is NaN; with n = 1 the CI is the value.
    """
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    raw = np.ravel(np.asarray(values, dtype=np.float64))   # None becomes NaN
    x = raw[~np.isnan(raw)]
    n = int(x.size)
    out = {"n": n, "n_missing": int(raw.size - n), "ci": float(ci)}
    if n == 0:
        nan = float("nan")
        return {**out, "mean": nan, "median": nan, "std": nan, "ci_low": nan, "ci_high": nan}
    mean = float(x.mean())
    if n == 1:
        lo = hi = mean
    else:
        rng = np.random.default_rng(seed)
        means = np.empty(n_resamples, dtype=np.float64)
        chunk = max(1, _MAX_DRAW // n)
        for start in range(0, n_resamples, chunk):
            stop = min(start + chunk, n_resamples)
            idx = rng.integers(0, n, size=(stop - start, n))
            means[start:stop] = x[idx].mean(axis=1)
        alpha = (1.0 - ci) / 2.0
        lo, hi = (float(v) for v in np.percentile(means, [100 * alpha, 100 * (1 - alpha)]))
    return {
        **out,
        "mean": mean,
        "median": float(np.median(x)),
        "std": float(x.std(ddof=1)) if n > 1 else 0.0,
        "ci_low": lo,
        "ci_high": hi,
    }


def wilson_interval(successes: int, total: int, ci: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion; (nan, nan) when total is 0."""
    if total <= 0:
        return float("nan"), float("nan")
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + ci / 2.0))
    p = successes / total
    denom = 1.0 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _ratio(num: int, den: int) -> float:
    return num / den if den > 0 else float("nan")


def detection_summary(rows, ci: float = 0.95) -> dict:
    """Lesion- and case-level detection over labeled `case_metrics` rows.

    Rows without "n_true_lesions" (unlabeled cases) are skipped. A clot case
    has at least one true lesion; a clot-free case has none.

    Returns:
        dict with
        lesion_sensitivity: sum(n_detected) / sum(n_true_lesions) (pooled);
        case_sensitivity: clot cases with >= 1 detected lesion / clot cases;
        fp_components_per_case: mean n_false_positive_components over all
            labeled cases;
        specificity: clot-free cases with no predicted component / clot-free
            cases;
        the counts behind each ratio, and Wilson CIs (level `ci`) for the two
        case-level proportions. A ratio with a zero denominator is NaN.
    """
    labeled = [r for r in rows if r.get("n_true_lesions") is not None]
    n_lesions = sum(int(r["n_true_lesions"]) for r in labeled)
    n_det = sum(int(r["n_detected"]) for r in labeled)
    clot = [r for r in labeled if int(r["n_true_lesions"]) > 0]
    free = [r for r in labeled if int(r["n_true_lesions"]) == 0]
    clot_hit = sum(1 for r in clot if int(r["n_detected"]) > 0)
    free_clean = sum(1 for r in free if int(r["n_pred_components"]) == 0)
    fp = [int(r["n_false_positive_components"]) for r in labeled]
    sens_ci = wilson_interval(clot_hit, len(clot), ci)
    spec_ci = wilson_interval(free_clean, len(free), ci)
    return {
        "n_cases": len(labeled),
        "n_true_lesions": n_lesions,
        "n_detected_lesions": n_det,
        "lesion_sensitivity": _ratio(n_det, n_lesions),
        "n_clot_cases": len(clot),
        "n_clot_cases_detected": clot_hit,
        "case_sensitivity": _ratio(clot_hit, len(clot)),
        "case_sensitivity_ci": list(sens_ci),
        "n_false_positive_components": int(sum(fp)),
        "fp_components_per_case": float(np.mean(fp)) if fp else float("nan"),
        "n_clot_free_cases": len(free),
        "n_clot_free_cases_clean": free_clean,
        "specificity": _ratio(free_clean, len(free)),
        "specificity_ci": list(spec_ci),
        "ci": float(ci),
    }
