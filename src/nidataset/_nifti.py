"""NIfTI reading and writing: the only module that knows about NIfTI files and headers.

Volumes are read as their stored values (``scl_slope``/``scl_inter`` are not applied) and written back
with the input's header, so scaled data keep their scaling and on-disk type. Each header is first checked
field by field from its raw bytes, so that a hostile file fails with its reason in plain words, naming
it, before anything it describes is allocated; nibabel then parses it. The voxels are inflated by ISA-L
(python-isal: 2-4 times faster than zlib, the same standard gzip), whole or a slab of slices at a time,
and written back a slab at a time by :class:`SlabWriter`. Writes are atomic (see
:mod:`nidataset._atomic`, whose :func:`atomic_file` and :func:`remove_stale_temporaries` are also
found here). Files are opened through :class:`nidataset._storage.Storage`: a local path, or a URL
streamed (an S3 object by one request, header and voxels: :func:`opened_volume`) and uploaded as it
is compressed. :class:`MidPlanes` keeps the three mid-planes
of slabs as they stream by, for previews.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import itertools
import math
import os
import zlib
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, BinaryIO, Literal

import nibabel as nib
import numpy as np
from isal import igzip, igzip_threaded, isal_zlib
from nibabel.nifti1 import data_type_codes
from nibabel.spatialimages import HeaderDataError

from ._atomic import atomic_file, remove_stale_temporaries
from ._geometry import resized_affine, resized_zooms
from ._paths import is_url, local_path, name_of
from ._remote_io import HEADER_BLOCK
from ._storage import LOCAL, STREAM_BLOCK, Storage

__all__ = [
    "READ_ERRORS",
    "SUFFIX",
    "InvalidVolumeError",
    "MidPlanes",
    "SlabWriter",
    "Source",
    "atomic_file",
    "largest_size",
    "open_volume",
    "opened_volume",
    "output_header",
    "output_name",
    "prefix",
    "preview_name",
    "read_mid_planes",
    "read_slabs",
    "read_stored",
    "remove_stale_temporaries",
    "resized_header",
]

#: The only file name ending accepted and written.
SUFFIX = ".nii.gz"
#: gzip level of written files (ISA-L's levels go from 0 to 3): fast, and still standard gzip.
COMPRESS_LEVEL = 1
#: Bytes compressed at a time, each block primed with the 32 KiB before it: the same bytes whatever the
#: number of threads compressing.
_BLOCK = 1 << 20
#: Deflate cannot expand data more than 1032-fold, so a file's size bounds what it can hold.
_MAX_DEFLATE_RATIO = 1033
#: Bytes decompressed at a time: gzip's readinto decompresses into a new bytes object and copies it,
#: so the chunk stays below glibc's 128 KiB mmap threshold (larger ones are mapped and faulted afresh).
_CHUNK = 1 << 16
#: The NIfTI formats read, by version: header class, header size, first byte the voxels may start at.
_FORMATS: dict[int, tuple[type[nib.Nifti1Header], int, int]] = {
    1: (nib.Nifti1Header, 348, 352),
    2: (nib.Nifti2Header, 540, 544),
}
#: More header extensions than any real file holds (one or two): beyond, the file is refused.
_MAX_EXTENSIONS = 4096


class InvalidVolumeError(ValueError):
    """A file that is not a readable 3D NIfTI volume of a supported type."""


#: What reading a damaged or foreign file raises (an OSError without an error number, such as gzip's
#: BadGzipFile; one with a number is a failure of the device, raised as such).
READ_ERRORS: tuple[type[BaseException], ...] = (  # type: ignore[assignment]  # isal types error as an instance
    OSError,
    EOFError,
    ValueError,
    OverflowError,  # ISA-L: a gzip header (a long comment, say) larger than its input buffer
    zlib.error,
    isal_zlib.error,
    nib.filebasedimages.ImageFileError,
    HeaderDataError,
)


@dataclass(frozen=True)
class Source:
    """A NIfTI file whose header has been read and checked; its voxels are read on demand.

    `shape` and `dtype` are those of the stored voxels (``X, Y, Z``, on-disk byte order); they start
    `offset` bytes into the decompressed stream; `storage` opens `path`, unless `raw` holds it open
    already (see :func:`opened_volume`).
    """

    path: str
    header: nib.Nifti1Header  # or a Nifti2Header
    shape: tuple[int, int, int]
    dtype: np.dtype
    offset: int
    storage: Storage = LOCAL
    raw: BinaryIO | None = field(default=None, compare=False, repr=False)

    @property
    def stored_shape(self) -> tuple[int, int, int]:
        """Shape of the voxels in the order they are stored, as a C-ordered array: ``Z, Y, X``."""
        x, y, z = self.shape
        return z, y, x


def prefix(path: str | os.PathLike) -> str:
    """File name without folder and without ``.nii.gz``.

    Examples
    --------
    >>> prefix("scans/patient_001.nii.gz")
    'patient_001'
    """
    name = name_of(os.fspath(path))
    return name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name


def output_name(path: str | os.PathLike) -> str:
    """Name of the resampled output of `path`: ``<PREFIX>_resampled.nii.gz``.

    Examples
    --------
    >>> output_name("scans/scan_042.nii.gz")
    'scan_042_resampled.nii.gz'
    """
    return f"{prefix(path)}_resampled{SUFFIX}"


def preview_name(path: str | os.PathLike[str]) -> str:
    """Name of the preview picture of `path` and its output: ``<PREFIX>_preview.png``.

    Examples
    --------
    >>> preview_name("scans/scan_042.nii.gz")
    'scan_042_preview.png'
    """
    return f"{prefix(path)}_preview.png"


def open_volume(path: str, storage: Storage = LOCAL) -> Source:
    """Read and check the header of a 3D NIfTI volume; trailing singleton dimensions are dropped.

    The header is checked before any voxel is read and before nibabel parses it, so that a hostile
    header fails with its reason in plain words and without allocating what it describes: the number of
    dimensions and their sizes, the data type, where the voxels start, the scaling, the voxel sizes and
    orientation, the header extensions, and whether the file holds as many voxels as its header claims.
    Only the header is read (a URL's by small ranged requests), unless the gzip trailer leaves the size
    unsettled (several gzip members, trailing bytes: then the file is read through); the file is closed
    on return.

    Raises
    ------
    InvalidVolumeError
        If the file cannot be parsed as NIfTI (corrupt, truncated, not NIfTI, a field out of range), is
        not 3D, holds a type that cannot be resampled (complex, RGB), or claims more voxels than it holds.
        The message starts with the file's path and says what is wrong.
    OSError
        If the device fails while the file is read (EIO, say): the error number is kept and the message
        names the file. FileNotFoundError, PermissionError and IsADirectoryError as raised by ``open``.
    """
    with _read_errors(path), storage.open_input(path, HEADER_BLOCK) as raw:
        return _read_header(path, raw, storage, streamed=False)


@contextlib.contextmanager
def opened_volume(path: str, storage: Storage = LOCAL) -> Iterator[Source]:
    """:func:`open_volume`, the file held open for its voxels until the block ends.

    The header and then the voxels come from one opening: for an S3 object, from one GET, where
    :func:`open_volume` and a read of the voxels would take four requests. A URL's gzip trailer is not
    asked for: whether it holds the voxels its header claims is found as they stream (what the header
    claims is still bounded by the object's size before anything is allocated).

    Raises as :func:`open_volume` does.
    """
    with contextlib.ExitStack() as stack:
        with _read_errors(path):
            raw = stack.enter_context(storage.open_input(path, STREAM_BLOCK))
            source = _read_header(path, raw, storage, streamed=is_url(path))
        yield replace(source, raw=raw)


def _read_header(path: str, raw: BinaryIO, storage: Storage, streamed: bool) -> Source:
    """Check and parse the header at the start of `raw`, the file at `path` (left where it was).

    `streamed`: the voxels will stream from `raw` next, which checks whether they are all there.
    """
    offset = _check_header(path, raw, storage, streamed)
    image = _parse_image(path, raw) if is_url(path) else nib.load(local_path(path))  # the header only
    if not isinstance(image, nib.Nifti1Image):  # Nifti2Image is a subclass
        raise InvalidVolumeError(f"'{path}' is not a NIfTI image (read as {type(image).__name__})")
    # nibabel moves scl_slope/scl_inter from the header it returns into the data proxy: put them back.
    header = image.header.copy()
    proxy: Any = image.dataobj
    slope, inter = float(proxy.slope), float(proxy.inter)
    if (slope, inter) != (1.0, 0.0):
        header.set_slope_inter(slope, inter)
    shape = tuple(int(n) for n in header.get_data_shape())
    if int(proxy.offset) != offset:  # the header nibabel returns has vox_offset reset to 0
        raise _invalid(path, f"nibabel reads its voxels from byte {int(proxy.offset)}, not {offset}")
    x, y, z = shape[:3]
    dtype = header.get_data_dtype()
    return Source(path=path, header=header, shape=(x, y, z), dtype=dtype, offset=offset, storage=storage)


def largest_size(header: nib.Nifti1Header) -> int:
    """Return the most voxels along an axis that `header`'s format can hold (32,767 for NIfTI-1)."""
    return int(np.iinfo(header["dim"].dtype).max)


def output_header(source: Source, shape: Sequence[int], align: str = "origin") -> nib.Nifti1Header:
    """Return the header of the output of `source` resized to `shape` (see :func:`resized_header`).

    Raises
    ------
    ValueError
        If `shape` cannot be written in a header of the input's format (NIfTI-1 sizes are 16-bit); the
        message names the input file.
    InvalidVolumeError
        If the input's orientation cannot be resized (nibabel cannot decompose it); the message names the
        input file. Non-finite voxel sizes and forms were refused when it was opened.
    """
    limit = largest_size(source.header)
    if any(int(n) > limit for n in shape):
        kind = "NIfTI-2" if isinstance(source.header, nib.Nifti2Header) else "NIfTI-1"
        raise ValueError(
            f"'{source.path}' cannot be resampled to {_sizes(shape)} voxels: a {kind} file holds at most "
            f"{limit:,} voxels along an axis"
        )
    try:
        return resized_header(source.header, shape, align=align)
    except (HeaderDataError, ValueError, np.linalg.LinAlgError) as err:
        reason = f"its orientation (qform, sform, pixdim) cannot be used: {_one_line(err)}"
        raise _invalid(source.path, reason) from err


def read_stored(source: Source, between: Callable[[], None] | None = None) -> np.ndarray:
    """All voxels of `source` as stored: a new C-ordered ``Z, Y, X`` array (the volume's transpose).

    `between` is called after each few MiB read (it may raise, to stop the read).

    Raises as :func:`read_slabs` does.
    """
    data = np.empty(source.stored_shape, dtype=source.dtype)
    rows = max(1, (4 << 20) // max(1, data[0].nbytes))  # slices per piece: about 4 MiB
    with _voxels(source) as fill:
        for start in range(0, len(data), rows):
            fill(data[start : start + rows])
            if between is not None:
                between()
    return data


def read_slabs(
    source: Source, slices: int, buffers: Iterator[np.ndarray] | None = None
) -> Generator[np.ndarray, None, None]:
    """Yield the voxels of `source`, `slices` z-slices at a time, each decompressed as it is asked for.

    Each block is a slab of the volume's transpose (C-ordered, ``Z, Y, X``): ``block[k, j, i]`` is voxel
    ``(i, j, start + k)`` of the slab starting at slice ``start``. Each block is decompressed into the next
    array of `buffers` (arrays of at least ``slices`` slices, reused rather than allocated anew, which costs
    a page fault per 4 kB); by default one array serves every block, so a block is overwritten by the next.

    Raises
    ------
    InvalidVolumeError
        If the voxel data are corrupt or end early; the message names the file.
    OSError
        If the device fails (EIO, say), with its error number; the message names the file.
    """
    nz, ny, nx = source.stored_shape
    if buffers is None:
        one = np.empty((min(slices, nz), ny, nx), dtype=source.dtype)
        buffers = itertools.repeat(one)
    with _voxels(source) as fill:
        for start in range(0, nz, slices):
            block = next(buffers)[: min(slices, nz - start)]
            fill(block)
            yield block


def read_mid_planes(path: str, storage: Storage = LOCAL) -> MidPlanes:
    """Read the three mid-planes of the volume at `path`, a slab at a time (see :class:`MidPlanes`)."""
    source = open_volume(path, storage)
    planes = MidPlanes(source.header)
    for block in read_slabs(source, max(1, (1 << 21) // max(1, source.shape[0] * source.shape[1]))):
        planes.add(block)
    return planes


@contextlib.contextmanager
def _read_errors(path: str) -> Iterator[None]:
    """Turn what reading a damaged or foreign file raises into an :class:`InvalidVolumeError`.

    An OSError with an error number (other than the missing file and permissions, raised as they are) is
    the device failing, not the file's content: it is raised again as an OSError naming the file.
    """
    try:
        yield
    except (InvalidVolumeError, FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except OSError as err:
        if err.errno is None:  # gzip's BadGzipFile and the like: the bytes are wrong
            raise InvalidVolumeError(f"'{path}' is not a readable NIfTI file: {err}") from err
        if err.filename is not None:
            raise
        raise OSError(err.errno, f"{err.strerror or err} while reading", path) from err
    except READ_ERRORS as err:
        raise InvalidVolumeError(f"'{path}' is not a readable NIfTI file: {_one_line(err)}") from err


def _invalid(path: str, reason: str) -> InvalidVolumeError:
    return InvalidVolumeError(f"'{path}' is not a readable NIfTI file: {reason}")


def _one_line(err: BaseException) -> str:
    """Return the first line of `err`'s message, without a trailing colon (nibabel appends matrices)."""
    lines = str(err).strip().splitlines()
    return lines[0].rstrip(":") if lines else type(err).__name__


def _sizes(shape: Sequence[int]) -> str:
    return " x ".join(str(int(n)) for n in shape)


def _check_header(path: str, raw: BinaryIO, storage: Storage, streamed: bool) -> int:
    """Check the header of the file at `path` field by field, and its claimed size; return the voxels' offset.

    Only the header, the extensions' own 8-byte headers and the gzip trailer (unless `streamed`, see
    :func:`_check_claimed_size`) are read from `raw` (with the standard library's gzip, which inflates no
    more than it is asked for; ISA-L's reader inflates 512 KiB ahead); `raw` is left where it was.
    """
    start = raw.tell()
    with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
        block = stream.read(_FORMATS[1][2])
        version = _version(path, block)
        klass, size, first = _FORMATS[version]
        if len(block) < first:
            block += stream.read(first - len(block))
        if len(block) < size:
            raise _invalid(path, f"it holds {len(block)} bytes, fewer than a NIfTI-{version} header's {size}")
        header = _parse(path, klass, block[:size])
        shape, dtype, offset = _check_fields(path, header, first)
        extended = len(block) > size and block[size] != 0  # the first byte of the extension flag
    _check_claimed_size(path, raw, storage, offset + math.prod(shape) * dtype.itemsize, streamed)
    if extended:
        raw.seek(start)
        with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
            stream.seek(first)
            _check_extensions(path, stream, header.endianness, first, offset)
    raw.seek(start)
    return offset


def _parse_image(path: str, raw: BinaryIO) -> nib.Nifti1Image:
    """Parse the header (and extensions) at the start of `raw` as nibabel's ``load`` parses a file's."""
    with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
        magic = stream.read(_FORMATS[2][2])
        stream.seek(0)
        kind = nib.Nifti2Image if _version(path, magic) == 2 else nib.Nifti1Image
        sign = magic[4:8] if kind is nib.Nifti2Image else magic[344:348]
        if sign.rstrip(b"\0") not in (b"n+1", b"n+2"):
            raise _invalid(path, f"its magic {sign!r} is that of a header without its voxels (.hdr/.img)")
        return kind.from_stream(stream)


def _version(path: str, block: bytes) -> int:
    """Which NIfTI version `block`, the start of a file, is the header of (as nibabel decides)."""
    if len(block) >= 348 and block[344:348].rstrip(b"\0") in (b"n+1", b"ni1"):
        return 1
    if len(block) >= 4 and 540 in (int.from_bytes(block[:4], order) for order in ("little", "big")):
        return 2
    if len(block) < 348:
        raise _invalid(path, f"it holds {len(block)} bytes, fewer than a NIfTI header's 348")
    raise _invalid(path, "it does not start with a NIfTI-1 or NIfTI-2 header")


def _parse(path: str, klass: type[nib.Nifti1Header], block: bytes) -> nib.Nifti1Header:
    """Read the header in `block` in the byte order that gives 1 to 7 dimensions (as nibabel does)."""
    headers = [klass(block, endianness=order, check=False) for order in ("<", ">")]
    for header in headers:
        if 1 <= int(header["dim"][0]) <= 7:
            return header
    stated = headers[1] if int(headers[1]["sizeof_hdr"]) == len(block) else headers[0]
    raise _invalid(path, f"its number of dimensions (dim[0]) is {int(stated['dim'][0])}, not 1 to 7")


def _check_fields(path: str, header: nib.Nifti1Header, first: int) -> tuple[tuple[int, ...], np.dtype, int]:
    """Check the fields of a raw `header`; return the voxels' shape, type and offset."""
    shape = tuple(int(n) for n in header["dim"][1 : int(header["dim"][0]) + 1])
    for axis, n in enumerate(shape, 1):
        if n < 1:
            raise _invalid(path, f"its size along axis {axis} (dim[{axis}]) is {n}, not a positive number")
    code = int(header["datatype"])
    if code not in data_type_codes.code:
        raise _invalid(path, f"its data type code {code} is not a NIfTI data type")
    label = data_type_codes.label[code]
    known: Any = data_type_codes.dtype[code]
    if known.itemsize == 0:  # nibabel knows it but cannot read it (binary, float128, complex256)
        raise _invalid(
            path,
            f"its voxel type (datatype {code}, {label}) is not supported; only integer and real types are",
        )
    if len(shape) < 3 or any(n != 1 for n in shape[3:]):
        raise InvalidVolumeError(f"'{path}' is not a 3D volume: its shape is {shape}")
    dtype = header.get_data_dtype()
    if dtype.kind not in "iuf":
        raise InvalidVolumeError(
            f"'{path}' holds {label} voxels; only integer and real ones can be resampled"
        )
    stored = header["vox_offset"].item()
    if not math.isfinite(stored) or stored != int(stored):
        raise _invalid(path, f"its voxel data offset (vox_offset) is {stored}, not a byte position")
    offset = int(stored)
    if offset < first:
        raise _invalid(
            path, f"its voxels start at byte {offset} (vox_offset), within the {first}-byte header"
        )
    slope, inter = float(header["scl_slope"]), float(header["scl_inter"])
    if slope != 0 and math.isfinite(slope) and not math.isfinite(inter):
        raise _invalid(path, f"its scaling has a slope of {slope:g} but an intercept of {inter} (scl_inter)")
    sizes = [float(v) for v in header["pixdim"][1:4]]
    if not all(math.isfinite(v) for v in sizes):
        raise _invalid(path, f"its voxel sizes (pixdim[1:4]) are {_floats(sizes)}, not all finite")
    quaternion = [float(header[k]) for k in ("quatern_b", "quatern_c", "quatern_d")]
    origin = [float(header[k]) for k in ("qoffset_x", "qoffset_y", "qoffset_z")]
    if int(header["qform_code"]) > 0 and sum(v * v for v in quaternion) > 1 + 1e-6:
        square = sum(v * v for v in quaternion)
        raise _invalid(
            path,
            f"its qform is not a rotation: quatern_b/c/d {_floats(quaternion)} square to {square:g}, above 1",
        )
    if int(header["qform_code"]) > 0 and not all(math.isfinite(v) for v in quaternion + origin):
        raise _invalid(
            path,
            f"its qform (quatern_b/c/d {_floats(quaternion)}, qoffset {_floats(origin)}) is not finite",
        )
    rows = np.array([header["srow_x"], header["srow_y"], header["srow_z"]], dtype=np.float64)
    if int(header["sform_code"]) > 0 and not np.isfinite(rows).all():
        raise _invalid(path, "its sform (srow_x/y/z) holds values that are not finite")
    return shape, dtype, offset


def _floats(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def _check_extensions(path: str, stream: gzip.GzipFile, endianness: str, start: int, offset: int) -> None:
    """Check that the header extensions from byte `start` (where `stream` is) end by the voxels' `offset`.

    Each extension starts with its size and code (int32); as nibabel reads them, extensions follow one
    another while 16 bytes or more remain before the voxels. Only their sizes are read.
    """
    order: Literal["little", "big"] = "big" if endianness == ">" else "little"
    position, count = start, 0
    while offset - position >= 16:
        head = stream.read(8)
        if len(head) < 8:
            raise _invalid(path, f"it ends inside the header extension at byte {position:,}")
        size = int.from_bytes(head[:4], order, signed=True)
        if size < 8:
            raise _invalid(path, f"its header extension at byte {position:,} has a size of {size}, below 8")
        if position + size > offset:
            raise _invalid(
                path,
                f"its header extension at byte {position:,} is {size:,} bytes long, past the start of its "
                f"voxels at byte {offset:,}",
            )
        count += 1
        if count > _MAX_EXTENSIONS:
            raise _invalid(path, f"it has more than {_MAX_EXTENSIONS:,} header extensions")
        position += size
        stream.seek(position)


@contextlib.contextmanager
def _voxels(source: Source) -> Iterator[Callable[[np.ndarray], None]]:
    """Open the voxels of `source`; yield a function that fills C-contiguous arrays from them, in order."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(_read_errors(source.path))
        raw = source.raw or stack.enter_context(source.storage.open_input(source.path, STREAM_BLOCK))
        raw.seek(0)
        stream = stack.enter_context(igzip.IGzipFile(fileobj=raw, mode="rb"))
        stream.seek(source.offset)
        done = source.offset

        def fill(array: np.ndarray) -> None:
            nonlocal done
            target = memoryview(array).cast("B")  # type: ignore[arg-type]
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


def _check_claimed_size(path: str, raw: BinaryIO, storage: Storage, claimed: int, streamed: bool) -> None:
    """Fail unless the gzip file at `path`, open as `raw`, decompresses to at least `claimed` bytes.

    The file is read only when neither its size nor its gzip trailer settles the question. If `streamed`
    (its voxels stream from `raw` next, which fail if they end early), only its size is looked at: the
    trailer of a file read in one request would take another.
    """
    compressed = raw.seek(0, os.SEEK_END)
    if claimed > _MAX_DEFLATE_RATIO * compressed + 1024:
        raise InvalidVolumeError(
            f"'{path}' is not a readable NIfTI file: its header claims {claimed:,} bytes, more than a "
            f"{compressed:,}-byte gzip file can hold"
        )
    if streamed:
        return
    raw.seek(max(0, compressed - 4))
    size_mod_4g = int.from_bytes(raw.read(4), "little")  # ISIZE of the last gzip member
    if size_mod_4g == claimed % 2**32:
        return  # the usual single-member file whose length matches its header
    # Several gzip members, trailing bytes, or a truncated or lying file: count what is there.
    held = 0
    buffer = bytearray(_CHUNK)
    with storage.open_input(path, STREAM_BLOCK) as whole, igzip.IGzipFile(fileobj=whole, mode="rb") as stream:
        while held < claimed and (n := stream.readinto(buffer)):
            held += n
    if held < claimed:
        raise InvalidVolumeError(
            f"'{path}' is not a readable NIfTI file: its header claims {claimed:,} bytes, "
            f"the file holds {held:,}"
        )


def resized_header(header: nib.Nifti1Header, shape: Sequence[int], align: str = "origin") -> nib.Nifti1Header:
    """Copy of a NIfTI `header` describing the same field of view on a grid of `shape`.

    Both the sform and the qform become the input's resized as :func:`_geometry.resized_affine` says (a
    form whose code is 0 is derived from nibabel's best affine), their codes are kept, and so are the
    units, the data type, ``scl_slope``/``scl_inter``, ``dim_info`` and the extensions. The voxel spacing
    is scaled by old / new. The slice timing (``slice_code``, ``slice_start``, ``slice_end``,
    ``slice_duration``) describes the input's slices: it is kept only where the slice axis (``dim_info``)
    keeps its size, and cleared otherwise (an unknown slice axis: unless no axis changes).

    Examples
    --------
    >>> header = nib.Nifti1Header()
    >>> header.set_data_shape((8, 8, 10))
    >>> header.set_dim_info(slice=2)
    >>> header.set_slice_duration(0.1)
    >>> header["slice_code"], header["slice_end"] = 1, 9  # sequential, increasing
    >>> len(resized_header(header, (4, 4, 10)).get_slice_times())
    10
    >>> int(resized_header(header, (8, 8, 5))["slice_end"])
    0
    """
    old = tuple(int(n) for n in header.get_data_shape()[:3])
    best = header.get_best_affine()
    sform, scode = header.get_sform(), int(header["sform_code"])
    qform, qcode = header.get_qform(), int(header["qform_code"])
    zooms = resized_zooms(header.get_zooms()[:3], old, shape)
    new_sform = resized_affine(sform if scode else best, old, shape, align)
    new_qform = resized_affine(qform if qcode else best, old, shape, align)
    largest = float(np.finfo(header["srow_x"].dtype).max)  # float32 in NIfTI-1, float64 in NIfTI-2
    for name, values in (("voxel size", zooms), ("sform", new_sform), ("qform", new_qform)):
        if not np.all(np.abs(np.asarray(values, dtype=np.float64)) <= largest):
            raise ValueError(f"the resized {name} does not fit in the header ({largest:.3g} at most)")
    new = header.copy()
    new.set_data_shape(tuple(shape))
    new.set_sform(new_sform, code=scode)
    new.set_qform(new_qform, code=qcode)
    new.set_zooms(zooms)
    slice_axis = header.get_dim_info()[2]
    if (tuple(shape) != old) if slice_axis is None else (int(shape[slice_axis]) != old[slice_axis]):
        for name in ("slice_code", "slice_start", "slice_end", "slice_duration"):
            new[name] = 0  # the timing of slices that are no longer there
    return new


class SlabWriter:
    """Write a NIfTI volume to `path` a slab of slices at a time, gzip-compressed, atomically.

    Use it as a context manager: the file appears under its final name only once the block ends without
    error and every voxel was written (with `deferred`, only once :meth:`commit` is called after that);
    otherwise nothing is left behind. The compressed bytes do not
    depend on how the voxels are cut into slabs nor on the number of threads: the stream is cut into
    blocks of 1 MiB counted from the first voxel (the header is a block of its own unless header and
    voxels fit in one), and each block is compressed primed with the 32 KiB before it.

    Parameters
    ----------
    path : str
        The file to write.
    header : nibabel.Nifti1Header or Nifti2Header
        Its header: shape, data type (byte order included) and geometry.
    threads : int
        Threads compressing.
    wait : bool
        Return from :meth:`write` only once what it handed on is compressed and written, so that
        compressing never runs beside the caller's own work.
    storage : Storage
        Opens `path`: a local file, or a URL uploaded as the bytes come out of the compressor.
    waiting : callable, optional
        For a URL: called once everything is compressed, before the store takes the last bytes and
        makes the object appear (see :meth:`Storage.upload`).
    deferred : bool
        The block's end compresses the last voxels, and leaves the rest (the rename, or the store's
        part of the upload) to :meth:`commit`, so that the caller can first let go of what it holds;
        or to :meth:`abandon`, which leaves nothing behind.
    """

    def __init__(
        self,
        path: str,
        header: nib.Nifti1Header,
        threads: int = 1,
        wait: bool = False,
        storage: Storage = LOCAL,
        waiting: Callable[[], None] | None = None,
        deferred: bool = False,
    ):
        self.path = path
        self.storage, self.waiting, self.deferred = storage, waiting, deferred
        self.header = header.copy()
        self.header["vox_offset"] = 0  # nibabel places the data right after the header and extensions
        self.dtype = self.header.get_data_dtype()
        self.expected = math.prod(self.header.get_data_shape()) * self.dtype.itemsize
        self.threads = max(1, int(threads))
        self.wait = wait
        self.pending = bytearray()  # the start of the next block
        self.head: bytes | None = None  # the header, until it is handed on
        self.written = 0
        self._file: Generator[BinaryIO | None, None, None] | None = None
        self.compressed = False  # the block ended well: commit() is next

    def __enter__(self) -> SlabWriter:
        self._file = self._open()
        gz = next(self._file)
        assert gz is not None
        self.gz = gz
        return self

    def _open(self) -> Generator[BinaryIO | None, None, None]:
        """Open the temporary file and its compressor, and write the header; rename on success.

        Yields the compressor; then, once it is closed, None: the rename (or the upload's end) is the
        next step's.
        """
        with self.storage.upload(self.path, self.waiting) as raw:
            with _compressor(raw, self.threads) as gz:
                head = io.BytesIO()  # nibabel writes extensions with tell(), which the threaded writer lacks
                self.header.write_to(head)
                self.head = head.getvalue()  # a block of its own, or with the voxels if all fit in one
                yield gz
            del gz  # its buffers go before the end, which may wait on the store
            yield None

    def write(self, block: np.ndarray) -> None:
        """Append the next slab: C-ordered ``Z, Y, X`` voxels (converted to the header's type)."""
        data = memoryview(np.ascontiguousarray(block, dtype=self.dtype)).cast("B")  # type: ignore[arg-type]
        if self.written + len(data) > self.expected:
            raise ValueError(f"more voxels than the header of '{self.path}' describes")
        self.written += len(data)
        handed = False
        if self.pending:
            take = min(len(data), _BLOCK - len(self.pending))
            self.pending += data[:take]
            data = data[take:]
            if len(self.pending) < _BLOCK:
                return
            self._hand(self.pending)
            self.pending = bytearray()
            handed = True
        whole = len(data) - len(data) % _BLOCK
        if whole:
            self._hand(data[:whole])
            handed = True
        self.pending += data[whole:]
        if handed and self.wait:
            self.gz.flush()  # only whole blocks were handed on: the block boundaries stay the same

    def _hand(self, data: bytes | bytearray | memoryview) -> None:
        """Hand `data` on to the compressor, after the header: with it if both fit in one block.

        The compressor is written to directly, not through an ``io.BufferedWriter``: that one asks its
        writer whether it is closed (isal's answers in Python) before each write, and reports anything
        raised there, an interrupt (Ctrl-C) included, as "write to closed file".
        """
        head, self.head = self.head, None
        if head is not None:
            if len(head) + len(data) <= _BLOCK:
                self.gz.write(head + bytes(data))
                return
            self.gz.write(head)
        if len(data):
            self.gz.write(data)

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> Literal[False]:
        file = self._file
        assert file is not None  # entered
        if error is None:
            try:
                if self.written != self.expected:
                    raise ValueError(
                        f"'{self.path}': {self.written:,} of {self.expected:,} voxel bytes were written"
                    )
                self._hand(self.pending)  # the last voxels (and the header, if none went yet)
                self.pending = bytearray()
            except BaseException as err:
                error = err
        if error is None:
            next(file)  # closes the compressor
            del self.gz
            self.compressed = True
            if not self.deferred:
                self.commit()
            return False
        try:
            file.throw(error)  # closes both, deletes the temporary file, raises `error` again
        except StopIteration:
            return False
        except BaseException as raised:
            if raised is not error or kind is None:
                raise
            return False  # the caller's own exception propagates
        raise RuntimeError("the writer swallowed an error")  # pragma: no cover

    def commit(self) -> None:
        """Rename the file, or end its upload: only now does the output appear (after a `deferred` block).

        Raises what the rename or the store raises, and then leaves nothing behind; RuntimeError if
        the block did not end well, or the output is already committed.
        """
        if not self.compressed or self._file is None:
            raise RuntimeError(f"'{self.path}' has no output waiting to be committed")
        self.compressed = False
        try:
            next(self._file)
        except StopIteration:
            return
        raise RuntimeError("the writer did not stop")  # pragma: no cover

    def abandon(self) -> None:
        """Throw away a `deferred` output that was not committed (nothing if it was, or if it failed)."""
        self.compressed = False
        if self._file is not None:
            self._file.close()  # GeneratorExit where it waits: the temporary file or the upload goes


@contextlib.contextmanager
def _compressor(raw: BinaryIO, threads: int) -> Iterator[BinaryIO]:
    """Run isal's threaded gzip writer over `raw` for the block; closed after it, however it ends.

    What ``igzip_threaded.open(raw, "wb", ...)`` makes, without the ``io.BufferedWriter`` it puts over it
    (see :meth:`SlabWriter._hand`), and without ``with writer:``, whose ``__enter__`` asks the writer's
    ``closed`` property: an interrupt there (Ctrl-C lands wherever Python code runs) would leave its
    threads running, never closed.

    isal's writer marks itself open and starts its thread inside ``__init__``; an exception in between
    (Ctrl-C, a full disk at the gzip header) would leave a half-made writer whose thread runs on and whose
    finalizer raises ("Exception ignored ... cannot join current thread", reported since Python 3.13).
    """
    kind = getattr(igzip_threaded, "_ThreadedGzipWriter", None)
    if kind is None:  # pragma: no cover  # an isal without that class: its public way, unguarded
        with igzip_threaded.open(
            raw, "wb", compresslevel=COMPRESS_LEVEL, threads=threads, block_size=_BLOCK
        ) as writer:
            yield writer
        return
    writer = kind.__new__(kind)
    made = False
    try:
        writer.__init__(raw, "wb", level=COMPRESS_LEVEL, threads=threads, block_size=_BLOCK)
        made = True
        yield writer  # (no buffered writer over it: see SlabWriter._hand)
    finally:
        if made:
            writer.close()
        else:
            writer.running = False  # a started thread ends at its next look at the queue (50 ms)
            writer._closed = True  # and the finalizer finds nothing to close


class MidPlanes:
    """The three mid-planes of a volume, kept from its slabs as they stream by (for previews).

    Feed it the volume's C-ordered ``Z, Y, X`` slabs in order with :meth:`add`; :meth:`planes` then gives
    the planes through the middle voxel of each axis, as values with the header's scaling applied.
    """

    def __init__(self, header: nib.Nifti1Header):
        self.shape = tuple(int(n) for n in header.get_data_shape()[:3])
        self.zooms = tuple(float(z) for z in header.get_zooms()[:3])
        self.affine = header.get_best_affine()  # for the preview's anatomical planes
        slope, inter = header.get_slope_inter()
        self.slope = 1.0 if slope is None else float(slope)
        self.inter = 0.0 if inter is None else float(inter)
        nx, ny, nz = self.shape
        self.middle = (nx // 2, ny // 2, nz // 2)
        dtype = header.get_data_dtype()
        self._axial = np.zeros((ny, nx), dtype=dtype)  # z held: [y, x]
        self._coronal = np.zeros((nz, nx), dtype=dtype)  # y held: [z, x]
        self._sagittal = np.zeros((nz, ny), dtype=dtype)  # x held: [z, y]
        self.done = 0

    def add(self, block: np.ndarray) -> None:
        """Keep what the next slab (rows ``done : done + len(block)`` along Z) holds of the planes."""
        start, stop = self.done, self.done + len(block)
        mx, my, mz = self.middle
        if start <= mz < stop:
            self._axial[...] = block[mz - start]
        self._coronal[start:stop] = block[:, my, :]
        self._sagittal[start:stop] = block[:, :, mx]
        self.done = stop

    def planes(self) -> dict[int, np.ndarray]:
        """Return the plane through the middle of each axis (0: x, 1: y, 2: z), scaled, as float64.

        Each plane is indexed by the other two axes in order: ``[y, z]``, ``[x, z]``, ``[x, y]``.
        """
        if self.done != self.shape[2]:
            raise ValueError(f"only {self.done} of {self.shape[2]} slices were seen")
        scaled = {0: self._sagittal.T, 1: self._coronal.T, 2: self._axial.T}
        return {axis: plane.astype(np.float64) * self.slope + self.inter for axis, plane in scaled.items()}
