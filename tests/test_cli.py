"""The ``nidataset`` command: `main([...])` in process; real processes for the console script and kills."""

import gzip
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from helpers import child_processes, write_nifti
from nidataset import resampling_dataset
from nidataset._phantom import ct_phantom
from nidataset.cli import main


@pytest.fixture
def scans(tmp_path, rng):
    folder = tmp_path / "scans"
    for name in ("b", "a", "c"):
        write_nifti(folder / f"{name}.nii.gz", rng.integers(0, 1000, (12, 11, 10)).astype(np.int16))
    return folder


def test_single_file(scans, tmp_path, capsys):
    assert main(["resample", str(scans / "a.nii.gz"), str(tmp_path / "out"), "--size", "6", "5", "4"]) == 0
    assert nib.load(tmp_path / "out" / "a_resampled.nii.gz").shape == (6, 5, 4)
    assert capsys.readouterr().out == ""


def test_single_file_case_mode_and_debug(scans, tmp_path, capsys):
    out = str(tmp_path / "out")
    argv = ["resample", str(scans / "a.nii.gz"), out, "--size", "6", "5", "4", "--mode", "case", "--debug"]
    assert main(argv) == 0
    assert capsys.readouterr().out == f"Resampled image saved at: '{out}/a/a_resampled.nii.gz'\n"


@pytest.mark.parametrize(
    ("mode", "layout"), [("case", "{0}/{0}_resampled.nii.gz"), ("folder", "{0}_resampled.nii.gz")]
)
def test_folder(scans, tmp_path, capsys, mode, layout):
    argv = ["resample", str(scans), str(tmp_path / "out"), "--size", "4", "4", "4", "--mode", mode, "--debug"]
    assert main(argv) == 0
    for name in "abc":
        assert (tmp_path / "out" / layout.format(name)).is_file()
    captured = capsys.readouterr()
    assert captured.out == f"Resampling completed for all files in '{scans}'\n"
    assert "3/3" in captured.err  # the progress bar


def test_folder_defaults_to_case_mode_and_workers(scans, tmp_path):
    assert (
        main(["resample", str(scans), str(tmp_path / "out"), "--size", "4", "4", "4", "--workers", "2"]) == 0
    )
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a", "b", "c"]


def test_some_files_fail_exit_1_each_named(scans, tmp_path, capsys):
    (scans / "broken.nii.gz").write_bytes(b"not gzip")
    write_nifti(scans / "flat.nii.gz", np.zeros((5, 5), np.int16))
    assert (
        main(["resample", str(scans), str(tmp_path / "out"), "--size", "4", "4", "4", "--mode", "folder"])
        == 1
    )
    err = capsys.readouterr().err
    assert (
        f"nidataset: failed: {scans / 'broken.nii.gz'}: '{scans / 'broken.nii.gz'}' is not a readable NIfTI"
        in err
    )
    assert "flat.nii.gz' is not a 3D volume: its shape is (5, 5)" in err
    assert "nidataset: 2 of 5 files failed" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{n}_resampled.nii.gz" for n in "abc"]


def test_single_file_failure_exit_1(tmp_path, capsys):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"\x1f\x8b garbage")
    assert main(["resample", str(bad), str(tmp_path / "out"), "--size", "4", "4", "4"]) == 1
    assert f"nidataset: failed: {bad}: '{bad}' is not a readable NIfTI file" in capsys.readouterr().err


def test_output_that_cannot_be_created_exit_1(scans, tmp_path, capsys):
    (tmp_path / "blocker").write_text("a file in the way")
    target = tmp_path / "blocker" / "out"
    assert main(["resample", str(scans), str(target), "--size", "4", "4", "4"]) == 1
    err = capsys.readouterr().err
    # Refused once, before any input is read: not one failure per file.
    expected = f"cannot write in the output folder '{target}': '{target.parent}' is not a folder"
    assert err == f"nidataset: failed: {expected}\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["resample", "{scans}", "{out}", "--size", "4", "4"], "expected 3 arguments"),
        (["resample", "{scans}", "{out}", "--size", "4", "0", "4"], "expected a positive integer, got '0'"),
        (["resample", "{scans}", "{out}", "--size", "4", "x", "4"], "expected a positive integer, got 'x'"),
        (
            ["resample", "{scans}", "{out}", "--size", "4", "4", "4", "--mode", "flat"],
            "invalid choice: 'flat'",
        ),
        (
            ["resample", "{scans}", "{out}", "--size", "4", "4", "4", "--workers", "0"],
            "positive integer, got '0'",
        ),
        (["resample", "{scans}/none", "{out}", "--size", "4", "4", "4"], "INPUT '.*none' does not exist"),
        (
            ["resample", "{scans}/notes.txt", "{out}", "--size", "4", "4", "4"],
            r"must be a folder or a '\.nii\.gz' file",
        ),
        (["resample", "{empty}", "{out}", "--size", "4", "4", "4"], r"no '\.nii\.gz' files in"),
        (
            ["resample", "{raw}", "{out}", "--size", "4", "4", "4"],
            r"no '\.nii\.gz' files in .*raw' \(it holds 2 '\.nii' files, uncompressed NIfTI: gzip them first",
        ),
        (
            ["resample", "{raw}/a.nii", "{out}", "--size", "4", "4", "4"],
            r"got '.*a\.nii' \('\.nii' is uncompressed NIfTI: gzip it first, e\.g\. gzip -k FILE\.nii\)",
        ),
        (
            [
                "resample",
                "{scans}",
                "{out}",
                "--size",
                "4",
                "4",
                "4",
                "--workers",
                "2",
                "--scheduler",
                "tcp://x:1",
            ],
            "give --workers or --scheduler, not both",
        ),
        (
            ["resample", "{scans}", "{out}", "--size", "4", "4", "4", "--scheduler", "nonsense://x"],
            "cannot connect",
        ),
        (
            ["resample", "{scans}/a.nii.gz", "{out}/a.nii.gz", "--size", "4", "4", "4"],
            r"OUTPUT is the folder the results go in, got '.*/out/a\.nii\.gz', which names a file",
        ),
        (
            ["resample", "{scans}", "s3://bucket/out/a.nii.gz", "--size", "4", "4", "4"],
            r"got 's3://bucket/out/a\.nii\.gz', which names a file: each result is named <PREFIX>_resampled",
        ),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        ([], "required: COMMAND"),
    ],
)
def test_usage_errors_exit_2(scans, tmp_path, capsys, argv, message):
    (scans / "notes.txt").write_text("hello")
    (tmp_path / "empty").mkdir()
    (tmp_path / "raw").mkdir()
    for name in ("a.nii", "b.nii"):
        (tmp_path / "raw" / name).write_bytes(b"")
    fields = {"scans": scans, "out": tmp_path / "out", "empty": tmp_path / "empty", "raw": tmp_path / "raw"}
    with pytest.raises(SystemExit) as info:
        main([a.format(**fields) for a in argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: nidataset")
    assert __import__("re").search(message, err), err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where", ["input", "output"])
def test_a_url_without_fsspec_is_a_usage_error(scans, tmp_path, capsys, monkeypatch, where):
    monkeypatch.setitem(sys.modules, "fsspec", None)  # as if the cloud extra were not installed
    monkeypatch.setitem(sys.modules, "fsspec.core", None)
    url = "s3://bucket/scans/"
    argv = [url, str(tmp_path / "out")] if where == "input" else [str(scans), url]
    with pytest.raises(SystemExit) as info:
        main(["resample", *argv, "--size", "4", "4", "4"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"error: '{url}' is a URL: reading and writing URLs needs fsspec" in err
    assert "pip install 'nidataset[cloud]'" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_help_shows_examples_and_exit_codes(capsys):
    with pytest.raises(SystemExit) as info:
        main(["resample", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:\n  nidataset resample scans/patient_001.nii.gz resampled/ --size 224 224 128" in out
    assert (
        "--size 224 224 128 \\\n      --scheduler tcp://" in out
    )  # a command on two lines, as a shell reads it
    assert "exit status: 0 all written, 1 some files failed" in out


def test_skip_existing(scans, tmp_path):
    out = tmp_path / "out"
    args = ["resample", str(scans), str(out), "--size", "4", "4", "4", "--mode", "folder"]
    assert main(args) == 0
    kept = out / "b_resampled.nii.gz"
    before = os.stat(kept)
    (out / "a_resampled.nii.gz").unlink()
    assert main([*args, "--skip-existing"]) == 0
    assert (out / "a_resampled.nii.gz").is_file()
    assert os.stat(kept).st_mtime_ns == before.st_mtime_ns and os.stat(kept).st_ino == before.st_ino
    single = ["resample", str(scans / "b.nii.gz"), str(out), "--size", "4", "4", "4", "--skip-existing"]
    assert main(single) == 0 and os.stat(kept).st_ino == before.st_ino


def test_a_client_that_cannot_connect_is_closed_at_once(scans, tmp_path, monkeypatch):
    # Left to the garbage collector, its close ran inside a later Client's start, which held the lock
    # that close waits for: the process hung (distributed's LoopRunner).
    import weakref

    distributed = pytest.importorskip("distributed")
    made = []
    real_init = distributed.Client.__init__

    def init(self, *args, **kwargs):
        made.append(weakref.ref(self))
        return real_init(self, *args, **kwargs)

    monkeypatch.setattr(distributed.Client, "__init__", init)
    with pytest.raises(SystemExit) as info:
        main(
            [
                "resample",
                str(scans),
                str(tmp_path / "out"),
                "--size",
                "4",
                "4",
                "4",
                "--scheduler",
                "nonsense://x",
            ]
        )
    assert info.value.code == 2
    assert made and all(ref() is None for ref in made)


def test_dask_scheduler(scans, tmp_path):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        host="127.0.0.1",
        scheduler_port=0,  # every port chosen by the OS: the scheduler's HTTP routes too (default 8787)
        dashboard_address=None,
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
    ) as cluster:
        argv = ["resample", str(scans), str(tmp_path / "dask"), "--size", "5", "5", "5", "--mode", "folder"]
        assert main([*argv, "--scheduler", cluster.scheduler_address]) == 0
    assert (
        main(["resample", str(scans), str(tmp_path / "local"), "--size", "5", "5", "5", "--mode", "folder"])
        == 0
    )
    for name in "abc":
        file = f"{name}_resampled.nii.gz"
        assert (tmp_path / "dask" / file).read_bytes() == (tmp_path / "local" / file).read_bytes()


def test_main_from_another_thread_changes_no_process_setting(scans, tmp_path, monkeypatch):
    # Signals reach the main thread only: from another, main() leaves the handler and hook alone, so that
    # calls in several threads cannot put back each other's.
    import nidataset.cli

    seen = []
    real = nidataset.cli._resample

    def spy(*args):
        seen.append((sys.unraisablehook, signal.getsignal(signal.SIGINT)))
        return real(*args)

    monkeypatch.setattr(nidataset.cli, "_resample", spy)
    before = (sys.unraisablehook, signal.getsignal(signal.SIGINT))
    status = []
    thread = threading.Thread(
        target=lambda: status.append(
            main(["resample", str(scans), str(tmp_path / "out"), "--size", "4", "4", "4"])
        )
    )
    thread.start()
    thread.join()
    assert status == [0]
    assert seen == [before]
    assert (sys.unraisablehook, signal.getsignal(signal.SIGINT)) == before


def run_command(*args, **kwargs):
    return subprocess.run(args, capture_output=True, text=True, timeout=120, **kwargs)


def test_python_m_and_console_script(scans, tmp_path):
    done = run_command(
        sys.executable,
        "-m",
        "nidataset",
        "resample",
        str(scans),
        str(tmp_path / "m"),
        "--size",
        "3",
        "3",
        "3",
    )
    assert done.returncode == 0, done.stderr
    script = Path(sys.executable).with_name("nidataset")
    assert script.is_file()
    done = run_command(str(script), "resample", "--help")
    assert done.returncode == 0 and "examples:" in done.stdout
    done = run_command(str(script), "resample", str(scans), str(tmp_path / "x"), "--size", "0", "1", "1")
    assert done.returncode == 2 and "positive integer" in done.stderr


@pytest.fixture(scope="module")
def kill_dataset(tmp_path_factory):
    """Six CT-like scans, and their outputs from an uninterrupted run."""
    folder = tmp_path_factory.mktemp("kill-scans")
    for i in range(6):
        data, affine = ct_phantom((96, 96, 48), seed=i)
        nib.save(nib.Nifti1Image(data, affine), folder / f"scan_{i}.nii.gz")
    clean = tmp_path_factory.mktemp("kill-clean")
    resampling_dataset(folder, clean, (208, 208, 96), saving_mode="folder", progress=False)
    return folder, clean


class TestKill:
    """SIGKILL a running command at the worst moments, then resume it with --skip-existing."""

    @staticmethod
    def listing(folder):
        return sorted(os.listdir(folder)) if os.path.isdir(folder) else []

    @pytest.mark.parametrize("moment", ["first write", "later write"])
    def test_kill_leaves_only_complete_outputs_and_resume_finishes(self, kill_dataset, tmp_path, moment):
        scans, clean = kill_dataset
        out = tmp_path / "out"
        command = [sys.executable, "-m", "nidataset", "resample", str(scans), str(out)]
        command += ["--size", "208", "208", "96", "--mode", "folder"]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        try:
            while True:  # kill the moment a temporary file shows that an output is being written
                names = self.listing(out)
                writing = [n for n in names if n.endswith(".tmp")]
                done = [n for n in names if n.endswith(".nii.gz")]
                if writing and (moment == "first write" or len(done) >= 2):
                    break
                assert process.poll() is None, "the command finished before it could be killed"
                assert time.monotonic() < deadline
                time.sleep(0.0005)
        finally:
            process.kill()
            process.wait()
        assert process.returncode == -9

        names = self.listing(out)
        complete = [n for n in names if n.endswith(".nii.gz")]
        assert len(complete) < 6
        for name in names:  # under final names only complete, readable outputs; the rest hidden
            if name.endswith(".nii.gz"):
                assert not name.startswith(".")
                assert (out / name).read_bytes() == (clean / name).read_bytes()
                gzip.decompress((out / name).read_bytes())
                assert nib.load(out / name).get_fdata().shape == (208, 208, 96)
            else:
                assert name.startswith(".") and name.endswith(".tmp"), name
        before = {name: os.stat(out / name) for name in complete}

        resumed = run_command(*command, "--skip-existing")
        assert resumed.returncode == 0, resumed.stderr
        assert self.listing(out) == sorted(
            f"scan_{i}_resampled.nii.gz" for i in range(6)
        )  # leftovers cleared
        for name, stat in before.items():
            assert (os.stat(out / name).st_ino, os.stat(out / name).st_mtime_ns) == (
                stat.st_ino,
                stat.st_mtime_ns,
            )
        for name in self.listing(out):
            assert (out / name).read_bytes() == (clean / name).read_bytes()


def interrupt_while_writing(scans, out, workers, presses=1, group=True):
    """Run the command on `scans`; Ctrl-C it `presses` times (20 ms apart) while an output is written.

    SIGINT goes to the command's process group, as a terminal sends it (or, unless `group`, to the
    command's process alone, as ``kill -INT`` or a notebook's interrupt does). Returns the exit status, the
    lines of stderr besides the progress bar, and the command's child processes seen before the first press.
    """
    command = [sys.executable, "-m", "nidataset", "resample", str(scans), str(out)]
    command += ["--size", "208", "208", "96", "--mode", "folder", "--workers", workers]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.monotonic() + 120
    try:
        while not any(n.endswith(".tmp") for n in TestKill.listing(out)):  # an output is being written
            assert process.poll() is None, "the command finished before it could be interrupted"
            assert time.monotonic() < deadline
            time.sleep(0.0005)
        children = child_processes(process.pid)
        for press in range(presses):
            if press:
                time.sleep(0.02)
            (os.killpg if group else os.kill)(process.pid, signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    lines = [line for line in err.replace("\r", "\n").splitlines() if line and "Resampling" not in line]
    return process.returncode, lines, children


class TestInterrupt:
    """Ctrl-C (SIGINT to the command's process group, as a terminal sends it) while an output is written."""

    @pytest.mark.parametrize("workers", ["1", "2"])
    def test_ctrl_c_exits_130_with_one_line_and_leaves_nothing_partial(self, kill_dataset, tmp_path, workers):
        scans, clean = kill_dataset
        out = tmp_path / "out"
        returncode, lines, _ = interrupt_while_writing(scans, out, workers)
        assert returncode == 130
        assert len(lines) == 1, lines
        assert lines[0].startswith("nidataset: interrupted; ")
        assert "run it again with --skip-existing to finish the rest" in lines[0]
        names = TestKill.listing(out)
        assert f"{len(names)} of 6 outputs complete" in lines[0]
        for name in names:  # no temporary file: only complete outputs
            assert (out / name).read_bytes() == (clean / name).read_bytes()

    def test_sigint_to_the_command_alone_stops_the_files_of_its_pool(self, kill_dataset, tmp_path):
        # The pool's processes do not get the signal: the command tells them, and the files they work
        # on stop at their next slab instead of running to the end (6 files, 2 at once).
        scans, clean = kill_dataset
        out = tmp_path / "out"
        returncode, lines, _ = interrupt_while_writing(scans, out, "2", group=False)
        assert returncode == 130
        assert len(lines) == 1 and lines[0].startswith("nidataset: interrupted; "), lines
        names = TestKill.listing(out)
        assert len(names) <= 1, names  # the two in progress did not go on (nor did a third start)
        for name in names:
            assert (out / name).read_bytes() == (clean / name).read_bytes()


def test_a_single_file_in_case_mode_never_writes_outside_output(tmp_path, capsys):
    # "...nii.gz": its prefix ".." cannot name a case folder (it would be OUTPUT's parent).
    scans, out = tmp_path / "scans", tmp_path / "deep" / "out"
    scans.mkdir()
    write_nifti(scans / "...nii.gz", np.ones((6, 6, 6), np.int16))
    status = main(["resample", str(scans / "...nii.gz"), str(out), "--size", "4", "4", "4", "--mode", "case"])
    assert status == 1
    assert "cannot name a case folder: its prefix is '..'" in capsys.readouterr().err
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "scans",
        "scans/...nii.gz",
    ]


def test_each_bad_entry_of_a_folder_is_one_line(scans, tmp_path, capsys):
    (scans / "loop.nii.gz").symlink_to("loop.nii.gz")
    os.mkfifo(scans / "pipe.nii.gz")
    assert main(["resample", str(scans), str(tmp_path / "out"), "--size", "4", "4", "4"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("nidataset")]
    assert err == [
        f"nidataset: failed: {scans}/loop.nii.gz: "
        f"the input file '{scans}/loop.nii.gz' is a loop of symbolic links",
        f"nidataset: failed: {scans}/pipe.nii.gz: '{scans}/pipe.nii.gz' is a FIFO, not a regular file",
        "nidataset: 2 of 5 files failed",
    ]
    assert sorted(os.listdir(tmp_path / "out")) == ["a", "b", "c"]


def test_single_file_errors_are_one_line(scans, tmp_path, capsys, monkeypatch):
    os.mkfifo(scans / "pipe.nii.gz")
    assert main(["resample", str(scans / "pipe.nii.gz"), str(tmp_path / "out"), "--size", "4", "4", "4"]) == 1
    assert capsys.readouterr().err == (
        f"nidataset: failed: {scans}/pipe.nii.gz: '{scans}/pipe.nii.gz' is a FIFO, not a regular file\n"
    )
    # Whatever a file raises, the command says it in one line (the library's own errors name the file).
    from nidataset import _pipeline

    def fail(*args, **kwargs):
        raise RuntimeError("something no one foresaw")

    monkeypatch.setattr(_pipeline, "_Run", fail)
    assert main(["resample", str(scans / "a.nii.gz"), str(tmp_path / "out"), "--size", "4", "4", "4"]) == 1
    assert capsys.readouterr().err == (f"nidataset: failed: {scans}/a.nii.gz: something no one foresaw\n")


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("nodir/sub/a.png", "the folder of '{tmp}/nodir/sub/a.png' does not exist"),
        (
            "a.gif",
            "-o must end in one of .png, .pdf, .svg, .jpg, .jpeg (the picture's format), got '{tmp}/a.gif'",
        ),
    ],
)
def test_preview_output_checked_first(scans, tmp_path, capsys, output, message):
    argv = ["preview", str(scans / "a.nii.gz"), str(scans / "b.nii.gz"), "-o", str(tmp_path / output)]
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.endswith(f"error: {message.format(tmp=tmp_path)}\n")
    assert ".tmp" not in err and os.listdir(tmp_path) == ["scans"]


def test_version(capsys):
    import nidataset

    with pytest.raises(SystemExit) as info:
        main(["-V"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"nidataset {nidataset.__version__}\n"
    from importlib.metadata import version

    assert version("nidataset") == nidataset.__version__  # one source: the metadata reads __version__


def test_quiet_verbose_and_kept_files(scans, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["resample", str(scans), str(out), "--size", "4", "4", "4", "-q", "-v"]) == 0
    err = capsys.readouterr().err
    assert "Resampling" not in err  # no progress bar
    lines = err.splitlines()
    assert len(lines) == 3 and all(line.startswith("nidataset: resampled ") for line in lines)
    (out / "b" / "b_resampled.nii.gz").unlink()
    argv = ["resample", str(scans), str(out), "--size", "4", "4", "4", "-q", "--skip-existing", "--debug"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [
        f"Resampling completed for all files in '{scans}'",
        f"Kept existing output: '{out}/a/a_resampled.nii.gz'",
        f"Kept existing output: '{out}/c/c_resampled.nii.gz'",
    ]
    assert captured.err == ""  # quiet, and -v was not given again


def test_workers_or_scheduler_with_one_file_is_a_usage_error(scans, tmp_path, capsys):
    for extra in (["--workers", "2"], ["--scheduler", "tcp://127.0.0.1:1"]):
        with pytest.raises(SystemExit) as info:
            main(
                ["resample", str(scans / "a.nii.gz"), str(tmp_path / "out"), "--size", "4", "4", "4", *extra]
            )
        assert info.value.code == 2
        assert "share out the files of a folder; INPUT is one file" in capsys.readouterr().err


def test_unreachable_scheduler_fails_within_10_s(scans, tmp_path, capsys):
    pytest.importorskip("distributed")
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{probe.getsockname()[1]}"
    start = time.monotonic()
    with pytest.raises(SystemExit) as info:
        main(["resample", str(scans), str(tmp_path / "out"), "--size", "4", "4", "4", "--scheduler", address])
    assert time.monotonic() - start < 10
    assert info.value.code == 2
    assert f"cannot connect to the Dask scheduler at '{address}'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc for the pool's processes")
def test_ctrl_c_twice_with_workers_ends_every_process(kill_dataset, tmp_path):
    # A second Ctrl-C landing in the pool's shutdown once made it wait forever for processes that were
    # never told to stop (and, killed then, left them running with no parent).
    scans, clean = kill_dataset
    out = tmp_path / "out"
    returncode, lines, pool = interrupt_while_writing(scans, out, "2", presses=2)
    assert returncode == 130
    assert len(lines) == 1 and lines[0].startswith("nidataset: interrupted; "), lines
    assert pool, "no pool process was seen"
    time.sleep(0.5)
    for pid in pool:  # every pool process has ended
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    for name in TestKill.listing(out):
        assert (out / name).read_bytes() == (clean / name).read_bytes()


def test_a_folder_that_cannot_be_listed_is_reported_not_a_traceback(scans, tmp_path, capsys, monkeypatch):
    from nidataset import cli

    def refuse(path):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(cli.os, "listdir", refuse)  # what the command lists itself (the library scans)
    monkeypatch.setattr(cli.os, "scandir", refuse)
    assert main(["resample", str(scans), str(tmp_path / "out"), "--size", "4", "4", "4", "-q"]) == 1
    assert capsys.readouterr().err == f"nidataset: failed: Permission denied: '{scans}'\n"


def test_outputs_among_the_inputs_are_not_counted_as_inputs(scans, tmp_path):
    from nidataset import cli

    argv = ["resample", str(scans), str(scans), "--size", "4", "4", "4", "--mode", "folder", "-q"]
    assert main(argv) == 0
    args = cli._get_parser().parse_args(argv)
    stamps = cli._stamps(args)
    assert sorted(os.path.basename(t) for t in stamps) == [f"{n}_resampled.nii.gz" for n in "abc"]
    assert all(stamp is not None for stamp in stamps.values())


def test_a_line_break_in_a_file_name_stays_on_its_line(tmp_path, capsys):
    folder = tmp_path / "scans"
    folder.mkdir()
    (folder / "two\nlines.nii.gz").write_bytes(b"not gzip")
    assert main(["resample", str(folder), str(tmp_path / "out"), "--size", "4", "4", "4", "-q"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[0].startswith(f"nidataset: failed: {folder}/two\\nlines.nii.gz: ")


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="sends SIGINT to this thread")
@pytest.mark.parametrize("store", ["silent", "gone"])
def test_the_report_of_an_interrupt_never_holds_the_command(scans, tmp_path, monkeypatch, capsys, store):
    # After a Ctrl-C the command counts the outputs again, which may ask a store that no longer answers:
    # a second Ctrl-C cuts the count short. A store that cannot be listed is not "0 of 0 complete".
    from nidataset import cli

    listings = []

    def stamps(args):
        listings.append(args)
        if len(listings) == 1:
            return {str(tmp_path / "out" / "a_resampled.nii.gz"): None}
        if store == "gone":
            return {}
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # the second Ctrl-C
        time.sleep(60)  # a store that does not answer
        raise AssertionError("the second Ctrl-C did not end the count")

    def interrupted(args, command, before):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_stamps", stamps)
    monkeypatch.setattr(cli, "_resample", interrupted)
    start = time.monotonic()
    status = cli.main(["resample", str(scans), str(tmp_path / "out"), "--size", "4", "4", "4"])
    assert status == 130 and time.monotonic() - start < 30 and len(listings) == 2
    said = "nidataset: interrupted; nothing partial was left; run it again with --skip-existing to finish"
    assert capsys.readouterr().err == said + " the rest\n"


def test_file_urls_name_local_files(scans, tmp_path, capsys):
    # As pathlib writes them (percent-escapes); a folder URL is a folder, and a file URL a file.
    import shutil

    folder = tmp_path / "my scans"
    shutil.copytree(scans, folder)
    out = tmp_path / "out put"
    assert main(["resample", folder.as_uri(), out.as_uri(), "--size", "4", "4", "4", "-q"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a", "b", "c"]
    single = folder / "a.nii.gz"
    assert main(["resample", single.as_uri(), (tmp_path / "one").as_uri(), "--size", "4", "4", "4"]) == 0
    assert (tmp_path / "one" / "a_resampled.nii.gz").is_file()
    with pytest.raises(SystemExit) as info:
        main(["resample", "file://server/share/", str(out), "--size", "4", "4", "4"])
    assert info.value.code == 2 and "names the host 'server'" in capsys.readouterr().err
