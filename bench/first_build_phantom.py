"""The first build's phantom (commit 2598df1), frozen, as an out-of-design test domain.

`bench/quality.py --test-domains first-build` scores a model on a cohort of
this generator, which ClotSeg no longer trains on: other vessel geometry,
calibres (half the adult ones: clots of 5-80 mm^3), clot sites (A1, A2, P1
and basilar as often as M2), a fixed bolus and noise model, no
misregistration, no veins or skull base. It is kept byte for byte as it was
(only this paragraph added and the CLI's program name), so that its figures
stay comparable across sessions; do not tune it. Its original docstring:

Synthetic paired CTA/NCCT head phantom around the Circle of Willis.

Lets every pipeline stage run on a fresh clone without patient data. One case
is a head (air, elliptical skull, grey/white parenchyma, CSF ventricles) with
a Circle-of-Willis-like tree of arterial tubes, seen twice on the same grid:

- CTA: contrast-filled lumen (200-450 HU); the clot is a filling defect
  (its NCCT value + 0..30 HU), a dark gap in the bright vessel.
- NCCT: flowing blood 38-45 HU; the clot is hyperdense (50-75 HU) in ~70% of
  clot cases and iso-dense (38-45 HU) otherwise.

Calcified wall spots (bright on both) are confounders and never in the mask.
All values are HU (float32, shape (H, W, D), slices along the last axis);
masks are uint8 {0, 1}. Values follow /work/shared/reference/clinical.md.

Case i of a cohort draws everything from `numpy.random.default_rng([seed, i])`
(i = the case number in `CS<i>`), so a cohort is reproducible byte for byte
(same numpy/scipy build and CPU) and a cohort of N cases is a prefix of one
of N + 1. Clot-free cases are chosen by case number (`is_clot_free`).

Geometry is scaled to the field of view (the Circle of Willis fills about
two thirds of the smaller in-plane extent), vessel radii are in voxels and
clot lengths in mm, so any crop size from ~64 to 256 pixels looks alike.

CLI: `python -m bench.first_build_phantom --cases 20 --seed 0` (see `--help`).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.interpolate import CubicSpline
from tqdm import tqdm

from clotseg.io import atomic_save_npy, atomic_write_json

HU_AIR = -1000.0
HU_RANGE = (-1024.0, 3071.0)        # 12-bit CT range; values are clipped to it
MAX_IN_PLANE = 256                   # the 2D pipeline pads slices to at most 256 x 256
SOURCE = "clotseg phantom"

# Per-vessel radius range in in-plane voxels (start of the vessel; it tapers).
_RADII_VOX = {
    "ICA": (2.0, 2.5), "BA": (1.7, 2.2), "M1": (1.7, 2.2), "M2s": (1.1, 1.5),
    "M2i": (1.1, 1.5), "A1": (1.2, 1.6), "A2": (1.2, 1.5), "ACom": (0.8, 1.0),
    "P1": (1.3, 1.7), "P2": (1.1, 1.4), "PCom": (0.8, 1.1),
}
# Where clots sit: mostly anterior circulation, as in thrombectomy cohorts.
_CLOT_SITES = (("M1", 0.42), ("ICA", 0.18), ("M2s", 0.11), ("M2i", 0.11), ("A1", 0.03),
               ("A2", 0.02), ("P1", 0.04), ("P2", 0.05), ("BA", 0.04))
_CALC_SITES = (("ICA", 0.5), ("BA", 0.15), ("M1", 0.2), ("P1", 0.08), ("A1", 0.07))
# Downstream vessels: distal to an occlusion the lumen fills only via collaterals.
_CHILDREN = {"ICA": ("M1", "A1"), "M1": ("M2s", "M2i"), "A1": ("A2",), "P1": ("P2",)}
_SIDED = ("ICA", "M1", "M2s", "M2i", "A1", "A2", "P1", "P2", "PCom")


@dataclass
class PhantomCase:
    """One synthetic case.

    Attributes:
        cta, ncct: float32 (H, W, D) HU volumes on the same grid (registered).
        mask: uint8 (H, W, D) clot mask {0, 1}; all zero without a clot.
        spacing_mm: (row_mm, col_mm, slice_mm).
        info: JSON-able dict: has_clot, hyperdense (None without clot),
            clot_volume_voxels, clot_vessel (e.g. "M1_L" or None),
            n_calcifications, plus the HU and noise parameters used.
        lumen: uint8 (H, W, D) arterial lumen incl. the clot (for checks; not
            written to disk).
        calcification: uint8 (H, W, D) calcified spots (not written to disk).
    """

    cta: np.ndarray
    ncct: np.ndarray
    mask: np.ndarray
    spacing_mm: tuple
    info: dict = field(default_factory=dict)
    lumen: np.ndarray | None = None
    calcification: np.ndarray | None = None


@dataclass
class _Vessel:
    """A centreline polyline in volume mm (row, col, slice), radii in mm."""

    name: str
    pts: np.ndarray        # (N, 3) mm
    radii: np.ndarray      # (N,) mm
    arc: np.ndarray        # (N,) cumulative length along the vessel, mm


# --------------------------------------------------------------------------- geometry
def _landmarks(rng: np.random.Generator, z_bottom: float) -> dict:
    """Circle-of-Willis landmarks in a head frame: (lateral, AP) in units of
    half the in-plane field of view, z in mm above the circle's plane.

    Lateral +1 is one side, AP negative is anterior. Every landmark gets its
    own jitter, so vessels that share a landmark stay connected.
    """
    lm = {}
    for side, s in (("L", 1.0), ("R", -1.0)):
        base = {
            "ICA0": (0.22, 0.04, z_bottom), "ICA1": (0.27, -0.15, 0.45 * z_bottom),
            "ICA2": (0.25, -0.12, 0.15 * z_bottom), "T": (0.27, -0.08, 0.0),
            "M1m": (0.40, -0.10, 0.5), "M1e": (0.52, -0.08, 1.0),
            "M2sm": (0.59, -0.17, 3.0), "M2se": (0.63, -0.30, 7.0),
            "M2im": (0.60, 0.01, 0.5), "M2ie": (0.63, 0.14, -1.5),
            "A1m": (0.15, -0.24, 1.5), "A1e": (0.05, -0.37, 2.5),
            "A2m": (0.04, -0.48, 8.0), "A2e": (0.04, -0.58, 20.0),
            "P1m": (0.15, 0.24, -1.5), "P1e": (0.26, 0.25, -1.0),
            "P2m": (0.37, 0.36, 1.0), "P2e": (0.40, 0.52, 3.0),
            "PCm": (0.27, 0.08, -1.0),
        }
        for key, (x, y, z) in base.items():
            jz = 0.0 if key == "ICA0" else rng.normal(0.0, 0.5)
            lm[f"{key}_{side}"] = (s * x + rng.normal(0.0, 0.02), y + rng.normal(0.0, 0.02), z + jz)
    lm["BA0"] = (rng.normal(0, 0.02), 0.32 + rng.normal(0, 0.02), z_bottom)
    lm["BAm"] = (rng.normal(0, 0.02), 0.30 + rng.normal(0, 0.02), 0.4 * z_bottom)
    lm["BAt"] = (rng.normal(0, 0.015), 0.26 + rng.normal(0, 0.02), -2.0 + rng.normal(0, 0.5))
    return lm


def _vessel_paths() -> dict:
    """Vessel name -> the landmark keys its centreline passes through."""
    paths = {"BA": ["BA0", "BAm", "BAt"], "ACom": ["A1e_R", "A1e_L"]}
    for sd in ("L", "R"):
        paths.update({
            f"ICA_{sd}": [f"ICA0_{sd}", f"ICA1_{sd}", f"ICA2_{sd}", f"T_{sd}"],
            f"M1_{sd}": [f"T_{sd}", f"M1m_{sd}", f"M1e_{sd}"],
            f"M2s_{sd}": [f"M1e_{sd}", f"M2sm_{sd}", f"M2se_{sd}"],
            f"M2i_{sd}": [f"M1e_{sd}", f"M2im_{sd}", f"M2ie_{sd}"],
            f"A1_{sd}": [f"T_{sd}", f"A1m_{sd}", f"A1e_{sd}"],
            f"A2_{sd}": [f"A1e_{sd}", f"A2m_{sd}", f"A2e_{sd}"],
            f"P1_{sd}": ["BAt", f"P1m_{sd}", f"P1e_{sd}"],
            f"P2_{sd}": [f"P1e_{sd}", f"P2m_{sd}", f"P2e_{sd}"],
            f"PCom_{sd}": [f"T_{sd}", f"PCm_{sd}", f"P1e_{sd}"],
        })
    return paths


def _kind(name: str) -> str:
    return name.split("_")[0]


def _build_vessels(rng, spacing, centre_mm, half_fov, theta, tilt, z_c, px) -> dict:
    """Sampled vessel centrelines in volume mm coordinates.

    Args:
        centre_mm: (row, col) mm of the circle's centre; z_c: its slice mm.
        half_fov: mm per landmark unit; theta: in-plane rotation (rad);
        tilt: (about row, about col) small rotations (rad); px: pixel mm.
    """
    z_bottom = -(z_c + 3.0 * spacing[2])          # ICAs and basilar enter from below the volume
    lm = _landmarks(rng, z_bottom)
    c, s = math.cos(theta), math.sin(theta)
    out = {}
    for name, keys in _vessel_paths().items():
        ctrl = np.array([lm[k] for k in keys], dtype=np.float64)
        x, y, z = ctrl[:, 0] * half_fov, ctrl[:, 1] * half_fov, ctrl[:, 2]
        xr, yr = c * x - s * y, s * x + c * y
        z = z + yr * math.tan(tilt[0]) + xr * math.tan(tilt[1])
        ctrl_mm = np.stack([centre_mm[0] + yr, centre_mm[1] + xr, z_c + z], axis=1)
        chord = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(ctrl_mm, axis=0), axis=1))]
        spline = CubicSpline(chord, ctrl_mm, bc_type="natural")
        # ~1.2 mm pieces: short enough that the polyline follows the spline.
        n = max(3, int(math.ceil(chord[-1] / 1.2)) + 1)
        pts = spline(np.linspace(0.0, chord[-1], n))
        arc = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))]
        lo, hi = _RADII_VOX[_kind(name)]
        r0 = rng.uniform(lo, hi) * px
        taper = rng.uniform(0.8, 0.95)
        frac = arc / max(arc[-1], 1e-6)
        ripple = 1.0 + 0.06 * np.sin(2 * np.pi * arc / rng.uniform(6.0, 14.0) + rng.uniform(0, 2 * np.pi))
        out[name] = _Vessel(name, pts, r0 * (1.0 + (taper - 1.0) * frac) * ripple, arc)
    return out


def _sub_vessel(v: _Vessel, a: float, b: float, name: str) -> _Vessel | None:
    """The part of `v` between arc lengths a and b (mm), endpoints interpolated."""
    a, b = max(a, 0.0), min(b, float(v.arc[-1]))
    if b - a < 1e-3:
        return None
    inner = (v.arc > a) & (v.arc < b)
    arc = np.r_[a, v.arc[inner], b]
    pts = np.stack([np.interp(arc, v.arc, v.pts[:, k]) for k in range(3)], axis=1)
    return _Vessel(name, pts, np.interp(arc, v.arc, v.radii), arc - a)


# --------------------------------------------------------------------------- rasterising
def _z_squash(vessel: _Vessel, slice_mm: float) -> float:
    """Slice-axis factor for `_rasterize`: a vessel thinner than ~0.6 slice
    is stretched along the slice axis to reach that half-height.

    Why: with slices 2-5x thicker than pixels a thin in-plane artery would
    fall between slice centres and look beaded; a real slice profile smears
    it over about one slice instead.
    """
    return min(1.0, float(np.mean(vessel.radii)) / (0.6 * slice_mm))


def _rasterize(occ, vessel, spacing, kz, edge_mm, value_map=None, value=0.0) -> None:
    """Draw a tube's partial-volume occupancy into `occ` (max-combined).

    Args:
        occ: float32 (H, W, D) occupancy in [0, 1], updated in place.
        vessel: centreline (mm) and radii (mm).
        spacing: (row, col, slice) mm; kz: factor applied to slice-axis mm
            (see `_z_squash`).
        edge_mm: width of the soft (anti-aliased) edge in mm.
        value_map: float32 (H, W, D) HU map, set to `value` where this tube
            is now the most occupying one (optional).
    Works piece by piece on small bounding boxes: no per-voxel Python loop.
    """
    step = np.array([spacing[0], spacing[1], spacing[2] * kz])
    pts = vessel.pts * np.array([1.0, 1.0, kz])
    shape = np.array(occ.shape)
    for j in range(len(pts) - 1):
        a, b = pts[j], pts[j + 1]
        ra, rb = vessel.radii[j], vessel.radii[j + 1]
        reach = max(ra, rb) + edge_mm
        i0 = np.maximum(np.ceil((np.minimum(a, b) - reach) / step).astype(int), 0)
        i1 = np.minimum(np.floor((np.maximum(a, b) + reach) / step).astype(int) + 1, shape)
        if np.any(i1 <= i0):
            continue
        gy = (np.arange(i0[0], i1[0]) * step[0] - a[0])[:, None, None]
        gx = (np.arange(i0[1], i1[1]) * step[1] - a[1])[None, :, None]
        gz = (np.arange(i0[2], i1[2]) * step[2] - a[2])[None, None, :]
        ab = b - a
        l2 = float(ab @ ab)
        t = np.clip((gy * ab[0] + gx * ab[1] + gz * ab[2]) / l2, 0.0, 1.0) if l2 > 0 else np.zeros((1, 1, 1))
        d = np.sqrt((gy - t * ab[0]) ** 2 + (gx - t * ab[1]) ** 2 + (gz - t * ab[2]) ** 2)
        o = np.clip((ra + t * (rb - ra) - d) / edge_mm + 0.5, 0.0, 1.0).astype(np.float32)
        sl = tuple(slice(lo, hi) for lo, hi in zip(i0, i1))
        sub = occ[sl]
        upd = o > sub
        sub[upd] = o[upd]
        if value_map is not None:
            value_map[sl][upd] = value


def _smooth_field(rng, shape, n_ctrl) -> np.ndarray:
    """Smooth random field, float32 (H, W, D), about zero mean and unit std.

    Gaussian-weighted interpolation of a coarse random grid, done as three
    small matrix products (cheap, and smooth by construction).
    """
    out = rng.standard_normal(n_ctrl).astype(np.float32)
    for axis, (n_out, n_c) in enumerate(zip(shape, n_ctrl)):
        centres = np.linspace(0.0, n_out - 1.0, n_c)
        width = (n_out - 1.0) / max(n_c - 1, 1)
        w = np.exp(-0.5 * ((np.arange(n_out)[:, None] - centres[None, :]) / max(width, 1.0)) ** 2)
        w = (w / w.sum(axis=1, keepdims=True)).astype(np.float32)
        out = np.moveaxis(np.tensordot(w, out, axes=([1], [axis])), 0, axis)
    out = np.ascontiguousarray(out)
    out -= out.mean()
    return out / max(float(out.std()), 1e-6)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _head(rng, shape, spacing, theta, px, z_c):
    """Tissue HU maps without vessels.

    Args:
        z_c: slice-axis mm of the Circle of Willis (ventricles lie above it).
    Returns (ncct_tissue, cta_tissue, brain) float32 (H, W, D): NCCT and CTA
    HU of air/skull/parenchyma/CSF, and the brain (inside the skull) occupancy.
    """
    H, W, D = shape
    fov_r, fov_c = H * spacing[0], W * spacing[1]
    a_r = 0.47 * fov_r * rng.uniform(0.93, 1.0)
    a_c = 0.47 * fov_c * rng.uniform(0.93, 1.0)
    # A head is at most ~1.3x longer than wide, whatever the crop.
    a_r, a_c = min(a_r, 1.3 * a_c), min(a_c, 1.3 * a_r)
    centre = np.array([fov_r, fov_c]) / 2.0 + rng.uniform(-0.02, 0.02, 2) * np.array([fov_r, fov_c])
    thick = max(rng.uniform(0.035, 0.06) * min(fov_r, fov_c), 2.5 * px)
    y = (np.arange(H) * spacing[0] - centre[0])[:, None]
    x = (np.arange(W) * spacing[1] - centre[1])[None, :]
    z = np.arange(D) * spacing[2]
    zrel = (z - z.mean()) / max(z.max() - z.min(), 1.0)
    # The head narrows away from the middle slice; scaling both ellipses by
    # t(z) keeps the elliptic radius separable: rho_3d = rho_2d / t.
    t = (1.0 - rng.uniform(0.02, 0.1) * (2 * zrel) ** 2).astype(np.float32)[None, None, :]
    c, s = math.cos(theta), math.sin(theta)
    u, v = c * y - s * x, s * y + c * x
    rho_out = np.sqrt((u / a_r) ** 2 + (v / a_c) ** 2).astype(np.float32)[:, :, None]
    rho_in = np.sqrt((u / (a_r - thick)) ** 2 + (v / (a_c - thick)) ** 2).astype(np.float32)[:, :, None]
    head = np.clip((t - rho_out) * np.float32(min(a_r, a_c) / px) + 0.5, 0.0, 1.0)
    brain = np.clip((t - rho_in) * np.float32(min(a_r, a_c) - thick) / px + 0.5, 0.0, 1.0)
    skull = head - brain

    bone = np.clip(rng.uniform(900.0, 1300.0) + 120.0 * _smooth_field(rng, shape, (4, 4, 3)), 700.0, 1500.0)

    # Grey matter: a cortical ribbon under the skull plus deep grey patches.
    ribbon = _sigmoid((rho_in / t - rng.uniform(0.82, 0.88)) * 40.0)
    deep = _sigmoid((_smooth_field(rng, shape, (7, 7, 4)) - 0.9) * 3.3)
    gm = np.maximum(ribbon, deep)
    wm_hu, gm_hu = rng.uniform(24.0, 30.0), rng.uniform(36.0, 44.0)
    paren = np.clip(wm_hu + (gm_hu - wm_hu) * gm + 1.5 * _smooth_field(rng, shape, (5, 5, 3)), 25.0, 45.0)

    csf = _ventricles(rng, shape, spacing, centre, theta, min(a_r, a_c), px, z_c)
    csf_hu = rng.uniform(2.0, 12.0)
    brain_hu = paren + (csf_hu - paren) * csf
    ncct = HU_AIR + (bone - HU_AIR) * skull + (brain_hu - HU_AIR) * brain
    # Contrast raises perfused parenchyma a few HU on CTA (grey more than white).
    enh = (rng.uniform(1.0, 3.0) + rng.uniform(2.0, 4.0) * gm) * (1.0 - csf) * brain
    return ncct, ncct + enh, brain


def _ventricles(rng, shape, spacing, centre, theta, a_head, px, z_c) -> np.ndarray:
    """CSF occupancy float32 (H, W, D): two lateral ventricles and a third
    ventricle, above the Circle of Willis (z_c, mm) as in real anatomy, so
    arteries do not run through CSF."""
    z_mid = z_c + rng.uniform(14.0, 20.0)
    c, s = math.cos(theta), math.sin(theta)
    csf = np.zeros(shape, dtype=np.float32)
    spread = rng.uniform(0.1, 0.16) * a_head
    blobs = [(-0.05 * a_head, sd * spread, z_mid, 0.35 * a_head, 0.09 * a_head, 10.0) for sd in (-1, 1)]
    blobs.append((0.0, 0.0, z_c + rng.uniform(6.0, 10.0), 0.12 * a_head, 0.03 * a_head, 4.0))
    for (cu, cv, cz, au, av, az) in blobs:
        au, av, az = (au * rng.uniform(0.8, 1.2), av * rng.uniform(0.8, 1.2), az * rng.uniform(0.8, 1.2))
        # Work on the blob's bounding box only (blob centre back in volume mm).
        cy, cx = centre[0] + c * cu + s * cv, centre[1] - s * cu + c * cv
        reach = np.array([max(au, av) + px, max(au, av) + px, az + spacing[2]])
        ctr = np.array([cy, cx, cz])
        i0 = np.maximum(np.floor((ctr - reach) / spacing).astype(int), 0)
        i1 = np.minimum(np.ceil((ctr + reach) / spacing).astype(int) + 1, shape)
        if np.any(i1 <= i0):
            continue
        y = (np.arange(i0[0], i1[0]) * spacing[0] - centre[0])[:, None, None]
        x = (np.arange(i0[1], i1[1]) * spacing[1] - centre[1])[None, :, None]
        z = (np.arange(i0[2], i1[2]) * spacing[2])[None, None, :]
        u, v = c * y - s * x, s * y + c * x
        rho = np.sqrt(((u - cu) / au) ** 2 + ((v - cv) / av) ** 2 + ((z - cz) / az) ** 2)
        sl = tuple(slice(a, b) for a, b in zip(i0, i1))
        csf[sl] = np.maximum(csf[sl], np.clip((1.0 - rho) * av / px + 0.5, 0.0, 1.0))
    return csf


# --------------------------------------------------------------------------- clot and calcifications
def _inside(pts_mm, spacing, shape, brain, margin=1, clearance_mm=0.0) -> np.ndarray:
    """(N,) bool: centreline points inside the volume (with a voxel margin)
    and inside the brain with `clearance_mm` to spare in-plane.

    The clearance keeps clots and calcifications off the skull, whose blurred
    bone would otherwise bleed hundreds of HU into them.
    """
    sp = np.asarray(spacing)
    idx = np.rint(pts_mm / sp).astype(int)
    ok = np.all((idx >= margin) & (idx <= np.asarray(shape) - 1 - margin), axis=1)
    for dr, dc in ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1), (0.7, 0.7), (-0.7, 0.7), (0.7, -0.7), (-0.7, -0.7)):
        probe = np.rint((pts_mm + clearance_mm * np.array([dr, dc, 0.0])) / sp).astype(int)
        probe = np.clip(probe, 0, np.asarray(shape) - 1)
        ok &= brain[probe[:, 0], probe[:, 1], probe[:, 2]] > 0.99
    return ok


def _pick_weighted(rng, table):
    names, weights = zip(*table)
    return names[int(rng.choice(len(names), p=np.asarray(weights) / sum(weights)))]


def _choose_clot(rng, vessels, spacing, shape, brain, px):
    """(vessel name, start mm, end mm) of the clot along its vessel, or None.

    The whole clot lies inside the volume and the brain, off the skull;
    length 5-20 mm, shortened when the visible part of the vessel is shorter.
    Sites are drawn by `_CLOT_SITES`; if none fits (tiny volumes), every
    vessel is tried in that order with looser limits.
    """
    for attempt in range(16):
        if attempt < 12:
            kind = _pick_weighted(rng, _CLOT_SITES)
            name = kind if kind not in _SIDED else f"{kind}_{'LR'[int(rng.integers(2))]}"
            clearance, min_len, margin = 4.0 * px, 3.0, 2
        else:
            clearance, min_len, margin = 1.0 * px, 4.0 * px, 1
            name = None
        names = [name] if name else [k if k not in _SIDED else f"{k}_{sd}" for k, _ in _CLOT_SITES for sd in "LR"]
        for name in dict.fromkeys(names):
            v = vessels[name]
            # Dense resampling so the inside test follows the vessel closely.
            arc = np.linspace(0.0, v.arc[-1], max(int(v.arc[-1] / 0.3), 2))
            pts = np.stack([np.interp(arc, v.arc, v.pts[:, k]) for k in range(3)], axis=1)
            ok = _inside(pts, spacing, shape, brain, margin=margin, clearance_mm=float(v.radii.max()) + clearance)
            ok &= (arc > 1.0) & (arc < v.arc[-1] - 1.0)     # a segment, not a vessel's very end
            runs = _runs(ok)
            if not runs:
                continue
            lo, hi = max(runs, key=lambda r: arc[r[1]] - arc[r[0]])
            avail = arc[hi] - arc[lo]
            if avail < min_len:
                continue
            length = min(rng.uniform(5.0, 20.0), 0.85 * avail)
            start = rng.uniform(arc[lo], arc[hi] - length)
            return name, start, start + length
    return None


def _runs(flags) -> list:
    """[(first, last)] index pairs of the True runs in a 1D bool array."""
    d = np.diff(np.r_[0, flags.astype(np.int8), 0])
    starts, ends = np.flatnonzero(d == 1), np.flatnonzero(d == -1) - 1
    return list(zip(starts.tolist(), ends.tolist()))


def _descendants(name: str) -> set:
    kind, _, side = name.partition("_")
    out, todo = set(), list(_CHILDREN.get(kind, ()))
    while todo:
        k = todo.pop()
        out.add(f"{k}_{side}" if side else k)
        todo.extend(_CHILDREN.get(k, ()))
    if kind == "BA":       # a basilar clot starves both posterior cerebral arteries
        out |= {f"{k}_{sd}" for k in ("P1", "P2") for sd in "LR"}
    return out


def _calcifications(rng, vessels, spacing, shape, brain, clot_pts, px):
    """Calcified wall spots: (occupancy float32 (H, W, D), HU per spot, count).

    Each spot is centred on a voxel just outside a vessel wall, with a
    Gaussian profile (peak 1), 1-2 voxels across, away from the clot.
    """
    k_map = np.zeros(shape, dtype=np.float32)
    hu_map = np.zeros(shape, dtype=np.float32)
    n_spots = 0 if rng.random() < 0.45 else int(rng.integers(1, 5))
    placed = 0
    sp = np.asarray(spacing)
    for _ in range(n_spots):
        kind = _pick_weighted(rng, _CALC_SITES)
        name = kind if kind not in _SIDED else f"{kind}_{'LR'[int(rng.integers(2))]}"
        v = vessels[name]
        j = int(rng.integers(1, len(v.pts) - 1))
        tangent = v.pts[j + 1] - v.pts[j - 1]
        tangent /= max(np.linalg.norm(tangent), 1e-6)
        n = rng.standard_normal(3)
        n -= (n @ tangent) * tangent
        n /= max(np.linalg.norm(n), 1e-6)
        centre = v.pts[j] + n * (v.radii[j] + 0.7 * px)
        hu, sigma = rng.uniform(150.0, 400.0), rng.uniform(0.45, 0.8) * px
        idx = np.rint(centre / sp).astype(int)
        if not _inside(idx[None] * sp, spacing, shape, brain, margin=1, clearance_mm=3.0 * px)[0]:
            continue
        if clot_pts is not None and np.min(np.linalg.norm(clot_pts - idx * sp, axis=1)) < 4.0 + v.radii[j]:
            continue
        sl = tuple(slice(i - 1, i + 2) for i in idx)
        off = [np.arange(-1, 2) * sp[a] for a in range(3)]
        d2 = off[0][:, None, None] ** 2 + off[1][None, :, None] ** 2 + off[2][None, None, :] ** 2
        spot = np.exp(-0.5 * d2 / sigma ** 2).astype(np.float32)
        upd = spot > k_map[sl]
        k_map[sl][upd] = spot[upd]
        hu_map[sl][upd] = hu
        placed += 1
    return k_map, hu_map, placed


# --------------------------------------------------------------------------- the case
def make_case(rng: np.random.Generator, shape: tuple[int, int, int], spacing_mm: tuple,
              with_clot: bool) -> PhantomCase:
    """Generate one paired CTA/NCCT phantom case.

    Args:
        rng: the case's own generator (all randomness comes from it).
        shape: (H, W, D) voxels; H, W >= 24, D >= 4.
        spacing_mm: (row_mm, col_mm, slice_mm) voxel spacing.
        with_clot: place one occluding clot (mask non-empty) or none.
    Returns:
        PhantomCase with float32 HU volumes `cta`, `ncct` (H, W, D), uint8
        `mask` (H, W, D) and an `info` dict (see PhantomCase).
    """
    H, W, D = (int(n) for n in shape)
    if H < 24 or W < 24 or D < 4:
        raise ValueError(f"phantom shape {tuple(shape)} too small: need H, W >= 24 and D >= 4")
    spacing = tuple(float(s) for s in spacing_mm)
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing_mm must be 3 positive numbers (mm), got {spacing_mm}")
    shape = (H, W, D)
    px = 0.5 * (spacing[0] + spacing[1])
    fov = np.array([H * spacing[0], W * spacing[1]])
    depth = (D - 1) * spacing[2]

    theta = math.radians(rng.uniform(-15.0, 15.0))
    z_c = rng.uniform(0.4, 0.6) * depth
    ncct_t, cta_t, brain = _head(rng, shape, spacing, theta, px, z_c)

    half_fov = 0.5 * float(fov.min())
    centre = fov / 2.0 + rng.uniform(-0.05, 0.05, 2) * fov
    tilt = np.radians(rng.uniform(-3.0, 3.0, 2))
    vessels = _build_vessels(rng, spacing, centre, half_fov, theta, tilt, z_c, px)

    lumen_hu = rng.uniform(200.0, 450.0)
    blood_hu = rng.uniform(38.0, 45.0)
    distal_factor = rng.uniform(0.5, 0.9)
    hyperdense = bool(rng.random() < 0.7)
    # A hyperdense clot stands >= 15 HU above the blood, so that after blur
    # and partial volume (thin arteries) it still reads brighter than blood.
    clot_ncct = max(rng.uniform(50.0, 75.0), blood_hu + 15.0) if hyperdense else rng.uniform(38.0, 45.0)
    clot_cta = clot_ncct + rng.uniform(0.0, 30.0)

    site = _choose_clot(rng, vessels, spacing, shape, brain, px) if with_clot else None
    if with_clot and site is None:
        raise ValueError(f"phantom: no room for a clot in a {shape} volume at {spacing} mm; use a larger volume")

    occ = np.zeros(shape, dtype=np.float32)
    cta_lumen = np.full(shape, lumen_hu, dtype=np.float32)
    clot = np.zeros(shape, dtype=np.float32)
    dim = _descendants(site[0]) if site else set()
    distal_hu = blood_hu + distal_factor * (lumen_hu - blood_hu)
    clot_pts = None
    for name, v in vessels.items():
        # Opacification differs a little from artery to artery.
        hu = lumen_hu * rng.uniform(0.93, 1.07)
        kz = _z_squash(v, spacing[2])
        if site and name == site[0]:
            prox, mid, dist = (_sub_vessel(v, -1.0, site[1], name), _sub_vessel(v, site[1], site[2], name),
                               _sub_vessel(v, site[2], v.arc[-1] + 1.0, name))
            for part, val in ((prox, hu), (dist, distal_hu)):
                if part is not None:
                    _rasterize(occ, part, spacing, kz, px, cta_lumen, val)
            _rasterize(occ, mid, spacing, kz, px, cta_lumen, hu)
            _rasterize(clot, mid, spacing, kz, px)
            clot_pts = mid.pts
        else:
            _rasterize(occ, v, spacing, kz, px, cta_lumen, distal_hu if name in dim else hu)
    occ *= brain
    clot = np.minimum(clot, occ)

    k_map, k_hu, n_calc = _calcifications(rng, vessels, spacing, shape, brain, clot_pts, px)

    ncct = ncct_t * (1.0 - occ) + blood_hu * (occ - clot) + clot_ncct * clot
    cta = cta_t * (1.0 - occ) + cta_lumen * (occ - clot) + clot_cta * clot
    blur = rng.uniform(0.6, 1.0)
    sig = (blur, blur, 0.5 * blur)
    ncct = ndimage.gaussian_filter(ncct, sig, mode="nearest")
    cta = ndimage.gaussian_filter(cta, sig, mode="nearest")
    # Spots go on after the blur so their peak keeps the calcium HU (>130).
    ncct = ncct * (1.0 - k_map) + k_hu * k_map
    cta = cta * (1.0 - k_map) + k_hu * k_map
    noise_cta, noise_ncct = rng.uniform(8.0, 15.0), rng.uniform(3.0, 6.0)
    cta += noise_cta * rng.standard_normal(shape, dtype=np.float32)
    ncct += noise_ncct * rng.standard_normal(shape, dtype=np.float32)

    calc = k_map >= 0.5
    mask = ((clot >= 0.5) & ~(k_map >= 0.2)).astype(np.uint8)
    if with_clot and not mask.any():
        raise ValueError(f"phantom: the clot covers no voxel in a {shape} volume at {spacing} mm; "
                         "use a larger volume")
    n_vox = int(mask.sum())
    info = {
        "has_clot": bool(with_clot),
        "hyperdense": hyperdense if with_clot else None,
        "clot_volume_voxels": n_vox,
        "clot_volume_mm3": round(n_vox * float(np.prod(spacing)), 2),
        "clot_vessel": site[0] if site else None,
        "clot_length_mm": round(float(site[2] - site[1]), 2) if site else None,
        "clot_ncct_hu": round(clot_ncct, 1) if with_clot else None,
        "clot_cta_hu": round(clot_cta, 1) if with_clot else None,
        "n_calcifications": n_calc,
        "lumen_cta_hu": round(lumen_hu, 1),
        "blood_ncct_hu": round(blood_hu, 1),
        "noise_cta_hu": round(noise_cta, 2),
        "noise_ncct_hu": round(noise_ncct, 2),
        "blur_sigma_vox": round(blur, 3),
    }
    return PhantomCase(
        cta=np.clip(cta, *HU_RANGE).astype(np.float32),
        ncct=np.clip(ncct, *HU_RANGE).astype(np.float32),
        mask=mask, spacing_mm=spacing, info=info,
        lumen=(occ >= 0.5).astype(np.uint8), calcification=calc.astype(np.uint8))


# --------------------------------------------------------------------------- cohort
def is_clot_free(case_number: int, clot_free_fraction: float) -> bool:
    """Whether case `CS<case_number>` has no clot.

    Clot-free cases are spread evenly (a fraction f of any long run of case
    numbers), with the first one at case 7 at the latest, so any cohort of 7
    or more cases from CS1 has one. Depends only on the case number, which
    keeps the prefix property. Exact fractions avoid float rounding at 1/f.
    """
    f = Fraction(str(float(clot_free_fraction)))
    if f <= 0:
        return False
    if f >= 1:
        return True
    k = case_number - 1 + max(0, math.ceil(1 / f) - 7)
    return math.floor((k + 1) * f) > math.floor(k * f)


def _even_in(rng, lo: int, hi: int) -> int:
    return 2 * int(rng.integers((lo + 1) // 2, hi // 2 + 1))


def _check_range(name, rng_pair, lo_min, hi_max, need_even=False) -> tuple[int, int]:
    lo, hi = (int(v) for v in rng_pair)
    if not lo_min <= lo <= hi <= hi_max:
        raise ValueError(f"{name} must satisfy {lo_min} <= low <= high <= {hi_max}, got ({lo}, {hi})")
    if need_even and (lo + 1) // 2 > hi // 2:
        raise ValueError(f"{name} range ({lo}, {hi}) holds no even size")
    return lo, hi


def write_cohort(volume_dir, mask_dir, n_cases: int, seed: int = 0, first_id: int = 1,
                 in_plane=(96, 256), slices=(20, 60), clot_free_fraction: float = 0.15,
                 progress: bool = True) -> list[str]:
    """Write a synthetic cohort in the ClotSeg input layout.

    Files per case CS<ID> (ID = first_id, first_id + 1, ...):
    `CS<ID>_CTA_Binary.npy`, `CS<ID>_NCCT_Reg_Binary.npy` (float32 HU,
    (H, W, D)) and the sidecar `CS<ID>.json` ({"spacing_mm": [row, col,
    slice] mm, "source", "seed", plus the case info}) in `volume_dir`;
    `CS<ID>_seg_corrected_binary.npy` (uint8 {0, 1}) in `mask_dir`.
    Existing files of the same names are replaced atomically.

    Args:
        n_cases: number of cases (>= 1).
        seed: cohort seed (>= 0); case ID uses default_rng([seed, ID]).
        in_plane: (low, high) for H and W, each drawn separately, even, <= 256.
        slices: (low, high) for D.
        clot_free_fraction: share of cases without clot (see `is_clot_free`).
    Returns:
        The case ids, e.g. ["CS1", "CS2", ...].
    """
    if int(n_cases) < 1:
        raise ValueError(f"n_cases must be >= 1, got {n_cases}")
    if int(seed) < 0 or int(first_id) < 0:
        raise ValueError(f"seed and first_id must be >= 0, got {seed}, {first_id}")
    if not 0.0 <= float(clot_free_fraction) <= 1.0:
        raise ValueError(f"clot_free_fraction must be in [0, 1], got {clot_free_fraction}")
    ip_lo, ip_hi = _check_range("in_plane", in_plane, 24, MAX_IN_PLANE, need_even=True)
    sl_lo, sl_hi = _check_range("slices", slices, 4, 100000)
    volume_dir, mask_dir = Path(volume_dir), Path(mask_dir)
    ids = []
    for number in tqdm(range(int(first_id), int(first_id) + int(n_cases)), disable=not progress,
                       desc="phantom cases", unit="case"):
        rng = np.random.default_rng([int(seed), number])
        shape = (_even_in(rng, ip_lo, ip_hi), _even_in(rng, ip_lo, ip_hi), int(rng.integers(sl_lo, sl_hi + 1)))
        inplane_mm = round(float(rng.uniform(0.4, 0.6)), 3)
        spacing = (inplane_mm, inplane_mm, round(float(rng.uniform(1.0, 2.0)), 3))
        case = make_case(rng, shape, spacing, with_clot=not is_clot_free(number, clot_free_fraction))
        cid = f"CS{number}"
        atomic_save_npy(volume_dir / f"{cid}_CTA_Binary.npy", case.cta)
        atomic_save_npy(volume_dir / f"{cid}_NCCT_Reg_Binary.npy", case.ncct)
        atomic_save_npy(mask_dir / f"{cid}_seg_corrected_binary.npy", case.mask)
        atomic_write_json(volume_dir / f"{cid}.json", {
            "spacing_mm": list(spacing), "source": SOURCE, "seed": int(seed), "shape": list(shape), **case.info})
        ids.append(cid)
    return ids


def main(argv=None) -> int:
    """CLI: write a phantom cohort and print a one-line summary."""
    p = argparse.ArgumentParser(prog="python -m bench.first_build_phantom", description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=20, help="number of cases (default 20)")
    p.add_argument("--seed", type=int, default=0, help="cohort seed (default 0)")
    p.add_argument("--volume-dir", default="DL_vol_files/binary", help="CTA/NCCT + sidecar folder")
    p.add_argument("--mask-dir", default="DL_seg_files/binary", help="mask folder")
    p.add_argument("--in-plane", type=int, nargs=2, default=(96, 256), metavar=("LOW", "HIGH"),
                   help="H and W range, even, at most 256 (default 96 256)")
    p.add_argument("--slices", type=int, nargs=2, default=(20, 60), metavar=("LOW", "HIGH"),
                   help="D range (default 20 60)")
    p.add_argument("--first-id", type=int, default=1, help="number of the first case, CS<first-id> (default 1)")
    p.add_argument("--clot-free-fraction", type=float, default=0.15, help="share of clot-free cases (default 0.15)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    try:
        ids = write_cohort(args.volume_dir, args.mask_dir, args.cases, seed=args.seed, first_id=args.first_id,
                           in_plane=args.in_plane, slices=args.slices,
                           clot_free_fraction=args.clot_free_fraction, progress=not args.quiet)
    except ValueError as exc:
        p.error(str(exc))
    n_free = sum(is_clot_free(int(c[2:]), args.clot_free_fraction) for c in ids)
    print(f"phantom: wrote {len(ids)} cases {ids[0]}..{ids[-1]} (seed {args.seed}, {len(ids) - n_free} with clot, "
          f"{n_free} clot-free) to {args.volume_dir} and {args.mask_dir} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
