"""Atomic writes, and the clearing of what killed writers left behind.

A file is written to a hidden temporary file in its destination folder, renamed over its final name once
complete. The temporary name is ``.<head>.<host>-<random>.tmp``: hidden, ending in ``.tmp`` (never in
``.nii.gz``), `<host>` four hex digits of this machine's name and `<random>` six more; `<head>` is as much
of the final name as keeps the temporary name no longer than the final one (17 characters for final
names shorter than that), so any name the file system accepts can be written.

On POSIX systems the writer holds an exclusive lock (``flock``) on its temporary file from the moment it
creates it until it has renamed or deleted it. :func:`remove_stale_temporaries` deletes a temporary file
only when it can take that lock itself, and deletes it while holding it: only once the writer is gone
(killed), whatever its process id and whichever container it ran in. It touches only the files named by
this machine (where a network file system does not share locks between machines, another machine's
writer would look gone). Elsewhere (Windows) nothing is locked and nothing is ever deleted.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import socket
import threading
import zlib
from collections.abc import Iterator
from typing import BinaryIO

try:
    import fcntl
except ImportError:  # pragma: no cover  # not POSIX: no locks, no clearing
    fcntl = None  # type: ignore[assignment]

__all__ = ["atomic_file", "is_temporary_of", "remove_stale_temporaries", "temporary_name"]

#: Four hex digits of this machine's name, in the names of its temporary files.
_HOST_TAG = f"{zlib.crc32(socket.gethostname().encode()) & 0xFFFF:04x}"
#: The end of a temporary name: ``.<host>-<random>.tmp``.
_TAIL = re.compile(r"\.([0-9a-f]{4})-[0-9a-f]{6}\.tmp\Z")
#: How much longer than its head a temporary name is: the leading dot and the tail.
_OVERHEAD = len(".") + len(".0000-000000.tmp")
#: The names of earlier versions' temporary files: ``.<name>.<host>.<pid>.<random>.tmp``.
_FORMER = re.compile(r"\.(?P<head>.+)\.(?P<pid>[0-9]+)\.[^.]+\.tmp\Z", re.DOTALL)
#: The temporary files this process is writing, as (device, inode): where locks are per process (NFS),
#: a writer's lock would not keep this process's own clearing away.
_WRITING: set[tuple[int, int]] = set()
_WRITING_LOCK = threading.Lock()


def is_temporary_of(name: str, final: str) -> bool:
    """Whether `name` is a temporary name :func:`temporary_name` gives a file named `final` (any host).

    Examples
    --------
    >>> is_temporary_of(temporary_name("scan_001_resampled.nii.gz"), "scan_001_resampled.nii.gz")
    True
    >>> is_temporary_of(".scan_001.0a1b-2c3d4e.tmp", "scan_002_resampled.nii.gz")
    False
    """
    head = final[: max(0, len(final) - _OVERHEAD)]
    return (
        name.startswith(f".{head}.") and len(name) == len(head) + _OVERHEAD and _TAIL.search(name) is not None
    )


def temporary_name(name: str) -> str:
    """Return a new hidden temporary name for a file named `name`, no longer than it (or 17 characters).

    Examples
    --------
    >>> name = temporary_name("scan_001_resampled.nii.gz")
    >>> name[:10], name[-4:], len(name)
    ('.scan_001.', '.tmp', 25)
    """
    head = name[: max(0, len(name) - _OVERHEAD)]  # a character is at least a byte: bytes shrink as much
    return f".{head}.{_HOST_TAG}-{secrets.token_hex(3)}.tmp"


class _Temporary:
    """The temporary file of one :func:`atomic_file`, as far as it got: name, descriptor, key."""

    def __init__(self) -> None:
        self.path: str | None = None  # set before the file is created: an interrupt may come as it is
        self.fd: int | None = None
        self.key: tuple[int, int] | None = None


@contextlib.contextmanager
def atomic_file(path: str) -> Iterator[BinaryIO]:
    """Open a hidden temporary file beside `path` for writing; rename it to `path` once complete.

    The temporary file is locked from its creation until it has been renamed or, if the block fails,
    deleted (see the module's description). It is deleted whatever the block raises, KeyboardInterrupt
    included, even one that arrives as the file is being created.
    """
    directory, name = os.path.split(path)
    temporary = _Temporary()
    renamed = False
    try:
        _create(directory, name, temporary)
        assert temporary.fd is not None and temporary.path is not None
        with os.fdopen(temporary.fd, "wb", closefd=False) as raw:  # the descriptor (and lock) closed below
            yield raw
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(temporary.path, path)
        renamed = True
    except BaseException as err:
        if not renamed and temporary.path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary.path)
        if isinstance(err, OSError) and err.filename in (None, temporary.path):
            # A full disk or a failing device while writing: name the file being written, not the
            # hidden temporary one (nor none at all).
            raise OSError(err.errno, f"{err.strerror or err} while writing", path) from err
        raise
    finally:
        if temporary.fd is not None:
            os.close(temporary.fd)  # releases the lock: after the rename or the deletion
        with _WRITING_LOCK:
            _WRITING.discard(temporary.key)


def _create(directory: str, name: str, temporary: _Temporary) -> None:
    """Create and lock a new temporary file for `name` in `directory`, recording it in `temporary`.

    Its name is recorded before it is created, so that whoever handles an exception raised here (an
    interrupt arriving as the file is created) can delete it.
    """
    for _ in range(100):
        temporary.path = os.path.join(directory, temporary_name(name))
        try:
            temporary.fd = os.open(temporary.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:  # someone else's: not ours to delete
            temporary.path = None
            continue
        temporary.key = key = _key(os.fstat(temporary.fd))
        with _WRITING_LOCK:
            _WRITING.add(key)
        if _lock(temporary.fd, wait=True) and not _same_file(temporary.fd, temporary.path):
            # A clearing took the lock between the creation and ours, and deleted the file: again.
            with _WRITING_LOCK:
                _WRITING.discard(key)
            os.close(temporary.fd)
            temporary.path = temporary.fd = temporary.key = None
            continue
        return
    raise FileExistsError(f"no free temporary name for '{os.path.join(directory, name)}'")  # pragma: no cover


def remove_stale_temporaries(folder: str) -> int:
    """Delete the temporary files in `folder` whose writer is gone; return how many were deleted.

    A writer killed mid-write leaves its hidden temporary file behind (never a partial output). A file is
    deleted only if this machine named it and its writer's lock can be taken (see the module's
    description); temporary files of earlier versions, which were not locked, only if their name also
    gives this machine and a process that no longer runs. Nothing is deleted where there are no locks.
    """
    if fcntl is None:  # pragma: no cover
        return 0
    removed = 0
    try:
        entries = os.scandir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return 0
    with entries:
        for entry in entries:
            if not _ours(entry.name) or not entry.is_file(follow_symlinks=False):
                continue
            try:
                key = _key(entry.stat(follow_symlinks=False))
            except FileNotFoundError:
                continue
            with _WRITING_LOCK:
                if key in _WRITING:
                    continue  # this process is writing it
            if _remove_unlocked(entry.path):
                removed += 1
    return removed


def _ours(name: str) -> bool:
    """Whether `name` is the name of a temporary file this machine's writers may have left."""
    if not name.startswith("."):
        return False
    if match := _TAIL.search(name):
        return match.group(1) == _HOST_TAG
    former = _FORMER.fullmatch(name)
    host = socket.gethostname()
    return (
        former is not None
        and former["head"].endswith("." + host)
        and len(former["head"]) > len(host) + 1
        and not _running(int(former["pid"]))
    )


def _remove_unlocked(path: str) -> bool:
    """Delete the file at `path` if its lock can be taken, while holding it; whether it was deleted."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK)  # NFS locks want it open for writing
    except OSError:  # gone, someone else's, or not a plain file
        return False
    try:
        if not _lock(fd, wait=False) or not _same_file(fd, path):
            return False
        with _WRITING_LOCK:  # again: where locks are per process (NFS), this process's own writer that
            if _key(os.fstat(fd)) in _WRITING:  # began since the first look holds no lock against us
                return False
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False
    finally:
        os.close(fd)


def _lock(fd: int, wait: bool) -> bool:
    """Take the exclusive lock of the open file `fd`; whether it was taken.

    Without `wait`, a lock held elsewhere is not waited for. False also where the file system has no locks.
    """
    if fcntl is None:  # pragma: no cover
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held elsewhere (EWOULDBLOCK), or no locks here (ENOLCK, EOPNOTSUPP...)
        return False
    return True


def _key(status: os.stat_result) -> tuple[int, int]:
    return status.st_dev, status.st_ino


def _same_file(fd: int, path: str) -> bool:
    """Whether `path` still names the file open as `fd`."""
    try:
        named = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return _key(named) == _key(os.fstat(fd))


def _running(pid: int) -> bool:
    """Whether a process `pid` runs on this machine (or in this container)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    except OverflowError:  # not a process id at all
        return False
    return True
