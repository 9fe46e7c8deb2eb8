"""BLAS on one thread during calls, from any thread, counted across concurrent calls, then as it was."""

import hashlib
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from threadpoolctl import threadpool_info

from nidataset import _blas, _nifti
from nidataset.preprocessing import resampling


def digest(path):
    with open(path, "rb") as file:
        return hashlib.sha256(file.read()).hexdigest()


def blas_threads():

    return [info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"]


def test_blas_on_one_thread_during_a_call_then_as_before(volume, tmp_path, monkeypatch):
    src, _ = volume
    before = blas_threads()
    during = []
    real = _nifti.SlabWriter.write

    def spy(self, block):
        during.extend(blas_threads())
        real(self, block)

    monkeypatch.setattr(_nifti.SlabWriter, "write", spy)
    resampling(src, tmp_path / "out", (41, 50, 35))
    assert during and set(during) == {1}
    assert blas_threads() == before


def test_concurrent_calls_from_other_threads_leave_blas_as_it_was(volume, tmp_path):
    # Calls overlap in time: the first in sets the limit, the last out restores it.
    src, _ = volume
    before = blas_threads()
    barrier = threading.Barrier(4)

    def call(k):
        barrier.wait()
        return resampling(src, tmp_path / f"o{k}", (30, 40, 25), threads=1)

    with ThreadPoolExecutor(4) as pool:
        outputs = list(pool.map(call, range(8)))
    assert blas_threads() == before
    assert len({digest(path) for path in outputs}) == 1


def test_one_blas_thread_is_counted_across_threads():
    with _blas.one_blas_thread():  # this thread limits and restores first, as a lone call would
        pass
    before = blas_threads()
    inside, leave = threading.Event(), threading.Event()

    def hold():
        with _blas.one_blas_thread():
            inside.set()
            leave.wait(10)

    other = threading.Thread(target=hold)
    other.start()
    inside.wait(10)
    with _blas.one_blas_thread():
        assert set(blas_threads()) == {1}
    assert set(blas_threads()) == {1}  # the other thread is still inside
    leave.set()
    other.join()
    assert blas_threads() == before


def test_a_count_someone_else_set_meanwhile_stays(monkeypatch):
    # Another library's limiter ending while a call runs sets its own count back: the call leaves it.
    from threadpoolctl import ThreadpoolController

    blas = ThreadpoolController().select(user_api="blas")
    original = blas_threads()
    theirs = max(original) + 1  # not the count found, whatever the machine
    try:
        with _blas.one_blas_thread():
            blas.limit(limits=theirs)
        assert blas_threads() == [theirs] * len(original)
    finally:
        blas.limit(limits=max(original))
    assert blas_threads() == original


def test_leaving_again_from_a_finalizer_while_a_count_is_put_back(monkeypatch):
    # The finalizer of a call an interrupt kept from leaving may run (garbage collection) while another
    # call puts a count back, and put back every count itself: the outer call has nothing left to do.
    import weakref

    done = []

    def first():
        done.append("first")

    def second():
        done.append("second")
        if done.count("second") == 1:
            _blas._leave(None)  # what the finalizer does

    monkeypatch.setattr(_blas, "_callers", weakref.WeakSet())
    monkeypatch.setattr(_blas, "_restore", [first, second])
    _blas._leave(None)
    assert done == ["second", "second", "first"]
    assert _blas._restore == []


# An interrupt that lands in a finalizer is printed and dropped (as Python does): not a failure here.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="interrupts come from a POSIX interval timer")
def test_interrupts_anywhere_leave_blas_as_it_was():
    # Ctrl-C (a signal's KeyboardInterrupt) at random moments of entering and leaving, 1,500 times.
    import random
    import time

    original = blas_threads()
    assert original, "a BLAS is loaded (numpy's)"

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    rng, interrupted = random.Random(5), 0
    try:
        while interrupted < 1500:
            try:
                signal.setitimer(signal.ITIMER_REAL, rng.uniform(0, 0.003))
                with _blas.one_blas_thread():
                    pass
                time.sleep(0.004)
            except KeyboardInterrupt:
                interrupted += 1
            finally:
                try:
                    signal.setitimer(signal.ITIMER_REAL, 0)
                except KeyboardInterrupt:
                    interrupted += 1
            assert blas_threads() == original
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
