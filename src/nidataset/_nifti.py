"""NIfTI reading and writing: the only module that knows about files and headers.

Volumes are read as their stored values (``scl_slope``/``scl_inter`` are not applied) and written back
with the input's header, so scaled data keep their scaling and on-disk type. nibabel parses the header;
the voxels are inflated by ISA-L (python-isal: 2-4 times faster than zlib, the same standard gzip),
whole or a slab of slices at a time. Writes are atomic: the data go to a hidden temporary file in the
destination folder, which is renamed over the final name once complete.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import secrets
import socket
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

import nibabel as nib
import numpy as np
from isal import igzip, igzip_threaded, isal_zlib

from ._geometry import resized_affine, resized_zooms

__all__ = [
    "READ_ERRORS",
    "SUFFIX",
    "InvalidVolumeError",
    "Source",
    "Volume",
    "atomic_file",
    "open_volume",
    "output_name",
    "prefix",
    "read",
    "read_slabs",
    "remove_stale_temporaries",
    "resized_header",
    "write",
]

#: The only file name ending accepted and written.
SUFFIX = ".nii.gz"
#: gzip level of written files (ISA-L's levels go from 0 to 3): fast, and still standard gzip.
COMPRESS_LEVEL = 1
#: Threads compressing a written file (blocks of 1 MiB, each primed with the one before: the same bytes
#: whatever the number of threads).
COMPRESS_THREADS = 2
#: Deflate cannot expand data more than 1032-fold, so a file's size bounds what it can hold.
_MAX_DEFLATE_RATIO = 1033
#: Bytes decompressed at a time.
_CHUNK = 1 << 23
#: This machine's name, in the names of temporary files (see :func:`atomic_file`).
_HOST = socket.gethostname()


class InvalidVolumeError(ValueError):
    """A file that is not a readable 3D NIfTI volume of a supported type."""


#: What reading a damaged or foreign file raises (beyond missing files and permissions).
READ_ERRORS = (OSError, EOFError, ValueError, zlib.error, isal_zlib.error, nib.filebasedimages.ImageFileError)


@dataclass(frozen=True)
class Source:
    """A NIfTI file whose header has been read and checked; its voxels are read on demand.

    `shape` and `dtype` are those of the stored voxels (``X, Y, Z``, on-disk byte order); they start
    `offset` bytes into the decompressed stream.
    """

    path: str
    header: object  # nibabel.Nifti1Header or Nifti2Header
    shape: tuple[int, int, int]
    dtype: np.dtype
    offset: int


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


def open_volume(path: str) -> Source:
    """Read and check the header of a 3D NIfTI volume; trailing singleton dimensions are dropped.

    The header is checked before any voxel is read: a header that claims more voxel data than the file
    holds fails without allocating the array it describes.

    Raises
    ------
    InvalidVolumeError
        If the file cannot be parsed as NIfTI (corrupt, truncated, not NIfTI), is not 3D, holds a type
        that cannot be resampled (complex, RGB), or claims more voxels than it holds. The message starts
        with the file's path.
    """
    with _read_errors(path):
        image = nib.load(path)  # parses the header only
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
                f"'{path}' holds {dtype} voxels; only integer and real ones can be resampled"
            )
        offset = int(image.dataobj.offset)  # the header nibabel returns has vox_offset reset to 0
        _check_claimed_size(path, offset + math.prod(shape) * dtype.itemsize)
    return Source(path=path, header=header, shape=shape[:3], dtype=dtype, offset=offset)


def read(path: str) -> Volume:
    """Read a whole 3D NIfTI volume (see :func:`open_volume` for the checks and errors)."""
    source = open_volume(path)
    data = np.empty(source.shape, dtype=source.dtype, order="F")
    with _voxels(source) as fill:
        fill(data.T)  # data.T is C-contiguous: its bytes in NIfTI's order
    return Volume(path=path, data=data, header=source.header)


def read_slabs(source: Source, slices: int, buffers: int = 2) -> Iterator[tuple[int, np.ndarray]]:
    """Yield the voxels of `source`, `slices` z-slices at a time, each decompressed as it is asked for.

    Each item is ``(start, block)`` where ``block[k, j, i]`` is voxel ``(i, j, start + k)``: a slab of the
    volume's transpose (C-ordered, ``Z, Y, X``). The blocks take turns in `buffers` arrays, so a block
    is overwritten `buffers` items later (new arrays would cost a page fault per 4 kB each time).

    Raises
    ------
    InvalidVolumeError
        If the voxel data are corrupt or end early; the message names the file.
    """
    nx, ny, nz = source.shape
    ring = [np.empty((min(slices, nz), ny, nx), dtype=source.dtype) for _ in range(buffers)]
    with _voxels(source) as fill:
        for turn, start in enumerate(range(0, nz, slices)):
            block = ring[turn % buffers][: nz - start]
            fill(block)
            yield start, block


@contextlib.contextmanager
def _read_errors(path: str) -> Iterator[None]:
    """Turn what reading a damaged or foreign file raises into an :class:`InvalidVolumeError`."""
    try:
        yield
    except (InvalidVolumeError, FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except READ_ERRORS as err:
        raise InvalidVolumeError(f"'{path}' is not a readable NIfTI file: {err}") from err


@contextlib.contextmanager
def _voxels(source: Source):
    """Open the voxels of `source`; yield a function that fills C-contiguous arrays from them, in order."""
    with _read_errors(source.path), igzip.open(source.path, "rb") as stream:
        stream.seek(source.offset)
        done = source.offset

        def fill(array: np.ndarray) -> None:
            nonlocal done
            target = memoryview(array).cast("B")
            filled = 0
            while filled < len(target):
                n = stream.readinto(target[filled : filled + _CHUNK])
                if not n:
                    end = source.offset + math.prod(source.shape) * source.dtype.itemsize
                    raise InvalidVolumeError(
                        f"'{source.path}' is not a readable NIfTI file: it ends after "
                        f"{done + filled:,} of {end:,} bytes"
                    )
                filled += n
            done += filled

        yield fill


def _check_claimed_size(path: str, claimed: int) -> None:
    """Fail unless the gzip file at `path` decompresses to at least `claimed` bytes.

    The file is read only when neither its size nor its gzip trailer settles the question.
    """
    compressed = os.path.getsize(path)
    if claimed > _MAX_DEFLATE_RATIO * compressed + 1024:
        raise InvalidVolumeError(
            f"'{path}' is not a readable NIfTI file: its header claims {claimed:,} bytes, more than a "
            f"{compressed:,}-byte gzip file can hold"
        )
    with open(path, "rb") as raw:
        raw.seek(-4, os.SEEK_END)
        size_mod_4g = int.from_bytes(raw.read(4), "little")  # ISIZE of the last gzip member
    if size_mod_4g == claimed % 2**32:
        return  # the usual single-member file whose length matches its header
    # Several gzip members, trailing bytes, or a truncated or lying file: count what is there.
    held = 0
    buffer = bytearray(_CHUNK)
    with igzip.open(path, "rb") as stream:
        while held < claimed and (n := stream.readinto(buffer)):
            held += n
    if held < claimed:
        raise InvalidVolumeError(
            f"'{path}' is not a readable NIfTI file: its header claims {claimed:,} bytes, "
            f"the file holds {held:,}"
        )


def resized_header(header, shape: Sequence[int], align: str = "origin"):
    """Copy of a NIfTI `header` describing the same field of view on a grid of `shape`.

    Both the sform and the qform become the input's resized as :func:`_geometry.resized_affine` says (a
    form whose code is 0 is derived from nibabel's best affine), their codes are kept, and so are the
    units, the data type, ``scl_slope``/``scl_inter`` and the extensions. The voxel spacing is scaled by
    old / new.
    """
    old = tuple(int(n) for n in header.get_data_shape()[:3])
    best = header.get_best_affine()
    sform, scode = header.get_sform(), int(header["sform_code"])
    qform, qcode = header.get_qform(), int(header["qform_code"])
    zooms = resized_zooms(header.get_zooms()[:3], old, shape)
    new = header.copy()
    new.set_data_shape(tuple(shape))
    new.set_sform(resized_affine(sform if scode else best, old, shape, align), code=scode)
    new.set_qform(resized_affine(qform if qcode else best, old, shape, align), code=qcode)
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
    with atomic_file(path) as raw:
        with igzip_threaded.open(raw, "wb", compresslevel=COMPRESS_LEVEL, threads=COMPRESS_THREADS) as gz:
            head = io.BytesIO()  # nibabel writes extensions with tell(), which the threaded writer lacks
            header.write_to(head)
            gz.write(head.getbuffer())
            gz.write(stored.T)  # Fortran-ordered voxels, as NIfTI stores them


@contextlib.contextmanager
def atomic_file(path: str) -> Iterator[BinaryIO]:
    """Open a hidden temporary file beside `path` for writing; rename it to `path` once complete.

    The temporary file is named ``.<name>.<host>.<pid>.<random>.tmp``: hidden, never ending in ``.nii.gz``,
    and telling which process on which machine writes it. If the block fails it is deleted.
    """
    directory, name = os.path.split(path)
    temp = os.path.join(directory, f".{name}.{_HOST}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as raw:
            yield raw
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise


def remove_stale_temporaries(folder: str) -> int:
    """Delete the temporary files in `folder` left by writers on this machine that no longer run.

    A writer killed mid-write leaves its hidden temporary file behind (never a partial output). Files of
    running processes, and of other machines sharing the folder, are left alone. Returns how many
    were deleted.
    """
    if os.name != "posix":
        return 0
    removed = 0
    try:
        entries = os.scandir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return 0
    with entries:
        for entry in entries:
            if _orphaned(entry.name):
                try:
                    os.unlink(entry.path)
                    removed += 1
                except FileNotFoundError:
                    pass
    return removed


def _orphaned(name: str) -> bool:
    """Whether `name` is a temporary file of :func:`atomic_file` left by a dead process of this machine."""
    if not (name.startswith(".") and name.endswith(".tmp")):
        return False
    parts = name[: -len(".tmp")].rsplit(".", 2)  # ".<name>.<host>", pid, random
    if len(parts) != 3 or not parts[1].isdigit():
        return False
    head, pid = parts[0], int(parts[1])
    return head.endswith("." + _HOST) and len(head) > len(_HOST) + 2 and not _running(pid)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
