"""Voxel grids in world space, and converting arrays to SimpleITK images.

ClotSeg arrays are (rows, cols, slices). A `Grid` says where such an array
lies in world space (mm): voxel index v = (i, j, k) sits at
`origin + direction @ (spacing * v)`, where the columns of `direction` are
the world directions of the three array axes. Importers record a voxel ->
RAS affine; a grid built from spacing alone puts voxel (0, 0, 0) at the
origin with the array axes as world axes. Any world frame will do as long as
all the modalities of a case use the same one.

SimpleITK indexes images (x, y, z); `to_image` maps array axis 0, 1, 2 to
image index x, y, z, so image physical points are the grid's world points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

ORTHO_TOL = 1e-3            # largest deviation of an affine's axes from orthogonal unit vectors


@dataclass(frozen=True)
class Grid:
    """Shape, spacing (mm), origin (world mm of voxel (0, 0, 0)) and direction
    (3x3, row-major, columns = world directions of array axes 0, 1, 2)."""

    shape: tuple
    spacing: tuple
    origin: tuple = (0.0, 0.0, 0.0)
    direction: tuple = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    @classmethod
    def from_spacing(cls, shape, spacing) -> "Grid":
        return cls(tuple(int(n) for n in shape), tuple(float(s) for s in spacing))

    @classmethod
    def from_affine(cls, shape, affine) -> "Grid":
        """Grid of a 4x4 voxel -> world affine. Raises ValueError (the caller
        names the case and file) unless it is finite, rigid up to scaling
        (no shear; axes orthogonal within ORTHO_TOL) and non-degenerate."""
        a = np.asarray(affine, dtype=np.float64)
        if a.shape != (4, 4) or not np.isfinite(a).all():
            raise ValueError("the affine must be a finite 4x4 matrix")
        if not np.allclose(a[3], [0.0, 0.0, 0.0, 1.0], atol=1e-6):
            raise ValueError(f"the affine's last row must be [0, 0, 0, 1], got {a[3].tolist()}")
        m = a[:3, :3]
        spacing = np.linalg.norm(m, axis=0)
        if np.any(spacing <= 0):
            raise ValueError("the affine has an axis of length 0")
        d = m / spacing
        u, _, vt = np.linalg.svd(d)
        ortho = u @ vt
        if float(np.abs(d - ortho).max()) > ORTHO_TOL:
            raise ValueError("the affine's axes are not orthogonal (sheared or tilted geometry); "
                             "resample the volume onto an orthogonal grid first")
        return cls(tuple(int(n) for n in shape), tuple(float(s) for s in spacing),
                   tuple(float(v) for v in a[:3, 3]), tuple(float(v) for v in ortho.ravel()))

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    @property
    def affine(self) -> np.ndarray:
        """4x4 voxel index -> world mm."""
        out = np.eye(4)
        out[:3, :3] = self.direction_matrix * np.asarray(self.spacing)[None, :]
        out[:3, 3] = self.origin
        return out

    def to_world(self, index) -> np.ndarray:
        """(N, 3) voxel indices (may be fractional) -> (N, 3) world mm."""
        idx = np.atleast_2d(np.asarray(index, dtype=np.float64))
        return idx @ self.affine[:3, :3].T + np.asarray(self.origin)

    def to_index(self, world) -> np.ndarray:
        """(N, 3) world mm -> (N, 3) fractional voxel indices."""
        w = np.atleast_2d(np.asarray(world, dtype=np.float64)) - np.asarray(self.origin)
        return w @ np.linalg.inv(self.affine[:3, :3]).T

    @property
    def centre(self) -> np.ndarray:
        """World mm of the grid's centre."""
        return self.to_world((np.asarray(self.shape, dtype=np.float64) - 1.0) / 2.0)[0]

    def resampled(self, spacing) -> "Grid":
        """The grid covering the same field of view (voxel edges) at another
        spacing, same direction: n' = round(n * s / s'), and the first voxel
        centre moved so that the first voxel's outer edge stays in place."""
        old, new = np.asarray(self.spacing), np.asarray(spacing, dtype=np.float64)
        shape = np.maximum(np.rint(np.asarray(self.shape) * old / new), 1).astype(int)
        origin = np.asarray(self.origin) + self.direction_matrix @ ((new - old) / 2.0)
        return Grid(tuple(int(n) for n in shape), tuple(float(s) for s in new),
                    tuple(float(v) for v in origin), self.direction)

    def cropped(self, box) -> "Grid":
        """The grid of `array[box]` for box = [[start, stop] per axis]."""
        start = np.array([b[0] for b in box], dtype=np.float64)
        shape = tuple(int(b[1] - b[0]) for b in box)
        origin = self.to_world(start)[0]
        return Grid(shape, self.spacing, tuple(float(v) for v in origin), self.direction)

    def to_image(self, array: np.ndarray) -> sitk.Image:
        """A SimpleITK image of `array` (shape == self.shape) on this grid."""
        arr = np.asarray(array)
        if tuple(arr.shape) != tuple(self.shape):
            raise ValueError(f"array of shape {arr.shape} on a grid of shape {self.shape}")
        img = sitk.GetImageFromArray(np.ascontiguousarray(arr.transpose(2, 1, 0)))
        self.stamp(img)
        return img

    def stamp(self, img: sitk.Image) -> sitk.Image:
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(self.direction)
        return img

    def to_json(self) -> dict:
        r = lambda v: [round(float(x), 6) for x in v]  # noqa: E731
        return {"shape": list(self.shape), "spacing_mm": r(self.spacing), "origin_mm": r(self.origin),
                "direction": r(self.direction)}

    @classmethod
    def from_json(cls, data: dict) -> "Grid":
        return cls(tuple(int(n) for n in data["shape"]), tuple(float(s) for s in data["spacing_mm"]),
                   tuple(float(v) for v in data["origin_mm"]), tuple(float(v) for v in data["direction"]))


def to_array(img: sitk.Image) -> np.ndarray:
    """The (rows, cols, slices) array of a SimpleITK image made by `Grid.to_image`."""
    return np.ascontiguousarray(sitk.GetArrayFromImage(img).transpose(2, 1, 0))


def rotation_deg(matrix) -> float:
    """Angle in degrees of the rotation part of a 3x3 or 4x4 matrix."""
    r = np.asarray(matrix, dtype=np.float64)[:3, :3]
    return math.degrees(math.acos(float(np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0))))


def transform_error(estimated, truth, points) -> dict:
    """How far an estimated 4x4 point map is from the true one.

    Returns {"rotation_deg": angle of the residual rotation, "max_mm" /
    "mean_mm": displacement between the two maps over `points` ((N, 3)
    world mm, e.g. the head's voxels)}.
    """
    est, tru = np.asarray(estimated, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    pts = np.atleast_2d(np.asarray(points, dtype=np.float64))
    a = pts @ est[:3, :3].T + est[:3, 3]
    b = pts @ tru[:3, :3].T + tru[:3, 3]
    d = np.linalg.norm(a - b, axis=1)
    return {"rotation_deg": rotation_deg(est[:3, :3] @ tru[:3, :3].T), "max_mm": float(d.max()),
            "mean_mm": float(d.mean())}
