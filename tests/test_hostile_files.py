"""Hostile headers, failing devices and impossible sizes: each a clear error that names the file, raised
before anything the file describes is allocated or computed, and nothing written."""

import contextlib
import errno
import gzip
import io
import os
import re
import subprocess
import sys
import threading

import nibabel as nib
import numpy as np
import pytest

from helpers import peak_allocation, write_nifti
from nidataset import InvalidVolumeError, _nifti, _pipeline, _storage, resampling
from nidataset._options import Options

SHAPE = (200, 200, 100)  # 8 MB of int16 voxels: far more than checking a header may allocate


def hostile(path, fields=(), extension=b"\0\0\0\0", shape=SHAPE):
    """Write a NIfTI-1 file of `shape` int16 voxels whose header then gets `fields` as raw values.

    Each field is ``(name, value)`` or ``(name, index, value)``; `extension` is what follows the 348-byte
    header (the extension flag and any extensions), and the voxels start right after it.
    """
    header = nib.Nifti1Header()
    header.set_data_dtype(np.int16)
    header.set_data_shape(shape)
    affine = np.diag([0.8, 0.9, 2.5, 1.0])
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=1)
    header["vox_offset"] = 348 + len(extension)
    for field in fields:
        if len(field) == 3:
            name, index, value = field
            header[name][index] = value
        else:
            name, value = field
            header[name] = value
    voxels = (np.arange(np.prod(shape)) % 251).astype(np.int16).tobytes()
    path.write_bytes(gzip.compress(header.binaryblock + extension + voxels, compresslevel=1))
    return path


def extension(size, room=16):
    """The extension flag, then one extension claiming `size` bytes, in `room` bytes before the voxels."""
    return b"\1\0\0\0" + np.array([size, 0], "<i4").tobytes() + b"\0" * (room - 8)


HOSTILE = {
    # name: (header fields, extension bytes, the reason the message must give)
    "datatype 0": ([("datatype", 0)], None, r"its voxel type \(datatype 0, none\) is not supported"),
    "datatype 1": ([("datatype", 1)], None, r"its voxel type \(datatype 1, binary\) is not supported"),
    "datatype 1536": ([("datatype", 1536)], None, r"\(datatype 1536, float128\) is not supported"),
    "datatype 2048": ([("datatype", 2048)], None, r"\(datatype 2048, complex256\) is not supported"),
    "datatype 9999": ([("datatype", 9999)], None, r"its data type code 9999 is not a NIfTI data type"),
    "vox_offset 100": (
        [("vox_offset", 100)],
        None,
        r"its voxels start at byte 100 \(vox_offset\), within the 352-byte header",
    ),
    "vox_offset 0": ([("vox_offset", 0)], None, r"its voxels start at byte 0 \(vox_offset\)"),
    "vox_offset inf": ([("vox_offset", np.inf)], None, r"\(vox_offset\) is inf, not a byte position"),
    "vox_offset 400.5": ([("vox_offset", 400.5)], None, r"\(vox_offset\) is 400.5, not a byte position"),
    "dim[0] 9": ([("dim", 0, 9)], None, r"its number of dimensions \(dim\[0\]\) is 9, not 1 to 7"),
    "dim[0] -3": ([("dim", 0, -3)], None, r"its number of dimensions \(dim\[0\]\) is -3, not 1 to 7"),
    "negative dim": ([("dim", 2, -5)], None, r"its size along axis 2 \(dim\[2\]\) is -5, not a positive"),
    "zero dim": ([("dim", 3, 0)], None, r"its size along axis 3 \(dim\[3\]\) is 0, not a positive"),
    "scl_inter nan": (
        [("scl_slope", 2.0), ("scl_inter", np.nan)],
        None,
        r"its scaling has a slope of 2 but an intercept of nan \(scl_inter\)",
    ),
    "scl_inter inf": ([("scl_slope", 2.0), ("scl_inter", np.inf)], None, r"an intercept of inf"),
    "extension past the voxels": (
        [],
        extension(100_000),
        r"its header extension at byte 352 is 100,000 bytes long, past the start of its voxels at byte 368",
    ),
    "extension of size 0": ([], extension(0), r"its header extension at byte 352 has a size of 0, below 8"),
    "pixdim nan": ([("pixdim", 2, np.nan)], None, r"its voxel sizes \(pixdim\[1:4\]\) are \(0.8, nan, 2.5\)"),
    "pixdim inf": ([("pixdim", 1, np.inf)], None, r"its voxel sizes \(pixdim\[1:4\]\) are \(inf, 0.9, 2.5\)"),
    "pixdim nan, no forms": (
        [("pixdim", 3, np.nan), ("qform_code", 0), ("sform_code", 0)],
        None,
        r"are \(0.8, 0.9, nan\), not all finite",
    ),
    "sform nan": (
        [("srow_y", 3, np.nan)],
        None,
        r"its sform \(srow_x/y/z\) holds values that are not",
    ),
    "qform nan": ([("quatern_c", np.nan)], None, r"its qform \(quatern_b/c/d \(0, nan, 0\)"),
    "qoffset inf": ([("qoffset_z", -np.inf)], None, r"qoffset \(0, 0, -inf\)\) is not finite"),
    "qform not a rotation": ([("quatern_b", 3.0)], None, r"its qform is not a rotation: .* square to 9"),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_header_is_refused_in_plain_words_before_any_allocation(tmp_path, case):
    fields, ext, reason = HOSTILE[case]
    path = hostile(tmp_path / "hostile.nii.gz", fields, **({} if ext is None else {"extension": ext}))
    errors = []

    def attempt():
        try:
            resampling(path, tmp_path / "out", (40, 30, 20))
        except Exception as err:
            errors.append(err)

    peak = peak_allocation(attempt)
    [err] = errors
    assert isinstance(err, InvalidVolumeError), repr(err)
    message = str(err)
    assert message.startswith(f"'{path}' is not a readable NIfTI file: "), message
    assert re.search(reason, message), message
    assert "\n" not in message
    assert peak < 2_000_000  # the voxels are 8 MB; the header describes them but none are read
    assert not (tmp_path / "out").exists()


def test_the_same_file_without_the_damage_is_resampled(tmp_path):
    # The builder makes valid files: what the cases above refuse is their one damaged field.
    path = hostile(tmp_path / "fine.nii.gz")
    out = resampling(path, tmp_path / "out", (40, 30, 20))
    assert nib.load(out).shape == (40, 30, 20)
    ext = hostile(tmp_path / "ext.nii.gz", extension=extension(16))  # one empty, well-formed extension
    assert nib.load(resampling(ext, tmp_path / "out", (40, 30, 20))).shape == (40, 30, 20)


def test_big_endian_header_damage_is_reported_in_its_byte_order(tmp_path):
    header = nib.Nifti1Header(endianness=">")
    header.set_data_dtype(np.int16)
    header.set_data_shape((4, 4, 4))
    header["vox_offset"] = 352
    header["dim"][0] = 9
    path = tmp_path / "big.nii.gz"
    path.write_bytes(gzip.compress(header.binaryblock + b"\0" * 4 + b"\0" * 128))
    with pytest.raises(InvalidVolumeError, match=r"number of dimensions \(dim\[0\]\) is 9, not 1 to 7"):
        _nifti.open_volume(str(path))


class FailingDevice(io.RawIOBase):
    """A file whose device fails (EIO) once `good` bytes have been read."""

    def __init__(self, path, good):
        self.file = open(path, "rb")
        self.good = good

    def readable(self):
        return True

    def seekable(self):
        return True

    def seek(self, offset, whence=os.SEEK_SET):
        return self.file.seek(offset, whence)

    def tell(self):
        return self.file.tell()

    def readinto(self, buffer):
        if self.good <= 0:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        n = self.file.readinto(memoryview(buffer)[: self.good])
        self.good -= n
        return n

    def close(self):
        self.file.close()
        super().close()


@pytest.fixture
def failing_device(monkeypatch):
    """Make every file this project reads fail with EIO after the given number of compressed bytes."""

    def install(good):
        @contextlib.contextmanager
        def failing(self, path, block=0):
            with FailingDevice(path, good) as device:
                yield device

        monkeypatch.setattr(_storage.Storage, "open_input", failing)

    return install


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("where", ["header", "voxels"])
def test_a_failing_device_raises_oserror_naming_the_file(tmp_path, rng, failing_device, where, threads):
    # Code that retries on OSError must see one: a device error is not a damaged file.
    data = rng.integers(-30000, 30000, (100, 100, 20)).astype(np.int16)  # 400 kB, incompressible
    path = write_nifti(tmp_path / "scan.nii.gz", data)
    failing_device(0 if where == "header" else 64 * 1024)
    with pytest.raises(OSError) as info:
        _pipeline.resample_file(path, str(tmp_path / "out"), (50, 50, 10), Options(), threads=threads)
    err = info.value
    assert not isinstance(err, ValueError), repr(err)
    assert err.errno == errno.EIO
    assert path in str(err) and "Input/output error" in str(err), str(err)
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")
    assert not [t for t in threading.enumerate() if t.name == "nidataset-read"]


def test_missing_and_forbidden_files_keep_their_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        _nifti.open_volume(str(tmp_path / "absent.nii.gz"))
    (tmp_path / "folder.nii.gz").mkdir()
    with pytest.raises(IsADirectoryError):
        _nifti.open_volume(str(tmp_path / "folder.nii.gz"))
    if os.geteuid() != 0:  # root reads anything
        locked = write_nifti(tmp_path / "locked.nii.gz", np.zeros((4, 4, 4), np.int16))
        os.chmod(locked, 0)
        with pytest.raises(PermissionError):
            _nifti.open_volume(locked)


def test_a_size_a_nifti1_header_cannot_hold_is_refused_before_any_work(tmp_path):
    src = write_nifti(tmp_path / "scan.nii.gz", np.zeros((4, 4, 4), np.int16))
    with pytest.raises(ValueError, match=r"scan\.nii\.gz'.* 40000 x 4 x 4 .* at most 32,767 voxels") as info:
        resampling(src, tmp_path / "out", (40000, 4, 4))
    assert not isinstance(info.value, InvalidVolumeError)  # the file is fine: the request is not
    assert not (tmp_path / "out").exists()
    assert nib.load(resampling(src, tmp_path / "out", (32767, 1, 1))).shape == (32767, 1, 1)


OUT_OF_MEMORY = """
import resource, sys
from nidataset import resampling

with open("/proc/self/status") as status:
    size = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
limit = size + (2 << 30)  # 2 GiB more than the process has mapped: far less than the output needs
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
try:
    resampling(sys.argv[1], sys.argv[2], (1500, 1500, 1500), threads=int(sys.argv[3]))
except BaseException as err:
    print(type(err).__module__, type(err).__qualname__)
    print(err)
"""


@pytest.mark.parametrize("threads", [1, 2])
def test_an_output_too_large_for_memory_names_the_file_and_what_it_needs(tmp_path, threads):
    # 1600^3 int16 voxels shrunk to 1500^3: the output (6.3 GiB) is held whole for the clip. The input is
    # a sparse file whose header and gzip trailer agree with the claim; nothing of it is read before
    # the output would be allocated.
    header = nib.Nifti1Header()
    header.set_data_dtype(np.int16)
    header.set_data_shape((1600, 1600, 1600))
    header["vox_offset"] = 352
    claimed = 352 + 1600**3 * 2
    path = tmp_path / "huge.nii.gz"
    with open(path, "wb") as file:
        file.write(gzip.compress(header.binaryblock + b"\0" * 4 + b"\0" * 4096))
        file.truncate(claimed // 1000)  # sparse: no disk used
        file.seek(0, os.SEEK_END)
        file.write(b"\0" * 4 + (claimed % 2**32).to_bytes(4, "little"))  # CRC (unused), ISIZE
    done = subprocess.run(
        [sys.executable, "-c", OUT_OF_MEMORY, str(path), str(tmp_path / "out"), str(threads)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    kind, message = done.stdout.strip().split("\n")
    assert kind == "builtins MemoryError", done.stdout  # not numpy's _ArrayMemoryError
    assert message.startswith(f"not enough memory to resample '{path}' from "), message
    assert "1600 x 1600 x 1600" in message and "1500 x 1500 x 1500" in message, message
    needed = float(re.search(r"needs about ([\d.]+) GiB", message).group(1))
    assert 1500**3 * 2 / 2**30 <= needed < 2 * 1500**3 * 2 / 2**30, message
    assert not (tmp_path / "out").exists()  # nothing left: not even the folder the call created


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("vox_offset", 352, r"its voxels start at byte 352 \(vox_offset\), within the 544-byte header"),
        ("datatype", 2048, r"its voxel type \(datatype 2048, complex256\) is not supported"),
        ("scl_inter", np.inf, r"its scaling has a slope of 3 but an intercept of inf"),
    ],
)
def test_nifti2_headers_are_checked_the_same_way(tmp_path, field, value, reason):
    header = nib.Nifti2Header()
    header.set_data_dtype(np.int16)
    header.set_data_shape((6, 5, 4))
    header["vox_offset"] = 544
    header["scl_slope"] = 3.0
    header[field] = value
    path = tmp_path / "two.nii.gz"
    path.write_bytes(gzip.compress(header.binaryblock + b"\0" * 4 + np.zeros(120, np.int16).tobytes()))
    with pytest.raises(
        InvalidVolumeError, match=rf"^'.*two\.nii\.gz' is not a readable NIfTI file: {reason}"
    ):
        resampling(path, tmp_path / "out", (3, 3, 3))
    assert not (tmp_path / "out").exists()


def test_a_gzip_header_too_large_for_the_reader_is_an_invalid_volume(tmp_path):
    # A valid gzip member whose header carries a 5 MB comment (FCOMMENT): ISA-L's reader refuses it
    # with an OverflowError of its own, which must not escape raw.
    import struct
    import zlib

    header = nib.Nifti1Header()
    header.set_data_dtype(np.int16)
    header.set_data_shape((8, 8, 8))
    header["vox_offset"] = 352
    raw = header.binaryblock + b"\0" * 4 + np.zeros(512, np.int16).tobytes()
    squeezer = zlib.compressobj(6, zlib.DEFLATED, -15)
    body = squeezer.compress(raw) + squeezer.flush()
    start = b"\x1f\x8b\x08\x10\0\0\0\0\0\xff" + b"c" * (5 << 20) + b"\0"  # FLG.FCOMMENT, then the comment
    path = tmp_path / "comment.nii.gz"
    path.write_bytes(start + body + struct.pack("<II", zlib.crc32(raw), len(raw)))
    with pytest.raises(InvalidVolumeError, match=r"'.*comment\.nii\.gz' is not a readable NIfTI file"):
        resampling(path, tmp_path / "out", (4, 4, 4))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("field", ["sform", "pixdim"])
def test_an_output_header_that_would_overflow_is_refused_before_any_work(tmp_path, field):
    # Spacing near float32's limit, shrunk 3-fold: the output's spacing (or affine) would not fit in the
    # header's float32 fields (nibabel would write inf, a file this library then refuses to read).
    big = np.float32(3e38)
    fields = (
        [("srow_x", 0, big), ("srow_y", 1, big), ("srow_z", 2, big), ("qform_code", 0)]
        if field == "sform"
        else [("pixdim", 1, big), ("sform_code", 0), ("qform_code", 0)]
    )
    path = hostile(tmp_path / "huge.nii.gz", fields, shape=(12, 12, 12))
    with pytest.raises(InvalidVolumeError, match=r"'.*huge\.nii\.gz' .*does not fit in the header"):
        resampling(path, tmp_path / "out", (4, 4, 4))
    assert not (tmp_path / "out").exists()
