"""The preview: anatomical planes whatever the storage order, world millimetres, letters, formats."""

import os
import sys

import nibabel as nib
import numpy as np
import pytest

from nidataset._nifti import MidPlanes, read_mid_planes
from nidataset._preview import anatomical_panels, write_preview

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))


def restored(image, codes):
    """`image` stored in the axis order and directions `codes` (same world, same voxels)."""
    now = nib.orientations.io_orientation(image.affine)
    return image.as_reoriented(nib.orientations.ornt_transform(now, nib.orientations.axcodes2ornt(codes)))


@pytest.fixture(scope="module")
def mni_t1(tmp_path_factory):
    from _data import mni

    try:
        path = mni("t1")  # nilearn's MNI152 T1 (fetched once from its wheel into benchmarks/.data)
    except Exception as err:  # pragma: no cover  # no package index reachable
        pytest.skip(f"the MNI152 T1 could not be fetched: {err}")
    return nib.load(path)


def test_mni_t1_restored_as_psl_shows_the_same_planes(mni_t1, tmp_path):
    image = nib.Nifti1Image(np.asanyarray(mni_t1.dataobj), mni_t1.affine)
    assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
    psl = restored(image, ("P", "S", "L"))
    assert nib.aff2axcodes(psl.affine) == ("P", "S", "L") and psl.shape == (233, 189, 197)
    paths = [tmp_path / "ras.nii.gz", tmp_path / "psl.nii.gz"]
    for path, img in zip(paths, (image, psl), strict=True):
        nib.save(img, path)
    ras_panels, psl_panels = (anatomical_panels(read_mid_planes(str(p))) for p in paths)
    for a, b in zip(ras_panels, psl_panels, strict=True):
        assert a.title == b.title
        np.testing.assert_array_equal(a.values, b.values)
        np.testing.assert_allclose(a.extent, b.extent, atol=1e-9)
        assert a.letters == b.letters
    # What the panels show: the axial plane is held along S (z = -72 + 94 mm), R-L across, A-P up.
    axial, coronal, sagittal = ras_panels
    assert axial.values.shape == (233, 197) and axial.letters == ("L", "R", "P", "A")
    np.testing.assert_allclose(axial.extent, (-98.5, 98.5, -134.5, 98.5))
    assert coronal.values.shape == (189, 197) and coronal.letters == ("L", "R", "I", "S")
    assert sagittal.values.shape == (189, 233) and sagittal.letters == ("P", "A", "I", "S")
    data = np.asanyarray(image.dataobj)
    np.testing.assert_array_equal(axial.values, data[:, :, 94].T)
    # The planes of the stored array axes are not the same pictures: the turn is the panels' doing.
    stored = read_mid_planes(str(paths[1])).planes()
    assert stored[2].shape != axial.values.shape and stored[2].T.shape != axial.values.shape


def test_oblique_and_flipped_small_volume():
    header = nib.Nifti1Header()
    header.set_data_shape((3, 4, 5))
    header.set_data_dtype(np.float32)
    turn = np.array([[0.0, 0.0, -2.0, 10.0], [0.1, 1.0, 0.0, -5.0], [1.5, 0.0, 0.0, 0.0], [0, 0, 0, 1]])
    header.set_sform(turn, code=1)  # array axes: S (mostly), A, L
    volume = MidPlanes(header)
    data = np.arange(60, dtype=np.float32).reshape(5, 4, 3)  # Z, Y, X as stored
    volume.add(data)
    axial, coronal, sagittal = anatomical_panels(volume)
    x = data.T  # [i, j, k]: i ~ S, j ~ A, k ~ L (k grows to the left)
    # axial: held i (S) at 1; across = world x (R grows with -k): k reversed; up = A = j
    np.testing.assert_array_equal(axial.values, x[1, :, ::-1])
    assert axial.letters == ("L", "R", "P", "A")
    np.testing.assert_allclose(axial.extent[:2], (10 - 2 * 4.5, 10 + 2 * 0.5))  # k = 4 .. 0, voxel edges
    np.testing.assert_array_equal(coronal.values, x[:, 2, ::-1])  # up = S = i
    np.testing.assert_array_equal(sagittal.values, x[:, :, 2])  # across = A = j, up = S = i


@pytest.mark.parametrize(
    ("suffix", "magic"), [(".png", b"\x89PNG"), (".pdf", b"%PDF"), (".svg", b"<?xml"), (".jpg", b"\xff\xd8")]
)
def test_the_suffix_chooses_the_format(tmp_path, suffix, magic, volume):
    pytest.importorskip("matplotlib")
    path, _ = volume
    planes = read_mid_planes(str(path))
    picture = write_preview(planes, planes, str(tmp_path / f"p{suffix}"), names=("v.nii.gz", "v.nii.gz"))
    with open(picture, "rb") as file:
        assert file.read(len(magic)) == magic
    with pytest.raises(ValueError, match=r"'.*p\.gif': a preview is written as \.png, .*not '\.gif'"):
        write_preview(planes, planes, str(tmp_path / "p.gif"))
    assert sorted(os.listdir(tmp_path)) == sorted(["v.nii.gz", f"p{suffix}"])


def test_values_at_float64_limits_draw_without_overflow(tmp_path):
    pytest.importorskip("matplotlib")
    from helpers import write_nifti
    from nidataset import resampling

    limit = np.finfo(np.float64).max
    data = np.full((8, 9, 6), -limit)
    data[:, :, 3:] = limit
    data[2, 3, 1] = 0.0
    src = write_nifti(tmp_path / "edge.nii.gz", data)
    resampling(src, tmp_path / "out", (5, 6, 4), preview=True)  # warnings are errors in this suite
    assert (tmp_path / "out" / "edge_preview.png").stat().st_size > 0


def test_sheared_axes_each_get_their_own_world_axis():
    # Columns (0, 1, 0.9) and (0, 1, -0.5) both lean most to A: the first takes S (its second best) as
    # nibabel's io_orientation decides, and every panel keeps a proper extent.
    header = nib.Nifti1Header()
    header.set_data_shape((4, 5, 6))
    header.set_data_dtype(np.int16)
    affine = np.array([[0, 0, 1.0, 0], [1, 1, 0, 0], [0.9, -0.5, 0, 0], [0, 0, 0, 1]])
    header.set_sform(affine, code=1)
    volume = MidPlanes(header)
    volume.add(np.zeros((6, 5, 4), np.int16))
    panels = anatomical_panels(volume)
    expected = nib.orientations.io_orientation(affine)[:, 0].astype(int).tolist()  # world axis per array axis
    assert [p.values.shape for p in panels] == [
        (volume.shape[expected.index(1)], volume.shape[expected.index(0)]),  # axial: A up, R across
        (volume.shape[expected.index(2)], volume.shape[expected.index(0)]),  # coronal: S up, R across
        (volume.shape[expected.index(2)], volume.shape[expected.index(1)]),  # sagittal: S up, A across
    ]
    assert all(p.extent[0] != p.extent[1] and p.extent[2] != p.extent[3] for p in panels)
