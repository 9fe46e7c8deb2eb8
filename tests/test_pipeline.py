"""The pipeline: every way through gives the engine's values, the same bytes on any number of threads and
from any thread, previews without a second read, and memory bounded by the smaller of the input and the
output."""

import errno
import hashlib
import logging
import os
import re
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import nibabel as nib
import numpy as np
import pytest

from helpers import write_nifti
from nidataset import _nifti, _pipeline, _storage
from nidataset._engine import resize
from nidataset._options import Options
from nidataset.preprocessing import resampling

SLAB = 3 * 30 * 20  # values per slab: 3 slices of the 20x30 plane, so every file takes many slabs


def stored(path):
    return np.asanyarray(nib.load(path).dataobj)


def digest(path):
    with open(path, "rb") as file:
        return hashlib.sha256(file.read()).hexdigest()


@pytest.mark.parametrize("interpolation", ["bspline", "linear", "nearest"])
@pytest.mark.parametrize(
    "size",
    [(13, 11, 9), (41, 50, 35), (40, 12, 30)],  # output held (smaller), input held (larger), mixed
)
@pytest.mark.parametrize("align", ["origin", "center"])
def test_every_way_through_gives_the_engine_values(volume, tmp_path, interpolation, size, align):
    src, data = volume
    options = Options(interpolation, align=align)
    out = _pipeline.resample_file(src, str(tmp_path / "out"), size, options, slab_values=SLAB)
    expected = resize(data, size, order=options.order, align=align, output_dtype=np.int16)
    np.testing.assert_array_equal(stored(out), expected)


@pytest.mark.parametrize("size", [(9, 8, 7), (41, 50, 35)])
def test_non_finite_volumes_stream_their_output(tmp_path, rng, size):
    data = np.asfortranarray(rng.standard_normal((20, 30, 17)).astype(np.float32))
    data[3:5, 10:12, 15] = np.nan
    data[0:2, 0:2, 0:2] = -np.inf  # output voxel (0, 0, 0) samples input voxel (0, 0, 0)
    src = write_nifti(tmp_path / "nan.nii.gz", data)
    out = _pipeline.resample_file(src, str(tmp_path / "out"), size, Options(), slab_values=SLAB)
    expected = resize(data, size, output_dtype=np.float32)
    np.testing.assert_array_equal(stored(out), expected)  # NaN where expected has NaN, too
    assert np.isnan(stored(out)).any() and np.isneginf(stored(out)).any()


@pytest.mark.parametrize(
    ("interpolation", "size"),
    [
        ("bspline", (41, 25, 9)),  # output held
        ("bspline", (45, 70, 40)),  # input held: growing axes computed on the call's threads, in order
        ("linear", (45, 70, 40)),
        ("nearest", (41, 25, 9)),
        ("label", (45, 70, 40)),
    ],
)
def test_same_bytes_on_any_number_of_threads_and_from_any_thread(volume, tmp_path, interpolation, size):
    src, _ = volume
    outputs = []
    for threads in (1, 2, 3):
        folder = tmp_path / f"t{threads}"
        outputs.append(resampling(src, folder, size, interpolation=interpolation, threads=threads))
    with ThreadPoolExecutor(2) as pool:  # worker threads, the default thread count there
        outputs += pool.map(
            lambda k: resampling(src, tmp_path / f"pool{k}", size, interpolation=interpolation),
            range(4),
        )
    assert len({digest(path) for path in outputs}) == 1


def test_threads_policy_is_passed_down(volume, tmp_path, monkeypatch):
    # The call's thread count reaches the pipeline: a reading thread only with 2 or more, none with 1.
    src, _ = volume
    started = []
    real_start = threading.Thread.start

    def spy(self):
        started.append(self.name)
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", spy)
    resampling(src, tmp_path / "one", (9, 9, 9), threads=1)
    one = list(started)
    started.clear()
    resampling(src, tmp_path / "two", (9, 9, 9), threads=2)
    assert "nidataset-read" not in one and "nidataset-read" in started


def test_preview_takes_the_planes_from_the_slabs_without_a_second_read(volume, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    src, data = volume
    opened = []
    real_open = _storage.Storage.open_input

    def spy(self, path, block=_storage.STREAM_BLOCK):
        if block == _storage.STREAM_BLOCK:  # voxels, not a header
            opened.append(os.fspath(path))
        return real_open(self, path, block)

    monkeypatch.setattr(_storage.Storage, "open_input", spy)
    out = resampling(src, tmp_path / "out", (9, 41, 8), preview=True)
    assert opened == [src]  # the input's voxels once; the output never read back
    # The planes drawn are the volumes' own mid-planes.
    planes = _nifti.read_mid_planes(src).planes()
    np.testing.assert_array_equal(planes[0], data[10])
    np.testing.assert_array_equal(planes[1], data[:, 15])
    np.testing.assert_array_equal(planes[2], data[:, :, 8])
    assert _nifti.read_mid_planes(out).planes()[2].shape == (9, 41)


MEMORY = """
import resource, sys
import numpy as np
from nidataset.preprocessing import resampling

def peak():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))

resampling(sys.argv[1], sys.argv[2] + "/warm", (8, 8, 8), interpolation=sys.argv[3])  # imports, operators
base = peak()
resampling(sys.argv[1], sys.argv[2] + "/big", (400, 400, 400), interpolation=sys.argv[3])
print(base, peak())
"""


@pytest.mark.parametrize("interpolation", ["bspline", "nearest", "label"])
def test_memory_of_a_large_upsampling_is_bounded(tmp_path, interpolation):
    # 64^3 int16 -> 400^3: the output is 128 MB as int16 (256 MB as float32). Streaming it to the file,
    # the process grows by a window and a few slabs of a few MB each, not by the output.
    data = np.asfortranarray((np.indices((64, 64, 64)).sum(axis=0) % 7).astype(np.int16))
    src = write_nifti(tmp_path / "small.nii.gz", data)
    done = subprocess.run(
        [sys.executable, "-c", MEMORY, src, str(tmp_path), interpolation], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    base, peak = map(int, done.stdout.split())
    grown = (peak - base) / 2**20
    assert grown < 64, f"grew by {grown:.0f} MiB"
    assert nib.load(tmp_path / "big" / "small_resampled.nii.gz").shape == (400, 400, 400)


@pytest.mark.parametrize("size", [(9, 8, 7), (41, 50, 35)])
def test_preview_of_a_volume_with_nan_found_midway(tmp_path, rng, size):
    # The NaN shows up in a later slab: the slabs seen before it are seen again, once.
    pytest.importorskip("matplotlib")
    data = np.asfortranarray(rng.standard_normal((20, 30, 17)).astype(np.float32))
    data[5, 5, 14] = np.nan
    src = write_nifti(tmp_path / "nan.nii.gz", data)
    out = _pipeline.resample_file(src, str(tmp_path / "out"), size, Options(preview=True), slab_values=SLAB)
    np.testing.assert_array_equal(stored(out), resize(data, size, output_dtype=np.float32))
    assert (tmp_path / "out" / "nan_preview.png").is_file()


def test_skip_existing_keeps_an_output_that_matches_the_request(volume, tmp_path, caplog):
    src, _ = volume
    out = _pipeline.resample_file(src, str(tmp_path / "out"), (9, 8, 7), Options())
    before = os.stat(out)
    with caplog.at_level(logging.INFO, logger="nidataset"):
        again = _pipeline.resample_file(src, str(tmp_path / "out"), (9, 8, 7), Options(), skip_existing=True)
    assert again == out
    assert (os.stat(out).st_ino, os.stat(out).st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert [r.getMessage() for r in caplog.records] == [f"kept {out}"]


def big_endian(path, data):
    """Write `data` with a big-endian header and voxels (nibabel writes in the header's byte order)."""
    header = nib.Nifti1Header(endianness=">")
    header.set_data_dtype(data.dtype)
    image = nib.Nifti1Image(data, np.eye(4), header)
    nib.save(image, path)
    assert _nifti.open_volume(str(path)).dtype == np.dtype(data.dtype).newbyteorder(">")
    return str(path)


@pytest.mark.parametrize(
    ("existing", "reason"),
    [
        ("shape", r"its shape is \(9, 8, 6\), not \(9, 8, 7\)"),
        ("type", r"its data type is <f4, not <i2"),
        ("byte order", r"its data type is >i2, not <i2"),
        ("unreadable", r"it cannot be read \('.*v_resampled.nii.gz' is not a readable NIfTI file"),
    ],
)
def test_skip_existing_redoes_an_output_that_does_not_match(volume, tmp_path, caplog, existing, reason):
    src, data = volume
    folder = tmp_path / "out"
    target = folder / "v_resampled.nii.gz"
    folder.mkdir()
    if existing == "shape":
        write_nifti(target, np.zeros((9, 8, 6), np.int16))
    elif existing == "type":
        write_nifti(target, np.zeros((9, 8, 7), np.float32))
    elif existing == "byte order":
        big_endian(target, np.zeros((9, 8, 7), np.int16))
    else:
        target.write_bytes(b"\x1f\x8b a killed copy, not ours")
    with caplog.at_level(logging.INFO, logger="nidataset"):
        out = _pipeline.resample_file(src, str(folder), (9, 8, 7), Options(), skip_existing=True)
    np.testing.assert_array_equal(stored(out), resize(data, (9, 8, 7), output_dtype=np.int16))
    assert stored(out).dtype == np.dtype("<i2")
    fresh = _pipeline.resample_file(src, str(tmp_path / "fresh"), (9, 8, 7), Options())
    assert digest(out) == digest(fresh)
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert messages[0].startswith(f"redoing {out}: ") and re.search(reason, messages[0]), messages
    assert messages[1].startswith("resampled ")


def test_skip_existing_compares_with_a_big_endian_input(tmp_path, rng):
    # The type this run writes is the input's stored type, byte order included.
    data = rng.integers(-1000, 1000, (12, 10, 8)).astype(np.int16)
    src = big_endian(tmp_path / "be.nii.gz", data)
    out = _pipeline.resample_file(src, str(tmp_path / "out"), (6, 5, 4), Options())
    assert _nifti.open_volume(out).dtype == np.dtype(">i2")
    before = os.stat(out)
    _pipeline.resample_file(src, str(tmp_path / "out"), (6, 5, 4), Options(), skip_existing=True)
    assert os.stat(out).st_mtime_ns == before.st_mtime_ns


def test_an_output_name_too_long_for_its_file_system_is_refused_before_any_work(tmp_path):
    # The input's name fits; "_resampled" makes the output's one byte too long.
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    prefix = "p" * (limit + 1 - len("_resampled.nii.gz"))
    src = write_nifti(tmp_path / f"{prefix}.nii.gz", np.zeros((4, 4, 4), np.int16))
    with pytest.raises(OSError) as info:
        _pipeline.resample_file(src, str(tmp_path / "out"), (3, 3, 3), Options())
    assert info.value.errno == errno.ENAMETOOLONG
    assert info.value.filename == str(tmp_path / "out" / f"{prefix}_resampled.nii.gz")
    assert f"name is {limit + 1} bytes long, more than the {limit}" in str(info.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("interpolation", ["bspline", "nearest"])
@pytest.mark.parametrize("size", [(13, 11, 9), (41, 50, 35)])  # output held, input held
def test_a_call_asked_to_stop_stops_at_a_slab_and_leaves_nothing(volume, tmp_path, interpolation, size):
    # How a thread pool's files are interrupted: the event is set from another thread mid-run.
    src, _ = volume
    stop = threading.Event()
    checks = []
    real_check = _pipeline._Run._go_on

    def check(self):
        checks.append(self)
        if len(checks) == 3:  # two slabs in: asked to stop from now on
            stop.set()
        return real_check(self)

    options = Options(interpolation=interpolation)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_pipeline._Run, "_go_on", check)
        with pytest.raises(KeyboardInterrupt):
            _pipeline.resample_file(src, str(tmp_path / "out"), size, options, slab_values=SLAB, stop=stop)
    assert len(checks) == 3  # stopped at the slab it was asked at
    assert not (tmp_path / "out").exists()  # no output, no temporary file, no folder of its own
    out = _pipeline.resample_file(src, str(tmp_path / "out"), size, options, slab_values=SLAB)
    assert stored(out).shape == size
