"""`resampling()`: arguments, errors, output naming, atomic writes, and what it prints and logs."""

import gzip
import logging
import os
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import nidataset as nid
from helpers import write_nifti
from nidataset import _engine, _nifti, _pipeline
from nidataset._options import Options
from nidataset.preprocessing import InvalidVolumeError, resampling


@pytest.fixture
def scan(tmp_path):
    return write_nifti(
        tmp_path / "scans" / "scan_042.nii.gz", np.arange(6 * 5 * 4, dtype=np.int16).reshape(6, 5, 4)
    )


def listing(folder):
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*"))


def test_returns_output_path_and_names_it_after_the_input(scan, tmp_path):
    out = resampling(scan, str(tmp_path / "a" / "b"), (3, 3, 3))
    assert isinstance(out, str)
    assert out == os.path.join(str(tmp_path / "a" / "b"), "scan_042_resampled.nii.gz")
    assert nib.load(out).shape == (3, 3, 3)


def test_empty_output_path_is_the_current_folder(scan, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resampling(scan, "", (3, 3, 3)) == "scan_042_resampled.nii.gz"
    assert (tmp_path / "scan_042_resampled.nii.gz").is_file()


def test_top_level_alias_and_pathlike(scan, tmp_path):
    assert nid.resampling is resampling
    out = nid.resampling(Path(scan), tmp_path / "out", (4, 4, 4))
    assert Path(out).is_file()


@pytest.mark.parametrize(
    "size",
    [(7, 6, 5), [7, 6, 5], np.array([7, 6, 5]), (np.int64(7), np.int32(6), np.uint8(5)), range(5, 8)],
)
def test_accepts_python_and_numpy_integers(scan, tmp_path, size):
    out = resampling(scan, tmp_path / "out", size)
    assert nib.load(out).shape == tuple(int(n) for n in size)


@pytest.mark.parametrize(
    "size",
    [
        (7, 6),
        (7, 6, 5, 4),
        (0, 6, 5),
        (7, -6, 5),
        (7.0, 6, 5),
        (7, 6, 5.5),
        (True, 6, 5),
        (7, np.bool_(True), 5),
        ("7", "6", "5"),
        "765",
        None,
        5,
        np.array([7.0, 6.0, 5.0]),
        {"x": 7, "y": 6, "z": 5},
    ],
)
def test_rejects_anything_but_three_positive_integers(scan, tmp_path, size):
    with pytest.raises(ValueError, match=r"desired_volume must be three positive integers \(X, Y, Z\), got"):
        resampling(scan, tmp_path / "out", size)
    assert not (tmp_path / "out").exists()


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"'.*missing\.nii\.gz' does not exist"):
        resampling(tmp_path / "missing.nii.gz", tmp_path / "out", (2, 2, 2))
    with pytest.raises(
        IsADirectoryError, match=r"'.*' is a folder, not a '\.nii\.gz' file \(resampling_dataset"
    ):
        resampling(tmp_path, tmp_path / "out", (2, 2, 2))  # a folder is not a file
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["scan.nii", "scan.txt", "scan.nii.gz.bak", "scan.gz", "scan"])
def test_rejects_names_not_ending_in_nii_gz(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"whatever")
    with pytest.raises(ValueError, match=rf"must be a '\.nii\.gz' file, got '.*{name}'") as info:
        resampling(path, tmp_path / "out", (2, 2, 2))
    assert ("'.nii' is uncompressed NIfTI: gzip it first" in str(info.value)) == name.endswith(".nii")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("shape", "shown"),
    [((6, 5), r"\(6, 5\)"), ((6, 5, 4, 2), r"\(6, 5, 4, 2\)"), ((6, 5, 1, 3), r"\(6, 5, 1, 3\)")],
)
def test_rejects_volumes_that_are_not_3d(tmp_path, shape, shown):
    src = write_nifti(tmp_path / "vol.nii.gz", np.zeros(shape, np.float32))
    with pytest.raises(
        InvalidVolumeError, match=rf"'.*vol\.nii\.gz' is not a 3D volume: its shape is {shown}"
    ):
        resampling(src, tmp_path / "out", (2, 2, 2))
    assert not (tmp_path / "out").exists()


def test_rejects_complex_voxels(tmp_path):
    src = write_nifti(tmp_path / "vol.nii.gz", np.zeros((3, 3, 3), np.complex64))
    with pytest.raises(InvalidVolumeError, match=r"'.*vol\.nii\.gz' holds complex64 voxels"):
        resampling(src, tmp_path / "out", (2, 2, 2))


def corrupt_files(tmp_path):
    good = Path(
        write_nifti(tmp_path / "good.nii.gz", np.arange(4000, dtype=np.int16).reshape(20, 20, 10))
    ).read_bytes()
    yield "truncated.nii.gz", good[: len(good) // 2]
    yield "header-only.nii.gz", gzip.compress(gzip.decompress(good)[:352])
    yield "not-gzip.nii.gz", b"plain text, not gzip"
    yield "not-nifti.nii.gz", gzip.compress(b"x" * 1000)
    yield "empty.nii.gz", b""


@pytest.mark.parametrize("case", range(5))
def test_corrupt_files_name_the_file(tmp_path, case):
    name, payload = list(corrupt_files(tmp_path))[case]
    path = tmp_path / name
    path.write_bytes(payload)
    with pytest.raises(ValueError, match=rf"'.*{name}' is not a readable NIfTI file") as info:
        resampling(path, tmp_path / "out", (5, 5, 5))
    assert isinstance(info.value, InvalidVolumeError)
    assert not (tmp_path / "out").exists()


def test_debug_prints_exactly_the_saved_path(scan, tmp_path, capsys):
    out = resampling(scan, str(tmp_path / "processed") + "/", (3, 3, 3), debug=True)
    assert capsys.readouterr().out == f"Resampled image saved at: '{out}'\n"
    assert out == str(tmp_path / "processed") + "/scan_042_resampled.nii.gz"


def test_silent_without_debug_and_leaves_logging_alone(scan, tmp_path, capsys):
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    resampling(scan, tmp_path / "out", (3, 3, 3))
    resampling(scan, tmp_path / "out", (3, 3, 3), debug=True)
    captured = capsys.readouterr()
    assert captured.err == ""
    assert captured.out.count("\n") == 1  # only the debug call printed
    assert root.handlers == handlers and root.level == level
    assert logging.getLogger("nidataset").level == logging.NOTSET


def test_logs_through_module_loggers(scan, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="nidataset"):
        resampling(scan, tmp_path / "out", (3, 3, 3))
    assert [r.name for r in caplog.records] == ["nidataset._pipeline"]
    assert "scan_042" in caplog.records[0].getMessage()


@pytest.mark.parametrize("interpolation", ["bspline", "linear"])
def test_volumes_streamed_in_many_slabs_give_the_engine_values(tmp_path, monkeypatch, rng, interpolation):
    # Slabs of 2 slices, in two buffers taking turns: a buffer refilled too early would change values.
    data = np.asfortranarray(rng.integers(-1000, 3000, (20, 30, 17)).astype(np.int16))
    src = write_nifti(tmp_path / "big.nii.gz", data)
    assert _engine.slab_rows(data.T.shape, 2 * 30 * 20) == 2
    out = _pipeline.resample_file(
        src, str(tmp_path / "out"), (13, 41, 9), Options(interpolation), slab_values=2 * 30 * 20
    )
    order = {"bspline": 3, "linear": 1}[interpolation]
    expected = _engine.resize(data, (13, 41, 9), order=order, output_dtype=np.int16)
    np.testing.assert_array_equal(np.asanyarray(nib.load(out).dataobj), expected)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("size", [(9, 9, 9), (40, 60, 30)])  # output held, or input held
@pytest.mark.parametrize("where", [0.5, 0.97])
def test_data_corrupt_past_the_first_slabs_names_the_file(tmp_path, rng, where, size, threads):
    # The header and the size in the gzip trailer are right; the damage shows only once slabs are being
    # computed (a bad deflate block, or the checksum at the end).
    good = Path(write_nifti(tmp_path / "good.nii.gz", rng.integers(0, 3000, (20, 30, 17)).astype(np.int16)))
    damaged = bytearray(good.read_bytes())
    spot = int(len(damaged) * where)
    damaged[spot : spot + 8] = bytes(255 - b for b in damaged[spot : spot + 8])
    path = tmp_path / "damaged.nii.gz"
    path.write_bytes(damaged)
    with pytest.raises(InvalidVolumeError, match=r"'.*damaged.nii.gz' is not a readable NIfTI file"):
        _pipeline.resample_file(
            str(path), str(tmp_path / "out"), size, Options(), threads=threads, slab_values=1200
        )
    assert listing(tmp_path / "out") == []
    assert not [t for t in threading.enumerate() if t.name == "nidataset-read"]  # the reader has ended


def test_output_is_standard_gzip(scan, tmp_path):
    out = resampling(scan, tmp_path / "out", (3, 3, 3))
    with gzip.open(out, "rb") as stream:  # Python's own zlib reads it
        raw = stream.read()
    assert len(raw) == 352 + 27 * 2


def test_rerun_overwrites_the_output(scan, tmp_path):
    first = resampling(scan, tmp_path / "out", (3, 3, 3))
    second = resampling(scan, tmp_path / "out", (2, 2, 2))
    assert first == second and nib.load(second).shape == (2, 2, 2)
    assert listing(tmp_path / "out") == ["scan_042_resampled.nii.gz"]


class TestAtomicWrite:
    def test_temporary_file_is_hidden_and_renamed(self, scan, tmp_path, monkeypatch):
        renames = []
        real_replace = os.replace

        def spy(src, dst):
            renames.append((os.path.basename(src), dst))
            real_replace(src, dst)

        monkeypatch.setattr(_nifti.os, "replace", spy)
        out = resampling(scan, tmp_path / "out", (3, 3, 3))
        [(temp, final)] = renames
        assert final == out
        assert temp.startswith(".") and not temp.endswith(".nii.gz")
        assert os.path.dirname(final) == str(tmp_path / "out")  # same folder: the rename is atomic

    def test_a_failure_while_writing_leaves_nothing(self, scan, tmp_path, monkeypatch):
        real_fdopen = os.fdopen

        class FullDisk:  # the temporary file, on a disk that fills up at the first write
            def __init__(self, stream):
                self.stream = stream

            def write(self, data):
                raise OSError(28, "No space left on device")

            def __getattr__(self, name):
                return getattr(self.stream, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.stream.close()

        monkeypatch.setattr(
            _nifti.os, "fdopen", lambda fd, *args, **kwargs: FullDisk(real_fdopen(fd, *args, **kwargs))
        )
        with pytest.raises(OSError, match="No space left on device while writing") as info:
            resampling(scan, tmp_path / "out", (3, 3, 3))
        assert listing(tmp_path / "out") == []
        # The error names the output (not the hidden temporary file, nor no file at all), keeps its errno.
        assert info.value.filename == str(tmp_path / "out" / "scan_042_resampled.nii.gz")
        assert info.value.errno == 28

    def test_a_failure_keeps_the_previous_output_intact(self, scan, tmp_path, monkeypatch):
        out = resampling(scan, tmp_path / "out", (3, 3, 3))
        before = Path(out).read_bytes()
        monkeypatch.setattr(_nifti.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(5, "I/O error")))
        with pytest.raises(OSError, match="I/O error"):
            resampling(scan, tmp_path / "out", (4, 4, 4))
        assert Path(out).read_bytes() == before
        assert listing(tmp_path / "out") == ["scan_042_resampled.nii.gz"]

    def test_written_file_has_ordinary_permissions(self, scan, tmp_path):
        umask = os.umask(0o022)
        try:
            out = resampling(scan, tmp_path / "out", (3, 3, 3))
        finally:
            os.umask(umask)
        assert os.stat(out).st_mode & 0o777 == 0o644


def test_output_folder_that_cannot_be_created(scan, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("in the way")
    with pytest.raises(
        NotADirectoryError, match=r"cannot write in the output folder '.*file/out': '.*file' is not a folder"
    ):
        resampling(scan, blocker / "out", (3, 3, 3))
