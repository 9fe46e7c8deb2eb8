"""Resampling of label maps (segmentations), a slab of slices at a time: pure numpy.

nnU-Net's rule: every label's indicator (1 inside, 0 outside) is interpolated linearly on the new grid,
and the largest wins; ties go to the smaller label value. A linear weight reaches only the 8 input voxels
around an output voxel, so only their labels can win there: each output voxel scores at most 8
candidates, and the cost does not depend on how many labels the map holds.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from ._engine import Slab
from ._operators import ALIGNS, linear_taps, sample_positions

__all__ = ["LabelEngine", "resize_labels"]

#: Most output voxels in one emitted slab.
_SLAB_VOXELS = 1 << 21
#: Most output voxels computed at a time.
_CHUNK_VOXELS = 1 << 16
#: Output voxels to vote on (not taken by the fast path) per chunk: enough to amortise the calls, few
#: enough for the working arrays to stay in the processor's cache.
_MIXED_VOXELS = 1 << 15
#: Output slices of at most this many pixels gather input slices through flat indices (8 bytes each).
_FLAT_GATHER_PIXELS = 1 << 16
#: Input values fed to the engine at a time by :func:`resize_labels`.
_FEED_VALUES = 1 << 22


class _Taps(NamedTuple):
    """Linear taps of one axis: the two input indices and their weights for each output index."""

    first: npt.NDArray[np.intp]
    second: npt.NDArray[np.intp]  # equal to `first` where its weight is 0: no neighbour there
    w0: npt.NDArray[np.float64]
    w1: npt.NDArray[np.float64]


def _axis_taps(old: int, new: int, align: str) -> _Taps:
    """Taps of :func:`nidataset._operators.linear_taps`, the second index dropped where it weighs 0.

    A tap of weight 0 adds exactly 0 to every score, so a label held only there scores 0 and loses to the
    first tap's label (whose weight ``1 - t`` is positive): leaving it out changes no result, and lets the
    fast path take voxels whose other neighbours agree.
    """
    index, weights = linear_taps(sample_positions(old, new, align), old)
    first = np.ascontiguousarray(index[:, 0])
    w0 = np.ascontiguousarray(weights[:, 0])
    w1 = np.ascontiguousarray(weights[:, 1])
    second = np.where(w1 == 0, first, index[:, 1])
    return _Taps(first, second, w0, w1)


class _Workspace:
    """Scratch arrays reused from one chunk to the next.

    Fresh temporaries of a few hundred kB are mapped and unmapped by the allocator at every call, and
    touching the new pages costs more than the arithmetic on them.
    """

    def __init__(self) -> None:
        self._memory: dict[tuple[str, object], np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: npt.DTypeLike) -> np.ndarray:
        """Return a C-contiguous array of `shape` and `dtype`, uninitialised: the same memory every call."""
        size = math.prod(shape)
        memory = self._memory.get((name, dtype))
        if memory is None or memory.size < size:
            memory = self._memory[name, dtype] = np.empty(max(size, 1 << 12), dtype=dtype)
        return memory[:size].reshape(shape)


def _check_shape(shape: Sequence[int], ndim: int, name: str = "shape") -> tuple[int, ...]:
    """`shape` as a tuple of `ndim` positive ints, or ValueError."""
    try:
        sizes = tuple(int(n) for n in shape)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must give one positive size per dimension of the {ndim}D array, got {shape!r}"
        ) from None
    if len(sizes) != ndim or any(n < 1 for n in sizes):
        raise ValueError(
            f"{name} must give one positive size per dimension of the {ndim}D array, got {sizes}"
        )
    return sizes


def _check_dtype(dtype: npt.DTypeLike) -> np.dtype:
    """`dtype` as a numpy type if it is an integer or float type, else TypeError."""
    kind = np.dtype(dtype)
    if kind.kind not in "iuf":
        raise TypeError(f"cannot resize labels of type {kind}; an integer or float type is needed")
    return kind


class LabelEngine:
    """Resize a 3D label map (C order: Z, Y, X) fed a block of slices at a time, by nnU-Net's rule.

    Output voxel ``(k, j, i)`` lies at input position ``(p_k, p_j, p_i)`` (see
    :func:`nidataset._operators.sample_positions`); along each axis it reads the input indices ``i0, i1``
    with weights ``1 - t, t`` (see :func:`nidataset._operators.linear_taps`). Each label ``L`` among the 8
    neighbours ``labels[iz_a, iy_b, ix_c]`` scores, in float64 and in this order (X, then Y, then Z)::

        S_L = wz0 * (wy0 * (wx0 * e000 + wx1 * e001) + wy1 * (wx0 * e010 + wx1 * e011)) + wz1 * (...)

    with ``e_abc = [labels[iz_a, iy_b, ix_c] == L]``: its linearly interpolated indicator. The largest
    score wins, the smaller label on equal scores; where the 8 neighbours agree, their label is taken as
    it is. Ties that are symmetric in exact arithmetic give bit-equal scores, as the order is fixed.

    Parameters
    ----------
    in_shape, out_shape : tuple of 3 int
        Shapes of the input and output label maps.
    dtype : numpy dtype
        Type of the labels (integer or float); the output has it too.
    align : {"origin", "center"}, optional
        Grid alignment (see :func:`nidataset._operators.sample_positions`).

    Notes
    -----
    Only the input slices that some output slice reads are kept (copied from the blocks fed), and only
    until the last output slice reading them is computed; just before, they are gathered onto the output's
    in-plane grid (the 4 in-plane neighbours of every output voxel). Output slices are computed a chunk
    at a time, as their slab is asked for, in slabs of at most about ``2**21`` voxels.

    A tap of weight 0 (an integer position) is dropped: it adds exactly 0 to every score. The in-plane
    part of every score, ``wy0 * (wx0 * e_a00 + wx1 * e_a01) + wy1 * (...)``, is looked up in a table of
    the 16 hit masks of each class of output pixels (same X and Y weights), computed once with the same
    float64 operations.

    Examples
    --------
    >>> engine = LabelEngine((4, 1, 2), (2, 1, 1), np.uint8, align="center")  # samples at 0.5, 2.5
    >>> labels = np.array([[[1, 1]], [[1, 2]], [[2, 2]], [[2, 2]]], dtype=np.uint8)
    >>> list(engine.feed(labels[:1]))  # output slice 0 reads input slices 0 and 1
    []
    >>> [(slab.start, slab.values.tolist()) for slab in engine.feed(labels[1:])]
    [(0, [[[1]], [[2]]])]
    >>> list(engine.finish())
    []
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        out_shape: tuple[int, int, int],
        dtype: npt.DTypeLike,
        align: str = "origin",
    ) -> None:
        in_sizes = _check_shape(in_shape, 3, "in_shape")
        out_sizes = _check_shape(out_shape, 3, "shape")
        self._dtype = _check_dtype(dtype)
        self._work = self._dtype.newbyteorder("=")  # labels are compared and ordered in native order
        if align not in ALIGNS:
            raise ValueError(f"align must be one of {ALIGNS}, got {align!r}")
        self._in_shape: tuple[int, int, int] = (in_sizes[0], in_sizes[1], in_sizes[2])
        self._out_shape: tuple[int, int, int] = (out_sizes[0], out_sizes[1], out_sizes[2])
        z, y, x = (_axis_taps(old, new, align) for old, new in zip(in_sizes, out_sizes, strict=True))
        self._z, self._y, self._x = z, y, x
        self._plane = out_sizes[1] * out_sizes[2]
        # The in-plane scores of each class of output pixels with the same X and Y weights, and the row of
        # each pixel in that table (16 entries a row), for every pixel of a chunk.
        self._plane_scores, rows = _plane_scores(y, x)
        self._max_rows = max(1, _CHUNK_VOXELS // self._plane)
        self._offsets = np.tile(rows * 16, self._max_rows)
        self._single_x = bool(np.array_equal(x.first, x.second))
        self._single_y = bool(np.array_equal(y.first, y.second))
        # The 4 in-plane neighbours of every output pixel as flat indices into an input slice: one gather
        # a neighbour, where the index arrays stay small; else rows and columns are picked in turn.
        self._neighbours: np.ndarray | None = None
        if self._plane <= _FLAT_GATHER_PIXELS:
            width = in_sizes[2]
            self._neighbours = np.stack(
                [
                    (b[:, None] * width + c[None, :]).reshape(-1)
                    for b in (y.first, y.second)
                    for c in (x.first, x.second)
                ]
            )
        self._needed = np.zeros(in_sizes[0], dtype=bool)
        self._needed[z.first] = True
        self._needed[z.second] = True
        self._slab_rows = max(1, _SLAB_VOXELS // self._plane)
        self._chunk_rows = max(1, _MIXED_VOXELS // self._plane)  # adapted to the share of mixed voxels
        # The window: the needed input slices still to be read, one per slot, gathered onto the output
        # plane, with the fast-path mask of each (where its 4 in-plane neighbours agree).
        self._gathered = np.empty((4, 0, self._plane), dtype=self._work)  # (corner, slot, pixel)
        self._agree = np.empty((0, self._plane), dtype=bool)
        self._slot_of = np.full(in_sizes[0], -1, dtype=np.intp)  # input slice -> slot
        self._kept: collections.deque[int] = collections.deque()  # input slices in the window, in order
        self._free: list[int] = []
        self._workspace = _Workspace()
        self._pairs = 1.0  # share of the mixed voxels of the last chunk tried whose corners hold 2 labels
        self._chunks = 0
        self._pending: collections.deque[tuple[int, np.ndarray]] = collections.deque()  # copied, to gather
        self._received = 0  # input slices fed so far
        self._ready = 0  # output slices whose input slices are all in
        self._done = 0  # output slices computed so far

    def feed(self, block: np.ndarray) -> Iterator[Slab]:
        """Take the next slices (axis 0) of the input; iterate over the output slabs they complete, in order.

        The input slices that output slices will read are copied at once: `block` is not referenced once
        the call returns, and the caller may reuse it. Each output slab is computed as it is asked for,
        so that a caller writing each slab before asking for the next holds one at a time; the iterator
        must be exhausted before the next block is fed.

        Parameters
        ----------
        block : numpy.ndarray
            The next input slices, ``(rows, Y, X)``, of the engine's type.

        Returns
        -------
        iterator of Slab
            Output slabs, C-contiguous, of the input's type, following those already returned.
        """
        block = np.asarray(block)
        _, height, width = self._in_shape
        if block.ndim != 3 or block.shape[1:] != (height, width):
            raise ValueError(f"blocks must be slices of shape (rows, {height}, {width}), got {block.shape}")
        if block.dtype.newbyteorder("=") != self._work:
            raise TypeError(f"blocks must be of the engine's type {self._dtype}, got {block.dtype}")
        start, stop = self._received, self._received + block.shape[0]
        if stop > self._in_shape[0]:
            raise ValueError(f"the input has {self._in_shape[0]} slices; this block ends at slice {stop}")
        if self._done < self._ready:
            raise ValueError(
                "the output slabs of the previous block must all be taken before the next is fed"
            )
        needed = np.flatnonzero(self._needed[start:stop])
        if len(needed):  # one copy of the slices still to be read, in native byte order
            copies = np.asarray(block[needed], dtype=self._work)
            self._pending.extend(zip((needed + start).tolist(), copies, strict=True))
        self._received = stop
        self._ready = int(np.searchsorted(self._z.second, stop, side="left"))  # output slices complete
        return self._slabs(self._ready)

    def finish(self) -> Iterator[Slab]:
        """Check that the whole input was fed; iterate over the output slabs left (none: `feed` gave all).

        Raises
        ------
        ValueError
            If input slices are missing.
        """
        if self._received < self._in_shape[0]:
            raise ValueError(f"the input has {self._in_shape[0]} slices but only {self._received} were fed")
        return iter(())

    def _slabs(self, stop: int) -> Iterator[Slab]:
        """Compute output slices up to `stop`, a slab at a time (a chunk of slices at a time within it)."""
        while self._done < stop:
            start = self._done
            values = np.empty((min(start + self._slab_rows, stop) - start, *self._out_shape[1:]), self._dtype)
            flat = values.reshape(len(values), self._plane)
            while self._done < start + len(values):
                lo = self._done
                hi = min(lo + self._chunk_rows, start + len(values))
                last = int(self._z.second[hi - 1])  # the last input slice the chunk reads
                while self._pending and self._pending[0][0] <= last:
                    self._store(*self._pending.popleft())
                self._chunk(lo, hi, flat[lo - start : hi - start])
                self._done = hi
                keep = int(self._z.first[hi]) if hi < self._out_shape[0] else self._in_shape[0]
                while self._kept and self._kept[0] < keep:  # free the slices no later output slice reads
                    self._free.append(int(self._slot_of[self._kept.popleft()]))
            yield Slab(start, values)

    def _store(self, row: int, values: np.ndarray) -> None:
        """Gather input slice `row` onto the output plane into a free slot of the window."""
        if not self._free:
            size = self._gathered.shape[1]
            grow = max(4, size)
            self._free = list(range(size + grow - 1, size - 1, -1))
            more = np.empty((4, grow, self._plane), self._work)
            self._gathered = np.concatenate([self._gathered, more], axis=1)
            self._agree = np.concatenate([self._agree, np.empty((grow, self._plane), dtype=bool)])
        slot = self._free.pop()
        self._slot_of[row] = slot
        self._kept.append(row)
        corners = self._gathered[:, slot]  # (b, c) = (0, 0), (0, 1), (1, 0), (1, 1); pixel
        grid = corners.reshape(4, *self._out_shape[1:])
        y, x = self._y, self._x
        y_taps = (y.first,) if self._single_y else (y.first, y.second)
        x_taps = (x.first,) if self._single_x else (x.first, x.second)
        if self._neighbours is not None:
            flat = values.reshape(-1)
            for corner, neighbours in zip(corners, self._neighbours, strict=True):
                flat.take(neighbours, out=corner, mode="clip")
        elif len(y.first) <= values.shape[0]:  # fewer rows out than in: pick the rows first
            for b, rows in enumerate(y_taps):
                picked = values.take(rows, axis=0)
                for c, columns in enumerate(x_taps):
                    np.take(picked, columns, axis=1, out=grid[2 * b + c], mode="clip")
        else:
            for c, columns in enumerate(x_taps):
                picked = values.take(columns, axis=1)
                for b, rows in enumerate(y_taps):
                    np.take(picked, rows, axis=0, out=grid[2 * b + c], mode="clip")
            if self._single_x:
                corners[1::2] = corners[::2]
            if self._single_y:
                corners[2:] = corners[:2]
        agree = self._agree[slot]
        if self._single_x and self._single_y:
            agree[...] = True
        else:
            np.equal(corners[0], corners[2 if self._single_x else 1], out=agree)
            if not (self._single_x or self._single_y):
                agree &= corners[0] == corners[2]
                agree &= corners[0] == corners[3]

    def _chunk(self, lo: int, hi: int, out: np.ndarray) -> None:
        """Output slices ``lo:hi`` into `out`, ``(hi - lo, Y * X)``."""
        work, rows = self._workspace, hi - lo
        slot_a = self._slot_of[self._z.first[lo:hi]]
        slot_b = self._slot_of[self._z.second[lo:hi]]
        one_slice = bool(np.array_equal(slot_a, slot_b))  # each output slice reads a single input slice
        corners = work.get("corners", (4 if one_slice else 8, rows, self._plane), self._work)
        np.take(self._gathered, slot_a, axis=1, out=corners[:4], mode="clip")
        np.copyto(out, corners[0], casting="unsafe")  # to the input's byte order
        mixed_mask = np.take(self._agree, slot_a, axis=0, out=work.get("mixed", out.shape, bool), mode="clip")
        if not one_slice:
            np.take(self._gathered, slot_b, axis=1, out=corners[4:], mode="clip")
            mixed_mask &= np.take(
                self._agree, slot_b, axis=0, out=work.get("agree", out.shape, bool), mode="clip"
            )
            mixed_mask &= np.equal(corners[0], corners[4], out=work.get("agree", out.shape, bool))
        mixed = np.flatnonzero(np.logical_not(mixed_mask, out=mixed_mask))
        share = max(len(mixed), 1) / mixed_mask.size
        self._chunk_rows = min(max(int(_MIXED_VOXELS / (share * self._plane)), 1), self._max_rows)
        if not mixed.size:
            return
        wz0: float | np.ndarray
        wz1: float | np.ndarray
        if rows == 1:
            wz0, wz1 = float(self._z.w0[lo]), float(self._z.w1[lo])
        else:
            counts = np.count_nonzero(mixed_mask, axis=1)
            wz0, wz1 = np.repeat(self._z.w0[lo:hi], counts), np.repeat(self._z.w1[lo:hi], counts)
        flat = out.reshape(-1)
        step = _MIXED_VOXELS  # bounds the scratch arrays where a single output slice is large
        for start in range(0, len(mixed), step):
            part = slice(start, start + step)
            z0, z1 = (w if isinstance(w, float) else w[part] for w in (wz0, wz1))
            flat[mixed[part]] = self._settle(corners, mixed[part], z0, z1)

    def _settle(
        self, corners: np.ndarray, mixed: np.ndarray, wz0: float | np.ndarray, wz1: float | np.ndarray
    ) -> np.ndarray:
        """Winning labels of the voxels `mixed`, flat indices into `corners` ``(4 or 8, rows, Y * X)``."""
        work, table = self._workspace, self._plane_scores
        labels = work.get("labels", (len(corners), len(mixed)), self._work)
        np.take(corners.reshape(len(corners), -1), mixed, axis=1, out=labels, mode="clip")
        offset = self._offsets.take(mixed)
        # Most mixed voxels of a segmentation lie on the border of two labels, which two lookups per slice
        # settle; in noise-like maps they are few, and trying them first costs more than it saves.
        self._chunks += 1
        if self._pairs < 0.4 and self._chunks % 16:
            return _vote(labels, offset, wz0, wz1, table, work)
        winner, many = _vote_two(labels, offset, wz0, wz1, table, work)
        self._pairs = 1 - len(many) / len(mixed)
        if len(many):
            z0, z1 = (w if isinstance(w, float) else w[many] for w in (wz0, wz1))
            winner[many] = _vote(labels[:, many], offset[many], z0, z1, table, work)
        return winner


def _vote(
    labels: np.ndarray,
    offset: np.ndarray,
    wz0: float | np.ndarray,
    wz1: float | np.ndarray,
    table: np.ndarray,
    work: _Workspace,
) -> np.ndarray:
    """Winning label of each of m output voxels, given the labels of its corners.

    Parameters
    ----------
    labels : numpy.ndarray
        ``(8, m)``: the label of corner ``4a + 2b + c`` (Z, Y, X taps) of each voxel; or ``(4, m)`` where
        both Z taps read the same input slice (corners ``2b + c``, for both ``a``).
    offset : numpy.ndarray
        ``(m,)``: 16 times the in-plane index ``j * X + i`` of each voxel: its row of `table`.
    wz0, wz1 : float or numpy.ndarray
        Z weights: one pair for all voxels, or one per voxel.
    table : numpy.ndarray
        In-plane scores of :func:`_plane_scores`.
    work : _Workspace
        Scratch arrays; the result is one of them.

    Notes
    -----
    Every corner stands for its label: its in-plane score in each input slice is looked up in `table`
    (see :func:`_in_plane`) and the two are combined with the Z weights. A corner of slice 1 is given
    ``wz1 *`` its slice-1 score alone: exactly its label's score where the label is absent from slice 0
    (``wz0 * 0 + s == s``), and no more than it otherwise, where a corner of slice 0 carries the label's
    full score. Corners holding the same label at the best score are thus all of that label, and the
    smallest label at the best score wins.
    """
    count = len(offset)
    slices = labels.reshape(-1, 4, count)
    own = _in_plane(slices, slices, offset, table, work, "own")  # (slices, 4, m)
    score = work.get("score", own.shape, np.float64)
    np.multiply(own[0], wz0, out=score[0])
    if len(slices) == 1:
        score[0] += np.multiply(own[0], wz1, out=own[0])
    else:
        across = _in_plane(slices[:1], slices[1:], offset, table, work, "across")[0]
        score[0] += np.multiply(across, wz1, out=across)
        np.multiply(own[1], wz1, out=score[1])
    score = score.reshape(len(labels), count)
    best = np.max(score, axis=0, out=work.get("best", (count,), np.float64))
    return _smallest(labels, np.not_equal(score, best, out=work.get("passed", score.shape, bool)), work)


def _vote_two(
    labels: np.ndarray,
    offset: np.ndarray,
    wz0: float | np.ndarray,
    wz1: float | np.ndarray,
    table: np.ndarray,
    work: _Workspace,
) -> tuple[np.ndarray, np.ndarray]:
    """Winning label of each voxel whose corners hold two labels, and the voxels whose corners hold more.

    Takes the arguments of :func:`_vote`. The two labels are the smallest and the largest of the corners;
    the smaller wins unless the larger scores strictly more. Returns the winners (a scratch array, not
    valid at the other voxels) and the indices of the voxels with 3 labels or more.
    """
    corners, count = labels.shape
    low = np.min(labels, axis=0, out=work.get("low", (count,), labels.dtype))
    high = np.max(labels, axis=0, out=work.get("high", (count,), labels.dtype))
    hits = work.get("pair_hits", (2, corners, count), bool)
    np.equal(labels, low, out=hits[0])
    np.equal(labels, high, out=hits[1])
    either = np.logical_or(hits[0], hits[1], out=work.get("either", (corners, count), bool))
    two = np.logical_and.reduce(either, axis=0, out=work.get("two", (count,), bool))
    many = np.flatnonzero(np.logical_not(two, out=two))
    slices = corners // 4
    bits = hits.view(np.uint8).reshape(2, slices, 4, count)
    mask = np.einsum("q,csqm->csm", _BITS, bits, out=work.get("pair_mask", (2, slices, count), np.uint8))
    index = np.add(mask, offset, out=work.get("pair_index", mask.shape, np.intp))
    plane = table.take(index, out=work.get("pair_plane", mask.shape, np.float64), mode="clip")
    score = np.multiply(plane[:, 0], wz0, out=work.get("pair_score", (2, count), np.float64))
    score += np.multiply(plane[:, -1], wz1, out=plane[:, -1])  # the same slice twice if one slice
    np.copyto(high, low, where=np.greater_equal(score[0], score[1], out=work.get("low_wins", (count,), bool)))
    return high, many


#: Bit of each in-plane corner in a hit mask.
_BITS = np.array([1, 2, 4, 8], dtype=np.uint8)


def _in_plane(
    candidates: np.ndarray,
    corners: np.ndarray,
    offset: np.ndarray,
    table: np.ndarray,
    work: _Workspace,
    name: str,
) -> np.ndarray:
    """In-plane score of each candidate label in the input slice of the given 4 corners.

    `candidates` and `corners` are ``(n, 4, m)``: n pairs of 4 candidates and the 4 corners of one slice.
    The corners holding a candidate's label form the mask ``e0 + 2 e1 + 4 e2 + 8 e3``, which with the
    pixel's `offset` (16 times its index) indexes `table`. Returns ``(n, 4, m)`` float64, the scratch
    array `name`.
    """
    shape = candidates.shape
    hits = work.get("hits", (shape[0], 4, *shape[1:]), bool)  # (n, corner, candidate, m)
    np.equal(corners[:, :, None, :], candidates[:, None, :, :], out=hits)
    mask = np.einsum("q,nqcm->ncm", _BITS, hits.view(np.uint8), out=work.get("mask", shape, np.uint8))
    index = np.add(mask, offset, out=work.get("index", shape, np.intp))
    return table.take(index, out=work.get(name, shape, np.float64), mode="clip")


def _plane_scores(y: _Taps, x: _Taps) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.intp]]:
    """In-plane score ``wy0 * (wx0 * e0 + wx1 * e1) + wy1 * (wx0 * e2 + wx1 * e3)`` of every hit mask.

    Output pixels whose X weights and Y weights are the same share their scores: returns a table of 16
    scores per class of pixels, flattened, column ``e0 + 2 e1 + 4 e2 + 8 e3`` for the hits of the 4
    in-plane neighbours ``(b, c) = (0, 0), (0, 1), (1, 0), (1, 1)``, and the class (row) of every pixel
    ``j * X + i``. The same float64 operations as the score itself, so the values are bit for bit its own.
    """
    (wy, y_class), (wx, x_class) = (
        np.unique(np.stack([t.w0, t.w1], axis=1), axis=0, return_inverse=True) for t in (y, x)
    )
    mask = np.arange(16)
    e = [((mask >> q) & 1).astype(np.float64) for q in range(4)]
    wx0, wx1 = wx[None, :, 0, None], wx[None, :, 1, None]
    wy0, wy1 = wy[:, None, 0, None], wy[:, None, 1, None]
    table = wy0 * (wx0 * e[0] + wx1 * e[1]) + wy1 * (wx0 * e[2] + wx1 * e[3])
    rows = y_class.reshape(-1)[:, None] * len(wx) + x_class.reshape(-1)[None, :]
    return np.ascontiguousarray(table).reshape(-1), rows.reshape(-1).astype(np.intp)


def _smallest(labels: np.ndarray, passed: np.ndarray, work: _Workspace) -> np.ndarray:
    """Smallest of the `labels` ``(n, m)`` not `passed` over ``(n, m)``, for each of the m columns."""
    kind = labels.dtype
    count = labels.shape[1]
    if kind.kind == "f":
        keys = work.get("keys", labels.shape, kind)
        np.copyto(keys, labels)
        np.copyto(keys, np.inf, where=passed)
        return np.min(keys, axis=0, out=work.get("smallest", (count,), kind))
    unsigned = np.dtype(f"u{kind.itemsize}")
    # 0 - 1 wraps to the largest key: the labels passed over cannot be the smallest.
    keys = np.subtract(0, passed, dtype=unsigned, out=work.get("keys", labels.shape, unsigned))
    if kind.kind == "i":  # flipping the sign bit orders signed integers as unsigned ones
        sign = unsigned.type(1 << (8 * kind.itemsize - 1))
        keys |= labels.view(unsigned) ^ sign
    else:
        keys |= labels
    smallest = np.min(keys, axis=0, out=work.get("smallest", (count,), unsigned))
    if kind.kind == "i":
        smallest ^= sign
    return smallest.view(kind)


def resize_labels(labels: np.ndarray, shape: Sequence[int], *, align: str = "origin") -> np.ndarray:
    """Resize a label map: each output voxel takes the label whose interpolated one-hot map is largest.

    This is how nnU-Net resamples segmentations: every label's indicator (1 inside, 0 outside) is
    interpolated linearly on the new grid, and the largest one wins; ties go to the smaller label value.
    Shapes are followed more faithfully than by taking the nearest voxel, and only labels present in the
    input appear in the output.

    Parameters
    ----------
    labels : numpy.ndarray
        Integer (or float) label map of 1, 2 or 3 dimensions. A Fortran-ordered 3D map is read as a NIfTI
        volume (X, Y, Z).
    shape : sequence of int
        Output shape.
    align : {"origin", "center"}, optional
        Grid alignment (see :func:`nidataset._operators.sample_positions`).

    Returns
    -------
    numpy.ndarray
        Label map of `shape` and of the input's type.

    Notes
    -----
    With linear weights an output voxel reads only its 8 neighbouring input voxels, so only their labels
    can win there: each label among them is scored as its interpolated indicator, in float64 and in a fixed
    order (see :class:`LabelEngine`), so that ties symmetric in exact arithmetic are exact ties too, won
    by the smaller label. Where the 8 neighbours agree their label is taken as it is; elsewhere a
    neighbour's label is scored from a table of in-plane scores: 4 lookups where two labels meet, 12 where
    more do, and a few comparisons of the 8 labels.

    No array is made per label: the time goes with the number of output voxels, chiefly those on borders
    between labels, and not with the number of labels (5000 or 2 alike). The map is taken a slab of slices
    at a time; memory is the result, a few input slices gathered onto the output grid, a table of in-plane
    scores (at most 16 float64 a pixel of an output slice) and scratch arrays of a fixed size.

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
    if not 1 <= labels.ndim <= 3:
        raise ValueError(f"label maps of 1, 2 or 3 dimensions can be resized, got {labels.ndim} dimensions")
    sizes = _check_shape(shape, labels.ndim)
    dtype = _check_dtype(labels.dtype)
    if labels.size == 0:
        raise ValueError(f"cannot resize an empty array of shape {labels.shape}")
    if labels.ndim == 3 and not labels.flags.c_contiguous and labels.flags.f_contiguous:
        return resize_labels(labels.T, sizes[::-1], align=align).T
    labels = np.ascontiguousarray(labels)
    in_shape = (1,) * (3 - labels.ndim) + labels.shape
    out_shape = (1,) * (3 - labels.ndim) + sizes
    volume = labels.reshape(in_shape)
    engine = LabelEngine(
        (in_shape[0], in_shape[1], in_shape[2]), (out_shape[0], out_shape[1], out_shape[2]), dtype, align
    )
    result = np.empty(out_shape, dtype=dtype)
    step = max(1, _FEED_VALUES // math.prod(in_shape[1:]))
    for start in range(0, in_shape[0], step):
        for slab in engine.feed(volume[start : start + step]):
            result[slab.start : slab.start + len(slab.values)] = slab.values
    for slab in engine.finish():
        result[slab.start : slab.start + len(slab.values)] = slab.values
    return result.reshape(sizes)
