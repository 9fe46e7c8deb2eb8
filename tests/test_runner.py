"""`resampling_dataset()`: discovery, layouts, validation before work, and failures that do not stop."""

import functools
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from helpers import write_nifti
from nidataset import DatasetError, InvalidVolumeError
from nidataset.preprocessing import resampling_dataset

NAMES = ["patient_002", "patient_001", "patient_003"]


@pytest.fixture
def dataset(tmp_path, rng):
    folder = tmp_path / "scans"
    for i, name in enumerate(NAMES):
        shape = (10 + i, 12, 8 + 2 * i)
        write_nifti(folder / f"{name}.nii.gz", rng.integers(-100, 900, shape).astype(np.int16))
    (folder / "notes.txt").write_text("not a volume")
    write_nifti(folder / "legacy.nii", np.zeros((4, 4, 4), np.int16))  # .nii is not processed
    (folder / "sub").mkdir()
    write_nifti(folder / "sub" / "nested.nii.gz", np.zeros((4, 4, 4), np.int16))  # not directly inside
    return folder


def files_under(folder):
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*") if p.is_file())


def test_case_mode_layout(dataset, tmp_path):
    outputs = resampling_dataset(dataset, tmp_path / "out", (6, 6, 4), progress=False)
    expected = [f"{n}/{n}_resampled.nii.gz" for n in sorted(NAMES)]
    assert files_under(tmp_path / "out") == expected
    assert outputs == [str(tmp_path / "out" / e) for e in expected]  # input (name) order
    assert all(nib.load(p).shape == (6, 6, 4) for p in outputs)


def test_folder_mode_layout(dataset, tmp_path):
    outputs = resampling_dataset(dataset, tmp_path / "out", (6, 6, 4), saving_mode="folder", progress=False)
    expected = [f"{n}_resampled.nii.gz" for n in sorted(NAMES)]
    assert files_under(tmp_path / "out") == expected
    assert outputs == [str(tmp_path / "out" / e) for e in expected]


def test_same_values_as_single_file_resampling(dataset, tmp_path):
    from nidataset import resampling

    [first, *_] = resampling_dataset(
        dataset, tmp_path / "out", (6, 5, 4), saving_mode="folder", progress=False
    )
    single = resampling(dataset / "patient_001.nii.gz", tmp_path / "single", (6, 5, 4))
    assert Path(first).read_bytes() == Path(single).read_bytes()


def test_progress_bar_on_stderr_and_debug_summary_on_stdout(dataset, tmp_path, capsys):
    resampling_dataset(dataset, tmp_path / "out", (4, 4, 4), debug=True)
    captured = capsys.readouterr()
    assert captured.out == f"Resampling completed for all files in '{dataset}'\n"
    assert "3/3" in captured.err and "file" in captured.err


def test_silent_without_debug_and_progress(dataset, tmp_path, capsys):
    resampling_dataset(dataset, tmp_path / "out", (4, 4, 4), progress=False)
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"desired_volume": (4, 4)}, ValueError, "desired_volume must be three positive integers"),
        ({"desired_volume": (4, 4, 0)}, ValueError, "desired_volume"),
        ({"saving_mode": "flat"}, ValueError, "saving_mode must be 'case' or 'folder', got 'flat'"),
        ({"nii_folder": "missing"}, FileNotFoundError, "the dataset folder '.*missing' does not exist"),
        ({"nii_folder": "empty"}, FileNotFoundError, r"no '\.nii\.gz' files in '.*empty'"),
        ({"nii_folder": "only_other"}, FileNotFoundError, r"no '\.nii\.gz' files"),
        (
            {"nii_folder": "a_file"},
            FileNotFoundError,
            r"the dataset folder '.*a_file' is a file, not a folder",
        ),
        ({"output_path": "a_file"}, NotADirectoryError, r"output folder '.*a_file': it is not a folder"),
        (
            {"output_path": "a_file/out"},
            NotADirectoryError,
            r"output folder '.*a_file/out': '.*a_file' is not",
        ),
    ],
)
def test_arguments_checked_before_any_work(dataset, tmp_path, kwargs, error, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "only_other").mkdir()
    (tmp_path / "only_other" / "a.nii").write_bytes(b"")
    (tmp_path / "a_file").write_bytes(b"")
    args = {"nii_folder": dataset, "output_path": tmp_path / "out", "desired_volume": (4, 4, 4)}
    args.update(kwargs)
    for name in ("nii_folder", "output_path"):
        if isinstance(args[name], str):
            args[name] = tmp_path / args[name]
    with pytest.raises(error, match=message):
        resampling_dataset(**args, progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("mode", ["case", "folder"])
def test_failures_do_not_stop_the_others(dataset, tmp_path, mode):
    (dataset / "patient_0015.nii.gz").write_bytes(b"corrupt")
    write_nifti(dataset / "patient_4d.nii.gz", np.zeros((4, 4, 4, 2), np.int16))
    with pytest.raises(DatasetError) as info:
        resampling_dataset(dataset, tmp_path / "out", (4, 4, 4), saving_mode=mode, progress=False)
    err = info.value
    assert isinstance(err, RuntimeError)
    assert [os.path.basename(p) for p, _ in err.failures] == ["patient_0015.nii.gz", "patient_4d.nii.gz"]
    message = str(err)
    assert message.startswith("2 of 5 files failed:")
    assert "patient_0015.nii.gz' is not a readable NIfTI file" in message
    assert "patient_4d.nii.gz' is not a 3D volume: its shape is (4, 4, 4, 2)" in message
    # Every good file was written, including the one after the failures.
    assert len(err.outputs) == 3 and all(Path(p).is_file() for p in err.outputs)
    assert sum(name.endswith("_resampled.nii.gz") for name in files_under(tmp_path / "out")) == 3


def test_no_completion_message_when_files_failed(dataset, tmp_path, capsys):
    (dataset / "bad.nii.gz").write_bytes(b"corrupt")
    with pytest.raises(DatasetError):
        resampling_dataset(dataset, tmp_path / "out", (4, 4, 4), debug=True, progress=False)
    assert capsys.readouterr().out == ""


def test_a_case_folder_never_escapes_the_output(tmp_path):
    folder = tmp_path / "scans"
    write_nifti(folder / "...nii.gz", np.zeros((4, 4, 4), np.int16))  # prefix ".." would be the parent
    write_nifti(folder / "ok.nii.gz", np.zeros((4, 4, 4), np.int16))
    out = tmp_path / "deep" / "out"
    with pytest.raises(DatasetError, match=r"cannot name a case folder: its prefix is '\.\.'"):
        resampling_dataset(folder, out, (2, 2, 2), progress=False)
    assert files_under(tmp_path / "deep") == ["out/ok/ok_resampled.nii.gz"]
    # In folder mode the same file is an ordinary output name inside the output folder.
    resampling_dataset(folder, out, (2, 2, 2), saving_mode="folder", progress=False)
    assert (out / ".._resampled.nii.gz").is_file()


def test_stale_temporaries_of_dead_writers_on_this_host_are_removed(tmp_path):
    import socket
    import subprocess
    import sys

    folder = tmp_path / "scans"
    write_nifti(folder / "ok.nii.gz", np.zeros((4, 4, 4), np.int16))
    out = tmp_path / "out"
    (out / "ok").mkdir(parents=True)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)  # exited and reaped: no such process any more
    host = socket.gethostname()
    stale = out / "ok" / f".ok_resampled.nii.gz.{host}.{dead_pid}.0a1b2c3d.tmp"
    alive = out / "ok" / f".ok_resampled.nii.gz.{host}.{os.getpid()}.0a1b2c3d.tmp"
    other_host = out / "ok" / f".ok_resampled.nii.gz.elsewhere.example.org.{dead_pid}.0a1b2c3d.tmp"
    unrelated = [out / "ok" / ".notes.tmp", out / "ok" / ".x.nii.gz.host.notapid.y.tmp", out / ".cache"]
    for path in [stale, alive, other_host, *unrelated]:
        path.write_bytes(b"partial")
    resampling_dataset(folder, out, (2, 2, 2), progress=False)
    assert not stale.exists()
    assert all(p.exists() for p in [alive, other_host, *unrelated])


def test_every_entry_that_is_not_a_regular_file_fails_alone(dataset, tmp_path):
    # Named like volumes, none of them is one; each is reported with its reason, the good files are written.
    (dataset / "a_loop.nii.gz").symlink_to("a_loop.nii.gz")
    (dataset / "b_dangling.nii.gz").symlink_to("nowhere.nii.gz")
    (dataset / "c_folder.nii.gz").mkdir()
    os.mkfifo(dataset / "d_fifo.nii.gz")  # opening it would wait for a writer forever
    (dataset / "e_link.nii.gz").symlink_to(dataset / "patient_001.nii.gz")  # a link to a file is a file
    with pytest.raises(DatasetError) as info:
        resampling_dataset(dataset, tmp_path / "out", (4, 4, 4), saving_mode="folder", progress=False)
    reasons = {os.path.basename(path): (type(err), str(err)) for path, err in info.value.failures}
    assert reasons == {
        "a_loop.nii.gz": (
            OSError,
            f"[Errno 40] the input file '{dataset}/a_loop.nii.gz' is a loop of symbolic links",
        ),
        "b_dangling.nii.gz": (
            FileNotFoundError,
            f"the input file '{dataset}/b_dangling.nii.gz' is a symbolic link to 'nowhere.nii.gz', "
            "which does not exist",
        ),
        "c_folder.nii.gz": (
            IsADirectoryError,
            f"'{dataset}/c_folder.nii.gz' is a folder, not a '.nii.gz' file "
            "(resampling_dataset() resamples a folder)",
        ),
        "d_fifo.nii.gz": (InvalidVolumeError, f"'{dataset}/d_fifo.nii.gz' is a FIFO, not a regular file"),
    }
    written = sorted(f"{n}_resampled.nii.gz" for n in [*NAMES, "e_link"])
    assert files_under(tmp_path / "out") == written


def test_a_run_never_takes_its_own_outputs_as_inputs(dataset):
    first = resampling_dataset(dataset, dataset, (4, 4, 4), saving_mode="folder", progress=False)
    # The rerun finds patient_001_resampled.nii.gz ... among its inputs: they are this run's outputs.
    again = resampling_dataset(dataset, dataset, (4, 4, 4), saving_mode="folder", progress=False)
    assert again == first
    stamps = {path: os.stat(path).st_mtime_ns for path in again}
    assert not any(name.endswith("_resampled_resampled.nii.gz") for name in os.listdir(dataset))
    # A file only named like an output, with no input of its own, is an input like any other.
    os.rename(dataset / "patient_003.nii.gz", dataset / "other_resampled.nii.gz")
    os.remove(dataset / "patient_003_resampled.nii.gz")
    last = resampling_dataset(
        dataset, dataset, (4, 4, 4), saving_mode="folder", progress=False, skip_existing=True
    )
    assert os.path.basename(last[0]) == "other_resampled_resampled.nii.gz"
    assert all(os.stat(path).st_mtime_ns == stamps[path] for path in last[1:])


def test_output_folder_refused_before_any_input_is_read(dataset, tmp_path, monkeypatch):
    from nidataset import _nifti, resampling

    opened = []
    monkeypatch.setattr(_nifti, "open_volume", lambda path: opened.append(path))
    (tmp_path / "blocker").write_text("in the way")
    with pytest.raises(NotADirectoryError, match="is not a folder"):
        resampling_dataset(dataset, tmp_path / "blocker" / "out", (4, 4, 4), progress=False)
    with pytest.raises(NotADirectoryError, match="is not a folder"):
        resampling(dataset / "patient_001.nii.gz", tmp_path / "blocker", (4, 4, 4))
    assert opened == []


def test_threads_take_turns_and_one_waiting_for_its_turn_stops_when_asked():
    import threading
    import time

    from nidataset._runner import _Turns

    stop = threading.Event()
    turns = _Turns(1, stop)
    opened, order = [], []  # files past their opening; files that took their turn

    def making_way(path, stop, ready, waiting, release):
        opened.append(path)
        ready()
        order.append(path)
        waiting()  # only the store's part is left: the next file may compute
        release.wait(10)
        return path

    def holding(path, stop, ready, waiting, release):  # never makes way
        opened.append(path)
        ready()
        order.append(path)
        release.wait(10)
        return path

    def quick(path, stop, ready, waiting):
        opened.append(path)
        ready()
        order.append(path)
        return path

    def in_thread(job, path):
        release = threading.Event()
        thread = threading.Thread(target=turns.run, args=(functools.partial(job, release=release), path))
        thread.start()
        deadline = time.monotonic() + 10
        while path not in order and time.monotonic() < deadline:
            time.sleep(0.01)
        assert path in order
        return thread, release

    thread, release = in_thread(making_way, "a")
    assert turns.run(quick, "b") == "b"  # while "a" still waits on its store
    release.set()
    thread.join(10)

    thread, release = in_thread(holding, "c")
    waiter = threading.Thread(target=lambda: order.append(catch(turns.run, quick, "d")))
    waiter.start()
    time.sleep(0.3)
    assert opened == ["a", "b", "c", "d"] and order == ["a", "b", "c"]  # "d" opened, waits for its turn
    stop.set()
    waiter.join(2)
    assert not waiter.is_alive() and order[-1] == "KeyboardInterrupt"  # stopped while it waited
    order.pop()
    release.set()
    thread.join(10)
    # A turn given back by a file that stops is not taken by another once the run is asked to stop.
    assert catch(turns.run, quick, "e") == "KeyboardInterrupt" and order == ["a", "b", "c"]
    assert turns.run(lambda path, stop, ready, waiting: path, "f") == "f"  # kept: never asks for a turn


def catch(call, *args):
    try:
        return call(*args)
    except KeyboardInterrupt:
        return "KeyboardInterrupt"
