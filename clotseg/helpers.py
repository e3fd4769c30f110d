"""Small helpers shared by the stages, importers and evaluation: one
definition each of natural sort, file-name pattern to regex, and conversion
to JSON-ready values. Imports nothing from ClotSeg, numpy only.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

# What <ID> in a config pattern (MODALITY_PATTERNS, MASK_PATTERN) stands for.
ID_REGEX = r"[A-Za-z0-9-]+"


def natural_key(text) -> list:
    """Sort key that orders 'CS2' before 'CS10' (digit runs compare as numbers,
    text case-insensitively; never compares a number with text)."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t.lower()) for t in re.split(r"(\d+)", str(text)) if t != ""]


def _literal_regex(text: str, wildcards: bool) -> str:
    """Literal pattern text -> regex; with `wildcards`, * and ? are globs that never cross a '/'."""
    if not wildcards:
        return re.escape(text)
    out = []
    for ch in text:
        if ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        else:
            out.append(re.escape(ch))
    return "".join(out)


def pattern_regex(pattern: str, placeholder: str = "<ID>", group: str = "id", group_regex: str = ID_REGEX,
                  wildcards: bool = False, ignore_case: bool = True) -> re.Pattern:
    """A file-name pattern with one placeholder -> compiled regex with a named group.

    Config patterns (the default): 'CS<ID>_CTA_Binary.npy' -> '^CS(?P<id>[A-Za-z0-9-]+)_CTA_Binary\\.npy$',
    case-insensitive. Importer patterns: `pattern_regex('{case}_cta.nii.gz', '{case}', 'case',
    r'[^/]*?', wildcards=True, ignore_case=False)` (use with fullmatch on relative paths).
    The caller checks that `placeholder` occurs exactly once.
    """
    before, after = pattern.split(placeholder)
    return re.compile("^" + _literal_regex(before, wildcards) + f"(?P<{group}>{group_regex})"
                      + _literal_regex(after, wildcards) + "$", re.IGNORECASE if ignore_case else 0)


def slice_runs(depth: int, slice_gaps=None) -> list[tuple[int, int]]:
    """[(start, stop), ...] runs of adjacent slices: `slice_gaps` lists the
    slice indices k whose next slice k+1 is not adjacent in the source (the
    slice importer's sidecar "slice_gaps"); none -> one run of all slices."""
    cuts = sorted({int(k) + 1 for k in (slice_gaps or []) if 0 <= int(k) < depth - 1})
    bounds = [0, *cuts, depth]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def label_components(mask: np.ndarray, runs=None) -> tuple[np.ndarray, int]:
    """26-connected components of a (H, W, D) mask -> (int labels, count).

    With `runs` (see `slice_runs`) components are labelled within each run
    of adjacent slices, so no component joins slices across a gap.
    """
    from scipy import ndimage  # here, not at import: settings and cohort import this module

    full = np.ones((3,) * mask.ndim, dtype=bool)
    if runs is None or len(runs) <= 1:
        labels, n = ndimage.label(mask, structure=full)
        return labels, int(n)
    labels = np.zeros(mask.shape, dtype=np.int32)
    total = 0
    for a, b in runs:
        part, n = ndimage.label(mask[..., a:b], structure=full)
        labels[..., a:b] = np.where(part > 0, part + total, 0)
        total += int(n)
    return labels, total


def component_stat(labels: np.ndarray, n: int, values: np.ndarray, stat) -> np.ndarray:
    """Per component 1..n of `labels` (int, the shape of `values`), `stat`
    (a scipy.ndimage per-label reducer such as `ndimage.maximum` or
    `ndimage.median`) of `values` over its voxels; float64 (n,), nan for a
    label with no voxel."""
    if labels.shape != values.shape:
        raise ValueError(f"component statistics: labels {labels.shape} and values {values.shape} differ in shape")
    out = np.full(n, np.nan)
    if n == 0:
        return out
    # Only the labelled voxels: the ndimage reducers sort every value they are
    # given, and most of a volume is background (13 ms a case of the demo's
    # 128 px development cohort for the peaks, 100-200 ms for the medians of
    # a 128x128x64 volume, when given the whole volume).
    inside = labels > 0
    present = np.bincount(labels[inside], minlength=n + 1)[1:] > 0
    if present.any():
        out[present] = stat(values[inside], labels[inside], np.flatnonzero(present) + 1)
    return out


def component_peaks(labels: np.ndarray, n: int, values: np.ndarray) -> np.ndarray:
    """Per component 1..n of `labels`, the largest of `values` (e.g. the
    probability) over its voxels (`component_stat` with `ndimage.maximum`)."""
    from scipy import ndimage

    return component_stat(labels, n, values, ndimage.maximum)


def jsonable(value, finite_only: bool = True, str_keys: bool = True):
    """`value` as plain JSON-ready Python, recursively: tuples -> lists, Paths -> text,
    numpy scalars and 0-d arrays -> Python numbers, dict keys -> text (unless
    `str_keys` is False), NaN/inf -> None (unless `finite_only` is False, for
    callers that want json.dumps(allow_nan=False) to catch them)."""
    if isinstance(value, dict):
        return {(str(k) if str_keys else k): jsonable(v, finite_only, str_keys) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, finite_only, str_keys) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.ndarray) and value.ndim > 0:
        return jsonable(value.tolist(), finite_only, str_keys)
    if isinstance(value, (np.generic, np.ndarray)):
        value = value.item()
    if finite_only and isinstance(value, float) and not math.isfinite(value):
        return None
    return value
