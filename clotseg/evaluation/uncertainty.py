"""Voxel-wise and case-level uncertainty from an ensemble of probability maps.

Members are the probability maps of one case predicted several ways: flip
test-time augmentation (plain, horizontally and vertically flipped slices,
un-flipped; `clotseg.inference.predict_volume_members`), MC-dropout samples,
or several models. `probs` is a stack (M, ...) of foreground probabilities
in [0, 1] (or a list of M equal-shaped arrays); a trailing channel axis of
size 1, as the sigmoid model outputs, is dropped. For a multi-class model
pass the foreground probability 1 - p(background).

Voxel map (`uncertainty_map`)
  "std" (default): the standard deviation of the members' probabilities at
      each voxel (population std, ddof=0), in [0, 0.5]. It measures how much
      the members disagree, which is what flip TTA and MC dropout sample; it
      is 0 wherever all members agree, also on confidently wrong voxels.
  "entropy": the binary predictive entropy of the mean probability, in bits,
      in [0, 1]. It is high wherever the mean is near 0.5, including the
      boundary band of every prediction, and is defined for M = 1.
  Both are float32 and fit float16 (values in [0, 1], 3 significant digits)
  for saving next to the predictions.

Case score (`case_uncertainty`)
  uncertainty_score: the mean voxel uncertainty over the region where any
      member predicts clot (probability > threshold): the union of the
      members' masks, which contains the final (mean) prediction and every
      voxel a member disagrees on. Averaging over this region, not the whole
      volume, makes the score independent of the head's size and of the
      empty background; a small or doubtful clot, whose voxels are mostly
      disputed border, scores high; a large clear one scores low. An empty
      region (no member predicts anything) scores 0.0: all members agree on
      "no clot".
  member_disagreement: 1 - |intersection| / |union| of the members' masks
      (0 when all agree or none predicts anything).
  uncertain_region_voxels: size of that region.

A useful score ranks cases by their Dice: `uncertainty_ranking(scores,
dices)` gives Spearman's rho (negative is good: more uncertain, lower Dice),
and `uncertainty_scatter_plot` draws score against Dice.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import stats

METHODS = ("std", "entropy")


def _stack(probs) -> np.ndarray:
    """(M, ...) float32 array of foreground probabilities from an array or a list of members."""
    return np.stack(_as_members(probs))


def _as_members(probs) -> list[np.ndarray]:
    """`_members` of a list or tuple, or of a stacked (M, ...) array's rows."""
    if isinstance(probs, (list, tuple)):
        return _members(probs)
    arr = np.asarray(probs, dtype=np.float32)
    if arr.ndim < 2:  # a scalar cannot be iterated, a vector's rows are not maps
        raise ValueError(f"probs must be a stack (M, ...) of probability maps, got shape {arr.shape}")
    return _members(list(arr))


def _members(probs) -> list[np.ndarray]:
    """The members of a list or tuple, checked (at least one, equal shapes,
    finite) but not stacked: views in their own memory layout (float32; a
    trailing channel axis of size 1 dropped). Test time calls this once per
    case on volumes of millions of voxels, where stacked copies were the cost."""
    if not probs:
        raise ValueError("no ensemble members given")
    shapes = {np.shape(p) for p in probs}
    if len(shapes) > 1:
        raise ValueError(f"ensemble members differ in shape: {sorted(shapes)}")
    members = [np.asarray(p, dtype=np.float32) for p in probs]
    if members[0].ndim < 1:
        raise ValueError(f"probs must be a stack (M, ...) of probability maps, got members of shape {shapes}")
    if members[0].ndim > 1 and members[0].shape[-1] == 1:
        members = [m[..., 0] for m in members]
    if not all(np.isfinite(m).all() for m in members):
        raise ValueError("probs hold NaN/inf values")
    return members


def _std_of_members(members: list[np.ndarray]) -> np.ndarray:
    """Population std over members (float32), in float64 like
    `np.std(np.stack(members), axis=0, dtype=np.float64)` and with the same
    operations in the same order (so the same bits), without the stack, and
    block by block along the members' outermost memory axis, so the float64
    temporaries stay in the CPU cache instead of costing a volume each."""
    if any(m.min() < 0.0 or m.max() > 1.0 for m in members):
        members = [np.clip(m, 0.0, 1.0) for m in members]
    out = np.empty(members[0].shape, dtype=np.float32)
    if out.ndim == 0:
        out[...] = _std_block(members)
        return out
    axis = int(np.argmax(np.abs(members[0].strides)))     # the slowest-varying axis in memory
    n = out.shape[axis]
    step = max(1, (1 << 17) // max(1, out.size // max(n, 1)))   # ~128k voxels (1 MiB of float64) a block
    for start in range(0, n, step):
        block = (slice(None),) * axis + (slice(start, start + step),)
        out[block] = _std_block([m[block] for m in members])
    return out


def _std_block(members: list[np.ndarray]) -> np.ndarray:
    """`_std_of_members` of one block: float64 mean, deviations, mean square, sqrt."""
    total = members[0].astype(np.float64)
    for m in members[1:]:
        total += m
    mean = np.true_divide(total, len(members), out=total)
    squares = None
    for m in members:
        dev = np.subtract(m, mean)            # float32 - float64 -> float64
        np.multiply(dev, dev, out=dev)
        squares = dev if squares is None else np.add(squares, dev, out=squares)
    squares /= len(members)
    return np.sqrt(squares, out=squares)


def uncertainty_map(probs, method: str = "std") -> np.ndarray:
    """Per-voxel uncertainty (float32, shape of one member) from members (M, ...).

    method "std": spread of the members; "entropy": binary entropy (bits) of
    their mean. See the module docstring.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "std" and isinstance(probs, (list, tuple)):
        return _std_of_members(_members(probs))
    p = np.clip(_stack(probs), 0.0, 1.0)
    if method == "std":
        return p.std(axis=0, dtype=np.float64).astype(np.float32)
    mean = p.mean(axis=0, dtype=np.float64)
    q = np.clip(mean, 1e-12, 1.0 - 1e-12)
    ent = -(q * np.log2(q) + (1.0 - q) * np.log2(1.0 - q))
    ent[(mean <= 1e-12) | (mean >= 1.0 - 1e-12)] = 0.0
    return ent.astype(np.float32)


def case_uncertainty(probs, threshold: float = 0.5, method: str = "std", unc_map: np.ndarray | None = None) -> dict:
    """Case-level uncertainty of one case's members (M, ...); see the module docstring.

    `unc_map` (from `uncertainty_map(probs, method)`) may be passed to avoid
    computing it twice. Returns {"uncertainty_score", "member_disagreement",
    "uncertain_region_voxels", "uncertainty_method"}.
    """
    members = _as_members(probs)
    if unc_map is None:
        unc_map = uncertainty_map(members, method)
    elif np.shape(unc_map) != members[0].shape:
        raise ValueError(f"unc_map has shape {np.shape(unc_map)} but a member is {members[0].shape}")
    union = members[0] > threshold
    inter = union.copy()
    for m in members[1:]:
        above = m > threshold
        union |= above
        inter &= above
    n_union = int(union.sum())
    score = float(np.mean(unc_map[union], dtype=np.float64)) if n_union else 0.0
    return {
        "uncertainty_score": score,
        "member_disagreement": float(1.0 - inter.sum() / n_union) if n_union else 0.0,
        "uncertain_region_voxels": n_union,
        "uncertainty_method": method,
    }


def _finite(v) -> bool:
    try:
        return v is not None and not isinstance(v, bool) and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def uncertainty_ranking(scores, dices) -> dict:
    """How well the case scores rank cases by Dice: Spearman's rho.

    Returns {"n", "spearman_rho", "p_value"}; cases with a missing score or
    Dice are left out; rho and p are None with fewer than 3 cases or when
    either series is constant (no warning, no NaN). A good score gives a
    strongly negative rho.
    """
    scores, dices = list(scores), list(dices)
    if len(scores) != len(dices):
        raise ValueError(f"{len(scores)} scores but {len(dices)} Dice values")
    pairs = np.array([(float(s), float(d)) for s, d in zip(scores, dices) if _finite(s) and _finite(d)],
                     dtype=np.float64).reshape(-1, 2)
    out = {"n": int(pairs.shape[0]), "spearman_rho": None, "p_value": None}
    if pairs.shape[0] < 3 or np.ptp(pairs[:, 0]) == 0 or np.ptp(pairs[:, 1]) == 0:
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.spearmanr(pairs[:, 0], pairs[:, 1])
    rho, pval = float(res.statistic), float(res.pvalue)
    out["spearman_rho"] = rho if math.isfinite(rho) else None
    out["p_value"] = pval if math.isfinite(pval) else None
    return out


def uncertainty_scatter_plot(scores, dices, out_png, labels=None, title: str = "Uncertainty vs Dice",
                             dpi: int = 100):
    """Scatter plot of case uncertainty score (x) vs Dice (y), Spearman's rho in the title; returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from clotseg.evaluation.figures import save_figure

    scores, dices = list(scores), list(dices)
    names = list(labels) if labels is not None else [None] * len(scores)
    keep = [i for i in range(len(scores)) if _finite(scores[i]) and _finite(dices[i])]
    rank = uncertainty_ranking(scores, dices)
    fig = Figure(figsize=(6.0, 4.5))      # Agg canvas, no pyplot: nothing global, no window
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if keep:
        xs = [float(scores[i]) for i in keep]
        ys = [float(dices[i]) for i in keep]
        ax.scatter(xs, ys, s=28, color="tab:orange", edgecolor="black", linewidth=0.5, zorder=3)
        for i, x, y in zip(keep, xs, ys):
            if names[i] is not None:
                ax.annotate(str(names[i]), (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("case uncertainty score")
        ax.set_ylabel("Dice")
        ax.grid(alpha=0.3)
    else:
        ax.text(0.5, 0.5, "no case with both a score and a Dice", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    rho = rank["spearman_rho"]
    ax.set_title(f"{title} (n = {rank['n']}, Spearman rho = " + ("n/a" if rho is None else f"{rho:.2f}") + ")")
    fig.tight_layout()
    return save_figure(fig, out_png, dpi=dpi)
