"""One file through the engine: read -> resize -> cast -> compress -> write, a slab at a time.

This module moves slabs between the reader and the writer of :mod:`nidataset._nifti` and an engine of
:mod:`nidataset._engine` or :mod:`nidataset._labels`, and it owns every thread a call uses. How many it
may use is decided by the caller and passed in (`threads`); nothing here reads or sets a module switch.

What is held whole is the smaller of the input and the output, in its stored type:

- nearest and label maps stream both ways (their values need no range);
- B-spline and linear values are clipped to the input's range, known only once all of it is read. When
  the output is the smaller, the input streams through the engine (read by a second thread while the
  engine computes) and the output is held, cast to its stored type, until the range is known. When the
  output is the larger, the input is read whole first and the output streams to the compressor (which
  then works beside the engine);
- a float volume holding NaN or infinity is read whole (see :mod:`nidataset._nonfinite`) and its output
  streams.

BLAS runs on one thread during a call (see :mod:`nidataset._blas`).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import math
import os
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from . import _nifti
from ._blas import one_blas_thread
from ._engine import (
    SLAB_VALUES,
    Engine,
    InterpolatingEngine,
    NearestEngine,
    NonFiniteError,
    Slab,
    cast,
    slab_rows,
    slabs_of,
)
from ._labels import LabelEngine
from ._nonfinite import NonFinitePatch
from ._options import Options
from ._paths import is_url, join, name_of
from ._storage import LOCAL, Storage

__all__ = ["resample_file"]

logger = logging.getLogger(__name__)


def resample_file(
    path: str,
    folder: str,
    shape: tuple[int, int, int],
    options: Options,
    *,
    threads: int = 1,
    skip_existing: bool = False,
    slab_values: int = SLAB_VALUES,
    storage: Storage = LOCAL,
    stop: threading.Event | None = None,
    ready: Callable[[], None] | None = None,
    waiting: Callable[[], None] | None = None,
) -> str:
    """Resample the volume at `path` to `shape` voxels into ``folder/<PREFIX>_resampled.nii.gz``.

    Parameters
    ----------
    path : str
        A ``.nii.gz`` file (already checked to exist): a local path or a URL.
    folder : str
        Output folder, created if needed ("" is the current folder), or a URL's prefix.
    shape : (int, int, int)
        Output size ``X, Y, Z``.
    options : Options
        Interpolation, antialiasing, alignment, preview.
    threads : int
        Threads this call may use: 1 runs everything in the calling thread, one step after the other
        (the compressor's thread only works while the caller waits for it); 2 or more read ahead and
        compress beside the computation.
    skip_existing : bool
        Keep an output that already exists if its header matches the request: the asked shape and the
        input's stored type, byte order included (and draw its missing preview, if one is asked for). An
        output that does not match, or cannot be read, is written again (logged at INFO).
    slab_values : int
        About how many values a slab holds. The default makes the output independent of the number of
        threads; other sizes can change the last bits of float rounding (BLAS picks kernels by size).
    storage : Storage
        Opens URLs (endpoint, credentials); local paths need nothing of it.
    stop : threading.Event, optional
        Once set, the call stops at its next slab (or the next few MiB of a volume read whole) by raising
        KeyboardInterrupt, as an interrupt would, leaving no output: how a thread pool's files are
        interrupted (only the main thread takes Ctrl-C), and a process pool's (anything with the
        event's ``is_set``). A request to the store under way ends first.
    ready : callable, optional
        Called at most once, from the calling thread, once the input is open and its header checked,
        before the computation starts (for an output kept by `skip_existing`, only before its missing
        preview is drawn; not by a call that fails before): a thread pool's file takes its turn to
        compute there, so that the first bytes of a store's answer come while other files compute.
    waiting : callable, optional
        For an output in a bucket: called at most once, from the calling thread, when all that is left
        of the call is the store's part of its last upload (the preview's, if one is drawn), which
        takes the last bytes and makes the object appear. The input is closed by then, and only the
        compressed output is held. A Dask task gives its worker's thread back then. Not called for an
        output kept by `skip_existing`, nor by a call that fails before that point.

    Returns
    -------
    str
        Path (or URL) of the output.

    Raises
    ------
    InvalidVolumeError
        If the input is not a readable 3D NIfTI volume (see :func:`nidataset._nifti.open_volume`).
    ValueError
        If `shape` cannot be written in the input's NIfTI format (NIfTI-1: 32,767 voxels per axis).
    MemoryError
        If what the run holds cannot be allocated: the message names the file, the sizes and about how
        much memory they need.
    OSError
        If a file cannot be read or written (the device fails, the disk is full...); for a URL, as
        :mod:`nidataset._storage` says (no such bucket or object, refused credentials, no answer).
    """
    target = join(folder, _nifti.output_name(path))
    picture = join(folder, _nifti.preview_name(path))
    if skip_existing and _kept(path, target, picture, shape, options, storage, ready):
        return target
    made: list[str] = []
    source: _nifti.Source | None = None
    run: _Run | None = None
    try:
        with _nifti.opened_volume(path, storage) as source:  # held open: its voxels come from this opening
            header = _nifti.output_header(source, shape, align=options.align)
            if not is_url(target):  # a bucket has no folders to make, and its keys' lengths are its own
                _check_name_length(target)
                made = _make_folder(folder)
            taps = _Taps(source, header) if options.preview else None
            last = None if taps is not None else waiting  # else the preview's upload comes last
            run = _Run(source, header, target, options, threads, slab_values, taps, storage, stop, last)
            if ready is not None:
                ready()
            with one_blas_thread():
                run.go()
        # The input is closed and the arrays are gone: all this file holds while the rename is made, or
        # while the store takes the output (which may be waited for), is the compressed output.
        run.commit()
    except BaseException as err:
        if run is not None:
            run.abandon()  # nothing if the output was committed, or went with an error
        _remove_empty(made)  # a failed file leaves no folder of its own behind
        if isinstance(err, MemoryError) and source is not None:
            raise MemoryError(_out_of_memory(source, shape, options, slab_values)) from err
        raise
    logger.info("resampled %s %s -> %s %s", path, source.shape, target, shape)
    if taps is not None:
        _draw(path, target, taps.original, taps.resampled, picture, storage, waiting)
    return target


def _kept(
    path: str,
    target: str,
    picture: str,
    shape: tuple[int, int, int],
    options: Options,
    storage: Storage,
    ready: Callable[[], None] | None,
) -> bool:
    """Whether the existing output `target` is kept (drawing its missing preview), by headers alone.

    Drawing a missing preview reads both volumes whole: it is computation, done once `ready` returns.

    The output is looked for first: where there is none, the input is opened once, for the run. So an
    output store that refuses to answer is reported before a broken input.
    """
    if not storage.is_file(target):
        return False
    source = _nifti.open_volume(path, storage)
    _nifti.output_header(source, shape, align=options.align)  # raises as a run would (sizes, orientation)
    mismatch = _mismatch(target, shape, source.dtype, storage)
    if mismatch is not None:
        logger.info("redoing %s: %s", target, mismatch)
        return False
    logger.info("kept %s", target)
    if options.preview and not storage.is_file(picture):
        if ready is not None:
            ready()
        original = _nifti.read_mid_planes(path, storage)
        _draw(path, target, original, _nifti.read_mid_planes(target, storage), picture, storage, None)
    return True


def _mismatch(target: str, shape: tuple[int, int, int], dtype: np.dtype, storage: Storage) -> str | None:
    """Say why the existing output `target` is not what this run would write (None if it is)."""
    try:
        existing = _nifti.open_volume(target, storage)
    except (ValueError, OSError) as err:  # InvalidVolumeError is a ValueError
        return f"it cannot be read ({err})"
    asked = tuple(int(n) for n in shape)
    if existing.shape != asked:
        return f"its shape is {existing.shape}, not {asked}"
    if existing.dtype != dtype:
        return f"its data type is {existing.dtype.str}, not {dtype.str}"
    return None


def _out_of_memory(
    source: _nifti.Source, shape: tuple[int, int, int], options: Options, slab_values: int
) -> str:
    """Say that resampling `source` to `shape` ran out of memory, and about how much it needs."""
    itemsize = source.dtype.itemsize
    if options.order is None or options.order == 0:  # nothing held whole
        held, what = 0, "slabs of whole slices"
    elif math.prod(shape) <= math.prod(source.shape):
        held, what = math.prod(shape) * itemsize, f"the output held whole as {source.dtype.name}"
    else:
        held, what = math.prod(source.shape) * itemsize, f"the input held whole as {source.dtype.name}"
    plane = max(source.shape[0] * source.shape[1], shape[0] * shape[1], slab_values)
    needed = held + 4 * plane * 8  # and a few slabs of values (float64 at most) beside it
    return (
        f"not enough memory to resample '{source.path}' from {_sizes(source.shape)} to {_sizes(shape)} "
        f"voxels: it needs about {_bytes(needed)} ({what})"
    )


class _Taps:
    """The mid-planes of the input and of the output, kept as their slabs go by."""

    def __init__(self, source: _nifti.Source, header: Any):
        self.original = _nifti.MidPlanes(source.header)
        self.resampled = _nifti.MidPlanes(header)


class _Run:
    """The slabs of one file between its reader, an engine and its writer."""

    def __init__(
        self,
        source: _nifti.Source,
        header: Any,
        target: str,
        options: Options,
        threads: int,
        slab_values: int,
        taps: _Taps | None,
        storage: Storage,
        stop: threading.Event | None = None,
        waiting: Callable[[], None] | None = None,
    ):
        self.source, self.header, self.target, self.options = source, header, target, options
        self.threads, self.slab_values, self.taps = threads, slab_values, taps
        self.storage, self.stop, self.waiting = storage, stop, waiting
        self.written: _nifti.SlabWriter | None = None  # the output, compressed, until it is committed
        self.in_shape = source.stored_shape
        x, y, z = (int(n) for n in header.get_data_shape()[:3])
        self.out_shape = (z, y, x)
        self.dtype = source.dtype.newbyteorder("=")

    def go(self) -> None:
        """Compute and compress the output; :meth:`commit` then makes it appear."""
        order = self.options.order
        if order is None or order == 0:
            self._stream_both()
        elif np.prod(self.out_shape) <= np.prod(self.in_shape):
            self._hold_output()
        else:
            self._hold_input()

    def commit(self) -> None:
        """Make the output written by :meth:`go` appear (a rename, or the end of its upload)."""
        if self.written is None:
            raise RuntimeError(f"no output of '{self.target}' was written")  # pragma: no cover
        self.written.commit()

    def abandon(self) -> None:
        """Throw away an output that is not committed (nothing if there is none)."""
        if self.written is not None:
            self.written.abandon()

    # --- the three ways through -------------------------------------------------------------------------

    def _stream_both(self) -> None:
        """Nearest and label maps: input slabs in, output slabs out, nothing held."""
        engine: Engine
        if self.options.order == 0:
            engine = NearestEngine(
                self.in_shape,
                self.out_shape,
                self.dtype,
                align=self.options.align,
                slab_values=self.slab_values,
            )
        else:
            engine = LabelEngine(self.in_shape, self.out_shape, self.dtype, align=self.options.align)
        reading = self.threads >= 3  # a reading thread, the engine, and compressing beside them
        with self._writer(busy=2 if reading else 1) as writer, self._read(ahead=reading) as blocks:
            for block in blocks:
                self._seen(block)
                for _, values in engine.feed(block):
                    self._emit(writer, values)
            for _, values in engine.finish():
                self._emit(writer, values)

    def _hold_output(self) -> None:
        """Stream the input, hold the (smaller) output in its stored type, clip it at the end."""
        engine = self._interpolating(check_finite=self.dtype.kind == "f", reuse=True)
        held = np.empty(self.out_shape, dtype=self.dtype)
        try:
            with self._read(ahead=self.threads >= 2) as blocks:
                for block in blocks:
                    self._seen(block)
                    for start, values in engine.feed(block):
                        cast(values, self.dtype, out=held[start : start + len(values)])
                for start, values in engine.finish():
                    cast(values, self.dtype, out=held[start : start + len(values)])
        except NonFiniteError:
            logger.debug("'%s' holds NaN or infinite values: reading it whole", self.source.path)
            del held
            if self.taps is not None:  # the slabs seen so far are seen again
                self.taps.original = _nifti.MidPlanes(self.source.header)
            self._nonfinite(_nifti.read_stored(self.source, self._go_on), tapped=False)
            return
        np.clip(held, engine.low, engine.high, out=held)
        with self._writer(busy=0) as writer:
            for block in slabs_of(held, self.slab_values):
                self._emit(writer, block)

    def _hold_input(self) -> None:
        """Read the (smaller) input whole, then stream the output to the compressor."""
        data = _nifti.read_stored(self.source, self._go_on)
        for block in slabs_of(data, self.slab_values):
            self._seen(block)
        low, high = data.min(), data.max()
        if self.dtype.kind == "f" and not (np.isfinite(low) and np.isfinite(high)):
            self._nonfinite(data, tapped=True)
            return
        self._stream_out(data, low, high)

    def _nonfinite(self, data: np.ndarray, tapped: bool) -> None:
        """NaN or infinity in a float volume: fill it whole, stream the output, put the values back."""
        if not tapped:
            for block in slabs_of(data, self.slab_values):
                self._seen(block)
        patch = NonFinitePatch(data, self.out_shape, self.options.align, in_place=True)
        low, high = patch.filled.min(), patch.filled.max()  # of the finite values (NaN if there are none)
        self._stream_out(patch.filled, low, high, patch)

    def _stream_out(self, data: np.ndarray, low: Any, high: Any, patch: NonFinitePatch | None = None) -> None:
        """Resample `data`, held whole, clip to ``[low, high]`` (`patch` puts NaN back); stream it out."""
        engine = self._interpolating(check_finite=False, reuse=self.threads < 2)
        bounded = not np.isnan(low)  # an all-NaN volume has no range to clip to

        def stored(piece: Slab) -> np.ndarray:
            values = cast(engine.complete(piece).values, self.dtype)
            if bounded:
                np.clip(values, low, high, out=values)
            if patch is not None:
                patch.restore(values, piece.start)
            return values

        with self._writer(busy=self.threads) as writer:
            for values in self._in_order(stored, engine, slabs_of(data, self.slab_values)):
                self._emit(writer, values)

    # --- pieces -------------------------------------------------------------------------------------------

    def _in_order(
        self, stored: Callable[[Slab], np.ndarray], engine: InterpolatingEngine, blocks: Iterator[np.ndarray]
    ) -> Iterator[np.ndarray]:
        """Feed `blocks` to `engine`; `stored` values of its output slabs, in order, on the call's threads.

        The engine's pieces come in this thread; their growing axes, cast and clip (`stored`) run on a
        pool of ``threads - 1`` threads and in this one, whichever has room, a few pieces in flight.
        """

        def every_piece() -> Iterator[Slab]:
            for block in blocks:
                yield from engine.pieces(block)
            yield from engine.finish()  # only once every block is in

        pieces = every_piece()
        if self.threads < 2 or not engine.after:
            yield from map(stored, pieces)
            return
        helpers = self.threads - 1
        pending: collections.deque[Future[np.ndarray]] = collections.deque()
        with ThreadPoolExecutor(helpers, thread_name_prefix="nidataset-compute") as pool:
            for piece in pieces:
                if sum(not future.done() for future in pending) < helpers:
                    pending.append(pool.submit(stored, piece))
                else:  # the pool is busy: this thread takes the piece
                    done: Future[np.ndarray] = Future()
                    done.set_result(stored(piece))
                    pending.append(done)
                while pending and (pending[0].done() or len(pending) > 2 * self.threads):
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()

    def _interpolating(self, check_finite: bool, reuse: bool = False) -> InterpolatingEngine:
        """Make the B-spline or linear engine; `reuse` where its slabs are used one at a time."""
        return InterpolatingEngine(
            self.in_shape,
            self.out_shape,
            self.dtype,
            order=self.options.order or 1,
            align=self.options.align,
            antialias=self.options.antialias,
            slab_values=self.slab_values,
            check_finite=check_finite,
            reuse=reuse,
            flush_tiny=self.dtype.kind in "iu",  # values below 2**-50 cannot change one rounded to an integer
        )

    def _read(self, ahead: bool) -> contextlib.AbstractContextManager[Iterator[np.ndarray]]:
        """Iterate over the input's slabs, read `ahead` by a second thread or in the calling thread."""
        rows = slab_rows(self.in_shape, self.slab_values)
        return _read_ahead(self.source, rows) if ahead else _read_here(self.source, rows)

    def _writer(self, busy: int) -> _nifti.SlabWriter:
        """Make the output's writer, compressing on the threads the `busy` others leave (at least one).

        Its block's end leaves the output compressed but not yet in place: :meth:`commit` puts it there.
        """
        compress = max(1, self.threads - busy)
        self.written = _nifti.SlabWriter(
            self.target,
            self.header,
            threads=compress,
            wait=self.threads == 1,
            storage=self.storage,
            waiting=self.waiting,
            deferred=True,
        )
        return self.written

    def _go_on(self) -> None:
        """Raise KeyboardInterrupt if the caller has asked this call to stop."""
        if self.stop is not None and self.stop.is_set():
            raise KeyboardInterrupt

    def _seen(self, block: np.ndarray) -> None:
        self._go_on()
        if self.taps is not None:
            self.taps.original.add(block)

    def _emit(self, writer: _nifti.SlabWriter, values: np.ndarray) -> None:
        self._go_on()
        if self.taps is not None:
            self.taps.resampled.add(values)
        writer.write(values)


@contextlib.contextmanager
def _read_ahead(source: _nifti.Source, rows: int, buffers: int = 3) -> Iterator[Iterator[np.ndarray]]:
    """Iterate over the slabs of a file while a second thread decompresses the next ones.

    Three buffers go round: one is filled while the caller works on another; a buffer goes back to the
    reader only when the caller asks for the next slab, so the caller may use a slab until then. The
    reader stops as soon as the caller leaves the block, however it leaves (an error, an interrupt).
    """
    nz, ny, nx = source.stored_shape
    free: queue.Queue[np.ndarray | None] = queue.Queue()
    for _ in range(buffers):
        free.put(np.empty((min(rows, nz), ny, nx), dtype=source.dtype))
    ready: queue.Queue[Any] = queue.Queue()
    stopped = threading.Event()
    done = object()

    def buffers_to_fill() -> Iterator[np.ndarray]:
        while (buffer := free.get()) is not None and not stopped.is_set():
            yield buffer
        raise _Stopped

    def fill() -> None:
        try:
            for block in _nifti.read_slabs(source, rows, buffers_to_fill()):
                ready.put(block)
            ready.put(done)
        except _Stopped:
            pass
        except BaseException as err:  # handed to the caller's thread, which raises it
            ready.put(_Failure(err))

    def blocks() -> Iterator[np.ndarray]:
        while (block := ready.get()) is not done:
            if isinstance(block, _Failure):
                raise block.error
            yield block
            free.put(block.base if block.base is not None else block)

    reader = threading.Thread(target=fill, name="nidataset-read", daemon=True)
    try:
        reader.start()
        yield blocks()
    finally:
        stopped.set()
        free.put(None)  # wakes the reader if it waits for a buffer
        if reader.ident is not None:  # started, even if an interrupt came before start() returned
            reader.join()


class _Stopped(Exception):
    """The caller has left: the reader stops."""


class _Failure:
    """An exception raised in the reading thread, on its way to the caller's."""

    def __init__(self, error: BaseException):
        self.error = error


@contextlib.contextmanager
def _read_here(source: _nifti.Source, rows: int) -> Iterator[Iterator[np.ndarray]]:
    """Iterate over the input's slabs, read in the calling thread as they are asked for."""
    blocks = _nifti.read_slabs(source, rows)
    try:
        yield blocks
    finally:
        blocks.close()


def _draw(
    path: str,
    target: str,
    original: Any,
    resampled: Any,
    picture: str,
    storage: Storage,
    waiting: Callable[[], None] | None,
) -> None:
    from ._preview import write_preview  # matplotlib: only when a preview is asked for

    names = (name_of(path), name_of(target))
    write_preview(original, resampled, picture, names=names, storage=storage, waiting=waiting)


def _sizes(shape: tuple[int, ...]) -> str:
    return " x ".join(str(n) for n in shape)


def _bytes(count: int) -> str:
    return f"{count / 2**30:.1f} GiB" if count >= 2**30 else f"{count / 2**20:.0f} MiB"


def _check_name_length(target: str) -> None:
    """Refuse, before any work, an output name longer than its file system allows (its input's fits)."""
    where = os.path.abspath(os.path.dirname(target) or os.curdir)
    while not os.path.isdir(where) and os.path.dirname(where) != where:
        where = os.path.dirname(where)  # the folder may not exist yet: the nearest one that does
    try:
        limit = os.pathconf(where, "PC_NAME_MAX")
    except (OSError, ValueError):  # not known here
        return
    length = len(os.fsencode(os.path.basename(target)))
    if 0 < limit < length:
        message = f"the output's name is {length} bytes long, more than the {limit} its file system allows"
        raise OSError(errno.ENAMETOOLONG, message, target)


def _make_folder(folder: str) -> list[str]:
    """Create `folder` and its missing parents; return those created, innermost first."""
    missing = []
    path = os.path.abspath(folder or os.curdir)  # "" is the current folder
    while not os.path.lexists(path) and os.path.dirname(path) != path:
        missing.append(path)
        path = os.path.dirname(path)
    try:
        os.makedirs(folder or os.curdir, exist_ok=True)
    except OSError as err:
        raise OSError(err.errno, f"cannot create the output folder '{folder}': {err.strerror}") from err
    return missing


def _remove_empty(folders: list[str]) -> None:
    """Remove the `folders` this call created (innermost first) as long as they are empty."""
    for path in folders:
        try:
            os.rmdir(path)
        except OSError:  # not empty (another file's outputs), or gone
            return
