"""Synthetic paired CTA/NCCT head phantom around the Circle of Willis, with
per-case domain randomisation.

Lets every pipeline stage run on a fresh clone without patient data, and is
deliberately varied so that a model trained on it has to learn what a clot
looks like rather than one fixed rendering of it. One case is a head (air,
elliptical skull, grey/white parenchyma, CSF) with a Circle-of-Willis-like
tree of arterial tubes, seen twice: the CTA, and an NCCT registered to it
with a small residual error. Every parameter below is drawn per case.

Domain "standard" (the default; ranges in HU unless stated):

- Anatomy: vessel calibre x0.7-1.4 (one scale per case; 12% chance each of a
  hypoplastic A1/P1/PCom/ACom); tortuosity: smooth random wiggles of every
  centreline (0-5% of the half field of view, x1.5 for the ICA siphon);
  head rotation +-15 degrees, tilt +-3; grey matter 4-16 above white matter
  (white 20-32); ventricles x0.8-1.5; sulcal CSF; old CSF-like infarcts (20%
  of cases); an acute hypodense infarct (3-12 lower, blurred grey/white
  boundary, less CTA enhancement) in the clot's territory in 35% of clot
  cases and somewhere in 12% of clot-free cases (a confounder).
- CTA lumen 220-500 (a weak bolus, 150-220, in 15% of cases); arteries
  beyond an occlusive clot fill only via collaterals (30-95% of the lumen
  enhancement); dural sinuses (sagittal, straight, transverse) and 0-5
  cortical veins are bright on CTA (5-90% of the arterial enhancement).
- Flowing blood on NCCT 38-45. Clot NCCT 30-80: 60% hyperdense (8-35 above
  blood, at most 80), 40% iso- or hypodense (30 to blood + 2); smooth inner
  heterogeneity 0-6. Clot CTA = its NCCT + 0-80 (perviousness: half the
  clots 0-15, 35% 15-45, 15% 45-80), capped so that the filling defect keeps
  at least 55% of the lumen's contrast over blood (a darker gap in the
  bright vessel). 20% of clots are non-occlusive (eccentric, 65-90% of the
  lumen radius; contrast flows around and beyond). Length 3-30 mm
  (log-uniform); a clot longer than its vessel's visible part runs on into
  a branch (e.g. ICA into M1: carotid T; M1 into M2); 14% of clot cases have
  a second, separate clot segment (same vessel, downstream or elsewhere).
  Sites: mostly M1/ICA/M2, as in thrombectomy cohorts.
- Confounders, never in the mask: 0-12 calcified plaques of 1-4 spots
  (130-1000, log-uniform, bright on both); in clot cases 30% of them sit on
  the wall right next to the clot, of the others 30% lie inside the lumen
  and the rest on the outside of the wall; 0-4 irregular
  partial-volume bony blobs of the skull base (300-1500) in the lowest
  slices; in 20% of cases a head so large that the skull meets the FOV edge.
- Imaging, separately for CTA and NCCT: Gaussian PSF sigma 0.4-1.2 voxels;
  slice thickness 1-2.5x the slice spacing (through-plane blur); noise std
  (log-uniform) CTA 4-25, NCCT 3-15, spatially correlated (Gaussian
  correlation 0-1.5 voxels in-plane, 0-0.8 through-plane, 0-60% white),
  up to 50% higher in the head's centre; smooth low-frequency drift up to 6
  (std) plus beam-hardening cupping up to 8; calibration offset +-3.
  The NCCT is misregistered by a rigid shift of 0-2 voxels and a rotation
  of 0-3 degrees (the mask stays with the CTA). Spacing (write_cohort):
  in-plane 0.4-0.6 mm, slices 0.75-2.5 mm (log-uniform).

Domain "shifted" draws from deliberately different ranges and mechanisms,
to test generalisation to data the standard distribution never produced:
calibre x0.5-0.68 (70%) or x1.41-1.5 (with the coarser spacing: ectatic
arteries up to ~9 mm across); tortuosity 5-9% with tighter loops; head
rotation 15-30 degrees, tilt +-8; lumen 500-700 (a hot bolus) or 120-150
(20%, a poor one); collaterals 0-30%; veins as bright as arteries (late
phase), 4-10 cortical veins; blood 33-38 or 45-50; clots 45% hyperdense
(25-45 above blood) else 3-15 below blood, perviousness 20-90 (defect keeps
at least 45% of the contrast), heterogeneity 5-12, 35% non-occlusive
(50-80% of the radius), 2.5-40 mm, 20% with two segments, sites shifted to
M2, ACA, PCA and basilar; 6-20 calcified plaques of up to 7 spots at
600-1500, half next to the clot; 2-6 skull-base blobs of 800-2000; atrophy
(ventricles x1.5-2, wide sulci), leukoaraiosis, weak grey/white contrast
(1-4); more infarcts (60% of clot / 30% of clot-free cases); PSF either a
sharp kernel (edge overshoot) or a heavy-tailed one, slice thickness
2.5-4x; band-pass anisotropic noise (filtered back-projection texture), CTA
std 12-25, NCCT 6-15, plus streaks from the skull base; drift 5-10 and
cupping 8-14, offsets +-8; misregistration 2-4 voxels and 3-6 degrees;
spacing in-plane 0.6-0.8 mm, slices 2.5-4 mm.

The sidecar JSON records the domain and every drawn parameter of the case.

All values are HU (float32, shape (H, W, D), slices along the last axis);
masks are uint8 {0, 1}. Values follow /work/shared/reference/clinical.md,
widened on purpose for robustness.

Case i of a cohort draws everything from `numpy.random.default_rng([seed, i])`
("shifted": `default_rng([seed, i, 1])`), so a cohort is reproducible byte for
byte (same numpy/scipy build and CPU) and a cohort of N cases is a prefix of
one of N + 1. Clot-free cases are chosen by case number (`is_clot_free`).

Geometry is scaled to the field of view (the Circle of Willis fills about
two thirds of the smaller in-plane extent), vessel radii are in voxels and
clot lengths in mm, so any crop size from ~64 to 256 pixels looks alike.

Raw scans on request (`write_cohort(..., unregistered=True)`, CLI
`--unregistered`, `make_unregistered`): the same cases as the prepared
cohort of that seed, but as the PREPROCESS stage receives them: the CTA and
mask in a field of view larger than the model input, the NCCT on its own
grid (another spacing, a larger field of view) and moved by a known random
rotation (2-10 degrees) and shift (3-10% of the field of view); the sidecar
records both grids and the true NCCT-to-CTA transform.

CLI: `python -m clotseg.phantom --cases 20 --seed 0 [--domain shifted] [--unregistered]`.
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
from scipy import fft as sfft
from scipy import ndimage
from scipy.interpolate import CubicSpline
from tqdm import tqdm

from clotseg.io import atomic_save_npy, atomic_write_json

HU_AIR = -1000.0
HU_RANGE = (-1024.0, 3071.0)        # 12-bit CT range; values are clipped to it
MAX_IN_PLANE = 256                   # the 2D pipeline pads slices to at most 256 x 256
SOURCE = "clotseg phantom"
DOMAINS = ("standard", "shifted")

# Per-vessel radius range in in-plane voxels (start of the vessel; it tapers),
# before the case's calibre scale. At the phantom's 0.4-0.6 mm in-plane
# spacing these are the adult calibres (ICA 3.2-4.5 mm across, M1 2.5-3.5,
# M2 1.8-2.4), so clot volumes land in the published range (Kim, AJNR 2008:
# M1 ~130 mm^3, M2 ~35); thinner vessels made clots of 5-30 mm^3 that
# neither a reader nor a model can delineate.
_RADII_VOX = {
    "ICA": (3.2, 4.0), "BA": (2.8, 3.5), "M1": (2.7, 3.4), "M2s": (1.8, 2.4),
    "M2i": (1.8, 2.4), "A1": (1.9, 2.5), "A2": (1.9, 2.4), "ACom": (1.2, 1.6),
    "P1": (2.0, 2.6), "P2": (1.8, 2.2), "PCom": (1.2, 1.7),
}
# Where clots sit. Standard: mostly anterior circulation, as in thrombectomy
# cohorts; shifted: distal and posterior sites dominate.
_CLOT_SITES = {
    "standard": (("M1", 0.42), ("ICA", 0.18), ("M2s", 0.11), ("M2i", 0.11), ("A1", 0.03),
                 ("A2", 0.02), ("P1", 0.04), ("P2", 0.05), ("BA", 0.04)),
    "shifted": (("M1", 0.14), ("ICA", 0.08), ("M2s", 0.16), ("M2i", 0.16), ("A1", 0.07),
                ("A2", 0.08), ("P1", 0.08), ("P2", 0.11), ("BA", 0.12)),
}
_CLOT_KINDS = frozenset(k for k, _ in _CLOT_SITES["standard"])
_CALC_SITES = (("ICA", 0.4), ("BA", 0.12), ("M1", 0.18), ("P1", 0.08), ("A1", 0.07),
               ("M2s", 0.05), ("M2i", 0.05), ("P2", 0.05))
_HYPOPLASTIC = ("A1", "P1", "PCom", "ACom")
# Downstream vessels: distal to an occlusion the lumen fills only via collaterals.
_CHILDREN = {"ICA": ("M1", "A1"), "M1": ("M2s", "M2i"), "A1": ("A2",), "P1": ("P2",)}
# Where a long clot continues beyond the end of its vessel.
_SPAN_CHILDREN = {**_CHILDREN, "BA": ("P1",)}
_SIDED = ("ICA", "M1", "M2s", "M2i", "A1", "A2", "P1", "P2", "PCom")


@dataclass
class PhantomCase:
    """One synthetic case.

    Attributes:
        cta, ncct: float32 (H, W, D) HU volumes on the same grid; the NCCT
            carries a small residual misregistration (info misreg_*).
        mask: uint8 (H, W, D) clot mask {0, 1} in the CTA frame; all zero
            without a clot.
        spacing_mm: (row_mm, col_mm, slice_mm).
        info: JSON-able dict: domain, has_clot, hyperdense (None without
            clot), clot_volume_voxels, clot_vessel (e.g. "M1_L" or None),
            clot_components, n_calcifications, plus every drawn parameter.
        lumen: uint8 (H, W, D) arterial lumen incl. the clot, CTA frame (for
            checks; not written to disk).
        calcification: uint8 (H, W, D) calcified spots, CTA frame (not written).
        ncct_mask, ncct_lumen: uint8 (H, W, D) clot and lumen moved into the
            NCCT's (misregistered) frame (for checks; not written).
        ncct_from_cta: float64 (4, 4) the residual misregistration as a map
            of points (array mm, row/col/slice x spacing): a CTA point q is
            seen at ncct_from_cta @ [q, 1] in the NCCT (not written).
    """

    cta: np.ndarray
    ncct: np.ndarray
    mask: np.ndarray
    spacing_mm: tuple
    info: dict = field(default_factory=dict)
    lumen: np.ndarray | None = None
    calcification: np.ndarray | None = None
    ncct_mask: np.ndarray | None = None
    ncct_lumen: np.ndarray | None = None
    ncct_from_cta: np.ndarray | None = None


@dataclass
class _Vessel:
    """A centreline polyline in volume mm (row, col, slice), radii in mm."""

    name: str
    pts: np.ndarray        # (N, 3) mm
    radii: np.ndarray      # (N,) mm
    arc: np.ndarray        # (N,) cumulative length along the vessel, mm


# --------------------------------------------------------------------------- parameters
def _lu(rng, lo: float, hi: float) -> float:
    """Log-uniform draw in [lo, hi]."""
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _sign(rng) -> float:
    return 1.0 if rng.random() < 0.5 else -1.0


def _draw_params(rng, domain: str) -> dict:
    """Every scalar parameter of a case, drawn from the case rng (geometry
    that depends on the anatomy is drawn later, by the functions using it)."""
    std = domain == "standard"
    p = {"domain": domain}
    # Pose and anatomy.
    p["theta"] = math.radians(rng.uniform(-15.0, 15.0) if std else _sign(rng) * rng.uniform(15.0, 30.0))
    p["tilt"] = np.radians(rng.uniform(-3.0, 3.0, 2) if std else rng.uniform(-8.0, 8.0, 2))
    p["jitter"] = 0.02 if std else 0.035
    p["head_scale"] = rng.uniform(0.93, 1.0) if rng.random() < 0.8 else rng.uniform(1.02, 1.1)
    if std:
        p["calibre"] = rng.uniform(0.7, 1.4)
    else:
        p["calibre"] = rng.uniform(0.5, 0.68) if rng.random() < 0.7 else rng.uniform(1.41, 1.5)
    p["tortuosity"] = rng.uniform(0.0, 1.0) if std else rng.uniform(1.0, 1.8)
    p["wavelength"] = (0.3, 0.8) if std else (0.15, 0.35)          # x half FOV
    p["hypoplastic"] = {k: (rng.uniform(0.35, 0.6) if rng.random() < 0.12 else 1.0) for k in _HYPOPLASTIC}
    # Contrast and blood.
    if std:
        weak = bool(rng.random() < 0.15)
        p["lumen"] = rng.uniform(150.0, 220.0) if weak else rng.uniform(220.0, 500.0)
        p["blood"] = rng.uniform(38.0, 45.0)
        p["distal"] = rng.uniform(0.3, 0.95)
        p["venous"] = rng.uniform(0.05, 0.9)
    else:
        weak = bool(rng.random() < 0.2)
        p["lumen"] = rng.uniform(120.0, 150.0) if weak else rng.uniform(500.0, 700.0)
        p["blood"] = rng.uniform(33.0, 38.0) if rng.random() < 0.5 else rng.uniform(45.0, 50.0)
        p["distal"] = rng.uniform(0.0, 0.3)
        p["venous"] = rng.uniform(0.9, 1.1)
    p["bolus"] = "weak" if weak else ("normal" if std else "hot")
    # Clot.
    b = p["blood"]
    if std:
        p["hyperdense"] = bool(rng.random() < 0.6)
        p["clot_ncct"] = min(b + rng.uniform(8.0, 35.0), 80.0) if p["hyperdense"] else rng.uniform(30.0, b + 2.0)
        u = rng.random()
        p["perviousness"] = (rng.uniform(0.0, 15.0) if u < 0.5 else
                             rng.uniform(15.0, 45.0) if u < 0.85 else rng.uniform(45.0, 80.0))
        p["clot_het"] = rng.uniform(0.0, 6.0)
        p["partial"] = rng.uniform(0.65, 0.9) if rng.random() < 0.2 else 1.0
        p["two_clots"] = bool(rng.random() < 0.14)
        p["length"] = (3.0, 30.0)
    else:
        p["hyperdense"] = bool(rng.random() < 0.45)
        p["clot_ncct"] = b + rng.uniform(25.0, 45.0) if p["hyperdense"] else b - rng.uniform(3.0, 15.0)
        p["perviousness"] = rng.uniform(20.0, 90.0)
        p["clot_het"] = rng.uniform(5.0, 12.0)
        p["partial"] = rng.uniform(0.5, 0.8) if rng.random() < 0.35 else 1.0
        p["two_clots"] = bool(rng.random() < 0.2)
        p["length"] = (2.5, 40.0)
    # The filling defect keeps at least 55% (shifted: 45%) of the lumen's
    # contrast over blood, so it stays a darker gap in the bright vessel.
    cap = max(p["clot_ncct"], b + (0.45 if std else 0.55) * (p["lumen"] - b))
    p["clot_cta"] = min(p["clot_ncct"] + p["perviousness"], cap)
    # Confounders.
    if std:
        p["n_calc"] = 0 if rng.random() < 0.25 else int(rng.integers(1, 13))
        p["calc_hu"], p["calc_inside"], p["calc_near"], p["plaque_max"] = (130.0, 1000.0), 0.3, 0.3, 4
        p["n_veins"] = int(rng.integers(0, 6))
        p["n_bone"] = 0 if rng.random() < 0.4 else int(rng.integers(1, 5))
        p["bone_hu"] = (300.0, 1500.0)
    else:
        p["n_calc"] = int(rng.integers(6, 21))
        p["calc_hu"], p["calc_inside"], p["calc_near"], p["plaque_max"] = (600.0, 1500.0), 0.5, 0.5, 7
        p["n_veins"] = int(rng.integers(4, 11))
        p["n_bone"] = int(rng.integers(2, 7))
        p["bone_hu"] = (800.0, 2000.0)
    # Parenchyma.
    p["wm"] = rng.uniform(20.0, 32.0)
    p["gm"] = min(p["wm"] + (rng.uniform(4.0, 16.0) if std else rng.uniform(1.0, 4.0)), 48.0)
    p["paren_tex"] = rng.uniform(0.5, 3.0)
    p["csf_hu"] = rng.uniform(0.0, 12.0)
    p["ventricles"] = rng.uniform(0.8, 1.5) if std else rng.uniform(1.5, 2.0)
    p["sulci"] = rng.uniform(0.0, 0.05) if std else rng.uniform(0.05, 0.09)
    p["leuko"] = 0.0 if std else rng.uniform(4.0, 9.0)
    p["p_infarct"] = (0.35, 0.12) if std else (0.6, 0.3)          # (clot case, clot-free case)
    p["infarct_u"] = rng.random()
    p["infarct_drop"] = rng.uniform(3.0, 12.0)
    p["n_old_infarcts"] = (int(rng.integers(1, 3)) if rng.random() < 0.2 else 0) if std else int(rng.integers(1, 4))
    # Image formation, separately for each scan.
    p["thick_ratio"] = rng.uniform(1.0, 2.5) if std else rng.uniform(2.5, 4.0)
    for vol in ("cta", "ncct"):
        if std:
            q = {"psf": ("gauss", rng.uniform(0.4, 1.2), 0.0, 0.0),
                 "noise": ("gauss", _lu(rng, 4.0, 25.0) if vol == "cta" else _lu(rng, 3.0, 15.0),
                           rng.uniform(0.0, 1.5), rng.uniform(0.0, 0.8),
                           rng.uniform(0.0, 0.6)),
                 "drift": (rng.uniform(0.0, 6.0), rng.uniform(0.0, 8.0)),
                 "offset": rng.uniform(-3.0, 3.0), "nonstat": rng.uniform(0.0, 0.5)}
        else:
            if rng.random() < 0.5:
                psf = ("sharp", rng.uniform(0.3, 0.5), rng.uniform(1.5, 2.5), rng.uniform(0.4, 1.0))
            else:
                psf = ("tail", rng.uniform(1.0, 1.5), rng.uniform(2.5, 3.5), rng.uniform(0.25, 0.45))
            level = rng.uniform(12.0, 25.0) if vol == "cta" else rng.uniform(6.0, 15.0)
            q = {"psf": psf,
                 "noise": ("bandpass", level, rng.uniform(0.25, 0.45), rng.uniform(1.3, 2.2),
                           rng.uniform(0.0, math.pi)),
                 "drift": (rng.uniform(5.0, 10.0), rng.uniform(8.0, 14.0)),
                 "offset": rng.uniform(-8.0, 8.0), "nonstat": rng.uniform(0.5, 1.0)}
        p[vol] = q
    p["n_streaks"] = 0 if std else int(rng.integers(3, 9))
    # Residual CTA-NCCT misregistration (rigid).
    p["shift_vox"] = rng.uniform(0.0, 2.0) if std else rng.uniform(2.0, 4.0)
    p["rot_deg"] = rng.uniform(0.0, 3.0) if std else rng.uniform(3.0, 6.0)
    d = rng.standard_normal(3) * np.array([1.0, 1.0, 0.5])
    p["shift_dir"] = d / max(float(np.linalg.norm(d)), 1e-6)
    ax = np.array([rng.normal(0.0, 0.3), rng.normal(0.0, 0.3), 1.0])
    p["rot_axis"] = ax / np.linalg.norm(ax)
    return p


# --------------------------------------------------------------------------- geometry
def _landmarks(rng: np.random.Generator, z_bottom: float, jitter: float = 0.02) -> dict:
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
            lm[f"{key}_{side}"] = (s * x + rng.normal(0.0, jitter), y + rng.normal(0.0, jitter), z + jz)
    lm["BA0"] = (rng.normal(0, jitter), 0.32 + rng.normal(0, jitter), z_bottom)
    lm["BAm"] = (rng.normal(0, jitter), 0.30 + rng.normal(0, jitter), 0.4 * z_bottom)
    lm["BAt"] = (rng.normal(0, 0.75 * jitter), 0.26 + rng.normal(0, jitter), -2.0 + rng.normal(0, 0.5))
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


def _arc(pts: np.ndarray) -> np.ndarray:
    return np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))]


def _spline_pts(ctrl_mm: np.ndarray, step: float) -> np.ndarray:
    """Points every ~`step` mm along a natural cubic spline through ctrl_mm."""
    chord = _arc(ctrl_mm)
    spline = CubicSpline(chord, ctrl_mm, bc_type="natural")
    n = max(3, int(math.ceil(chord[-1] / step)) + 1)
    return spline(np.linspace(0.0, chord[-1], n))


def _wiggle(rng, pts: np.ndarray, amp: float, lam_mm: tuple, taper_mm: float = 4.0) -> np.ndarray:
    """Tortuosity: displace a centreline by smooth random sinusoids across
    it (amplitude `amp` mm, wavelengths in `lam_mm`), fading to zero over
    `taper_mm` at both ends so vessels that share an end stay connected."""
    arc = _arc(pts)
    length = float(arc[-1])
    # Draw even when unused, so the number of draws does not depend on geometry.
    waves = [(rng.uniform(*lam_mm), rng.uniform(0.0, 2 * math.pi), rng.uniform(0.3, 1.0)) for _ in range(4)]
    if amp <= 0.0 or length < 2.0:
        return pts
    tan = np.gradient(pts, axis=0)
    tan /= np.maximum(np.linalg.norm(tan, axis=1, keepdims=True), 1e-9)
    e = np.eye(3)[int(np.argmin(np.abs(tan.mean(axis=0))))]
    n1 = np.cross(tan, e)
    n1 /= np.maximum(np.linalg.norm(n1, axis=1, keepdims=True), 1e-9)
    n2 = np.cross(tan, n1)
    w = np.clip(np.minimum(arc, length - arc) / taper_mm, 0.0, 1.0)
    w = w * w * (3.0 - 2.0 * w)
    f = [sum(a * np.sin(2 * math.pi * arc / lam + ph) for lam, ph, a in waves[k:k + 2]) for k in (0, 2)]
    return pts + amp * w[:, None] * (f[0][:, None] * n1 + 0.6 * f[1][:, None] * n2)


def _build_vessels(rng, p, spacing, centre_mm, half_fov, theta, tilt, z_c, px) -> dict:
    """Sampled vessel centrelines in volume mm coordinates.

    Args:
        p: the case parameters (calibre, tortuosity, hypoplastic segments).
        centre_mm: (row, col) mm of the circle's centre; z_c: its slice mm.
        half_fov: mm per landmark unit; theta: in-plane rotation (rad);
        tilt: (about row, about col) small rotations (rad); px: pixel mm.
    """
    z_bottom = -(z_c + 3.0 * spacing[2])          # ICAs and basilar enter from below the volume
    lm = _landmarks(rng, z_bottom, p["jitter"])
    c, s = math.cos(theta), math.sin(theta)
    lam = (p["wavelength"][0] * half_fov, p["wavelength"][1] * half_fov)
    step = min(1.2, lam[0] / 6.0)                 # short enough to follow spline and wiggles
    out = {}
    for name, keys in _vessel_paths().items():
        kind = _kind(name)
        ctrl = np.array([lm[k] for k in keys], dtype=np.float64)
        x, y, z = ctrl[:, 0] * half_fov, ctrl[:, 1] * half_fov, ctrl[:, 2]
        xr, yr = c * x - s * y, s * x + c * y
        z = z + yr * math.tan(tilt[0]) + xr * math.tan(tilt[1])
        ctrl_mm = np.stack([centre_mm[0] + yr, centre_mm[1] + xr, z_c + z], axis=1)
        pts = _spline_pts(ctrl_mm, step)
        amp = p["tortuosity"] * 0.05 * half_fov * (1.5 if kind == "ICA" else 1.0)
        pts = _wiggle(rng, pts, amp, lam)
        arc = _arc(pts)
        lo, hi = _RADII_VOX[kind]
        r0 = rng.uniform(lo, hi) * px * p["calibre"] * p["hypoplastic"].get(kind, 1.0)
        taper = rng.uniform(0.8, 0.95)
        frac = arc / max(arc[-1], 1e-6)
        ripple = 1.0 + 0.06 * np.sin(2 * np.pi * arc / rng.uniform(6.0, 14.0) + rng.uniform(0, 2 * np.pi))
        # Floors: a clot site stays at least ~1.5 voxels across, so a clot
        # always covers voxels; other vessels may get thin and faint.
        floor = (0.75 if kind in _CLOT_KINDS else 0.6) * px
        out[name] = _Vessel(name, pts, np.maximum(r0 * (1.0 + (taper - 1.0) * frac) * ripple, floor), arc)
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
    ctrl = rng.standard_normal(n_ctrl).astype(np.float32)
    w = []
    for n_out, n_c in zip(shape, n_ctrl):
        centres = np.linspace(0.0, n_out - 1.0, n_c)
        width = (n_out - 1.0) / max(n_c - 1, 1)
        wa = np.exp(-0.5 * ((np.arange(n_out)[:, None] - centres[None, :]) / max(width, 1.0)) ** 2)
        w.append((wa / wa.sum(axis=1, keepdims=True)).astype(np.float32))
    out = np.tensordot(w[0], ctrl, axes=(1, 0))                    # (H, n1, n2)
    out = np.matmul(w[1][None], out)                               # (H, W, n2)
    out = np.matmul(out, w[2].T)                                   # (H, W, D)
    out -= out.mean()
    return out / max(float(out.std()), 1e-6)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


class _Frame:
    """The head's in-plane frame: u = AP (positive posterior), v = lateral,
    in mm from the head centre, rotated by theta against the volume axes."""

    def __init__(self, centre, theta):
        self.centre = np.asarray(centre, dtype=np.float64)
        self.c, self.s = math.cos(theta), math.sin(theta)

    def to_vol(self, u, v, z):
        """Head-frame (u, v, z) mm -> volume (row, col, slice) mm, (N, 3)."""
        u, v, z = (np.asarray(a, dtype=np.float64) for a in (u, v, z))
        row = self.centre[0] + self.c * u + self.s * v
        col = self.centre[1] - self.s * u + self.c * v
        return np.stack(np.broadcast_arrays(row, col, z), axis=-1)

    def to_head(self, row_mm, col_mm):
        dr, dc = row_mm - self.centre[0], col_mm - self.centre[1]
        return self.c * dr - self.s * dc, self.s * dr + self.c * dc


def _head(rng, p, shape, spacing, theta, px, z_c) -> dict:
    """Head anatomy without vessels, as occupancies and HU maps.

    Args:
        p: case parameters (head scale, grey/white HU, CSF, atrophy).
        z_c: slice-axis mm of the Circle of Willis (ventricles lie above it).
    Returns a dict of float32 (H, W, D) maps (head, brain, skull, bone, gm,
    paren, csf, rho: elliptic radius relative to the inner table) and the
    geometry (frame, inner semi-axes a_in = (AP, lateral) mm, t(z), depth).
    """
    H, W, D = shape
    fov_r, fov_c = H * spacing[0], W * spacing[1]
    a_r = 0.47 * fov_r * p["head_scale"] * rng.uniform(0.98, 1.02)
    a_c = 0.47 * fov_c * p["head_scale"] * rng.uniform(0.98, 1.02)
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
    narrow = rng.uniform(0.02, 0.1)
    t = (1.0 - narrow * (2 * zrel) ** 2).astype(np.float32)[None, None, :]
    c, s = math.cos(theta), math.sin(theta)
    u, v = c * y - s * x, s * y + c * x
    rho_out = np.sqrt((u / a_r) ** 2 + (v / a_c) ** 2).astype(np.float32)[:, :, None]
    rho_in = np.sqrt((u / (a_r - thick)) ** 2 + (v / (a_c - thick)) ** 2).astype(np.float32)[:, :, None]
    head = np.clip((t - rho_out) * np.float32(min(a_r, a_c) / px) + 0.5, 0.0, 1.0)
    brain = np.clip((t - rho_in) * np.float32(min(a_r, a_c) - thick) / px + 0.5, 0.0, 1.0)
    skull = head - brain
    rho = rho_in / t

    bone = np.clip(rng.uniform(900.0, 1300.0) + 120.0 * _smooth_field(rng, shape, (4, 4, 3)), 700.0, 1500.0)

    # Grey matter: a cortical ribbon under the skull plus deep grey patches.
    ribbon = _sigmoid((rho - rng.uniform(0.82, 0.88)) * 40.0)
    deep = _sigmoid((_smooth_field(rng, shape, (7, 7, 4)) - 0.9) * 3.3)
    gm = np.maximum(ribbon, deep)
    paren = p["wm"] + (p["gm"] - p["wm"]) * gm + p["paren_tex"] * _smooth_field(rng, shape, (5, 5, 3))

    frame = _Frame(centre, theta)
    csf = _ventricles(rng, shape, spacing, frame, min(a_r, a_c), px, z_c, p["ventricles"])
    if p["leuko"] > 0:    # periventricular white-matter hypodensity (small-vessel disease)
        halo = np.clip(ndimage.gaussian_filter(csf, (4.0, 4.0, 4.0 * px / spacing[2])) * 3.0, 0.0, 1.0)
        paren = paren - p["leuko"] * halo * (1.0 - gm)
    # Sulcal CSF: a band under the inner table whose width grows with atrophy.
    sulci = _sigmoid((rho - (1.0 - p["sulci"])) * 80.0) if p["sulci"] > 0.005 else np.zeros_like(rho)
    csf = np.maximum(csf, sulci * (0.55 + 0.45 * (_smooth_field(rng, shape, (6, 6, 3)) > 0)))
    return {"head": head, "brain": brain, "skull": skull, "bone": bone, "gm": gm.astype(np.float32),
            "paren": paren.astype(np.float32), "csf": csf.astype(np.float32), "rho": rho,
            "frame": frame, "a_in": (a_r - thick, a_c - thick), "t": t[0, 0], "narrow": narrow,
            "depth": float(z.max()) if D > 1 else 0.0}


def _tissue(rng, p, h, infarct, old) -> tuple:
    """NCCT and CTA tissue HU (float32 (H, W, D)) from the head maps, with an
    acute infarct (occupancy or None) and old CSF-like infarcts (or None)."""
    paren, gm, csf = h["paren"], h["gm"], h["csf"]
    if old is not None:
        csf = np.maximum(csf, old)
    enh = (rng.uniform(1.0, 3.0) + rng.uniform(2.0, 4.0) * gm) * (1.0 - csf)
    if infarct is not None:
        # Cytotoxic oedema: lower density and a blurred grey/white boundary;
        # hypoperfused, so contrast raises it less.
        mean = 0.5 * (p["wm"] + p["gm"])
        paren = paren + infarct * (0.7 * (mean - paren) - p["infarct_drop"])
        enh = enh * (1.0 - 0.7 * infarct)
    brain_hu = paren + (p["csf_hu"] - paren) * csf
    ncct = HU_AIR + (h["bone"] - HU_AIR) * h["skull"] + (brain_hu - HU_AIR) * h["brain"]
    return ncct.astype(np.float32), (ncct + enh * h["brain"]).astype(np.float32)


def _ventricles(rng, shape, spacing, frame, a_head, px, z_c, scale=1.0) -> np.ndarray:
    """CSF occupancy float32 (H, W, D): two lateral ventricles and a third
    ventricle, above the Circle of Willis (z_c, mm) as in real anatomy, so
    arteries do not run through CSF; `scale` enlarges them (atrophy)."""
    z_mid = z_c + rng.uniform(14.0, 20.0)
    csf = np.zeros(shape, dtype=np.float32)
    spread = rng.uniform(0.1, 0.16) * a_head * math.sqrt(scale)
    blobs = [(-0.05 * a_head, sd * spread, z_mid, 0.35 * a_head, 0.09 * a_head * scale, 10.0) for sd in (-1, 1)]
    blobs.append((0.0, 0.0, z_c + rng.uniform(6.0, 10.0), 0.12 * a_head, 0.03 * a_head * scale, 4.0))
    for (cu, cv, cz, au, av, az) in blobs:
        au, av, az = (au * rng.uniform(0.8, 1.2), av * rng.uniform(0.8, 1.2), az * rng.uniform(0.8, 1.2))
        ctr = frame.to_vol(cu, cv, cz)
        reach = np.array([max(au, av) + px, max(au, av) + px, az + spacing[2]])
        i0 = np.maximum(np.floor((ctr - reach) / spacing).astype(int), 0)
        i1 = np.minimum(np.ceil((ctr + reach) / spacing).astype(int) + 1, shape)
        if np.any(i1 <= i0):
            continue
        y = (np.arange(i0[0], i1[0]) * spacing[0])[:, None, None]
        x = (np.arange(i0[1], i1[1]) * spacing[1])[None, :, None]
        z = (np.arange(i0[2], i1[2]) * spacing[2])[None, None, :]
        u, v = frame.to_head(y, x)
        rho = np.sqrt(((u - cu) / au) ** 2 + ((v - cv) / av) ** 2 + ((z - cz) / az) ** 2)
        sl = tuple(slice(a, b) for a, b in zip(i0, i1))
        csf[sl] = np.maximum(csf[sl], np.clip((1.0 - rho) * av / px + 0.5, 0.0, 1.0))
    return csf


def _ellipsoid(shape, spacing, centre, axes, soft_mm, distort=None, amount=0.0):
    """Soft axis-aligned ellipsoid on its bounding box: (slices, occupancy
    float32) or None when it misses the volume. `distort` (a full-size
    smooth field) bends its border by up to ~`amount` of the radius."""
    sp, c, a = np.asarray(spacing), np.asarray(centre, dtype=np.float64), np.asarray(axes, dtype=np.float64)
    reach = a * (1.0 + 2.0 * amount) + 2.0 * soft_mm
    i0 = np.maximum(np.floor((c - reach) / sp).astype(int), 0)
    i1 = np.minimum(np.ceil((c + reach) / sp).astype(int) + 1, shape)
    if np.any(i1 <= i0):
        return None
    g = [((np.arange(i0[k], i1[k]) * sp[k] - c[k]) / a[k]).astype(np.float32) for k in range(3)]
    rho = np.sqrt(g[0][:, None, None] ** 2 + g[1][None, :, None] ** 2 + g[2][None, None, :] ** 2)
    sl = tuple(slice(lo, hi) for lo, hi in zip(i0, i1))
    if distort is not None and amount > 0:
        rho = rho - amount * distort[sl]
    return sl, np.clip((1.0 - rho) * float(a.min()) / soft_mm + 0.5, 0.0, 1.0).astype(np.float32)


def _paint(target, blob, weight=1.0):
    """Max-combine an `_ellipsoid` result into `target` (in place)."""
    if blob is not None:
        sl, occ = blob
        np.maximum(target[sl], occ * weight, out=target[sl])


def _infarcts(rng, p, h, shape, spacing, px, vessels, site_name, with_clot):
    """(acute infarct occupancy or None, old infarcts occupancy or None).

    The acute one sits in the territory beyond the clot (a clot case) or
    of a random distal artery (a clot-free case: a confounder), pushed out
    towards the cortex, with a border bent by a smooth field.
    """
    frame, (ai_r, ai_c) = h["frame"], h["a_in"]
    draws = (rng.uniform(0.55, 0.8), rng.uniform(-4.0, 6.0), rng.uniform(0.18, 0.35, 2),
             rng.uniform(8.0, 25.0), rng.uniform(1.0, 3.0) * px, int(rng.integers(1 << 30)))
    acute = None
    if p["infarct_u"] < p["p_infarct"][0 if with_clot else 1]:
        if site_name is not None:
            names = sorted(_descendants(site_name)) or [site_name]
        else:
            names = [f"{k}_{'LR'[int(rng.integers(2))]}" for k in ("M2s", "M2i", "A2", "P2")]
        end = vessels[names[int(rng.integers(len(names)))]].pts[-1]
        u, v = frame.to_head(end[0], end[1])
        phi = math.atan2(v / ai_c, u / ai_r)
        rad, dz, ax, az, soft, seed = draws
        ctr = frame.to_vol(ai_r * rad * math.cos(phi), ai_c * rad * math.sin(phi),
                           float(np.clip(end[2] + dz, 0.0, h["depth"])))
        axes = (ax[0] * min(ai_r, ai_c), ax[1] * min(ai_r, ai_c), az)
        field_ = _smooth_field(np.random.default_rng(seed), shape, (6, 6, 4))
        acute = np.zeros(shape, dtype=np.float32)
        _paint(acute, _ellipsoid(shape, spacing, ctr, axes, soft, field_, 0.25))
        acute *= h["brain"] * (1.0 - h["csf"])
    old = None
    for _ in range(p["n_old_infarcts"]):
        r, phi, zz = rng.uniform(0.2, 0.8), rng.uniform(0, 2 * math.pi), rng.uniform(0.0, h["depth"])
        axes = rng.uniform(1.5, 6.0, 3)
        ctr = frame.to_vol(ai_r * r * math.cos(phi), ai_c * r * math.sin(phi), zz)
        old = np.zeros(shape, dtype=np.float32) if old is None else old
        _paint(old, _ellipsoid(shape, spacing, ctr, axes, 0.6 * px))
    if old is not None:
        old *= h["brain"]
    return acute, old


# --------------------------------------------------------------------------- clot and confounders
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


def _sided(rng, kind: str) -> str:
    return kind if kind not in _SIDED else f"{kind}_{'LR'[int(rng.integers(2))]}"


def _dense(v: _Vessel, a: float = 0.0, b: float | None = None, step: float = 0.3):
    """(arc, pts) every ~`step` mm along v between arc lengths a and b."""
    b = float(v.arc[-1]) if b is None else b
    arc = np.linspace(a, b, max(int((b - a) / step), 2))
    return arc, np.stack([np.interp(arc, v.arc, v.pts[:, k]) for k in range(3)], axis=1)


def _min_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a),) distance from each point of a to the nearest point of b."""
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=2)).min(axis=1)


def _valid_arc(v, spacing, shape, brain, px, clearance, margin, avoid, ends=True):
    """(arc, pts, ok): dense points along v and whether a clot may cover
    them (inside the volume and the brain, off the skull, clear of `avoid`)."""
    arc, pts = _dense(v)
    ok = _inside(pts, spacing, shape, brain, margin=margin, clearance_mm=float(v.radii.max()) + clearance)
    if ends:
        ok &= (arc > 1.0) & (arc < v.arc[-1] - 1.0)     # a segment, not a vessel's very end
    if avoid is not None:
        ok &= _min_dist(pts, avoid[0]) > avoid[1] + float(v.radii.max()) + 2.0 * max(spacing)
    return arc, pts, ok


def _choose_clot(rng, vessels, spacing, shape, brain, px, sites, length_range, candidates=None,
                 avoid=None, attempts=16):
    """One clot segment as pieces [(vessel name, start mm, end mm)], or None.

    The whole clot lies inside the volume and the brain, off the skull;
    length log-uniform in `length_range` mm. A clot longer than the visible
    part of its vessel continues into a branch (ICA into M1 or A1: a carotid
    T occlusion; M1 into M2; A1 into A2; P1 into P2; basilar into P1) when
    the branch has room, else it is shortened. Sites are drawn by `sites`
    (or from `candidates`, a list of names); for a first clot in a tiny
    volume every vessel is finally tried with looser limits. `avoid`: (pts
    mm, radius mm) of an earlier clot to keep well clear of, so the two
    never touch in the mask.
    """
    for attempt in range(attempts):
        if candidates is not None:
            names = [candidates[int(rng.integers(len(candidates)))]]
            clearance, min_len, margin = 4.0 * px, 2.0, 2
        elif attempt < 12:
            names = [_sided(rng, _pick_weighted(rng, sites))]
            clearance, min_len, margin = 4.0 * px, 3.0, 2
        else:
            clearance, min_len, margin = 1.0 * px, 4.0 * px, 1
            names = [k if k not in _SIDED else f"{k}_{sd}" for k, _ in sites for sd in "LR"]
        length = _lu(rng, *length_range)
        u, branch_u, side_u, frac = rng.random(), rng.random(), int(rng.integers(2)), rng.uniform(0.3, 0.7)
        for name in dict.fromkeys(names):
            v = vessels[name]
            arc, _, ok = _valid_arc(v, spacing, shape, brain, px, clearance, margin, avoid)
            runs = [r for r in _runs(ok) if arc[r[1]] - arc[r[0]] >= min_len]
            if not runs:
                continue
            lo, hi = runs[int(rng.integers(len(runs)))] if avoid is not None else \
                max(runs, key=lambda r: arc[r[1]] - arc[r[0]])
            avail = arc[hi] - arc[lo]
            kids = _SPAN_CHILDREN.get(_kind(name), ())
            if length > 0.85 * avail and kids and arc[hi] >= v.arc[-1] - 1.5:
                side = name.partition("_")[2] or "LR"[side_u]
                cname = f"{kids[int(branch_u * len(kids))]}_{side}"
                carc, _, cok = _valid_arc(vessels[cname], spacing, shape, brain, px, clearance, margin, avoid,
                                          ends=False)
                if cok[0]:
                    c_avail = float(carc[_runs(cok)[0][1]])
                    top = float(v.arc[-1]) - arc[lo]
                    parent_len = min(top, max(length * frac, length - 0.85 * c_avail))
                    child_len = min(length - parent_len, 0.85 * c_avail)
                    if child_len > 1.0:
                        return [(name, float(v.arc[-1]) - parent_len, float(v.arc[-1])), (cname, 0.0, child_len)]
            length = min(length, 0.85 * avail)
            start = arc[lo] + u * (avail - length)
            return [(name, float(start), float(start + length))]
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


def _spot(k_map, hu_map, centre_mm, sigma_mm, hu, spacing, clot=None) -> bool:
    """Draw one calcified spot (Gaussian, peak 1 on the voxel nearest its
    centre) into k_map / hu_map; refused (False) outside the volume or where
    it would touch the clot (occupancy `clot` >= 0.3 under weight >= 0.03)."""
    sp, shape = np.asarray(spacing), np.asarray(k_map.shape)
    idx = np.rint(np.asarray(centre_mm) / sp).astype(int)
    h = np.array([2 if sigma_mm > 0.6 * sp[0] else 1, 2 if sigma_mm > 0.6 * sp[1] else 1, 1])
    if np.any(idx - h < 0) or np.any(idx + h >= shape):
        return False
    sl = tuple(slice(i - r, i + r + 1) for i, r in zip(idx, h))
    off = [np.arange(-r, r + 1) * sp[a] for a, r in enumerate(h)]
    d2 = off[0][:, None, None] ** 2 + off[1][None, :, None] ** 2 + off[2][None, None, :] ** 2
    spot = np.exp(-0.5 * d2 / sigma_mm ** 2).astype(np.float32)
    if clot is not None and np.any((spot >= 0.03) & (clot[sl] >= 0.3)):
        return False
    upd = spot > k_map[sl]
    k_map[sl][upd] = spot[upd]
    hu_map[sl][upd] = hu
    return True


def _calcifications(rng, p, vessels, spacing, shape, brain, clot, clots, px):
    """Calcified plaques: (occupancy float32 (H, W, D), HU map, spot count,
    spot list [(centre mm, sigma mm, HU)] for drawing them again in the NCCT's
    frame).

    A plaque is a row of 1..plaque_max Gaussian spots along a vessel, either
    on the outside of the wall or inside the lumen; some plaques sit on the
    wall next to a clot (`clots`: [(name, start, end)]). Spots never touch
    the clot (`clot` occupancy), so they are never in the mask.
    """
    k_map = np.zeros(shape, dtype=np.float32)
    hu_map = np.zeros(shape, dtype=np.float32)
    spots = []
    for _ in range(p["n_calc"]):
        near = bool(clots) and rng.random() < p["calc_near"]
        inside = (not near) and rng.random() < p["calc_inside"]
        if near:
            name, a, b = clots[int(rng.integers(len(clots)))]
            v = vessels[name]
            s0 = rng.uniform(a - 2.0, b + 2.0)
        else:
            v = vessels[_sided(rng, _pick_weighted(rng, _CALC_SITES))]
            s0 = rng.uniform(0.0, float(v.arc[-1]))
        hu = _lu(rng, *p["calc_hu"])
        n_sp = int(rng.integers(1, p["plaque_max"] + 1))
        nrm = rng.standard_normal(3)
        depth = rng.uniform(1.6, 2.4) if near else rng.uniform(0.3, 0.8)
        frac = rng.uniform(0.1, 0.6)
        sigmas = rng.uniform(0.45, 0.6 if near else 0.9, n_sp) * px
        for k in range(n_sp):
            s_k = float(np.clip(s0 + k * 0.9 * px, 0.0, v.arc[-1]))
            j = int(np.clip(np.searchsorted(v.arc, s_k), 1, len(v.pts) - 1))
            tangent = v.pts[j] - v.pts[j - 1]
            tangent /= max(np.linalg.norm(tangent), 1e-6)
            n = nrm - (nrm @ tangent) * tangent
            n /= max(np.linalg.norm(n), 1e-6)
            pos = np.array([np.interp(s_k, v.arc, v.pts[:, a]) for a in range(3)])
            r = float(np.interp(s_k, v.arc, v.radii))
            centre = pos + n * (frac * r if inside else r + depth * px)
            idx = np.rint(centre / np.asarray(spacing))
            if not _inside(idx[None] * np.asarray(spacing), spacing, shape, brain, margin=2,
                           clearance_mm=3.0 * px)[0]:
                continue
            if _spot(k_map, hu_map, centre, float(sigmas[k]), hu, spacing, clot):
                spots.append((idx * np.asarray(spacing), float(sigmas[k]), hu))
    return k_map, hu_map, len(spots), spots


def _far_from(pts, clot_pts, dist) -> bool:
    return clot_pts is None or len(pts) == 0 or float(_min_dist(pts, clot_pts).min()) > dist


def _veins(rng, p, h, shape, spacing, px, z_c, clot_pts, clot_r):
    """Venous occupancy float32 (H, W, D) and count: superior sagittal,
    straight and transverse sinuses along the inner table plus cortical
    veins; each kept clear of the clot."""
    frame, (ai_r, ai_c), depth = h["frame"], h["a_in"], h["depth"]

    def inner(z):     # inner-table semi-axes at slice mm z (the head narrows)
        zrel = (z - 0.5 * depth) / max(depth, 1.0)
        t = 1.0 - h["narrow"] * (2 * zrel) ** 2
        return ai_r * t, ai_c * t

    occ = np.zeros(shape, dtype=np.float32)
    r_sss, r_ts, r_ss = rng.uniform(2.0, 3.5) * px, rng.uniform(1.8, 3.0) * px, rng.uniform(1.2, 2.0) * px
    z_t = z_c - rng.uniform(8.0, 25.0)                     # torcula
    z_g = z_c + rng.uniform(12.0, 20.0)                    # vein of Galen
    ts_span = math.radians(rng.uniform(50.0, 80.0))
    tubes = []
    zs = np.linspace(depth + 6.0, z_t, 5)
    tubes.append((np.stack([frame.to_vol(inner(z)[0] - 1.1 * r_sss, 0.0, z) for z in zs]), r_sss))
    tubes.append((np.stack([frame.to_vol(inner(z_t)[0] - 1.1 * r_sss, 0.0, z_t),
                            frame.to_vol(0.3 * ai_r, 0.0, z_g)]), r_ss))
    for sd in (-1.0, 1.0):
        phis = np.linspace(0.0, sd * ts_span, 4)
        a_r, a_c = inner(z_t)
        tubes.append((np.stack([frame.to_vol((a_r - 1.1 * r_ts) * math.cos(f), (a_c - 1.1 * r_ts) * math.sin(f),
                                             z_t - 0.5 * k) for k, f in enumerate(phis)]), r_ts))
    for _ in range(p["n_veins"]):
        phi, rr, zz = rng.uniform(0, 2 * math.pi), rng.uniform(0.75, 0.9), rng.uniform(0.0, depth)
        dphi = rng.uniform(0.15, 0.4) * _sign(rng)
        ctrl = [frame.to_vol(rr * r_ * ai_r * math.cos(phi + k * dphi), rr * r_ * ai_c * math.sin(phi + k * dphi),
                             zz + dz) for k, (r_, dz) in enumerate(zip(rng.uniform(0.95, 1.05, 3),
                                                                          rng.uniform(-3.0, 3.0, 3)))]
        tubes.append((np.stack(ctrl), rng.uniform(0.7, 1.3) * px))
    n = 0
    for ctrl, r in tubes:
        pts = _spline_pts(np.asarray(ctrl, dtype=np.float64), 1.2)
        if not _far_from(pts, clot_pts, r + clot_r + 2.0 * max(spacing)):
            continue
        v = _Vessel("vein", pts, np.full(len(pts), r), _arc(pts))
        _rasterize(occ, v, spacing, _z_squash(v, spacing[2]), px)
        n += 1
    return occ * h["brain"], n


def _skull_base(rng, p, h, shape, spacing, px, z_c, clot_pts, clot_r):
    """Bony blobs of the skull base (petrous ridges, clinoids, dorsum sellae,
    orbital roofs) in the lowest slices: (occupancy, HU map, count). Their
    soft edges give the partial-volume bone that a thin axial slab catches."""
    frame, (ai_r, ai_c) = h["frame"], h["a_in"]
    occ = np.zeros(shape, dtype=np.float32)
    hu = np.zeros(shape, dtype=np.float32)
    a = min(ai_r, ai_c)
    n = 0
    rough = _smooth_field(rng, shape, (9, 9, 5)) if p["n_bone"] else None     # irregular bone outlines
    for _ in range(p["n_bone"]):
        kind = int(rng.integers(4))
        sd = _sign(rng)
        # Petrous ridge, anterior clinoid, dorsum sellae, orbital roof: (AP, lateral) x inner semi-axes.
        sites = [(rng.uniform(0.05, 0.35), sd * rng.uniform(0.35, 0.7)),
                 (-rng.uniform(0.05, 0.25), sd * rng.uniform(0.1, 0.3)),
                 (rng.uniform(0.05, 0.2), rng.uniform(-0.05, 0.05)),
                 (-rng.uniform(0.5, 0.8), sd * rng.uniform(0.0, 0.4))]
        u, v = sites[kind]
        axes = np.r_[rng.uniform(0.04, 0.15, 2) * a, rng.uniform(1.5, 5.0)]
        zz = rng.uniform(-0.5 * axes[2], max(min(0.3 * h["depth"], z_c - 2.0), 0.0))
        val, soft = rng.uniform(*p["bone_hu"]), rng.uniform(0.5, 2.0) * px
        ctr = frame.to_vol(u * ai_r, v * ai_c, zz)
        if not _far_from(ctr[None], clot_pts, float(axes.max()) + clot_r + 3.0):
            continue
        blob = _ellipsoid(shape, spacing, ctr, axes, soft, rough, 0.2)
        if blob is None:
            continue
        sl, o = blob
        upd = o > occ[sl]
        occ[sl][upd] = o[upd]
        hu[sl][upd] = val
        n += 1
    return occ * h["brain"], hu, n


# --------------------------------------------------------------------------- image formation
def _rigid(p, shape, spacing):
    """The NCCT's residual misregistration: rotation R about the volume
    centre c (mm) and shift t (mm); a CTA-frame point q sits at
    R^T (q - c - t) + c in the NCCT. Returns (R, t, c, matrix, offset), the
    last two for `ndimage.affine_transform` in voxel indices."""
    sp = np.asarray(spacing, dtype=np.float64)
    k = np.asarray(p["rot_axis"], dtype=np.float64)
    ang = math.radians(p["rot_deg"])
    K = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    R = np.eye(3) + math.sin(ang) * K + (1.0 - math.cos(ang)) * (K @ K)
    t = np.asarray(p["shift_dir"]) * p["shift_vox"] * sp
    c = (np.asarray(shape, dtype=np.float64) - 1.0) / 2.0 * sp
    matrix = R * sp[None, :] / sp[:, None]
    offset = (c - R @ c + t) / sp
    return R, t, c, matrix, offset


def _psf(vol, psf, sig_z):
    """Blur with the scan's point spread function: Gaussian; "sharp" (edge
    enhancing kernel: unsharp mask, overshoot at edges) or "tail" (core plus
    a wide Gaussian tail)."""
    kind, s, a, b = psf
    out = ndimage.gaussian_filter(vol, (s, s, sig_z), mode="nearest")
    if kind == "sharp":
        out += b * (out - ndimage.gaussian_filter(out, (a, a, 0.0), mode="nearest"))
    elif kind == "tail":
        out = (1.0 - b) * out + b * ndimage.gaussian_filter(out, (a * s, a * s, sig_z), mode="nearest")
    return out


def _noise(rng, shape, spec) -> np.ndarray:
    """Zero-mean noise float32 (H, W, D) with std spec[1] HU.

    "gauss": white noise mixed with Gaussian-correlated noise (correlation
    sigma in-plane and through-plane, white fraction); "bandpass": the
    ring-textured noise of filtered back-projection, |f| exp(-(f/f0)^2),
    stretched along one in-plane direction.
    """
    white = rng.standard_normal(shape, dtype=np.float32)
    if spec[0] == "gauss":
        _, level, sig, sig_z, wfrac = spec
        corr = ndimage.gaussian_filter(white, (sig, sig, sig_z), mode="wrap") if max(sig, sig_z) > 0.05 else white
        n = math.sqrt(wfrac) * white + math.sqrt(1.0 - wfrac) * corr / max(float(corr.std()), 1e-6)
    else:
        _, level, f0, aniso, ang = spec
        H, W, _ = shape
        fy, fx = sfft.fftfreq(H)[:, None], sfft.rfftfreq(W)[None, :]
        fa, fb = math.cos(ang) * fy + math.sin(ang) * fx, -math.sin(ang) * fy + math.cos(ang) * fx
        fr = np.sqrt((fa * aniso) ** 2 + fb ** 2)
        tf = (fr * np.exp(-(fr / f0) ** 2)).astype(np.float32)
        n = sfft.irfftn(sfft.rfftn(white, axes=(0, 1), workers=1) * tf[:, :, None], s=(H, W), axes=(0, 1),
                        workers=1).astype(np.float32)
        n = ndimage.gaussian_filter1d(n, 0.7, axis=2, mode="wrap")
    return (n * np.float32(level / max(float(n.std()), 1e-6))).astype(np.float32)


def _streaks(rng, h, shape, spacing, n) -> np.ndarray:
    """Streak artefacts (HU, float32 (H, W, D)): thin bright/dark lines
    across the head, strongest in the lowest slices (skull base)."""
    H, W, D = shape
    out = np.zeros(shape, dtype=np.float32)
    y = (np.arange(H) * spacing[0])[:, None]
    x = (np.arange(W) * spacing[1])[None, :]
    zw = np.exp(-np.arange(D) * spacing[2] / rng.uniform(10.0, 30.0)).astype(np.float32)
    centre, a = h["frame"].centre, min(h["a_in"])
    for _ in range(n):
        ang = rng.uniform(0.0, math.pi)
        py, px_ = centre + rng.normal(0.0, 0.3 * a, 2)
        amp, w = rng.uniform(10.0, 40.0) * _sign(rng), rng.uniform(0.7, 1.5) * spacing[0]
        d = np.abs((y - py) * math.sin(ang) - (x - px_) * math.cos(ang))
        out += (amp * np.exp(-0.5 * (d / w) ** 2)).astype(np.float32)[:, :, None] * zw[None, None, :]
    return out * h["head"]


# --------------------------------------------------------------------------- the case
def make_case(rng: np.random.Generator, shape: tuple[int, int, int], spacing_mm: tuple,
              with_clot: bool, domain: str = "standard") -> PhantomCase:
    """Generate one paired CTA/NCCT phantom case.

    Args:
        rng: the case's own generator (all randomness comes from it).
        shape: (H, W, D) voxels; H, W >= 24, D >= 4.
        spacing_mm: (row_mm, col_mm, slice_mm) voxel spacing.
        with_clot: place a clot (one or two segments; mask non-empty) or none.
        domain: "standard" or "shifted" (different ranges and mechanisms,
            see the module docstring).
    Returns:
        PhantomCase with float32 HU volumes `cta`, `ncct` (H, W, D), uint8
        `mask` (H, W, D) and an `info` dict (see PhantomCase).
    """
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
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

    p = _draw_params(rng, domain)
    z_c = rng.uniform(0.4, 0.6) * depth
    h = _head(rng, p, shape, spacing, p["theta"], px, z_c)
    brain = h["brain"]
    half_fov = 0.5 * float(fov.min())
    centre = fov / 2.0 + rng.uniform(-0.05, 0.05, 2) * fov
    vessels = _build_vessels(rng, p, spacing, centre, half_fov, p["theta"], p["tilt"], z_c, px)

    # Clot segments, each a list of pieces [(vessel, start mm, end mm)]
    # (two pieces when a clot runs on into a branch).
    segments = []
    if with_clot:
        first = _choose_clot(rng, vessels, spacing, shape, brain, px, _CLOT_SITES[domain], p["length"])
        if first is None:
            raise ValueError(f"phantom: no room for a clot in a {shape} volume at {spacing} mm; use a larger volume")
        segments.append(first)
        u = rng.random()
        if p["two_clots"]:
            name = first[-1][0]
            if u < 0.5:
                cands = [name]                                     # a fragmented thrombus
            else:
                cands = sorted(_descendants(name)) or [name]       # a distal embolus
            avoid = (np.concatenate([_dense(vessels[n], a, b)[1] for n, a, b in first]),
                     max(float(vessels[n].radii.max()) for n, _, _ in first))
            second_len = (p["length"][0], min(15.0, p["length"][1]))
            second = _choose_clot(rng, vessels, spacing, shape, brain, px, None, second_len, candidates=cands,
                                  avoid=avoid, attempts=3)
            if second is None:      # anywhere else in the tree
                second = _choose_clot(rng, vessels, spacing, shape, brain, px, _CLOT_SITES[domain], second_len,
                                      avoid=avoid, attempts=8)
            if second is not None:
                segments.append(second)
    clots = [piece for seg in segments for piece in seg]
    clot_pts = np.concatenate([_dense(vessels[n], a, b)[1] for n, a, b in clots]) if clots else None
    clot_r = max((float(vessels[n].radii.max()) for n, _, _ in clots), default=0.0)

    # Arteries: lumen occupancy, CTA lumen HU, clot occupancy.
    lumen_hu, blood_hu = p["lumen"], p["blood"]
    occlusive = p["partial"] >= 1.0
    dim = set().union(*(_descendants(n) for n, _, _ in clots)) if occlusive else set()
    distal_hu = blood_hu + p["distal"] * (lumen_hu - blood_hu)
    occ = np.zeros(shape, dtype=np.float32)
    cta_lumen = np.full(shape, lumen_hu, dtype=np.float32)
    clot = np.zeros(shape, dtype=np.float32)
    by_vessel = {}
    for c in clots:
        by_vessel.setdefault(c[0], []).append(c)
    for name, v in vessels.items():
        # Opacification differs a little from artery to artery.
        hu = lumen_hu * rng.uniform(0.93, 1.07)
        kz = _z_squash(v, spacing[2])
        val = distal_hu if name in dim else hu
        if name not in by_vessel:
            _rasterize(occ, v, spacing, kz, px, cta_lumen, val)
            continue
        prev = -1.0
        for _, a, b in sorted(by_vessel[name], key=lambda c: c[1]):
            part = _sub_vessel(v, prev, a, name)
            if part is not None:
                _rasterize(occ, part, spacing, kz, px, cta_lumen, val)
            mid = _sub_vessel(v, a, b, name)
            _rasterize(occ, mid, spacing, kz, px, cta_lumen, val)
            nrm = rng.standard_normal(3)
            if not occlusive:      # an eccentric clot, contrast flows around it
                tan = mid.pts[-1] - mid.pts[0]
                tan /= max(np.linalg.norm(tan), 1e-6)
                nrm -= (nrm @ tan) * tan
                nrm /= max(np.linalg.norm(nrm), 1e-6)
                # At least ~1.5 voxels across (so the mask stays one piece), touching one wall.
                r_clot = np.maximum(mid.radii * p["partial"], 0.7 * px)
                off = np.maximum(mid.radii - r_clot, 0.0)
                mid = _Vessel(name, mid.pts + nrm[None, :] * off[:, None], r_clot, mid.arc)
            _rasterize(clot, mid, spacing, kz, px)
            if occlusive:
                val = distal_hu
            prev = b
        part = _sub_vessel(v, prev, v.arc[-1] + 1.0, name)
        if part is not None:
            _rasterize(occ, part, spacing, kz, px, cta_lumen, val)
    occ *= brain
    clot = np.minimum(clot, occ)

    # Tissue and confounders.
    acute, old = _infarcts(rng, p, h, shape, spacing, px, vessels, clots[0][0] if clots else None, with_clot)
    ncct, cta = _tissue(rng, p, h, acute, old)
    b_occ, b_hu, n_bone = _skull_base(rng, p, h, shape, spacing, px, z_c, clot_pts, clot_r)
    v_occ, n_veins = _veins(rng, p, h, shape, spacing, px, z_c, clot_pts, clot_r)
    k_map, k_hu, n_calc, spots = _calcifications(rng, p, vessels, spacing, shape, brain, clot, clots, px)
    het = p["clot_het"] * _smooth_field(rng, shape, (6, 6, 4))
    vein_cta = blood_hu + p["venous"] * (lumen_hu - blood_hu) * rng.uniform(0.8, 1.1)
    vein_ncct = blood_hu + rng.uniform(0.0, 8.0)

    ncct += (b_hu - ncct) * b_occ
    cta += (b_hu - cta) * b_occ
    ncct += (vein_ncct - ncct) * v_occ
    cta += (vein_cta - cta) * v_occ
    ncct = ncct * (1.0 - occ) + blood_hu * (occ - clot) + (p["clot_ncct"] + het) * clot
    cta = cta * (1.0 - occ) + cta_lumen * (occ - clot) + (p["clot_cta"] + het) * clot

    # A clot thinner than a voxel in a thick slice may never reach half
    # occupancy: then its most occupied voxels make the mask.
    thr = 0.5 if not clots or clot.max() >= 0.5 else 0.75 * float(clot.max())
    mask = (clot >= max(thr, 1e-3)) & ~(k_map >= 0.2)
    lumen = occ >= 0.5

    # The NCCT in its own (slightly misregistered) frame.
    R, t, c0, matrix, offset = _rigid(p, shape, spacing)
    ncct = ndimage.affine_transform(ncct, matrix, offset, order=1, mode="nearest")
    labels = ndimage.affine_transform(lumen.astype(np.uint8) + mask.astype(np.uint8), matrix, offset,
                                      order=0, mode="nearest")

    sig_z = 0.29 * p["thick_ratio"]
    cta = _psf(cta, p["cta"]["psf"], sig_z)
    ncct = _psf(ncct, p["ncct"]["psf"], sig_z)
    # Spots go on after the blur so their peak keeps the calcium HU (>130).
    cta = cta * (1.0 - k_map) + k_hu * k_map
    kn, hn = np.zeros(shape, dtype=np.float32), np.zeros(shape, dtype=np.float32)
    ncct_clot = (labels == 2).astype(np.float32)
    for q, sigma, hu in spots:
        # Snapping to the NCCT's grid may bring a spot a voxel closer to the
        # clot; such a spot is left out of the NCCT rather than in the clot.
        _spot(kn, hn, R.T @ (q - c0 - t) + c0, sigma, hu, spacing, ncct_clot)
    ncct = ncct * (1.0 - kn) + hn * kn

    prof = np.clip(1.0 - h["rho"] ** 2, 0.0, 1.0)      # noise is higher in the head's centre
    out = {}
    for key, vol in (("cta", cta), ("ncct", ncct)):
        q = p[key]
        amp, cup = q["drift"]
        drift = (amp * _smooth_field(rng, shape, (3, 3, 2)) - cup * prof + q["offset"]) * h["head"]
        vol = vol + drift + _noise(rng, shape, q["noise"]) * (1.0 + q["nonstat"] * prof)
        if p["n_streaks"]:
            vol = vol + _streaks(rng, h, shape, spacing, p["n_streaks"])
        out[key] = np.clip(vol, *HU_RANGE).astype(np.float32)

    mask = mask.astype(np.uint8)
    if with_clot and not mask.any():
        raise ValueError(f"phantom: the clot covers no voxel in a {shape} volume at {spacing} mm; "
                         "use a larger volume")
    n_vox = int(mask.sum())
    n_comp = int(ndimage.label(mask, structure=np.ones((3, 3, 3)))[1]) if with_clot else 0
    r3 = lambda x: round(float(x), 3)  # noqa: E731
    info = {
        "domain": domain,
        "has_clot": bool(with_clot),
        "hyperdense": p["hyperdense"] if with_clot else None,
        "clot_volume_voxels": n_vox,
        "clot_volume_mm3": round(n_vox * float(np.prod(spacing)), 2),
        "clot_vessel": clots[0][0] if clots else None,
        "clot_vessels": [n for n, _, _ in clots],
        "clot_segments": len(segments),
        "clot_components": n_comp,
        "clot_length_mm": round(sum(b - a for _, a, b in clots), 2) if clots else None,
        "clot_ncct_hu": round(p["clot_ncct"], 1) if with_clot else None,
        "clot_cta_hu": round(p["clot_cta"], 1) if with_clot else None,
        "clot_perviousness_hu": round(p["clot_cta"] - p["clot_ncct"], 1) if with_clot else None,
        "clot_occlusive": bool(occlusive) if with_clot else None,
        "n_calcifications": n_calc,
        "n_skull_base_bone": n_bone,
        "n_veins": n_veins,
        "infarct": acute is not None,
        "n_old_infarcts": p["n_old_infarcts"],
        "lumen_cta_hu": round(lumen_hu, 1),
        "bolus": p["bolus"],
        "blood_ncct_hu": round(blood_hu, 1),
        "venous_cta_hu": round(vein_cta, 1),
        "grey_white_hu": [round(p["gm"], 1), round(p["wm"], 1)],
        "calibre_scale": r3(p["calibre"]),
        "tortuosity": r3(p["tortuosity"]),
        "noise_cta_hu": round(p["cta"]["noise"][1], 2),
        "noise_ncct_hu": round(p["ncct"]["noise"][1], 2),
        "noise_texture": p["cta"]["noise"][0],
        "psf_cta": [p["cta"]["psf"][0]] + [r3(x) for x in p["cta"]["psf"][1:]],
        "psf_ncct": [p["ncct"]["psf"][0]] + [r3(x) for x in p["ncct"]["psf"][1:]],
        "blur_sigma_vox": r3(p["cta"]["psf"][1]),
        "slice_blur_sigma_vox": r3(sig_z),
        "misreg_shift_vox": r3(p["shift_vox"]),
        "misreg_rotation_deg": r3(p["rot_deg"]),
    }
    return PhantomCase(
        cta=out["cta"], ncct=out["ncct"], mask=mask, spacing_mm=spacing, info=info,
        lumen=lumen.astype(np.uint8), calcification=(k_map >= 0.5).astype(np.uint8),
        ncct_mask=(labels == 2).astype(np.uint8), ncct_lumen=(labels >= 1).astype(np.uint8),
        ncct_from_cta=_point_map(R.T, c0 - R.T @ (c0 + t)))


# --------------------------------------------------------------------------- unregistered pairs
# What `make_unregistered` draws (from its own generator, so a case's content
# is that of the prepared cohort of the same seed).
RAW_ROTATION_DEG = (2.0, 10.0)        # extra rotation of the raw NCCT (degrees, about an axis near the slice axis)
RAW_SHIFT_FRACTION = (0.03, 0.10)     # extra shift, share of the smaller in-plane field of view
RAW_PAD_IN_PLANE = (0.15, 0.35)       # air added on each in-plane side, share of H or W
RAW_PAD_BELOW = (0.3, 0.6)            # slices added below (the lowest slice without skull, repeated), share of D
RAW_PAD_ABOVE = (0.1, 0.3)            # slices added above (the highest slice repeated), share of D
RAW_NCCT_PIXEL = (0.8, 1.25)          # raw NCCT pixel size / CTA pixel size
RAW_NCCT_SLICE = (0.8, 1.5)           # raw NCCT slice spacing / CTA slice spacing
RAW_NCCT_MARGIN = (0.0, 0.1)          # raw NCCT field of view beyond the CTA's, share of its extent per side


def _point_map(matrix, offset) -> np.ndarray:
    """4x4 homogeneous map x -> matrix @ x + offset."""
    out = np.eye(4)
    out[:3, :3] = matrix
    out[:3, 3] = offset
    return out


def _axis_rotation(axis, degrees: float) -> np.ndarray:
    """3x3 rotation by `degrees` about `axis` (Rodrigues)."""
    k = np.asarray(axis, dtype=np.float64)
    k = k / np.linalg.norm(k)
    K = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    a = math.radians(degrees)
    return np.eye(3) + math.sin(a) * K + (1.0 - math.cos(a)) * (K @ K)


def rotation_angle_deg(matrix) -> float:
    """Angle (degrees) of the rotation part of a 3x3 or 4x4 matrix."""
    r = np.asarray(matrix, dtype=np.float64)[:3, :3]
    return math.degrees(math.acos(float(np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0))))


def _without_skull(plane: np.ndarray) -> np.ndarray:
    """An axial slice with its skull ring (bone at the head's border) turned
    into soft tissue: what a slice of the neck below the skull looks like
    to the Circle-of-Willis search (vessels stay, no closed ring of bone)."""
    head = plane > -400.0
    rim = max(2, int(math.ceil(0.07 * min(plane.shape))))
    inner = ndimage.binary_erosion(head, iterations=rim)
    ring = head & ~inner & (plane >= 150.0)
    soft = plane[head & (plane > 0.0) & (plane < 80.0)]
    out = plane.copy()
    out[ring] = float(np.median(soft)) if soft.size else 40.0
    return out


@dataclass
class UnregisteredCase:
    """A phantom case as raw scans: the CTA and the NCCT each on its own grid.

    World coordinates are the prepared case's array mm (row, col, slice
    index x spacing), so the prepared volume's voxel (0, 0, 0) sits at the
    world origin.

    Attributes:
        cta: float32 (H', W', D') HU: the prepared CTA in a larger field of
            view (air with noise around the head; below it a "neck", the
            lowest slice without its skull ring, repeated; above it the
            highest slice repeated).
        ncct: float32 HU on the NCCT's own grid (its own spacing and a
            field of view larger than the CTA's), the head moved by a known
            rigid transform on top of the prepared case's residual one.
        mask: uint8 (H', W', D') on the CTA grid.
        spacing: {"CTA": (row, col, slice) mm, "NCCT": ...}.
        affines: {"CTA": 4x4, "NCCT": 4x4} voxel index -> world mm.
        truth: JSON-able: "ncct_from_cta" (4x4: a world point of the CTA ->
            the world point of the NCCT that shows the same anatomy, i.e.
            the transform a registration of the NCCT onto the CTA must
            recover), "rotation_deg" (its angle), "applied_rotation_deg",
            "applied_shift_mm" (the motion added here), "prepared_box"
            ([[start, stop] per axis] of the prepared volume in the raw CTA).
    """

    cta: np.ndarray
    ncct: np.ndarray
    mask: np.ndarray
    spacing: dict
    affines: dict
    truth: dict


def make_unregistered(case: PhantomCase, rng: np.random.Generator) -> UnregisteredCase:
    """Turn a prepared phantom case into a raw, unregistered pair.

    The CTA and mask keep their voxels and spacing; the field of view grows
    (RAW_PAD_*). The NCCT is moved by a random rigid transform (rotation
    RAW_ROTATION_DEG about an axis near the slice axis, through the head's
    centre; shift RAW_SHIFT_FRACTION of the smaller in-plane field of view)
    and resampled (linear) onto its own grid: pixel and slice spacing
    RAW_NCCT_PIXEL / RAW_NCCT_SLICE times the CTA's, field of view the
    CTA's plus RAW_NCCT_MARGIN per side. Everything random comes from `rng`.
    """
    if case.ncct_from_cta is None:
        raise ValueError("make_unregistered needs a case from make_case (its ncct_from_cta map)")
    sp = np.asarray(case.spacing_mm, dtype=np.float64)
    H, W, D = case.cta.shape
    pads = [(int(round(rng.uniform(*RAW_PAD_IN_PLANE) * H)), int(round(rng.uniform(*RAW_PAD_IN_PLANE) * H))),
            (int(round(rng.uniform(*RAW_PAD_IN_PLANE) * W)), int(round(rng.uniform(*RAW_PAD_IN_PLANE) * W))),
            (max(1, int(round(rng.uniform(*RAW_PAD_BELOW) * D))), max(1, int(round(rng.uniform(*RAW_PAD_ABOVE) * D))))]
    inside = np.ones((H, W, D + pads[2][0] + pads[2][1]), dtype=bool)      # not the air added in-plane
    inside = np.pad(inside, (pads[0], pads[1], (0, 0)), mode="constant", constant_values=False)

    def grow(vol, noise_hu):
        out = np.pad(vol, ((0, 0), (0, 0), pads[2]), mode="edge")
        if pads[2][0]:   # below the head: a neck, the lowest slice without its skull ring
            out[:, :, :pads[2][0]] = _without_skull(vol[:, :, 0])[:, :, None]
        out = np.pad(out, (pads[0], pads[1], (0, 0)), mode="constant", constant_values=HU_AIR)
        air = ~inside
        out[air] += rng.normal(0.0, noise_hu, int(air.sum())).astype(np.float32)
        return out.astype(np.float32)

    cta = grow(case.cta, float(case.info.get("noise_cta_hu", 5.0)))
    ncct_big = grow(case.ncct, float(case.info.get("noise_ncct_hu", 3.0)))
    mask = np.pad(case.mask, pads, mode="constant", constant_values=0)
    origin = -np.array([p[0] for p in pads], dtype=np.float64) * sp
    cta_affine = _point_map(np.diag(sp), origin)

    # The extra motion A: the raw NCCT shows at world point w what the
    # prepared NCCT shows at A(w) = Ra (w - ca) + ca + ta.
    axis = np.array([rng.normal(0.0, 0.3), rng.normal(0.0, 0.3), 1.0])
    angle = float(rng.uniform(*RAW_ROTATION_DEG))
    Ra = _axis_rotation(axis, angle)
    direction = rng.standard_normal(3)
    direction /= max(float(np.linalg.norm(direction)), 1e-6)
    shift = float(rng.uniform(*RAW_SHIFT_FRACTION)) * float(min(H * sp[0], W * sp[1]))
    ta = direction * shift
    ca = (np.array([H, W, D], dtype=np.float64) - 1.0) / 2.0 * sp
    A = _point_map(Ra, ca + ta - Ra @ ca)

    # The raw NCCT's own grid.
    f_px, f_sl = float(rng.uniform(*RAW_NCCT_PIXEL)), float(rng.uniform(*RAW_NCCT_SLICE))
    sp_n = np.array([sp[0] * f_px, sp[1] * f_px, sp[2] * f_sl])
    lo = origin
    hi = origin + (np.array(cta.shape, dtype=np.float64) - 1.0) * sp
    extent = hi - lo
    lo_n = lo - rng.uniform(*RAW_NCCT_MARGIN, 3) * extent
    hi_n = hi + rng.uniform(*RAW_NCCT_MARGIN, 3) * extent
    shape_n = tuple(int(n) for n in np.floor((hi_n - lo_n) / sp_n + 1e-9).astype(int) + 1)
    # output voxel v -> world w = lo_n + sp_n v -> A(w) -> index of ncct_big ((A(w) - origin) / sp)
    matrix = (Ra * sp_n[None, :]) / sp[:, None]
    offset = (Ra @ lo_n + (ca + ta - Ra @ ca) - origin) / sp
    ncct = ndimage.affine_transform(ncct_big, matrix, offset, output_shape=shape_n, order=1, mode="nearest")
    ncct_affine = _point_map(np.diag(sp_n), lo_n)

    # Truth: CTA anatomy at q -> prepared NCCT at M0(q) -> raw NCCT world A^-1(M0(q)).
    truth_map = np.linalg.inv(A) @ case.ncct_from_cta
    r6 = lambda x: [round(float(v), 6) for v in np.ravel(x)]  # noqa: E731
    truth = {
        "ncct_from_cta": [r6(row) for row in truth_map],
        "rotation_deg": round(rotation_angle_deg(truth_map), 4),
        "applied_rotation_deg": round(angle, 4),
        "applied_rotation_axis": r6(axis / np.linalg.norm(axis)),
        "applied_shift_mm": r6(ta),
        "prepared_box": [[int(p[0]), int(p[0] + n)] for p, n in zip(pads, (H, W, D))],
        "world": "the prepared case's array mm: (row, col, slice) index x spacing_mm",
    }
    return UnregisteredCase(cta=cta, ncct=ncct.astype(np.float32), mask=mask.astype(np.uint8),
                            spacing={"CTA": tuple(float(v) for v in sp), "NCCT": tuple(round(float(v), 6) for v in sp_n)},
                            affines={"CTA": cta_affine, "NCCT": ncct_affine}, truth=truth)


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
                 progress: bool = True, domain: str = "standard", unregistered: bool = False) -> list[str]:
    """Write a synthetic cohort in the ClotSeg input layout.

    Files per case CS<ID> (ID = first_id, first_id + 1, ...):
    `CS<ID>_CTA_Binary.npy`, `CS<ID>_NCCT_Reg_Binary.npy` (float32 HU,
    (H, W, D)) and the sidecar `CS<ID>.json` ({"spacing_mm": [row, col,
    slice] mm, "source", "seed", "domain", plus the case info}) in
    `volume_dir`; `CS<ID>_seg_corrected_binary.npy` (uint8 {0, 1}) in
    `mask_dir`. Existing files of the same names are replaced atomically.

    Args:
        n_cases: number of cases (>= 1).
        seed: cohort seed (>= 0); case ID uses default_rng([seed, ID])
            ("shifted": default_rng([seed, ID, 1])).
        in_plane: (low, high) for H and W, each drawn separately, even, <= 256.
        slices: (low, high) for D.
        clot_free_fraction: share of cases without clot (see `is_clot_free`).
        domain: "standard" or "shifted" (see the module docstring); spacing
            is drawn per case: standard in-plane 0.4-0.6 mm and slices
            0.75-2.5 mm, shifted 0.6-0.8 mm and 2.5-4 mm.
        unregistered: write raw scans for the PREPROCESS stage instead (see
            `make_unregistered`): the same cases as without it (same seed,
            same anatomy and clot), but the CTA and mask in a larger field
            of view and the NCCT on its own grid, moved by a known rigid
            transform. The sidecar then adds "modality_spacing_mm",
            "modality_shapes", "affines" (voxel -> world mm per modality)
            and "unregistered" (the truth, see `UnregisteredCase`); its
            "spacing_mm" and "shape" are the CTA's. The extra draws come from
            default_rng([seed, ID, 2]) ("shifted": [seed, ID, 1, 2]), so
            the default output never changes.
    Returns:
        The case ids, e.g. ["CS1", "CS2", ...].
    """
    if int(n_cases) < 1:
        raise ValueError(f"n_cases must be >= 1, got {n_cases}")
    if int(seed) < 0 or int(first_id) < 0:
        raise ValueError(f"seed and first_id must be >= 0, got {seed}, {first_id}")
    if not 0.0 <= float(clot_free_fraction) <= 1.0:
        raise ValueError(f"clot_free_fraction must be in [0, 1], got {clot_free_fraction}")
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
    ip_lo, ip_hi = _check_range("in_plane", in_plane, 24, MAX_IN_PLANE, need_even=True)
    sl_lo, sl_hi = _check_range("slices", slices, 4, 100000)
    volume_dir, mask_dir = Path(volume_dir), Path(mask_dir)
    ids = []
    for number in tqdm(range(int(first_id), int(first_id) + int(n_cases)), disable=not progress,
                       desc="phantom cases", unit="case"):
        key = [int(seed), number] if domain == "standard" else [int(seed), number, 1]
        rng = np.random.default_rng(key)
        shape = (_even_in(rng, ip_lo, ip_hi), _even_in(rng, ip_lo, ip_hi), int(rng.integers(sl_lo, sl_hi + 1)))
        if domain == "standard":
            spacing = (round(float(rng.uniform(0.4, 0.6)), 3), round(_lu(rng, 0.75, 2.5), 3))
        else:
            spacing = (round(float(rng.uniform(0.6, 0.8)), 3), round(float(rng.uniform(2.5, 4.0)), 3))
        spacing = (spacing[0], spacing[0], spacing[1])
        case = make_case(rng, shape, spacing, with_clot=not is_clot_free(number, clot_free_fraction),
                         domain=domain)
        cid = f"CS{number}"
        if unregistered:
            _write_unregistered(volume_dir, mask_dir, cid, case, np.random.default_rng(key + [2]), int(seed))
            ids.append(cid)
            continue
        atomic_save_npy(volume_dir / f"{cid}_CTA_Binary.npy", case.cta)
        atomic_save_npy(volume_dir / f"{cid}_NCCT_Reg_Binary.npy", case.ncct)
        atomic_save_npy(mask_dir / f"{cid}_seg_corrected_binary.npy", case.mask)
        atomic_write_json(volume_dir / f"{cid}.json", {
            "spacing_mm": list(spacing), "source": SOURCE, "seed": int(seed), "shape": list(shape), **case.info})
        ids.append(cid)
    return ids


def _write_unregistered(volume_dir: Path, mask_dir: Path, cid: str, case: PhantomCase, rng, seed: int) -> None:
    raw = make_unregistered(case, rng)
    atomic_save_npy(volume_dir / f"{cid}_CTA_Binary.npy", raw.cta)
    atomic_save_npy(volume_dir / f"{cid}_NCCT_Reg_Binary.npy", raw.ncct)
    atomic_save_npy(mask_dir / f"{cid}_seg_corrected_binary.npy", raw.mask)
    r6 = lambda m: [[round(float(v), 6) for v in row] for row in np.asarray(m)]  # noqa: E731
    atomic_write_json(volume_dir / f"{cid}.json", {
        "spacing_mm": list(raw.spacing["CTA"]), "source": SOURCE, "seed": seed, "shape": list(raw.cta.shape),
        **case.info,
        "modality_spacing_mm": {m: list(v) for m, v in raw.spacing.items()},
        "modality_shapes": {"CTA": list(raw.cta.shape), "NCCT": list(raw.ncct.shape)},
        "affines": {m: r6(a) for m, a in raw.affines.items()},
        "unregistered": raw.truth})


def main(argv=None) -> int:
    """CLI: write a phantom cohort and print a one-line summary."""
    p = argparse.ArgumentParser(prog="python -m clotseg.phantom", description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=20, help="number of cases (default 20)")
    p.add_argument("--seed", type=int, default=0, help="cohort seed (default 0)")
    p.add_argument("--domain", choices=DOMAINS, default="standard",
                   help="standard (default) or shifted: different ranges and mechanisms, for testing "
                        "generalisation of a model trained on standard")
    p.add_argument("--volume-dir", default="DL_vol_files/binary", help="CTA/NCCT + sidecar folder")
    p.add_argument("--mask-dir", default="DL_seg_files/binary", help="mask folder")
    p.add_argument("--in-plane", type=int, nargs=2, default=(96, 256), metavar=("LOW", "HIGH"),
                   help="H and W range, even, at most 256 (default 96 256)")
    p.add_argument("--slices", type=int, nargs=2, default=(20, 60), metavar=("LOW", "HIGH"),
                   help="D range (default 20 60)")
    p.add_argument("--first-id", type=int, default=1, help="number of the first case, CS<first-id> (default 1)")
    p.add_argument("--clot-free-fraction", type=float, default=0.15, help="share of clot-free cases (default 0.15)")
    p.add_argument("--unregistered", action="store_true",
                   help="write raw scans for the PREPROCESS stage: the same cases, but the CTA in a larger field of "
                        "view and the NCCT on its own grid (other spacing), moved by a known random rotation and "
                        "shift (recorded in the sidecar)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    try:
        ids = write_cohort(args.volume_dir, args.mask_dir, args.cases, seed=args.seed, first_id=args.first_id,
                           in_plane=args.in_plane, slices=args.slices,
                           clot_free_fraction=args.clot_free_fraction, progress=not args.quiet,
                           domain=args.domain, unregistered=args.unregistered)
    except ValueError as exc:
        p.error(str(exc))
    n_free = sum(is_clot_free(int(c[2:]), args.clot_free_fraction) for c in ids)
    raw = ", unregistered raw scans" if args.unregistered else ""
    print(f"phantom: wrote {len(ids)} cases {ids[0]}..{ids[-1]} ({args.domain} domain{raw}, seed {args.seed}, "
          f"{len(ids) - n_free} with clot, {n_free} clot-free) to {args.volume_dir} and {args.mask_dir} "
          f"in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
