"""A synthetic CT-like volume (no patient data) for the demo, the benchmarks and the tests."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["ct_phantom"]


def ct_phantom(
    shape: Sequence[int] = (128, 128, 64),
    spacing: Sequence[float] = (0.7, 0.7, 1.25),
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Make a chest-like int16 volume in Hounsfield units: air, body, lungs, heart, spine, aorta, noise.

    Parameters
    ----------
    shape : sequence of 3 int
        Voxels along x, y, z.
    spacing : sequence of 3 float
        Voxel size in mm.
    seed : int
        Seed of the structures' jitter and of the noise.

    Returns
    -------
    data : numpy.ndarray
        int16 array of `shape` (Fortran order, as NIfTI stores it).
    affine : numpy.ndarray
        (4, 4) RAS voxel-to-world affine, centred on the volume.

    Examples
    --------
    >>> data, affine = ct_phantom((64, 64, 32))
    >>> data.shape, data.dtype.name, int(data.min()) >= -1024, int(data.max()) <= 3071
    ((64, 64, 32), 'int16', True, True)
    """
    rng = np.random.default_rng(seed)
    nx, ny, nz = (int(n) for n in shape)
    x = np.linspace(-1, 1, nx, dtype=np.float32)[:, None]
    y = np.linspace(-1, 1, ny, dtype=np.float32)[None, :]
    jitter = rng.uniform(-0.03, 0.03, 6)
    # (value, centre x, centre y, radius x, radius y, centre z, radius z) in normalised [-1, 1] units;
    # later structures are drawn over earlier ones.
    structures = [
        (40.0, 0.0, 0.0, 0.85 + jitter[0], 0.65 + jitter[1], 0.0, np.inf),  # body
        (-850.0, -0.38, -0.05, 0.3 + jitter[2], 0.42 + jitter[3], 0.1, 1.1),  # lungs
        (-850.0, 0.38, -0.05, 0.3 + jitter[3], 0.42 + jitter[2], 0.1, 1.1),
        (60.0, 0.12 + jitter[5], 0.15, 0.22, 0.2, 0.0, 0.5),  # heart (anterior, to the patient's left)
        (900.0, 0.0, -0.45, 0.1, 0.1 + jitter[4], 0.0, np.inf),  # spine (posterior: RAS y < 0)
        (250.0, 0.1, -0.28, 0.07, 0.07, 0.0, np.inf),  # contrast-filled aorta
    ]
    data = np.empty(shape, dtype=np.int16, order="F")
    for k, z in enumerate(np.linspace(-1, 1, nz)):
        plane = np.full((nx, ny), -1000.0, dtype=np.float32)
        for value, cx, cy, rx, ry, cz, rz in structures:
            squeeze = 1 - ((z - cz) / rz) ** 2  # an ellipsoid's cross-section shrinks away from its centre
            if squeeze > 0:
                plane[((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= squeeze] = value
        plane += 20.0 * rng.standard_normal((nx, ny), dtype=np.float32)
        data[:, :, k] = np.clip(np.rint(plane), -1024, 3071)

    affine = np.diag([*map(float, spacing), 1.0])
    affine[:3, 3] = -0.5 * (np.array(shape) - 1) * np.array(spacing, dtype=float)
    return data, affine
