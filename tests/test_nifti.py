"""Hostile and damaged inputs: clear errors naming the file, no large allocation, nothing written outside."""

import errno
import gzip
import itertools
import os
import subprocess
import sys
import threading
import time

import nibabel as nib
import numpy as np
import pytest

from helpers import peak_allocation, write_nifti
from nidataset import InvalidVolumeError, resampling


def nifti_bytes(shape, payload, dtype=np.int16):
    """An uncompressed single-file NIfTI: a header claiming `shape`, followed by `payload` bytes."""
    header = nib.Nifti1Header()
    header.set_data_dtype(dtype)
    header.set_data_shape(shape)
    header["vox_offset"] = 352
    return header.binaryblock + b"\0" * 4 + payload


def test_header_claiming_petabytes_fails_at_once(tmp_path):
    path = tmp_path / "huge.nii.gz"
    path.write_bytes(gzip.compress(nifti_bytes((30_000, 30_000, 30_000), b"\0" * 1000)))
    start = time.perf_counter()
    with pytest.raises(
        InvalidVolumeError, match=r"'.*huge\.nii\.gz' .* claims 54,000,000,000,352 bytes, more than"
    ):
        resampling(path, tmp_path / "out", (2, 2, 2))
    assert time.perf_counter() - start < 2  # no decompression, no allocation: the file size rules it out
    assert not (tmp_path / "out").exists()


def test_plausible_claim_on_a_short_file_fails_before_allocating(tmp_path):
    # 1 MB of incompressible voxels under a header claiming 500 MB: the size bound cannot rule it out,
    # the gzip trailer disagrees, so the stream is counted (in a small buffer) before anything is allocated.
    payload = np.random.default_rng(0).bytes(1 << 20)
    path = tmp_path / "short.nii.gz"
    path.write_bytes(gzip.compress(nifti_bytes((500, 500, 1000), payload), compresslevel=1))
    errors = []

    def attempt():
        try:
            resampling(path, tmp_path / "out", (2, 2, 2))
        except InvalidVolumeError as err:
            errors.append(err)

    peak = peak_allocation(attempt)
    [err] = errors
    assert "short.nii.gz' is not a readable NIfTI file: its header claims 500,000,352 bytes" in str(err)
    assert "the file holds 1,048,928" in str(err)
    assert peak < 50e6  # far below the 500 MB the header describes


def test_truncated_gzip_stream_named(tmp_path):
    data = np.random.default_rng(1).integers(0, 1000, (40, 40, 40)).astype(np.int16)
    whole = gzip.compress(nifti_bytes(data.shape, data.tobytes(order="F")))
    path = tmp_path / "cut.nii.gz"
    path.write_bytes(whole[: len(whole) * 2 // 3])
    with pytest.raises(InvalidVolumeError, match=r"'.*cut\.nii\.gz' is not a readable NIfTI file"):
        resampling(path, tmp_path / "out", (2, 2, 2))


def test_multi_member_gzip_is_read_in_full(tmp_path):
    # Valid gzip may hold several members (as some tools write); the trailer then gives the last one only.
    data = np.random.default_rng(2).integers(-500, 500, (20, 18, 16)).astype(np.int16)
    raw = nifti_bytes(data.shape, data.tobytes(order="F"))
    path = tmp_path / "members.nii.gz"
    path.write_bytes(gzip.compress(raw[:5000]) + gzip.compress(raw[5000:]))
    reference = write_nifti(tmp_path / "single.nii.gz", data, np.eye(4), qform_code=0, sform_code=0)
    ours = nib.load(resampling(path, tmp_path / "a", (9, 9, 9))).get_fdata()
    expected = nib.load(resampling(reference, tmp_path / "b", (9, 9, 9))).get_fdata()
    np.testing.assert_array_equal(ours, expected)


def test_trailing_bytes_after_the_voxels_are_ignored(tmp_path):
    data = np.arange(8 * 7 * 6, dtype=np.float32).reshape(8, 7, 6)
    path = tmp_path / "trailing.nii.gz"
    path.write_bytes(gzip.compress(nifti_bytes(data.shape, data.tobytes(order="F") + b"junk", np.float32)))
    out = nib.load(resampling(path, tmp_path / "out", (8, 7, 6))).get_fdata()
    np.testing.assert_array_equal(out, data)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_output_folder_without_permission(tmp_path):
    src = write_nifti(tmp_path / "in.nii.gz", np.zeros((4, 4, 4), np.int16))
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(PermissionError, match=r"'.*locked/out'"):
        resampling(src, locked / "out", (2, 2, 2))
    with pytest.raises(PermissionError, match=r"'.*locked'"):
        resampling(src, locked, (2, 2, 2))  # exists, but cannot be written into


def test_output_folder_that_cannot_exist(tmp_path):
    # Works as root too: nothing can be created under /proc.
    src = write_nifti(tmp_path / "in.nii.gz", np.zeros((4, 4, 4), np.int16))
    with pytest.raises(OSError, match=r"cannot create the output folder '/proc/nidataset-test/out'"):
        resampling(src, "/proc/nidataset-test/out", (2, 2, 2))


FULL_DISK = """
import os, resource, signal, sys, threading
import nibabel as nib
import numpy as np
from nidataset._nifti import SlabWriter

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (400_000, 400_000))
header = nib.Nifti1Header()
header.set_data_dtype(np.int16)
header.set_data_shape((200, 200, 40))
data = np.random.default_rng(0).integers(0, 30000, (40, 200, 200)).astype(np.int16)  # 3.2 MB
target, threads, wait = os.path.join(sys.argv[1], "x.nii.gz"), int(sys.argv[2]), sys.argv[3] == "1"
try:
    with SlabWriter(target, header, threads=threads, wait=wait) as w:
        for k in range(0, 40, 4):
            w.write(data[k : k + 4])
except OSError as err:
    print(err.errno, sorted(os.listdir(sys.argv[1])), [t.name for t in threading.enumerate()])
"""


@pytest.mark.parametrize(("threads", "wait"), [(1, 1), (2, 0), (3, 0)])
def test_a_full_disk_raises_and_leaves_nothing(tmp_path, threads, wait):
    # The compressor raises the same error from write, flush and close: it must come out once, promptly.
    done = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(tmp_path), str(threads), str(wait)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(errno.EFBIG), "[]", "['MainThread']"]


def test_slabs_are_decompressed_without_a_large_temporary(tmp_path, rng):
    # gzip's readinto decompresses into a new bytes object, then copies: read in small chunks, so that no
    # temporary of a slab's size is made per slab (the allocator would map and fault it afresh each time).
    from nidataset import _nifti

    data = rng.integers(-1000, 1000, size=(128, 128, 128), dtype=np.int16)
    path = write_nifti(tmp_path / "a.nii.gz", data)
    source = _nifti.open_volume(str(path))
    buffer = np.empty((64, 128, 128), dtype=np.int16)  # 2 MiB slabs, allocated before tracing
    sums = []

    def read_all():
        for block in _nifti.read_slabs(source, 64, itertools.repeat(buffer)):
            sums.append(block.sum(axis=(1, 2), dtype=np.int64))  # 512 bytes per slab

    # What remains is the decompressors' state (about 0.6 MiB), not a slab's 2 MiB.
    assert peak_allocation(read_all) < 1 << 20
    np.testing.assert_array_equal(np.concatenate(sums), data.astype(np.int64).sum(axis=(0, 1)))


def test_a_deferred_writer_appears_only_once_committed_and_can_be_thrown_away(tmp_path):
    from nidataset._nifti import SlabWriter

    header = nib.Nifti1Header()
    header.set_data_dtype(np.int16)
    header.set_data_shape((4, 3, 2))
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    kept, thrown = tmp_path / "kept.nii.gz", tmp_path / "thrown.nii.gz"
    with SlabWriter(str(kept), header, deferred=True) as writer:
        writer.write(data)
    assert not kept.exists()  # compressed, not yet in place
    writer.commit()
    assert np.array_equal(np.asarray(nib.load(kept).dataobj).T, data)
    with pytest.raises(RuntimeError, match="no output waiting"):
        writer.commit()  # once only
    with SlabWriter(str(thrown), header, deferred=True) as other:
        other.write(data)
    other.abandon()
    assert sorted(os.listdir(tmp_path)) == ["kept.nii.gz"]  # no temporary file either
    with pytest.raises(RuntimeError, match="no output waiting"):
        other.commit()
    with (
        pytest.raises(ValueError, match="voxel bytes"),
        SlabWriter(str(thrown), header, deferred=True) as failed,
    ):
        failed.write(data[:1])
    with pytest.raises(RuntimeError, match="no output waiting"):
        failed.commit()  # a block that failed left nothing to commit
    SlabWriter(str(thrown), header, deferred=True).abandon()  # never opened: nothing to do
    assert sorted(os.listdir(tmp_path)) == ["kept.nii.gz"]


@pytest.mark.parametrize("call", range(1, 8))
def test_an_interrupt_in_the_compressor_stays_an_interrupt(tmp_path, monkeypatch, call):
    # Ctrl-C lands wherever Python code runs, isal's writer's `closed` property included. An
    # io.BufferedWriter over it asked it before every write and reported what it raised as
    # ValueError("write to closed file"): the file counted as failed and a dataset went on.
    from isal import igzip_threaded

    kind = igzip_threaded._ThreadedGzipWriter
    asked = []

    def closed(self):
        asked.append(1)
        if len(asked) == call:
            raise KeyboardInterrupt
        return self._closed

    monkeypatch.setattr(kind, "closed", property(closed))
    write_nifti(tmp_path / "a.nii.gz", np.ones((20, 20, 20), np.int16))
    out = tmp_path / "out"
    out.mkdir()
    threads = set(threading.enumerate())
    try:
        resampling(tmp_path / "a.nii.gz", out, (90, 90, 90), threads=1)
    except KeyboardInterrupt:
        assert os.listdir(out) == []  # nothing partial
    else:  # it landed where Python discards it (a finalizer's look at the closed file)
        assert os.listdir(out) == ["a_resampled.nii.gz"]
    assert set(threading.enumerate()) <= threads  # the compressor's threads ended with it
