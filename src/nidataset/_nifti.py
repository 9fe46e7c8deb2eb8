"""NIfTI reading and writing: the only module that knows about files and headers.

Volumes are read as their stored values (``scl_slope``/``scl_inter`` are not applied) and written back
with the input's header, so scaled data keep their scaling and on-disk type. Writes are atomic: the data go
to a hidden temporary file in the destination folder, which is renamed over the final name once complete.
"""

from __future__ import annotations

import gzip
import os
import secrets
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ._geometry import resized_affine, resized_zooms

__all__ = [
    "SUFFIX",
    "InvalidVolumeError",
    "Volume",
    "output_name",
    "prefix",
    "read",
    "resized_header",
    "write",
]

#: The only file name ending accepted and written.
SUFFIX = ".nii.gz"
#: gzip level of written files: fast, and still standard gzip (nibabel's own default).
COMPRESS_LEVEL = 1


class InvalidVolumeError(ValueError):
    """A file that is not a readable 3D NIfTI volume of a supported type."""


@dataclass(frozen=True)
class Volume:
    """A 3D volume as stored: raw values in their on-disk type, and the header describing them."""

    path: str
    data: np.ndarray
    header: object  # nibabel.Nifti1Header or Nifti2Header


def prefix(path: str | os.PathLike) -> str:
    """File name without folder and without ``.nii.gz``.

    Examples
    --------
    >>> prefix("scans/patient_001.nii.gz")
    'patient_001'
    """
    name = os.path.basename(os.fspath(path))
    return name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name


def output_name(path: str | os.PathLike) -> str:
    """Name of the resampled output of `path`: ``<PREFIX>_resampled.nii.gz``.

    Examples
    --------
    >>> output_name("scans/scan_042.nii.gz")
    'scan_042_resampled.nii.gz'
    """
    return f"{prefix(path)}_resampled{SUFFIX}"


def read(path: str) -> Volume:
    """Read a 3D NIfTI volume; trailing singleton dimensions ``(X, Y, Z, 1, ...)`` are dropped.

    Raises
    ------
    InvalidVolumeError
        If the file cannot be parsed as NIfTI (corrupt, truncated, not NIfTI), is not 3D, or holds a type
        that cannot be resampled (complex, RGB). The message starts with the file's path.
    """
    import nibabel as nib

    try:
        image = nib.load(path)
        if not isinstance(image, nib.Nifti1Image):  # Nifti2Image is a subclass
            raise InvalidVolumeError(f"'{path}' is not a NIfTI image (read as {type(image).__name__})")
        # nibabel moves scl_slope/scl_inter from the header it returns into the data proxy: put them back.
        header = image.header.copy()
        slope, inter = float(image.dataobj.slope), float(image.dataobj.inter)
        if (slope, inter) != (1.0, 0.0):
            header.set_slope_inter(slope, inter)
        shape = tuple(int(n) for n in header.get_data_shape())
        dtype = header.get_data_dtype()
        if len(shape) < 3 or any(n != 1 for n in shape[3:]):
            raise InvalidVolumeError(f"'{path}' is not a 3D volume: its shape is {shape}")
        if dtype.kind not in "iuf":
            raise InvalidVolumeError(
                f"'{path}' holds {dtype} voxels; only integer and real types can be resampled"
            )
        data = np.asanyarray(image.dataobj.get_unscaled()).reshape(shape[:3], order="F")
    except InvalidVolumeError:
        raise
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError) as err:
        raise InvalidVolumeError(f"'{path}' is not a readable NIfTI file: {err}") from err
    return Volume(path=path, data=data, header=header)


def resized_header(header, shape: Sequence[int]):
    """Copy of a NIfTI `header` describing the same field of view on a grid of `shape`.

    Both the sform and the qform become ``affine @ diag(old / new, 1)`` of the input's (a form whose
    code is 0 is derived from nibabel's best affine), their codes are kept, and so are the units, the
    data type, ``scl_slope``/``scl_inter`` and the extensions. The voxel spacing is scaled by old / new.
    """
    old = tuple(int(n) for n in header.get_data_shape()[:3])
    best = header.get_best_affine()
    sform, scode = header.get_sform(), int(header["sform_code"])
    qform, qcode = header.get_qform(), int(header["qform_code"])
    zooms = resized_zooms(header.get_zooms()[:3], old, shape)
    new = header.copy()
    new.set_data_shape(tuple(shape))
    new.set_sform(resized_affine(sform if scode else best, old, shape), code=scode)
    new.set_qform(resized_affine(qform if qcode else best, old, shape), code=qcode)
    new.set_zooms(zooms)
    return new


def write(path: str, data: np.ndarray, header) -> None:
    """Write `data` (stored values) with `header` to `path` as gzip-compressed NIfTI, atomically.

    The file appears under its final name only once complete; on any failure nothing is left behind.
    """
    header = header.copy()
    header.set_data_shape(data.shape)
    header["vox_offset"] = 0  # nibabel places the data right after the header and extensions
    stored = np.asarray(data, dtype=header.get_data_dtype(), order="F")
    directory, name = os.path.split(path)
    temp = os.path.join(directory, f".{name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as raw:
            with gzip.GzipFile(
                filename="", mode="wb", fileobj=raw, compresslevel=COMPRESS_LEVEL, mtime=0
            ) as gz:
                header.write_to(gz)
                gz.write(stored.T)  # Fortran-ordered voxels, as NIfTI stores them
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise
