"""Rigid NCCT-to-CTA registration with SimpleITK's registration framework.

Six degrees of freedom (`sitk.Euler3DTransform`: three angles about a centre
and a translation), Mattes mutual information (CT of one patient with and
without contrast: the same tissues, not the same values in the vessels),
sampled at random (SAMPLES_PER_LEVEL, fixed seed) inside the head and a
MASK_MARGIN_MM margin of air, linear interpolation, regular-step gradient
descent with scales from the physical shift, on a coarse-to-fine pyramid
(shrink 4, 2, 1 with smoothing 2, 1, 0 voxels; levels that would leave
fewer than MIN_LEVEL_VOXELS along an axis are dropped). No optimiser is
written here: SimpleITK's do the work.

Start: two candidates, the images as they lie in world space (their
affines) and `sitk.CenteredTransformInitializer` in MOMENTS mode on the two
head masks (HU above HEAD_HU), which moves the head's centroid onto the
other's; the one with the better metric on the coarsest level wins (raw
scans from different sessions need not share a world frame, and heads in
fields of view of different sizes need not share a geometric centre). From
there SimpleITK's exhaustive optimiser tries rotations on a grid
(ANGLE_STEPS x ANGLE_STEP_DEG about each axis, on the SEARCH_SHRINK level)
and the gradient descent starts from the best: a head is nearly symmetric,
and from a start 10 degrees off the descent can settle in a wrong optimum.
Last, SimpleITK's Powell optimiser polishes the result at full resolution
(POLISH_ITERATIONS sweeps of line searches along each parameter): on a
nearly round head the in-plane angle has a flat metric, on which the
gradient descent stops early.

The transform maps a world point of the fixed image (CTA) to the world point
of the moving image (NCCT) that shows the same anatomy (ITK convention), so
resampling the NCCT through it puts the NCCT on the CTA's grid. Quality per
case: the final metric value, and the overlap (Dice) of the skull masks
(HU >= BONE_HU) of the CTA and of the NCCT resampled onto it, before (images
as given) and after the registration, over the voxels both images cover. A
registration is flagged when the skull overlap after it is below
FLAG_MIN_SKULL_DICE or lower than before by more than FLAG_DICE_DROP.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from clotseg.preprocessing.geometry import rotation_deg

HEAD_HU = -400.0                 # head (any tissue) vs air
BONE_HU = 300.0                  # bone (the usual CT threshold), for the skull overlap
HISTOGRAM_BINS = 50
SHRINK_FACTORS = (4, 2, 1)
SMOOTHING_SIGMAS = (2.0, 1.0, 0.0)   # voxels, per level
MIN_LEVEL_VOXELS = 6             # a level must keep at least this many voxels along every axis
SAMPLES_PER_LEVEL = 100_000      # random metric samples per level (every voxel of smaller images)
ITERATIONS = 300                 # per level
LEARNING_RATE_MM = 1.0           # first step (scales from the physical shift: ~mm)
MIN_STEP = 1e-3
RELAXATION = 0.8                 # step shrink when the gradient turns (0.5 stops too early on noisy metrics)
SEARCH_SHRINK = 4                # the start search runs on this pyramid level (or the coarsest there is)
ANGLE_STEPS = (2, 2, 5)          # start search: steps either way about array axes 0, 1, 2 (2: in the slice plane)
ANGLE_STEP_DEG = 3.0
MASK_MARGIN_MM = 3.0             # air around the head that the metric still samples
FLAG_MIN_SKULL_DICE = 0.6
FLAG_DICE_DROP = 0.05
POLISH_ITERATIONS = 8             # Powell sweeps over the six parameters at full resolution
SEED = 20240611                  # metric sampling (a run repeats itself)
VERSION = 2                      # bump when the method changes: cached registrations are redone


@dataclass
class Registration:
    """The result of `register`.

    Attributes:
        transform: the final sitk.Euler3DTransform (fixed -> moving points).
        matrix: 4x4 of the same map (JSON: `as_json`).
        metric: final Mattes mutual information value (negative; lower is better).
        skull_dice_before, skull_dice_after: skull overlap before/after.
        flagged: whether the result looks wrong; `reasons` says why.
    """

    transform: sitk.Transform
    matrix: np.ndarray
    metric: float
    skull_dice_before: float | None
    skull_dice_after: float | None
    initializer: str
    levels: list
    iterations: int
    stop_condition: str
    flagged: bool = False
    reasons: list = field(default_factory=list)

    def as_json(self) -> dict:
        t = self.transform
        r6 = lambda v: [round(float(x), 6) for x in v]  # noqa: E731
        m = self.matrix
        return {
            "method": "SimpleITK Euler3DTransform, Mattes mutual information, exhaustive angle start, "
                      f"regular-step gradient descent on shrink {list(self.levels)}, Powell polish",
            "transform": "Euler3DTransform", "direction": "maps CTA world points to NCCT world points (ITK)",
            "parameters": r6(t.GetParameters()), "center_mm": r6(t.GetCenter()),
            "matrix": [r6(row) for row in m],
            "rotation_deg": round(rotation_deg(m), 4),
            "translation_mm": r6(t.GetTranslation()),
            "initializer": self.initializer,
            "metric": "mattes_mutual_information",
            "final_metric": round(float(self.metric), 6) if math.isfinite(self.metric) else None,
            "iterations": int(self.iterations), "stop_condition": self.stop_condition,
            "skull_dice_before": None if self.skull_dice_before is None else round(self.skull_dice_before, 4),
            "skull_dice_after": None if self.skull_dice_after is None else round(self.skull_dice_after, 4),
            "flagged": bool(self.flagged), "reasons": list(self.reasons),
        }


def euler_matrix(t: sitk.Transform) -> np.ndarray:
    """4x4 point map of an Euler3D (or any matrix-offset) transform: x -> M (x - c) + c + t."""
    m = np.asarray(t.GetMatrix(), dtype=np.float64).reshape(3, 3)
    c = np.asarray(t.GetCenter(), dtype=np.float64)
    tr = np.asarray(t.GetTranslation(), dtype=np.float64)
    out = np.eye(4)
    out[:3, :3] = m
    out[:3, 3] = c + tr - m @ c
    return out


def euler_from_matrix(matrix, center) -> sitk.Euler3DTransform:
    """The Euler3DTransform of a rigid 4x4 point map, with the given centre."""
    m = np.asarray(matrix, dtype=np.float64).copy()
    u, _, vt = np.linalg.svd(m[:3, :3])      # a matrix read back from JSON is orthogonal to ~1e-6 only
    m[:3, :3] = u @ vt
    t = sitk.Euler3DTransform()
    t.SetCenter([float(v) for v in center])
    t.SetMatrix([float(v) for v in m[:3, :3].ravel()], 1e-6)
    c = np.asarray(center, dtype=np.float64)
    t.SetTranslation([float(v) for v in (m[:3, 3] + m[:3, :3] @ c - c)])
    return t


def _as_euler(t: sitk.Transform) -> sitk.Euler3DTransform:
    """The Euler3DTransform inside what ImageRegistrationMethod.Execute returns
    (a composite of one transform when the initial one is not in place)."""
    if t.GetName() == "CompositeTransform":
        comp = sitk.CompositeTransform(t)
        if comp.GetNumberOfTransforms() != 1:
            raise RuntimeError(f"expected one transform, the registration returned {comp.GetNumberOfTransforms()}")
        t = comp.GetNthTransform(0)
    return sitk.Euler3DTransform(t)


def _levels(size) -> list[int]:
    levels = [f for f in SHRINK_FACTORS if min(size) // f >= MIN_LEVEL_VOXELS]
    return levels or [1]


def _method(levels, fixed_size) -> sitk.ImageRegistrationMethod:
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=HISTOGRAM_BINS)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    n = float(np.prod(fixed_size))
    reg.SetMetricSamplingPercentagePerLevel([min(1.0, SAMPLES_PER_LEVEL * f ** 3 / n) for f in levels], SEED)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=LEARNING_RATE_MM, minStep=MIN_STEP,
                                                 numberOfIterations=ITERATIONS, relaxationFactor=RELAXATION,
                                                 gradientMagnitudeTolerance=1e-8)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(list(levels))
    sig = dict(zip(SHRINK_FACTORS, SMOOTHING_SIGMAS))
    reg.SetSmoothingSigmasPerLevel([sig[f] for f in levels])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    return reg


def _head(img: sitk.Image) -> sitk.Image:
    return sitk.Cast(sitk.BinaryThreshold(img, HEAD_HU, 1e12, 1, 0), sitk.sitkFloat32)


def _head_region(img: sitk.Image) -> sitk.Image:
    """Where the metric samples the fixed image: the head and a margin of
    air around it (its outline is part of the signal)."""
    head = sitk.BinaryThreshold(img, HEAD_HU, 1e12, 1, 0)
    radius = [max(1, int(round(MASK_MARGIN_MM / s))) for s in img.GetSpacing()]
    return sitk.BinaryDilate(head, radius)


def probe_metric(fixed: sitk.Image, moving: sitk.Image, mask, transform: sitk.Transform, threads) -> float:
    """The metric of `transform` at full resolution (inf when it cannot be evaluated)."""
    probe = _method([1], fixed.GetSize())
    if threads:
        probe.SetNumberOfThreads(int(threads))
    if mask is not None:
        probe.SetMetricFixedMask(mask)
    probe.SetInitialTransform(transform, inPlace=False)
    try:
        return float(probe.MetricEvaluate(fixed, moving))
    except RuntimeError:
        return math.inf


def _coarse_mask(mask: sitk.Image, factor: int) -> sitk.Image:
    return mask if factor == 1 else sitk.BinaryThreshold(sitk.Shrink(mask, [factor] * 3), 1, 255, 1, 0)


def _angle_search(fixed: sitk.Image, moving: sitk.Image, mask: sitk.Image, start: sitk.Transform,
                  threads: int | None) -> sitk.Euler3DTransform:
    """The best rotation on a grid around `start` (SimpleITK's exhaustive
    optimiser on the coarsest level: ANGLE_STEPS steps of ANGLE_STEP_DEG
    either way about each axis, translation kept), so that the gradient
    descent starts near the right rotation; heads are nearly symmetric and
    a wrong start can end in a mirror-like local optimum."""
    reg = _method([1], fixed.GetSize())
    if threads:
        reg.SetNumberOfThreads(int(threads))
    reg.SetMetricFixedMask(mask)
    reg.SetOptimizerAsExhaustive(numberOfSteps=list(ANGLE_STEPS) + [0, 0, 0], stepLength=math.radians(ANGLE_STEP_DEG))
    reg.SetOptimizerScales([1.0] * 6)
    reg.SetInitialTransform(sitk.Euler3DTransform(start), inPlace=False)
    try:
        found = reg.Execute(fixed, moving)
    except RuntimeError:
        return sitk.Euler3DTransform(start)
    return _as_euler(found)


def _coarse(img: sitk.Image, factor: int, sigma: float) -> sitk.Image:
    if factor == 1:
        return img
    smooth = sitk.DiscreteGaussian(img, [float((sigma * s) ** 2) for s in img.GetSpacing()]) if sigma else img
    return sitk.Shrink(smooth, [factor] * 3)


def initial_candidates(fixed: sitk.Image, moving: sitk.Image) -> dict:
    """{name: transform} to start from (see the module docstring)."""
    centre = fixed.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in fixed.GetSize()])
    as_given = sitk.Euler3DTransform()
    as_given.SetCenter(centre)
    out = {"as_given": as_given}
    try:
        moments = sitk.CenteredTransformInitializer(_head(fixed), _head(moving), sitk.Euler3DTransform(),
                                                    sitk.CenteredTransformInitializerFilter.MOMENTS)
        out["head_centroids"] = sitk.Euler3DTransform(moments)
    except RuntimeError:
        pass      # an empty head mask: no centroid; start from the images as given
    return out


def skull_dice(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform) -> float | None:
    """Dice of the skull masks (HU >= BONE_HU) of `fixed` and of `moving`
    resampled onto it through `transform`, over the voxels both cover
    (None when neither has skull there)."""
    f = sitk.GetArrayViewFromImage(fixed) >= BONE_HU
    moved = sitk.Resample(moving, fixed, transform, sitk.sitkLinear, -1024.0, sitk.sitkFloat32)
    covered = _coverage(moving, fixed, transform)
    m = sitk.GetArrayViewFromImage(moved) >= BONE_HU
    both = sitk.GetArrayViewFromImage(covered) > 0
    a, b = f & both, m & both
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return None
    return float(2.0 * int((a & b).sum()) / total)


def _coverage(moving: sitk.Image, fixed: sitk.Image, transform: sitk.Transform) -> sitk.Image:
    ones = sitk.Image(moving.GetSize(), sitk.sitkUInt8)
    ones.CopyInformation(moving)
    ones = ones + 1
    return sitk.Resample(ones, fixed, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


def register(fixed: sitk.Image, moving: sitk.Image, threads: int | None = None) -> Registration:
    """Rigidly register `moving` (NCCT) onto `fixed` (CTA); see the module docstring.

    `threads` sets SimpleITK's threads for the call (None: its default, all
    cores); with a fixed number the result repeats bit for bit (sums over
    threads are ordered by thread). Raises RuntimeError (SimpleITK's) when
    the registration cannot run.
    """
    if not threads:
        return _register(fixed, moving, None)
    saved = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(threads))
    try:
        return _register(fixed, moving, int(threads))
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(saved)


def _register(fixed: sitk.Image, moving: sitk.Image, threads: int | None) -> Registration:
    fixed = sitk.Cast(fixed, sitk.sitkFloat32)
    moving = sitk.Cast(moving, sitk.sitkFloat32)
    levels = _levels(fixed.GetSize())
    candidates = initial_candidates(fixed, moving)
    # the better start on the coarsest level
    scores = {}
    f0, s0 = levels[0], dict(zip(SHRINK_FACTORS, SMOOTHING_SIGMAS)).get(levels[0], 0.0)
    cf, cm = _coarse(fixed, f0, s0), _coarse(moving, f0, s0)
    fs = SEARCH_SHRINK if SEARCH_SHRINK in levels else levels[0]
    sf, sm = (cf, cm) if fs == f0 else (_coarse(fixed, fs, dict(zip(SHRINK_FACTORS, SMOOTHING_SIGMAS))[fs]),
                                        _coarse(moving, fs, dict(zip(SHRINK_FACTORS, SMOOTHING_SIGMAS))[fs]))
    for name, t in candidates.items():
        probe = _method([1], cf.GetSize())
        if threads:
            probe.SetNumberOfThreads(int(threads))
        probe.SetInitialTransform(t, inPlace=False)
        try:
            scores[name] = float(probe.MetricEvaluate(cf, cm))
        except RuntimeError:
            scores[name] = math.inf      # e.g. no overlap at all from this start
    start = min(scores, key=lambda k: (scores[k], k != "as_given"))
    mask = _head_region(fixed)
    initial = _angle_search(sf, sm, _coarse_mask(mask, fs), candidates[start], threads)
    reg = _method(levels, fixed.GetSize())
    if threads:
        reg.SetNumberOfThreads(int(threads))
    reg.SetInitialTransform(initial, inPlace=False)
    reg.SetMetricFixedMask(mask)
    iterations = [0]
    reg.AddCommand(sitk.sitkIterationEvent, lambda: iterations.__setitem__(0, iterations[0] + 1))
    reasons = []
    try:
        final = _as_euler(reg.Execute(fixed, moving))
        # Polish at full resolution with Powell's line searches, one parameter
        # direction at a time: on a nearly round head the in-plane angle has a
        # flat metric, where the gradient descent above stops early (its step
        # shrinks whenever the translations make it turn).
        pol = _method([1], fixed.GetSize())
        if threads:
            pol.SetNumberOfThreads(int(threads))
        pol.SetMetricFixedMask(mask)
        pol.SetOptimizerAsPowell(numberOfIterations=POLISH_ITERATIONS, maximumLineIterations=20, stepLength=0.5,
                                 stepTolerance=1e-3, valueTolerance=1e-6)
        pol.SetOptimizerScalesFromPhysicalShift()
        pol.AddCommand(sitk.sitkIterationEvent, lambda: iterations.__setitem__(0, iterations[0] + 1))
        pol.SetInitialTransform(final, inPlace=False)
        euler = _as_euler(pol.Execute(fixed, moving))
        metric, stop = float(pol.GetMetricValue()), pol.GetOptimizerStopConditionDescription()
    except RuntimeError as exc:
        # the optimisation ran off (e.g. the scans stopped overlapping): keep the start, flag the case
        text = [ln for ln in str(exc).splitlines() if ln.strip()]
        reasons.append("the optimisation failed (" + (text[-1].split("):")[-1].strip()[:160] if text else "?")
                       + "); the transform is the search's start")
        euler, stop = initial, "failed"
        metric = float(probe_metric(fixed, moving, mask, initial, threads))
    before = skull_dice(fixed, moving, candidates["as_given"])
    after = skull_dice(fixed, moving, euler)
    if after is None:
        reasons.append(f"no skull (HU >= {BONE_HU:g}) in the overlap of the two scans")
    else:
        if after < FLAG_MIN_SKULL_DICE:
            reasons.append(f"skull overlap after registration {after:.2f} is below {FLAG_MIN_SKULL_DICE}")
        if before is not None and after < before - FLAG_DICE_DROP:
            reasons.append(f"skull overlap fell from {before:.2f} to {after:.2f}")
    if not math.isfinite(metric):
        reasons.append("the final metric is not finite")
    return Registration(transform=euler, matrix=euler_matrix(euler), metric=metric, skull_dice_before=before,
                        skull_dice_after=after, initializer=f"{start} (coarse metric " + ", ".join(
                            f"{k} {v:.4f}" for k, v in scores.items()) + ")",
                        levels=levels, iterations=iterations[0],
                        stop_condition=stop, flagged=bool(reasons),
                        reasons=reasons)
