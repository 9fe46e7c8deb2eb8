"""World geometry of the output: compared exactly (to the float32 the NIfTI header stores)."""

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from helpers import write_nifti
from nidataset import resampling
from nidataset._geometry import resized_affine, resized_zooms

OLD, NEW = (30, 26, 14), (12, 40, 9)
SCALE = np.array([*(np.array(OLD) / np.array(NEW)), 1.0])


def oblique(angles=(10, -20, 35), zooms=(0.7, 0.8, 2.5), origin=(-50.5, 30.25, 10.0), flip=False):
    affine = np.eye(4)
    rotation = Rotation.from_euler("xyz", angles, degrees=True).as_matrix()
    if flip:
        rotation = rotation @ np.diag([-1, 1, 1])
    affine[:3, :3] = rotation * zooms
    affine[:3, 3] = origin
    return affine


SHEARED = np.array([[0.7, 0.1, 0.0, -50.0], [-0.1, 0.69, 0.05, 30.0], [0.0, -0.05, 2.5, 10.0], [0, 0, 0, 1]])
AFFINES = {
    "axis-aligned": np.diag([0.75, 0.75, 1.25, 1.0]),
    "oblique": oblique(),
    "oblique-flipped": oblique(flip=True),
    "sheared": SHEARED,
}


def run(tmp_path, affine, **kwargs):
    src = write_nifti(tmp_path / "in.nii.gz", np.zeros(OLD, np.int16), affine, **kwargs)
    out = resampling(src, tmp_path / "out", NEW)
    return nib.load(src), nib.load(out)


@pytest.mark.parametrize("name", AFFINES)
def test_affine_is_input_affine_times_scale(tmp_path, name):
    before, after = run(tmp_path, AFFINES[name])
    f32 = np.float32
    # The sform is stored as float32: the output's is the float32 of the exact product.
    np.testing.assert_array_equal(
        after.header.get_sform().astype(f32), (before.header.get_sform() * SCALE).astype(f32)
    )
    np.testing.assert_array_equal(after.affine.astype(f32), (before.affine * SCALE).astype(f32))
    np.testing.assert_array_equal(after.affine[:3, 3], before.affine[:3, 3])  # origin, bit for bit
    np.testing.assert_array_equal(
        np.asarray(after.header.get_zooms(), f32),
        (np.asarray(before.header.get_zooms(), np.float64) * SCALE[:3]).astype(f32),
    )
    # Field of view preserved.
    np.testing.assert_allclose(
        np.multiply(after.shape, after.header.get_zooms()),
        np.multiply(OLD, before.header.get_zooms()),
        rtol=1e-6,
    )


@pytest.mark.parametrize("name", ["axis-aligned", "oblique", "oblique-flipped"])
def test_qform_and_sform_both_written_and_agree(tmp_path, name):
    _, after = run(tmp_path, AFFINES[name])
    # The qform is stored as a float32 quaternion, so it agrees with the sform to float32 precision.
    np.testing.assert_allclose(after.header.get_qform(), after.header.get_sform(), rtol=0, atol=1e-5)
    assert (int(after.header["qform_code"]), int(after.header["sform_code"])) == (1, 1)


def test_sheared_qform_is_input_qform_times_scale(tmp_path):
    # A qform cannot hold shear: it is the input's qform (its shear stripped by nibabel), scaled.
    before, after = run(tmp_path, SHEARED)
    np.testing.assert_allclose(after.header.get_qform(), before.header.get_qform() * SCALE, rtol=0, atol=1e-5)


@pytest.mark.parametrize(("qcode", "scode"), [(1, 1), (0, 2), (2, 0), (4, 3)])
def test_codes_and_units_kept(tmp_path, qcode, scode):
    before, after = run(tmp_path, oblique(), qform_code=qcode, sform_code=scode, units=("micron", "msec"))
    assert int(after.header["qform_code"]) == qcode and int(after.header["sform_code"]) == scode
    assert after.header.get_xyzt_units() == ("micron", "msec")
    np.testing.assert_allclose(after.affine, before.affine * SCALE, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["axis-aligned", "oblique", "oblique-flipped"])
def test_simpleitk_reads_the_geometry_nibabel_reads(tmp_path, name):
    import SimpleITK as sitk

    _, after = run(tmp_path, AFFINES[name])
    image = sitk.ReadImage(str(tmp_path / "out" / "in_resampled.nii.gz"))
    source = sitk.ReadImage(str(tmp_path / "in.nii.gz"))
    lps = np.diag([-1.0, -1.0, 1.0])  # ITK's world is LPS, NIfTI's RAS
    zooms = np.asarray(after.header.get_zooms(), np.float64)
    np.testing.assert_allclose(image.GetOrigin(), lps @ after.affine[:3, 3], rtol=0, atol=1e-5)
    np.testing.assert_allclose(image.GetSpacing(), zooms, rtol=1e-6)
    np.testing.assert_allclose(
        np.reshape(image.GetDirection(), (3, 3)), lps @ after.affine[:3, :3] / zooms, atol=1e-6
    )
    # Origin and direction are the input's, as SimpleITK sees them; the spacing is scaled by old / new.
    np.testing.assert_array_equal(image.GetOrigin(), source.GetOrigin())
    np.testing.assert_allclose(image.GetDirection(), source.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(image.GetSpacing(), np.multiply(source.GetSpacing(), SCALE[:3]), rtol=1e-6)


def test_same_geometry_as_the_reference_resample(tmp_path):
    import SimpleITK as sitk

    run(tmp_path, oblique())
    source = sitk.ReadImage(str(tmp_path / "in.nii.gz"))
    spacing = np.multiply(source.GetSpacing(), SCALE[:3]).tolist()
    reference = sitk.Resample(
        source,
        list(NEW),
        sitk.Transform(),
        sitk.sitkBSpline,
        source.GetOrigin(),
        spacing,
        source.GetDirection(),
    )
    ours = sitk.ReadImage(str(tmp_path / "out" / "in_resampled.nii.gz"))
    assert ours.GetSize() == reference.GetSize()
    np.testing.assert_allclose(ours.GetOrigin(), reference.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(ours.GetSpacing(), reference.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(ours.GetDirection(), reference.GetDirection(), atol=1e-6)


def test_header_fields_and_extensions_kept(tmp_path):
    image = nib.Nifti1Image(np.ones(OLD, np.float32), oblique())
    image.header["descrip"] = b"phantom 42"
    image.header["intent_code"] = 1001
    image.header.set_dim_info(freq=0, phase=1, slice=2)
    image.header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"keep me"))
    nib.save(image, tmp_path / "in.nii.gz")
    after = nib.load(resampling(tmp_path / "in.nii.gz", tmp_path, NEW))
    assert after.header["descrip"].item() == b"phantom 42"
    assert int(after.header["intent_code"]) == 1001
    assert after.header.get_dim_info() == (0, 1, 2)
    assert [e.get_content() for e in after.header.extensions] == [b"keep me"]


@pytest.mark.parametrize("image_class", [nib.Nifti1Image, nib.Nifti2Image])
def test_slice_timing_kept_only_where_the_slices_are(tmp_path, image_class):
    """Slice timing follows the slice axis: kept when it keeps its size, cleared when it is resized."""
    image = image_class(np.ones(OLD, np.float32), oblique())
    image.header.set_dim_info(freq=0, phase=2, slice=1)
    image.header.set_slice_duration(0.05)
    image.header["slice_code"] = 3  # alternating, increasing
    image.header["slice_start"], image.header["slice_end"] = 1, OLD[1] - 2
    nib.save(image, tmp_path / "in.nii.gz")
    times = image.header.get_slice_times()

    (tmp_path / "in_plane").mkdir()
    kept = nib.load(resampling(tmp_path / "in.nii.gz", tmp_path / "in_plane", (NEW[0], OLD[1], NEW[2])))
    assert kept.header.get_slice_times() == times
    assert kept.header.get_dim_info() == (0, 2, 1)

    (tmp_path / "across").mkdir()
    resized = nib.load(resampling(tmp_path / "in.nii.gz", tmp_path / "across", NEW)).header
    fields = ("slice_code", "slice_start", "slice_end", "slice_duration")
    assert [float(resized[name]) for name in fields] == [0, 0, 0, 0]
    assert resized.get_dim_info() == (0, 2, 1)  # the axes keep their roles


def test_slice_timing_of_an_unknown_slice_axis_kept_only_without_resizing(tmp_path):
    image = nib.Nifti1Image(np.ones(OLD, np.float32), oblique())
    image.header["slice_code"], image.header["slice_end"] = 1, OLD[2] - 1
    image.header["slice_duration"] = 0.1  # (nibabel's setter wants a slice axis)
    nib.save(image, tmp_path / "in.nii.gz")
    (tmp_path / "same").mkdir()
    same = nib.load(resampling(tmp_path / "in.nii.gz", tmp_path / "same", OLD)).header
    assert (int(same["slice_code"]), int(same["slice_end"])) == (1, OLD[2] - 1)
    resized = nib.load(resampling(tmp_path / "in.nii.gz", tmp_path, NEW)).header
    assert [float(resized[name]) for name in ("slice_code", "slice_end", "slice_duration")] == [0, 0, 0]


def test_nifti2_in_nifti2_out(tmp_path):
    src = write_nifti(
        tmp_path / "in.nii.gz",
        np.arange(np.prod(OLD), dtype=np.float32).reshape(OLD),
        oblique(),
        image_class=nib.Nifti2Image,
    )
    after = nib.load(resampling(src, tmp_path / "out", NEW))
    assert isinstance(after, nib.Nifti2Image) and after.shape == NEW
    np.testing.assert_allclose(after.affine, nib.load(src).affine * SCALE, atol=1e-5)


def test_big_endian_input(tmp_path):
    data = np.arange(np.prod(OLD), dtype=np.int16).reshape(OLD)
    header = nib.Nifti1Header(endianness=">")
    image = nib.Nifti1Image(data.astype(">i2"), oblique(), header)
    image.set_data_dtype(">i2")
    nib.save(image, tmp_path / "in.nii.gz")
    after = nib.load(resampling(tmp_path / "in.nii.gz", tmp_path / "out", NEW))
    assert after.header.endianness == ">" and after.get_data_dtype() == np.dtype(">i2")
    little = write_nifti(tmp_path / "le" / "in.nii.gz", data, oblique())
    expected = nib.load(resampling(little, tmp_path / "le" / "out", NEW))
    np.testing.assert_array_equal(np.asanyarray(after.dataobj), np.asanyarray(expected.dataobj))


def test_trailing_singleton_dimensions_are_dropped(tmp_path):
    data = np.ones((*OLD, 1), np.float32)
    src = write_nifti(tmp_path / "in.nii.gz", data, oblique())
    after = nib.load(resampling(src, tmp_path / "out", NEW))
    assert after.shape == NEW and after.header["dim"][0] == 3


def test_output_is_standard_gzip_and_reproducible(tmp_path):
    src = write_nifti(tmp_path / "in.nii.gz", np.arange(np.prod(OLD), dtype=np.int16).reshape(OLD), oblique())
    first = Path(resampling(src, tmp_path / "a", NEW)).read_bytes()
    second = Path(resampling(src, tmp_path / "b", NEW)).read_bytes()
    assert first[:2] == b"\x1f\x8b" and first == second  # gzip magic; no time stamp or name inside
    raw = gzip.decompress(first)
    assert int.from_bytes(raw[:4], "little") == 348  # a NIfTI-1 header
    assert len(raw) == 352 + np.prod(NEW) * 2


def test_resized_affine_and_zooms_helpers():
    affine = oblique()
    out = resized_affine(affine, (10, 20, 30), (5, 40, 30))
    np.testing.assert_array_equal(out, affine @ np.diag([2.0, 0.5, 1.0, 1.0]))
    np.testing.assert_array_equal(resized_zooms((1.0, 2.0, 3.0), (10, 20, 30), (5, 40, 30)), [2.0, 1.0, 3.0])
    with pytest.raises(ValueError, match="4x4"):
        resized_affine(np.eye(3), (1, 1, 1), (1, 1, 1))
    with pytest.raises(ValueError, match="differ in length"):
        resized_zooms((1.0, 1.0, 1.0), (1, 1), (1, 1, 1))
