"""Datasets on local processes, any Executor, and a real Dask cluster: the same bytes, every failure named."""

import multiprocessing
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from helpers import alive, descendants, write_nifti
from nidataset import DatasetError, _runner, resampling_dataset
from nidataset._options import available_cores

SIZE = (9, 10, 7)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scans")
    rng = np.random.default_rng(7)
    for i in range(5):
        write_nifti(folder / f"case_{i}.nii.gz", rng.integers(-1000, 2000, (16 + i, 14, 12)).astype(np.int16))
    return folder


def contents(outputs):
    return [Path(p).read_bytes() for p in outputs]


@pytest.fixture(scope="module")
def serial(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("serial")
    return out, resampling_dataset(dataset, out, SIZE, progress=False)


def relative(outputs, root):
    return [os.path.relpath(p, root) for p in outputs]


def test_files_side_by_side_get_one_thread_each(dataset, tmp_path, monkeypatch):
    # The pool's processes (or the executor's tasks) fill the cores: each file gets one thread, unless
    # the caller says otherwise; files one after the other get what a lone call would.
    seen = []
    real_run = _runner.run

    def spy(inputs, job, **kwargs):
        seen.append(job.threads)
        return real_run(inputs, job, **kwargs)

    monkeypatch.setattr(_runner, "run", spy)
    resampling_dataset(dataset, tmp_path / "a", SIZE, workers=2, progress=False)
    resampling_dataset(dataset, tmp_path / "b", SIZE, workers=2, threads=2, progress=False)
    with ThreadPoolExecutor(2) as pool:
        resampling_dataset(dataset, tmp_path / "c", SIZE, executor=pool, progress=False)
    resampling_dataset(dataset, tmp_path / "d", SIZE, progress=False)
    assert seen == [1, 2, 1, available_cores()]


def test_workers_give_the_same_bytes_in_input_order(dataset, serial, tmp_path):
    root, expected = serial
    outputs = resampling_dataset(dataset, tmp_path, SIZE, workers=2, progress=False)
    assert relative(outputs, tmp_path) == relative(expected, root)
    assert contents(outputs) == contents(expected)


@pytest.mark.parametrize("kind", [ProcessPoolExecutor, ThreadPoolExecutor])
def test_any_executor(dataset, serial, tmp_path, kind):
    root, expected = serial
    with kind(max_workers=2) as executor:
        outputs = resampling_dataset(
            dataset, tmp_path, SIZE, saving_mode="case", executor=executor, progress=False
        )
        assert executor.submit(abs, -3).result() == 3  # the caller's executor is left open for the caller
    assert relative(outputs, tmp_path) == relative(expected, root)
    assert contents(outputs) == contents(expected)


def test_dask_local_cluster_with_two_worker_processes(dataset, serial, tmp_path):
    distributed = pytest.importorskip("distributed")
    _, expected = serial
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            scheduler_port=0,  # every port chosen by the OS: the scheduler's HTTP routes too (default 8787)
            dashboard_address=None,
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        assert len(client.scheduler_info()["workers"]) == 2
        executor = client.get_executor()
        outputs = resampling_dataset(dataset, tmp_path, SIZE, executor=executor, progress=False)
        assert contents(outputs) == contents(expected)
        # A second run on the same executor computes afresh (Dask would hand back the first run's results
        # for identical tasks): the deleted output is written again.
        os.remove(outputs[0])
        resampling_dataset(dataset, tmp_path, SIZE, executor=executor, progress=False)
        assert Path(outputs[0]).read_bytes() == Path(expected[0]).read_bytes()


def test_progress_bar_advances_per_finished_file(dataset, tmp_path, capsys):
    resampling_dataset(dataset, tmp_path, SIZE, workers=2)
    err = capsys.readouterr().err
    assert "5/5" in err and "Resampling" in err


START_METHOD = """
import multiprocessing, sys
from nidataset import resampling_dataset
folder, out = sys.argv[1:]
resampling_dataset(folder, out + "/serial", (9, 10, 7), progress=False)
resampling_dataset(folder, out + "/bar", (9, 10, 7))  # tqdm's first bar makes a multiprocessing lock
resampling_dataset(folder, out + "/pool", (9, 10, 7), workers=2)
print(multiprocessing.get_start_method(allow_none=True))
multiprocessing.set_start_method("spawn")  # the caller's choice is still open
"""


def test_the_process_start_method_is_left_to_the_caller(dataset, tmp_path):
    # Neither a serial run, with its bar or without, nor the local pool fix the process's start method.
    done = subprocess.run(
        [sys.executable, "-c", START_METHOD, str(dataset), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["None"]
    assert len(os.listdir(tmp_path / "pool")) == 5


POOL = """
import multiprocessing, sys
from nidataset import resampling_dataset
method, folder, out = sys.argv[1:]
multiprocessing.set_start_method(method)
print("\\n".join(resampling_dataset(folder, out, (9, 10, 7), workers=2, progress=False)))
"""

METHODS = [m for m in ("fork", "spawn", "forkserver") if m in multiprocessing.get_all_start_methods()]


@pytest.mark.parametrize("method", METHODS)
def test_the_pool_starts_its_processes_the_callers_way(dataset, serial, tmp_path, method):
    # With forkserver, the fork server (not the caller) is the pool processes' parent.
    done = subprocess.run(
        [sys.executable, "-c", POOL, method, str(dataset), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert contents(done.stdout.split()) == contents(serial[1])


ORPHANS = """
import multiprocessing, os, sys
import numpy as np
from helpers import write_nifti
from nidataset import resampling_dataset
method, folder = sys.argv[1:]
multiprocessing.set_start_method(method)
for i in range(12):
    write_nifti(os.path.join(folder, f"{i}.nii.gz"), np.ones((120, 120, 60), np.int16))
print("started", flush=True)
resampling_dataset(folder, os.path.join(folder, "out"), (240, 240, 120), workers=2, progress=False)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("method", METHODS)
def test_the_pool_ends_with_a_killed_caller(tmp_path, method):
    # Killed (SIGKILL: no cleanup of its own), the caller leaves no process of its pool behind.
    tests = os.path.dirname(__file__)
    caller = subprocess.Popen(
        [sys.executable, "-c", ORPHANS, method, str(tmp_path)],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": tests},
    )
    try:
        assert caller.stdout.readline() == b"started\n"
        deadline = time.monotonic() + 60
        while not any(name.endswith(".tmp") for _, _, names in os.walk(tmp_path / "out") for name in names):
            assert time.monotonic() < deadline, "no output was begun"  # by a process of the pool
            time.sleep(0.01)
        pool = descendants(
            caller.pid
        )  # (with spawn and forkserver, the resource tracker and fork server too)
        assert len(pool) >= 2
    finally:
        caller.kill()
        caller.wait()
        caller.stdout.close()
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in pool) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in pool if alive(pid)]


def test_failures_in_workers_are_reported_and_the_rest_written(dataset, tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    for path in Path(dataset).glob("*.nii.gz"):
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "case_2.nii.gz").write_bytes(b"corrupt")
    with pytest.raises(DatasetError) as info:
        resampling_dataset(folder, tmp_path / "out", SIZE, workers=2, progress=False)
    [(path, err)] = info.value.failures
    assert path.endswith("case_2.nii.gz") and "is not a readable NIfTI file" in str(err)
    assert len(info.value.outputs) == 4 and all(Path(p).is_file() for p in info.value.outputs)


def test_skip_existing_keeps_complete_outputs_untouched(dataset, serial, tmp_path):
    _, expected = serial
    first = resampling_dataset(dataset, tmp_path, SIZE, progress=False)
    os.remove(first[1])
    os.remove(first[3])
    kept = {p: os.stat(p) for p in first if os.path.exists(p)}
    outputs = resampling_dataset(dataset, tmp_path, SIZE, skip_existing=True, workers=2, progress=False)
    assert outputs == first
    for path, before in kept.items():
        after = os.stat(path)
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert contents(outputs) == contents(expected)


def test_without_skip_existing_outputs_are_rewritten(dataset, tmp_path):
    first = resampling_dataset(dataset, tmp_path, SIZE, saving_mode="folder", progress=False)
    inode = os.stat(first[0]).st_ino
    resampling_dataset(dataset, tmp_path, SIZE, saving_mode="folder", progress=False)
    assert os.stat(first[0]).st_ino != inode  # a new file, renamed into place


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"workers": 0}, ValueError, "workers must be a positive integer, got 0"),
        ({"workers": 1.5}, ValueError, "workers must be a positive integer, got 1.5"),
        ({"workers": True}, ValueError, "workers must be a positive integer, got True"),
        ({"executor": "dask"}, TypeError, "executor must be a concurrent.futures.Executor, got str"),
        ({"executor": ThreadPoolExecutor(1), "workers": 2}, ValueError, "give workers or executor, not both"),
    ],
)
def test_bad_parallel_arguments(dataset, tmp_path, kwargs, error, message):
    with pytest.raises(error, match=message):
        resampling_dataset(dataset, tmp_path / "out", SIZE, **kwargs)
    assert not (tmp_path / "out").exists()
