"""Atomic writes: temporary names that fit wherever the final name fits, and clearing that deletes a
temporary file only once its writer is gone (its lock free), whatever its name says."""

import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

from helpers import write_nifti
from nidataset import resampling
from nidataset._atomic import atomic_file, remove_stale_temporaries, temporary_name

pytestmark = pytest.mark.skipif(os.name != "posix", reason="temporary files are cleared on POSIX only")

WRITER = """
import sys
from nidataset._atomic import atomic_file

with atomic_file(sys.argv[1]) as raw:
    raw.write(b"partial")
    raw.flush()
    print("writing", flush=True)
    sys.stdin.readline()  # until told to finish (or killed)
"""


@pytest.fixture
def writer(tmp_path):
    """Start a writer in another process; return (process, folder) once its temporary file exists."""
    started = []

    def start(name="scan_resampled.nii.gz"):
        folder = tmp_path / "out"
        folder.mkdir(exist_ok=True)
        process = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(folder / name)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        started.append(process)
        assert process.stdout.readline() == "writing\n"
        return process, folder

    yield start
    for process in started:
        process.kill()
        process.wait()
        process.stdin.close()
        process.stdout.close()


def dead_pid():
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(done.stdout)  # exited and reaped


def kill(process):
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL


def test_a_live_writer_in_another_process_keeps_its_file_until_it_is_killed(writer):
    process, folder = writer()
    [temp] = os.listdir(folder)
    assert remove_stale_temporaries(str(folder)) == 0
    assert os.listdir(folder) == [temp]
    kill(process)
    assert remove_stale_temporaries(str(folder)) == 1
    assert os.listdir(folder) == []


def test_a_locked_file_is_kept_even_when_its_name_gives_this_host_and_a_dead_pid(writer):
    # Another container sharing the folder, with the same host name, whose writer's pid is free here:
    # the name cannot tell; the writer's lock does.
    process, folder = writer()
    [temp] = os.listdir(folder)
    former = f".scan_resampled.nii.gz.{socket.gethostname()}.{dead_pid()}.0a1b2c3d.tmp"
    os.rename(folder / temp, folder / former)  # the lock belongs to the file, not to its name
    assert remove_stale_temporaries(str(folder)) == 0
    assert os.listdir(folder) == [former]
    kill(process)
    assert remove_stale_temporaries(str(folder)) == 1
    assert os.listdir(folder) == []


def test_a_finished_writer_leaves_only_its_output(writer):
    process, folder = writer()
    process.stdin.write("\n")
    process.stdin.flush()
    assert process.wait() == 0
    assert os.listdir(folder) == ["scan_resampled.nii.gz"]
    assert (folder / "scan_resampled.nii.gz").read_bytes() == b"partial"


def test_this_process_keeps_the_files_it_is_writing(tmp_path):
    target = tmp_path / "a_resampled.nii.gz"
    with atomic_file(str(target)) as raw:
        raw.write(b"x")
        assert remove_stale_temporaries(str(tmp_path)) == 0
        assert len(os.listdir(tmp_path)) == 1
    assert os.listdir(tmp_path) == ["a_resampled.nii.gz"]


def test_only_this_machines_unlocked_temporaries_are_removed(tmp_path):
    name = "scan_resampled.nii.gz"
    ours = tmp_path / temporary_name(name)  # as a writer killed before it could delete it leaves it
    head, tail = ours.name.split(".", 2)[1], ours.name.rsplit(".", 2)[1]
    other_host = tmp_path / f".{head}.{int(tail[:4], 16) ^ 1:04x}{tail[4:]}.tmp"
    other_host_former = tmp_path / f".{name}.elsewhere.example.org.{dead_pid()}.0a1b2c3d.tmp"
    unrelated = [tmp_path / ".notes.tmp", tmp_path / ".x.nii.gz.host.notapid.y.tmp", tmp_path / name]
    for path in [ours, other_host, other_host_former, *unrelated]:
        path.write_bytes(b"partial")
    assert remove_stale_temporaries(str(tmp_path)) == 1
    assert not ours.exists()
    assert all(path.exists() for path in [other_host, other_host_former, *unrelated])
    assert remove_stale_temporaries(str(tmp_path / "absent")) == 0


@pytest.mark.parametrize("length", [1, 12, 17, 18, 25, 100, 255])
def test_a_temporary_name_is_hidden_ours_and_no_longer_than_its_final_name(length):
    name = ("a" * length)[:-7] + ".nii.gz" if length > 7 else "b" * length
    temp = temporary_name(name)
    assert temp.startswith(".") and temp.endswith(".tmp") and not temp.endswith(".nii.gz")
    assert len(temp) <= max(len(name), 17)
    assert temp != temporary_name(name)  # random: two writers of one name never share a file
    wide = "é" * (length // 2) + "a" * (length % 2)  # 2 bytes a character: bytes count, not characters
    assert len(os.fsencode(temporary_name(wide))) <= max(len(os.fsencode(wide)), 17)


@pytest.mark.parametrize("letter", ["p", "é"])
def test_any_name_the_file_system_accepts_gets_its_output(tmp_path, letter):
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    size = min(250, limit) - len("_resampled.nii.gz")  # bytes of the prefix
    width = len(letter.encode())
    prefix = letter * (size // width) + "q" * (size % width)
    src = write_nifti(tmp_path / "in" / f"{prefix}.nii.gz", np.arange(60, dtype=np.int16).reshape(5, 4, 3))
    out = resampling(src, tmp_path / "out", (3, 3, 3), preview=False)
    assert os.path.basename(out) == f"{prefix}_resampled.nii.gz"
    assert len(os.fsencode(os.path.basename(out))) == min(250, limit)
    assert os.listdir(tmp_path / "out") == [os.path.basename(out)]
