"""PNG figures for training and evaluation (matplotlib Agg, headless).

Figures are built as `matplotlib.figure.Figure` objects on an Agg canvas,
never through pyplot, so no window opens, no global figure registry fills up
(`plt.get_fignums()` stays empty) and a figure is freed as soon as the
function returns. Every PNG is written to a temporary file in the target
folder and renamed into place, so a reader never sees a half-written image.

Image slices are 2D arrays (rows, cols). Float/int slices are taken as HU and
shown through a (low, high) HU window; uint8 slices are taken as ClotSeg
intensity codes 0..255 (already windowed) and shown as they are. Masks are
(rows, cols) bool/0-1 arrays; truth is drawn as a green contour, the
prediction as a red contour.
"""

from __future__ import annotations

import csv
import math
import os
import uuid
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

TRUTH_COLOR = "lime"
PRED_COLOR = "red"
DEFAULT_WINDOWS = ((-100.0, 600.0), (0.0, 80.0))   # (CTA, NCCT) HU
MAX_FIG_INCHES = 30.0


# ------------------------------------------------------------------ helpers
def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(max(width, 1.0), max(height, 1.0)))
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, out_png, dpi: int = 100) -> Path:
    """Save a figure as PNG via temp file + os.replace; returns the path."""
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    # A fresh unique name (not mkstemp, which would make the PNG owner-only):
    # savefig opens it normally, so the usual umask permissions apply.
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp.png")
    try:
        fig.savefig(tmp, format="png", dpi=dpi)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        fig.clear()
    return out


def _display(img, window) -> tuple[np.ndarray, float, float]:
    """(array, vmin, vmax) for imshow: uint8 codes as is, HU through the window."""
    arr = np.asarray(img)
    if arr.dtype == np.uint8:
        return arr, 0.0, 255.0
    lo, hi = (float(window[0]), float(window[1])) if window is not None else (float(np.nanmin(arr)),
                                                                               float(np.nanmax(arr)))
    return arr.astype(np.float32), lo, hi if hi > lo else lo + 1.0


def _contour(ax, mask, color: str, linewidth: float = 1.0) -> None:
    if mask is None:
        return
    m = np.asarray(mask) > 0
    if m.any():   # contour() of a constant array only warns and draws nothing
        ax.contour(m.astype(np.float32), levels=[0.5], colors=color, linewidths=linewidth)


def _legend_handles(with_truth: bool = True) -> list[Line2D]:
    handles = [Line2D([], [], color=PRED_COLOR, label="prediction")]
    if with_truth:
        handles.insert(0, Line2D([], [], color=TRUTH_COLOR, label="truth"))
    return handles


def _clot_box(shape, masks, min_side: int = 64, margin: int = 16) -> tuple[slice, slice] | None:
    """Square crop around all mask voxels (None if masks are empty or crop ~ image)."""
    union = np.zeros(shape, dtype=bool)
    for m in masks:
        if m is not None:
            union |= np.asarray(m) > 0
    if not union.any():
        return None
    rows, cols = np.nonzero(union)
    side = max(int(rows.max() - rows.min()), int(cols.max() - cols.min())) + 2 * margin
    side = max(side, min_side)
    if side >= 0.75 * min(shape):
        return None
    box = []
    for idx, n in ((rows, shape[0]), (cols, shape[1])):
        centre = (int(idx.min()) + int(idx.max())) // 2
        lo = min(max(centre - side // 2, 0), max(n - side, 0))
        box.append(slice(lo, min(lo + side, n)))
    return box[0], box[1]


def _crop(arr, box):
    return None if arr is None else np.asarray(arr)[box]


def _show(ax, img, window, truth, pred, title: str | None = None, fontsize: float = 9) -> None:
    arr, vmin, vmax = _display(img, window)
    ax.imshow(arr, cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
    _contour(ax, truth, TRUTH_COLOR)
    _contour(ax, pred, PRED_COLOR)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=fontsize)


# ------------------------------------------------------------------ figures
def _read_history(history_csv) -> dict[str, np.ndarray]:
    with open(history_csv, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    cols: dict[str, np.ndarray] = {}
    for name in (rows[0].keys() if rows else []):
        vals = []
        for r in rows:
            try:
                vals.append(float(r.get(name) or "nan"))
            except ValueError:
                vals.append(float("nan"))
        cols[name] = np.asarray(vals, dtype=np.float64)
    return cols


def plot_training_curves(history_csv, out_png) -> Path:
    """Loss and Dice curves from a Keras CSVLogger file, two panels.

    Args:
        history_csv: CSV with an "epoch" column (else row order is used) and
            any of loss / val_loss and columns containing "dice" (dice,
            val_dice, dice_coef, ...). Missing columns are simply not drawn;
            an empty file gives panels that say "no data".
        out_png: output path.
    Returns:
        out_png as a Path.
    """
    cols = _read_history(history_csv)
    n = len(next(iter(cols.values()))) if cols else 0
    epochs = cols.get("epoch", np.arange(n, dtype=np.float64))
    if "epoch" in cols:
        epochs = epochs + 1   # Keras logs 0-based epochs; humans count from 1
    fig = _new_figure(11, 4)
    axes = fig.subplots(1, 2)
    panels = (
        ("Loss", [c for c in ("loss", "val_loss") if c in cols]
         + sorted(c for c in cols if c.endswith("loss") and c not in ("loss", "val_loss"))),
        ("Dice", sorted((c for c in cols if "dice" in c.lower()), key=lambda c: (c.startswith("val_"), c))),
    )
    for ax, (label, names) in zip(axes, panels):
        drawn = False
        for name in names:
            y = cols[name]
            if np.isfinite(y).any():
                ax.plot(epochs, y, marker="o" if n < 30 else None, markersize=3,
                        linestyle="--" if name.startswith("val_") else "-", label=name)
                drawn = True
        if drawn:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, f"no {label.lower()} data", ha="center", va="center", transform=ax.transAxes)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, out_png)


def best_slice_index(truth, pred) -> int:
    """Slice (last axis) to show for a case.

    Args:
        truth: (H, W, D) mask or None; pred: (H, W, D) mask or None.
    Returns:
        index of the slice with most truth voxels; if truth is empty/None, the
        one with most predicted voxels; if both are empty, D // 2.
    """
    depth = None
    for m in (truth, pred):
        if m is not None:
            arr = np.asarray(m) > 0
            if arr.ndim != 3:
                raise ValueError(f"masks must be 3D (H, W, D), got shape {arr.shape}")
            depth = arr.shape[2]
            counts = arr.sum(axis=(0, 1))
            if counts.any():
                return int(np.argmax(counts))
    if depth is None:
        raise ValueError("best_slice_index needs at least one mask")
    return depth // 2


def case_overlay(cta_slice, ncct_slice, truth_slice, pred_slice, out_png, title: str = "",
                 windows=DEFAULT_WINDOWS, names=("CTA", "NCCT")) -> Path:
    """One case slice of a two-channel (or one-channel) cohort; see `modality_overlay`.

    Kept for the two-channel call sites: panels are the first channel, the
    second (left out when ncct_slice is None) and a zoom of the first.

    Args:
        cta_slice, ncct_slice: (rows, cols) HU (or uint8 codes); ncct may be None.
        truth_slice: (rows, cols) mask, or None for an unlabeled case.
        pred_slice: (rows, cols) mask.
        out_png: output path. title: figure title.
        windows: ((first low, high), (second low, high)) HU.
        names: panel titles of the two channels (the modality names).
    """
    slices = [cta_slice] + ([ncct_slice] if ncct_slice is not None else [])
    return modality_overlay(slices, truth_slice, pred_slice, out_png, title, windows=windows, names=names)


def modality_overlay(slices, truth_slice, pred_slice, out_png, title: str = "", windows=None, names=None,
                     uncertainty_slice=None, uncertainty_max: float = 0.5) -> Path:
    """One case slice: every modality (gray, windowed) with truth/prediction contours.

    Panels: one per modality, in channel order and titled with its name; a
    zoom of the first modality around the clot/prediction when it is small
    against the image; and, when `uncertainty_slice` is given, the voxel
    uncertainty map (colour, 0..`uncertainty_max`) with the prediction contour,
    cropped like the zoom when there is one.

    Args:
        slices: list of (rows, cols) HU arrays (or uint8 codes), one per modality.
        truth_slice: (rows, cols) mask, or None for an unlabeled case.
        pred_slice: (rows, cols) mask.
        windows: one (low, high) HU window (or None: the slice's range) per
            modality; default: none.
        names: one name per modality (default "channel 1", ...).
    """
    slices = [np.asarray(s) for s in slices]
    if not slices:
        raise ValueError("modality_overlay needs at least one image slice")
    names = list(names) if names is not None else [f"channel {i + 1}" for i in range(len(slices))]
    windows = list(windows) if windows is not None else [None] * len(slices)
    if len(names) < len(slices) or len(windows) < len(slices):
        raise ValueError(f"{len(slices)} slices but {len(names)} names and {len(windows)} windows")
    panels = [(names[i], img, windows[i], truth_slice, pred_slice) for i, img in enumerate(slices)]
    first = slices[0]
    box = _clot_box(first.shape, [truth_slice, pred_slice])
    if box is not None:
        panels.append((f"{names[0]} zoom", first[box], windows[0], _crop(truth_slice, box), _crop(pred_slice, box)))
    n_panels = len(panels) + (uncertainty_slice is not None)
    fig = _new_figure(min(4.0 * n_panels, MAX_FIG_INCHES), 4.6)
    axes = np.atleast_1d(fig.subplots(1, n_panels))
    for ax, (name, img, win, t, p) in zip(axes, panels):
        _show(ax, img, win, t, p, title=name)
    if uncertainty_slice is not None:
        ax = axes[-1]
        unc, unc_pred = np.asarray(uncertainty_slice, dtype=np.float32), pred_slice
        if box is not None:          # the same crop as the zoom: clots are small against the head
            unc, unc_pred = unc[box], _crop(pred_slice, box)
        im = ax.imshow(unc, cmap="magma", vmin=0.0, vmax=float(uncertainty_max), interpolation="nearest")
        _contour(ax, unc_pred, "cyan")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title("uncertainty" + (" zoom" if box is not None else "") + " (cyan: prediction)", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    fig.legend(handles=_legend_handles(truth_slice is not None), loc="lower center",
               ncol=2, fontsize=9, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.06, 1, 0.95 if title else 1))
    return save_figure(fig, out_png)


def montage(cases, out_png, windows=DEFAULT_WINDOWS, zoom: bool = True, title: str = "") -> Path:
    """All test cases in one grid: first-modality slice with contours, "case_id Dice x.xx".

    Args:
        cases: list of (case_id, first_slice, second_slice, truth_slice,
            pred_slice, dice); second_slice (may be None) is accepted but not
            drawn; truth may be None and dice None/NaN (shown as "n/a").
        out_png: output path.
        windows: HU windows per modality; only the first is used.
        zoom: crop each tile around its clot/prediction (clots are small).
        title: optional figure title.
    The grid is about square; the figure is capped at 30 x 30 inches (100
    dpi), tiles shrink as the case count grows (a few hundred cases fit).
    """
    cases = list(cases)
    n = len(cases)
    if n == 0:
        fig = _new_figure(4, 2)
        fig.text(0.5, 0.5, "no cases", ha="center", va="center")
        return save_figure(fig, out_png)
    ncols = max(1, math.ceil(math.sqrt(n)))
    nrows = math.ceil(n / ncols)
    tile = min(2.4, MAX_FIG_INCHES / ncols, MAX_FIG_INCHES / nrows)
    fontsize = max(4.0, min(9.0, 4.0 * tile))
    header, footer = 0.25 + (0.4 if title else 0.0), 0.4   # inches: tile titles + suptitle, legend
    height = tile * nrows + header + footer
    fig = _new_figure(tile * ncols, height)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, (case_id, cta, _ncct, truth, pred, dice) in zip(axes, cases):
        cta = np.asarray(cta)
        box = _clot_box(cta.shape, [truth, pred]) if zoom else None
        if box is not None:
            cta, truth, pred = cta[box], _crop(truth, box), _crop(pred, box)
        d = "n/a" if dice is None or not math.isfinite(float(dice)) else f"{float(dice):.2f}"
        _show(ax, cta, windows[0], truth, pred, title=f"{case_id} Dice {d}", fontsize=fontsize)
    for ax in axes[n:]:
        ax.axis("off")
    fig.legend(handles=_legend_handles(), loc="lower center", ncol=2, fontsize=max(fontsize, 7), frameon=False)
    if title:
        fig.suptitle(title)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=footer / height, top=1 - header / height,
                        wspace=0.05, hspace=0.25)
    return save_figure(fig, out_png)


def _channel_display(img) -> tuple[np.ndarray, float, float]:
    arr = np.asarray(img)
    if arr.dtype == np.uint8:
        return arr, 0.0, 255.0
    arr = arr.astype(np.float32)
    lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
    if lo >= 0.0 and hi <= 1.0:
        return arr, 0.0, 1.0
    return arr, lo, hi if hi > lo else lo + 1.0


def prediction_panel(images, truths, preds, out_png, title: str = "", max_samples: int = 8,
                     names=None) -> Path:
    """Grid of 2D validation samples: one row per channel, then truth and prediction.

    Args:
        images: (N, H, W, C) model inputs, channels in order CTA, NCCT (uint8
            codes 0..255, or floats in [0, 1]); (N, H, W) means one channel.
        truths: (N, H, W) masks 0/1 or class labels (a trailing channel axis
            of 1 is dropped).
        preds: (N, H, W) probabilities in [0, 1], masks or class labels.
        out_png: output path. title: figure title (e.g. "epoch 7").
        max_samples: columns drawn at most (the first ones).
        names: the channels' row titles (default: "CTA", "NCCT", "channel k").
    """
    imgs = np.asarray(images)
    if imgs.ndim == 3:
        imgs = imgs[..., None]
    truths, preds = np.asarray(truths), np.asarray(preds)
    if truths.ndim == 4:
        truths = truths[..., 0]
    if preds.ndim == 4:
        preds = preds[..., 0]
    if not (imgs.shape[0] == truths.shape[0] == preds.shape[0]) or imgs.shape[1:3] != truths.shape[1:3] \
            or truths.shape != preds.shape:
        raise ValueError(f"images {imgs.shape}, truths {truths.shape}, preds {preds.shape} do not match")
    n = min(imgs.shape[0], max_samples)
    label_max = max([1.0] + [float(np.nanmax(a[:n])) for a in (truths, preds) if n > 0])
    names = list(names or ["CTA", "NCCT"])[:imgs.shape[3]]
    names += [f"channel {k}" for k in range(len(names), imgs.shape[3])]
    row_titles = names[:imgs.shape[3]] + ["truth", "prediction"]
    nrows = len(row_titles)
    tile = min(2.0, MAX_FIG_INCHES / max(n, 1))
    fig = _new_figure(tile * max(n, 1) + 0.6, tile * nrows + 0.5)
    axes = fig.subplots(nrows, max(n, 1), squeeze=False)
    for j in range(n):
        columns = [imgs[j, ..., c] for c in range(imgs.shape[3])] + [truths[j], preds[j]]
        for i, data in enumerate(columns):
            ax = axes[i, j]
            if i < imgs.shape[3]:
                arr, vmin, vmax = _channel_display(data)
            else:
                # probabilities/binary masks on [0, 1]; class label maps up to their top label
                arr = np.asarray(data, dtype=np.float32)
                vmin, vmax = 0.0, label_max
            ax.imshow(arr, cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
            if i == nrows - 1:
                _contour(ax, truths[j], TRUTH_COLOR)
            ax.set_xticks([])
            ax.set_yticks([])
    for i, name in enumerate(row_titles):
        axes[i, 0].set_ylabel(name, fontsize=9)
    if n == 0:
        axes[0, 0].text(0.5, 0.5, "no samples", ha="center", va="center", transform=axes[0, 0].transAxes)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, out_png)
