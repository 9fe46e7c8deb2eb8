"""The keyword options of resampling(): interpolation, antialias, align, preview; and their CLI flags."""

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from helpers import sitk_resample, smooth_volume, write_nifti
from nidataset import resampling, resampling_dataset
from nidataset._engine import resize
from nidataset._labels import resize_labels
from nidataset.cli import main


@pytest.mark.parametrize(
    ("old", "new"), [((20, 17, 9), (7, 30, 9)), ((5, 6, 7), (11, 3, 14)), ((9, 8, 7), (20, 19, 15))]
)
def test_linear_matches_simpleitk(tmp_path, rng, old, new):
    data = smooth_volume(old, rng, np.float32, -100, 400)
    src = write_nifti(tmp_path / "in.nii.gz", data)
    out = nib.load(resampling(src, tmp_path / "out", new, interpolation="linear")).get_fdata()
    expected, inside = sitk_resample(src, new, "sitkLinear")
    np.testing.assert_allclose(out[inside], expected[inside], rtol=0, atol=1e-4 * 500)


@pytest.mark.parametrize(
    ("old", "new"), [((20, 17, 9), (7, 30, 9)), ((3, 6, 7), (2, 3, 14)), ((9, 8, 7), (20, 19, 15))]
)
def test_nearest_matches_simpleitk_and_keeps_values(tmp_path, rng, old, new):
    data = rng.integers(0, 30000, old).astype(np.uint16)
    src = write_nifti(tmp_path / "in.nii.gz", data)
    image = nib.load(resampling(src, tmp_path / "out", new, interpolation="nearest"))
    out = np.asanyarray(image.dataobj)
    expected, inside = sitk_resample(src, new, "sitkNearestNeighbor")
    assert image.get_data_dtype() == np.uint16
    np.testing.assert_array_equal(out[inside], expected[inside])
    assert np.isin(out, data).all()


def test_label_interpolation_on_a_mask(tmp_path):
    mask = np.zeros((40, 36, 20), dtype=np.int16)
    mask[5:20, 6:30, 3:15] = 4
    mask[22:34, 10:20, 8:18] = 9
    mask[25:28, 12:15, 10:12] = 17  # small: may vanish, never invented
    src = write_nifti(tmp_path / "mask.nii.gz", mask)
    image = nib.load(resampling(src, tmp_path / "out", (17, 15, 9), interpolation="label"))
    out = np.asanyarray(image.dataobj)
    assert image.get_data_dtype() == np.int16
    np.testing.assert_array_equal(out, resize_labels(mask, (17, 15, 9)))
    assert set(np.unique(out)) <= {0, 4, 9, 17} and {0, 4, 9} <= set(np.unique(out))


def test_antialias_is_applied(tmp_path, rng):
    data = rng.normal(0, 100, (48, 40, 20)).astype(np.float32)
    src = write_nifti(tmp_path / "in.nii.gz", data)
    plain = nib.load(resampling(src, tmp_path / "a", (12, 10, 20))).get_fdata()
    smooth = nib.load(resampling(src, tmp_path / "b", (12, 10, 20), antialias=True)).get_fdata()
    np.testing.assert_allclose(smooth, resize(data, (12, 10, 20), antialias=True), atol=1e-3)
    assert smooth.std() < 0.5 * plain.std()  # white noise above the new Nyquist limit is mostly removed


class TestCentredGrid:
    OLD, NEW = (30, 26, 14), (12, 40, 9)

    def affine(self):
        from test_geometry import oblique

        return oblique()

    def test_origin_moves_and_the_outer_edges_stay(self, tmp_path):
        src = write_nifti(tmp_path / "in.nii.gz", np.zeros(self.OLD, np.float32), self.affine())
        before = nib.load(src)
        after = nib.load(resampling(src, tmp_path / "out", self.NEW, align="center"))
        scale = np.array(self.OLD) / np.array(self.NEW)
        expected = before.affine.copy()
        expected[:3, :3] *= scale
        expected[:3, 3] = before.affine[:3, :3] @ ((scale - 1) / 2) + before.affine[:3, 3]
        np.testing.assert_allclose(after.affine, expected, rtol=0, atol=1e-5)
        np.testing.assert_allclose(
            after.header.get_zooms(), np.multiply(before.header.get_zooms(), scale), rtol=1e-6
        )
        for corner in np.ndindex(2, 2, 2):  # the outer corners of the first and last voxels
            old_edge = before.affine @ [*(np.where(corner, np.array(self.OLD) - 0.5, -0.5)), 1]
            new_edge = after.affine @ [*(np.where(corner, np.array(self.NEW) - 0.5, -0.5)), 1]
            np.testing.assert_allclose(new_edge, old_edge, atol=1e-4)

    def test_simpleitk_sees_the_moved_origin(self, tmp_path):
        import SimpleITK as sitk

        src = write_nifti(tmp_path / "in.nii.gz", np.zeros(self.OLD, np.float32), self.affine())
        out = resampling(src, tmp_path / "out", self.NEW, align="center")
        image, source = sitk.ReadImage(out), sitk.ReadImage(src)
        scale = np.array(self.OLD) / np.array(self.NEW)
        np.testing.assert_allclose(
            image.GetOrigin(), source.TransformContinuousIndexToPhysicalPoint((scale - 1) / 2), atol=1e-4
        )
        np.testing.assert_allclose(image.GetDirection(), source.GetDirection(), atol=1e-6)

    def test_values_are_those_of_the_centred_engine(self, tmp_path, rng):
        data = smooth_volume(self.OLD, rng, np.int16, -500, 1500)
        src = write_nifti(tmp_path / "in.nii.gz", data)
        for interpolation, order in (("bspline", 3), ("linear", 1), ("nearest", 0)):
            out = np.asanyarray(
                nib.load(
                    resampling(
                        src, tmp_path / interpolation, self.NEW, interpolation=interpolation, align="center"
                    )
                ).dataobj
            )
            stored = np.asfortranarray(data)  # as NIfTI stores it, so that the engine takes the same steps
            np.testing.assert_array_equal(
                out, resize(stored, self.NEW, order=order, align="center", output_dtype=np.int16)
            )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"interpolation": "cubic"},
            r"interpolation must be one of \('bspline', 'linear', 'nearest', 'label'\), got 'cubic'",
        ),
        ({"align": "corner"}, r"align must be one of \('origin', 'center'\), got 'corner'"),
        ({"antialias": "yes"}, "antialias must be True or False, got 'yes'"),
        (
            {"interpolation": "label", "antialias": True},
            "antialias applies to the bspline and linear interpolations, not to 'label'",
        ),
        ({"interpolation": "nearest", "antialias": True}, "not to 'nearest'"),
    ],
)
def test_bad_options_refused_before_any_work(tmp_path, kwargs, message):
    src = write_nifti(tmp_path / "scans" / "in.nii.gz", np.zeros((4, 4, 4), np.int16))
    with pytest.raises(ValueError, match=message):
        resampling(src, tmp_path / "out", (2, 2, 2), **kwargs)
    with pytest.raises(ValueError, match=message):
        resampling_dataset(tmp_path / "scans", tmp_path / "out", (2, 2, 2), **kwargs)
    assert not (tmp_path / "out").exists()


def test_dataset_passes_the_options_to_every_file(tmp_path, rng):
    folder = tmp_path / "masks"
    for i in range(3):
        write_nifti(folder / f"m{i}.nii.gz", rng.integers(0, 3, (10, 9, 8)).astype(np.uint8))
    outputs = resampling_dataset(
        folder, tmp_path / "out", (5, 6, 4), interpolation="label", align="center", workers=2, progress=False
    )
    for i, out in enumerate(outputs):
        single = resampling(
            folder / f"m{i}.nii.gz", tmp_path / "single", (5, 6, 4), interpolation="label", align="center"
        )
        assert Path(out).read_bytes() == Path(single).read_bytes()


class TestPreview:
    def test_written_beside_the_output(self, tmp_path):
        from matplotlib.image import imread

        from nidataset._phantom import ct_phantom

        data, affine = ct_phantom((64, 56, 30), (0.8, 0.8, 2.5))
        src = tmp_path / "ct.nii.gz"
        nib.save(nib.Nifti1Image(data, affine), src)
        resampling(src, tmp_path / "out", (32, 32, 16), preview=True)
        picture = tmp_path / "out" / "ct_preview.png"
        assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        height, width, _ = imread(picture).shape
        assert (width, height) == (1200, 850)
        assert sorted(os.listdir(tmp_path / "out")) == ["ct_preview.png", "ct_resampled.nii.gz"]

    def test_dataset_previews_in_case_folders(self, tmp_path, rng):
        folder = tmp_path / "scans"
        for name in ("a", "b"):
            write_nifti(folder / f"{name}.nii.gz", rng.integers(0, 100, (12, 10, 8)).astype(np.int16))
        resampling_dataset(folder, tmp_path / "out", (6, 5, 4), preview=True, progress=False)
        assert (tmp_path / "out" / "a" / "a_preview.png").is_file() and (
            tmp_path / "out" / "b" / "b_preview.png"
        ).is_file()

    def test_resampling_never_imports_matplotlib(self, tmp_path):
        src = write_nifti(tmp_path / "in.nii.gz", np.zeros((6, 6, 6), np.int16))
        code = (
            "import sys\nfrom nidataset import resampling, resampling_dataset\n"
            f"resampling({str(src)!r}, {str(tmp_path / 'out')!r}, (3, 3, 3), interpolation='label')\n"
            f"resampling_dataset({str(tmp_path)!r}, {str(tmp_path / 'ds')!r}, (3, 3, 3), progress=False)\n"
            "assert 'matplotlib' not in sys.modules, 'matplotlib was imported'\n"
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr

    def test_without_matplotlib_the_error_says_how_to_get_it(self, tmp_path, monkeypatch):
        src = write_nifti(tmp_path / "in.nii.gz", np.zeros((6, 6, 6), np.int16))
        monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes "import matplotlib" fail
        monkeypatch.delitem(sys.modules, "matplotlib.figure", raising=False)
        monkeypatch.delitem(sys.modules, "matplotlib.backends.backend_agg", raising=False)
        with pytest.raises(ImportError, match=r"preview=True needs matplotlib, .*: pip install matplotlib$"):
            resampling(src, tmp_path / "out", (3, 3, 3), preview=True)
        assert not (tmp_path / "out").exists()  # refused before any work
        with pytest.raises(ImportError, match=r"preview=True needs matplotlib"):
            resampling_dataset(tmp_path, tmp_path / "out", (3, 3, 3), preview=True, progress=False)
        assert not (tmp_path / "out").exists()


class TestCommandLine:
    @pytest.fixture
    def scan(self, tmp_path, rng):
        return write_nifti(tmp_path / "ct.nii.gz", smooth_volume((24, 20, 12), rng, np.int16, -1000, 1000))

    def test_flags_reach_the_engine(self, scan, tmp_path):
        argv = ["resample", scan, str(tmp_path / "cli"), "--size", "8", "9", "5"]
        assert main([*argv, "--interpolation", "linear", "--align", "center", "--antialias"]) == 0
        expected = resampling(
            scan, tmp_path / "api", (8, 9, 5), interpolation="linear", align="center", antialias=True
        )
        assert (tmp_path / "cli" / "ct_resampled.nii.gz").read_bytes() == Path(expected).read_bytes()

    def test_label_flag_on_a_folder(self, tmp_path, rng):
        folder = tmp_path / "masks"
        write_nifti(folder / "m.nii.gz", rng.integers(0, 4, (10, 10, 10)).astype(np.uint8))
        assert (
            main(
                [
                    "resample",
                    str(folder),
                    str(tmp_path / "out"),
                    "--size",
                    "4",
                    "4",
                    "4",
                    "--interpolation",
                    "label",
                ]
            )
            == 0
        )
        out = np.asanyarray(nib.load(tmp_path / "out" / "m" / "m_resampled.nii.gz").dataobj)
        np.testing.assert_array_equal(
            out, resize_labels(np.asanyarray(nib.load(folder / "m.nii.gz").dataobj), (4, 4, 4))
        )

    def test_preview_flag_and_command(self, scan, tmp_path):
        assert main(["resample", scan, str(tmp_path / "out"), "--size", "8", "8", "6", "--preview"]) == 0
        assert (tmp_path / "out" / "ct_preview.png").is_file()
        picture = tmp_path / "pictures" / "check.png"
        picture.parent.mkdir()
        assert main(["preview", scan, str(tmp_path / "out" / "ct_resampled.nii.gz"), "-o", str(picture)]) == 0
        assert picture.read_bytes()[:4] == b"\x89PNG"

    @pytest.mark.parametrize(
        ("argv", "message"),
        [
            (
                ["--interpolation", "label", "--antialias"],
                "antialias applies to the bspline and linear interpolations, not to 'label'",
            ),
            (["--interpolation", "cubic"], "invalid choice: 'cubic'"),
            (["--align", "corner"], "invalid choice: 'corner'"),
        ],
    )
    def test_usage_errors(self, scan, tmp_path, capsys, argv, message):
        with pytest.raises(SystemExit) as info:
            main(["resample", scan, str(tmp_path / "out"), "--size", "4", "4", "4", *argv])
        assert info.value.code == 2 and message in capsys.readouterr().err

    def test_preview_of_missing_files_is_a_usage_error(self, scan, tmp_path, capsys):
        with pytest.raises(SystemExit) as info:
            main(["preview", scan, str(tmp_path / "nothing.nii.gz"), "-o", str(tmp_path / "p.png")])
        assert info.value.code == 2 and "nothing.nii.gz' does not exist" in capsys.readouterr().err

    def test_preview_of_a_corrupt_file_fails_with_exit_1(self, scan, tmp_path, capsys):
        bad = tmp_path / "bad.nii.gz"
        bad.write_bytes(b"not a volume")
        assert main(["preview", scan, str(bad), "-o", str(tmp_path / "p.png")]) == 1
        assert "nidataset: failed:" in capsys.readouterr().err
        assert not (tmp_path / "p.png").exists()


def test_resume_draws_a_missing_preview_and_keeps_the_output(tmp_path, rng):
    folder = tmp_path / "scans"
    write_nifti(folder / "a.nii.gz", rng.integers(0, 100, (12, 10, 8)).astype(np.int16))
    resampling_dataset(folder, tmp_path / "out", (6, 5, 4), preview=True, progress=False)
    output, picture = tmp_path / "out" / "a" / "a_resampled.nii.gz", tmp_path / "out" / "a" / "a_preview.png"
    picture.unlink()  # as if the run had been killed between the volume and its picture
    before = os.stat(output)
    resampling_dataset(folder, tmp_path / "out", (6, 5, 4), preview=True, skip_existing=True, progress=False)
    assert picture.is_file()
    assert (os.stat(output).st_ino, os.stat(output).st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
