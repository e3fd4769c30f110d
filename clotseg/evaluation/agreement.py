"""Agreement of predicted with true biomarkers across cases.

`agreement(pred, true)` pairs the two measurements of each case (pairs with
a missing or non-finite value are dropped and counted) and gives

  pearson_r, pearson_p        linear correlation (scipy.stats.pearsonr)
  spearman_rho, spearman_p    rank correlation (scipy.stats.spearmanr)
  icc_2_1                     ICC(2,1): two-way random effects, absolute
                              agreement, single measurement (Shrout & Fleiss
                              1979, case 2; McGraw & Wong's ICC(A,1))
  mean_diff, sd_diff          Bland-Altman bias (pred - true) and its SD
  loa_low, loa_high           95% limits of agreement, mean_diff -/+ 1.96 sd_diff

Every statistic is None where it is undefined, never NaN and never with a
warning: fewer than 3 pairs gives None for all of them; a constant series
(pred or true) gives None for the correlations, and ICC is None when all
values are equal. `agreement_table(rows)` runs it for each biomarker over
metrics rows that carry pred_<key>/true_<key> columns (see
biomarkers.biomarker_row). `bland_altman_plot` draws the usual mean vs
difference plot (matplotlib Agg, PNG).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import stats

MIN_PAIRS = 3
LOA_Z = 1.96
DEFAULT_BIOMARKERS = ("volume_mm3", "length_mm", "area_max_mm2", "n_components", "ncct_mean_hu",
                      "ncct_median_hu", "cta_mean_hu", "perviousness_hu")
_STAT_KEYS = ("pearson_r", "pearson_p", "spearman_rho", "spearman_p", "icc_2_1",
              "mean_diff", "sd_diff", "loa_low", "loa_high")


def _finite(value) -> bool:
    if value is None or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def paired_values(pred, true) -> tuple[np.ndarray, np.ndarray, int]:
    """(pred, true) as float arrays of the complete, finite pairs; and how many pairs were dropped."""
    pred, true = list(pred), list(true)
    if len(pred) != len(true):
        raise ValueError(f"pred has {len(pred)} values but true has {len(true)}")
    keep = [(float(p), float(t)) for p, t in zip(pred, true) if _finite(p) and _finite(t)]
    arr = np.array(keep, dtype=np.float64).reshape(-1, 2)
    return arr[:, 0], arr[:, 1], len(pred) - len(keep)


def icc_2_1(ratings) -> float | None:
    """ICC(2,1) of an (n subjects, k raters) array; None if undefined.

    Two-way ANOVA mean squares: MSR (rows/subjects), MSC (columns/raters),
    MSE (residual);
        ICC(2,1) = (MSR - MSE) / (MSR + (k - 1) MSE + k (MSC - MSE) / n).
    None for n < 2, k < 2, non-finite values or a zero denominator (all
    values equal).
    """
    x = np.asarray(ratings, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 2 or not np.isfinite(x).all():
        return None
    n, k = x.shape
    grand = x.mean()
    ss_rows = k * float(((x.mean(axis=1) - grand) ** 2).sum())
    ss_cols = n * float(((x.mean(axis=0) - grand) ** 2).sum())
    ss_total = float(((x - grand) ** 2).sum())
    ss_err = max(ss_total - ss_rows - ss_cols, 0.0)
    msr = ss_rows / (n - 1)
    msc = ss_cols / (k - 1)
    mse = ss_err / ((n - 1) * (k - 1))
    denom = msr + (k - 1) * mse + k * (msc - mse) / n
    scale = max(abs(msr), abs(msc), abs(mse), 1e-300)
    if not math.isfinite(denom) or abs(denom) <= 1e-12 * scale or ss_total == 0.0:
        return None
    value = float((msr - mse) / denom)
    return 0.0 if abs(value) < 1e-12 else value      # no -5e-16 from rounding


def bland_altman(pred, true) -> dict:
    """Bias and 95% limits of agreement of pred - true (None with < 2 pairs)."""
    p, t, _ = paired_values(pred, true)
    if p.size < 2:
        return {"mean_diff": None, "sd_diff": None, "loa_low": None, "loa_high": None}
    diff = p - t
    mean = float(diff.mean())
    sd = float(diff.std(ddof=1))
    return {"mean_diff": mean, "sd_diff": sd, "loa_low": mean - LOA_Z * sd, "loa_high": mean + LOA_Z * sd}


def _constant(x: np.ndarray) -> bool:
    return bool(np.ptp(x) <= 1e-12 * max(1.0, float(np.abs(x).max())))


def _clean(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def agreement(pred, true) -> dict:
    """Agreement statistics of paired measurements (see the module docstring).

    Returns {"n": pairs used, "n_dropped": incomplete pairs, and the
    statistics, each a float or None}.
    """
    p, t, dropped = paired_values(pred, true)
    out = {"n": int(p.size), "n_dropped": int(dropped), **{k: None for k in _STAT_KEYS}}
    if p.size < MIN_PAIRS:
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")        # scipy's small-sample / near-constant notes
        if not (_constant(p) or _constant(t)):
            r = stats.pearsonr(p, t)
            rho = stats.spearmanr(p, t)
            out["pearson_r"], out["pearson_p"] = _clean(r.statistic), _clean(r.pvalue)
            out["spearman_rho"], out["spearman_p"] = _clean(rho.statistic), _clean(rho.pvalue)
    out["icc_2_1"] = icc_2_1(np.column_stack([p, t]))
    out.update(bland_altman(p, t))
    return out


def agreement_table(rows: list[dict], biomarkers=DEFAULT_BIOMARKERS, pred_prefix: str = "pred_",
                    true_prefix: str = "true_") -> dict:
    """{biomarker: agreement(...)} over rows with pred_<b> and true_<b> columns.

    Biomarkers that no row carries (e.g. HU values of a non-CT cohort, or
    *_mm keys when spacing is unknown) are left out; rows without the truth
    (unlabelled cases) drop out of each pair as incomplete.
    """
    table = {}
    for name in biomarkers:
        pk, tk = pred_prefix + name, true_prefix + name
        if not any(pk in r and tk in r for r in rows):
            continue
        table[name] = agreement([r.get(pk) for r in rows], [r.get(tk) for r in rows])
    return table


def bland_altman_plot(pred, true, out_png, title: str = "Bland-Altman", unit: str = "",
                      labels=None, dpi: int = 100):
    """Bland-Altman plot (mean of pred and true vs pred - true) saved as PNG; returns the path.

    Draws the bias and the 95% limits of agreement when there are at least
    2 pairs; with none it still writes a figure saying so. `labels` (one per
    pair, e.g. case ids) annotate the points.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from clotseg.evaluation.figures import save_figure

    pred, true = list(pred), list(true)
    names = list(labels) if labels is not None else [None] * len(pred)
    keep = [i for i in range(len(pred)) if _finite(pred[i]) and _finite(true[i])]
    p = np.array([float(pred[i]) for i in keep])
    t = np.array([float(true[i]) for i in keep])
    fig = Figure(figsize=(6.0, 4.5))      # Agg canvas, no pyplot: nothing global, no window
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    suffix = f" ({unit})" if unit else ""
    if p.size == 0:
        ax.text(0.5, 0.5, "no case with both a predicted and a true value", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
    else:
        mean, diff = (p + t) / 2, p - t
        ax.scatter(mean, diff, s=28, color="tab:blue", edgecolor="black", linewidth=0.5, zorder=3)
        for i, x, y in zip(keep, mean, diff):
            if names[i] is not None:
                ax.annotate(str(names[i]), (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
        ba = bland_altman(p, t)
        ax.axhline(0.0, color="grey", linewidth=0.8)
        if ba["mean_diff"] is not None:
            ax.axhline(ba["mean_diff"], color="tab:red", label=f"bias {ba['mean_diff']:.3g}")
            for key in ("loa_low", "loa_high"):
                ax.axhline(ba[key], color="tab:red", linestyle="--")
            ax.plot([], [], color="tab:red", linestyle="--",
                    label=f"95% LoA [{ba['loa_low']:.3g}, {ba['loa_high']:.3g}]")
            ax.legend(loc="best", fontsize=8)
        ax.set_xlabel(f"mean of predicted and true{suffix}")
        ax.set_ylabel(f"predicted - true{suffix}")
        ax.grid(alpha=0.3)
    ax.set_title(f"{title} (n = {p.size})")
    fig.tight_layout()
    return save_figure(fig, out_png, dpi=dpi)
