"""Resampling of label maps (segmentations): pure numpy, with scipy's ``find_objects`` for bounding boxes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._resize import _check, resample, sample_positions

__all__ = ["resize_labels"]

#: Values counted at a time when tallying the labels of an integer map.
_COUNT_CHUNK = 1 << 22


def resize_labels(labels: np.ndarray, shape: Sequence[int], *, align: str = "origin") -> np.ndarray:
    """Resize a label map: each output voxel takes the label whose interpolated one-hot map is largest.

    This is how nnU-Net resamples segmentations: every label's indicator (1 inside, 0 outside) is
    interpolated linearly on the new grid, and the largest one wins; ties go to the smaller label value.
    Shapes are followed more faithfully than by taking the nearest voxel, and only labels present in the
    input appear in the output.

    Parameters
    ----------
    labels : numpy.ndarray
        Integer (or float) label map of any number of dimensions.
    shape : sequence of int
        Output shape.
    align : {"origin", "center"}, optional
        Grid alignment, as for :func:`nidataset._resize.resize`.

    Returns
    -------
    numpy.ndarray
        Label map of `shape` and of the input's type.

    Notes
    -----
    No one-hot array of the whole volume is made. The most frequent label (the background) is not
    interpolated at all: linear interpolation keeps the indicators summing to 1, so its value is one minus
    the others'. Every other label is interpolated only within its bounding box, grown by one voxel. Memory
    is a few output-sized arrays, whatever the number of labels.

    Examples
    --------
    >>> import numpy as np
    >>> stripe = np.array([0, 0, 3, 3, 3, 0, 7, 7, 0, 0], dtype=np.uint8)
    >>> resize_labels(stripe, (5,))  # samples at 0, 2, 4, 6, 8
    array([0, 3, 3, 7, 0], dtype=uint8)
    >>> resize_labels(stripe, (5,), align="center")  # at 0.5, 2.5, 4.5 (a tie: 0 wins), 6.5, 8.5
    array([0, 3, 0, 7, 0], dtype=uint8)
    """
    labels = np.asarray(labels)
    if not (labels.flags.c_contiguous or labels.flags.f_contiguous):
        labels = np.ascontiguousarray(labels)
    shape = _check(labels, shape, 1, align)
    positions = [sample_positions(old, new, align) for old, new in zip(labels.shape, shape, strict=True)]
    values, counts, boxes = _labels_counts_and_boxes(labels)
    background = values[np.argmax(counts)]

    best = np.full(shape, -1.0)  # the largest interpolated indicator so far, among non-background labels
    others = np.zeros(shape)  # their sum: the background's indicator is 1 - others
    winner = np.full(shape, background, dtype=labels.dtype)
    for value, box in zip(values, boxes, strict=True):
        if value == background:
            continue
        region = _affected(box, positions, labels.shape)
        if region is None:
            continue  # no output sample comes near this label
        crop, out, rel = region
        indicator = resample((labels[crop] == value).astype(np.float64), rel, order=1, dtype=np.float64)
        others[out] += indicator
        top, won = best[out], winner[out]  # views into the output-sized arrays
        larger = indicator > top  # strictly: on ties the smaller label (seen first) keeps the voxel
        top[larger] = indicator[larger]
        won[larger] = value
    background_level = 1.0 - others
    background_wins = (background_level > best) | ((background_level == best) & (background < winner))
    winner[background_wins] = background
    return winner


def _affected(box: tuple[slice, ...], positions: Sequence[np.ndarray], size: Sequence[int]):
    """Input crop, output region and crop-relative positions where a label in `box` can be nonzero.

    A linearly interpolated indicator is nonzero only at positions strictly within one voxel of its box;
    the crop adds that voxel on each side (it holds none of the label), so that edges repeated by the
    interpolation are the array's own edges only.
    """
    crop, out, rel = [], [], []
    for axis, pos in enumerate(positions):
        first, last = box[axis].start, box[axis].stop - 1
        start = int(np.searchsorted(pos, first - 1, side="right"))
        stop = int(np.searchsorted(pos, last + 1, side="left"))
        if start >= stop:
            return None
        lo, hi = max(first - 1, 0), min(last + 2, size[axis])
        crop.append(slice(lo, hi))
        out.append(slice(start, stop))
        rel.append(pos[start:stop] - lo)
    return tuple(crop), tuple(out), rel


def _labels_counts_and_boxes(labels: np.ndarray):
    """Sorted label values, their voxel counts, and the bounding box (tuple of slices) of each."""
    from scipy import ndimage

    found = None
    if labels.dtype.kind in "iu":
        low, high = int(labels.min()), int(labels.max())
        if high - low < max(1 << 20, labels.size // 4):
            found = _rank_integers(labels, low, high - low + 1)
    if found is None:  # float labels, or integers spread over a huge range: sort
        values, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
        found = values, counts, inverse.reshape(labels.shape) + 1
    values, counts, rank = found
    if not rank.flags.c_contiguous and rank.flags.f_contiguous:  # NIfTI's order: scan it in memory order
        boxes = [box and box[::-1] for box in ndimage.find_objects(rank.T, max_label=len(values))]
    else:
        boxes = ndimage.find_objects(rank, max_label=len(values))
    return values, counts, boxes


def _rank_integers(labels: np.ndarray, low: int, span: int):
    """Values, counts and rank map (1 for the smallest value...) of integer labels in ``[low, low + span)``.

    Counting and ranking go a chunk at a time, shifted by `low` in int64: no overflow in the labels' type.
    """
    flat = labels.ravel(order="K")  # a view for C- or Fortran-ordered maps

    def shifted(start: int) -> np.ndarray:
        return flat[start : start + _COUNT_CHUNK].astype(np.int64) - low

    counts = np.zeros(span, dtype=np.int64)
    for start in range(0, flat.size, _COUNT_CHUNK):
        counts += np.bincount(shifted(start), minlength=span)
    present = np.flatnonzero(counts)
    lookup = np.zeros(span, dtype=np.min_scalar_type(len(present)))
    lookup[present] = np.arange(1, len(present) + 1)
    rank = np.empty_like(labels, dtype=lookup.dtype)  # same memory order as labels
    rank_flat = rank.ravel(order="K")
    for start in range(0, flat.size, _COUNT_CHUNK):
        rank_flat[start : start + _COUNT_CHUNK] = lookup[shifted(start)]
    return (present + low).astype(labels.dtype), counts[present], rank
