"""Where the bytes live: local paths, or fsspec URLs for object storage (``s3://``, ``gs://``, ``az://``...).

A path with a scheme other than ``file://`` is a URL, opened through fsspec (imported only when a URL is
met: ``pip install 'nidataset[cloud]'``). A ``file://`` URL is its local path. In a bucket, a "folder" is a
prefix: ``s3://bucket/scans/`` holds the objects whose keys start with ``scans/``.

:class:`Storage` carries the call's ``storage_options`` (endpoints, credentials), is picklable so that a
Dask task carries it to workers that share no file system, and opens things:

- :meth:`Storage.open_input`: a file to read, local or remote; a remote one is read by ranged requests
  of a block at a time (small for headers, larger when streaming the voxels); an S3 object streamed
  (its header, then its voxels) by one request whose body is read as it arrives (a request per block
  would wait for each): a GET presigned by the S3 client and sent over plain HTTP where nothing the
  client was configured with would be left out (:func:`_s3_body`), through the client otherwise;
- :meth:`Storage.upload`: a file to write, which appears under its final name only when complete. Local
  files are written to a hidden temporary file and renamed (:mod:`nidataset._atomic`). Object stores
  (S3, GCS, Azure) publish an upload under its key only when it is committed: a multipart upload,
  committed once complete, aborted on failure; a killed writer leaves no object (S3 keeps the parts of an
  unfinished upload until it is aborted: :meth:`Storage.abort_unfinished`, called by the next run that
  writes the same objects). Other stores
  (``memory://``, FTP...) are written under a hidden temporary key, then moved.

Every failure of a remote store is raised as an OSError naming the URL, with its errno where one fits:
FileNotFoundError (no such bucket or key), PermissionError (refused credentials),
ConnectionError (an endpoint that does not answer, or stops answering), OSError (EIO) for the rest.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import functools
import http.client
import io
import logging
import os
import re
import socket
import ssl
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from ._atomic import atomic_file, is_temporary_of, temporary_name
from ._paths import is_url, join, local_path, name_of, uncompressed_hint

__all__ = ["LOCAL", "Storage", "clients_shared_by_threads"]

logger = logging.getLogger(__name__)

#: What makes fsspec read a path as a glob pattern.
_GLOB_MAGIC = re.compile(r"[*?\[]")
#: Stores whose uploads appear under their key only once committed (multipart, resumable, block lists).
_COMMITTING = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl"})
#: Bytes fetched per request while a header is checked (the header and its extensions fit in one).
HEADER_BLOCK = 1 << 16
#: Bytes fetched per request while voxels stream in from stores other than S3 (S3: one request).
STREAM_BLOCK = 1 << 21
#: Bytes of an S3 body fetched ahead of its reader (two such chunks are held at most).
_AHEAD = 1 << 20
#: Bytes per uploaded part: S3's smallest (every part but the last must hold at least 5 MiB).
_UPLOAD_BLOCK = 5 << 20
#: Connections of an S3 client, unless the storage options say (botocore's default is 10). A file being
#: resampled holds one for its input while its output's parts need another: files sharing a client
#: (threads) would wait for each other forever once they hold every connection.
CONNECTIONS = 64


def clients_shared_by_threads() -> bool:
    """Whether the threads of a process share its clients of a store (fsspec 2026.6 or later).

    Before, fsspec keys the file systems it keeps by thread: each new thread makes its own client (a
    third of a CPU-second for S3). False if fsspec is not installed.
    """
    try:
        import fsspec
    except ImportError:
        return False
    numbers = []
    for part in fsspec.__version__.split("."):  # "2026.6.0+g1": (2026, 6, 0)
        if not part.isdigit():
            break
        numbers.append(int(part))
    return tuple(numbers) >= (2026, 6)


@dataclass(frozen=True)
class Storage:
    """How to reach the URLs of one call: fsspec's `options` (endpoint, credentials...), picklable.

    Local paths need none of it; the same object serves both.
    """

    options: Mapping[str, Any] = field(default_factory=dict, hash=False, repr=False)
    #: Connections of an S3 client when the options do not set ``config_kwargs["max_pool_connections"]``.
    connections: int = CONNECTIONS

    def __repr__(
        self,
    ) -> str:  # the option names only: their values may be credentials (Dask logs task reprs)
        return f"Storage(options with keys {sorted(self.options)})"

    @classmethod
    def of(cls, options: Mapping[str, Any] | None, files: int = 1) -> Storage:
        """Check the ``storage_options`` of a call and return its Storage, for `files` at once.

        Files run at once in this process share its store clients: an S3 client gets at least two
        connections per file (an input held open, an output's part), :data:`CONNECTIONS` by default.

        Raises
        ------
        TypeError
            If `options` is not a mapping with string keys.
        """
        connections = max(CONNECTIONS, 2 * files + 2)
        if options is None:
            return LOCAL if connections == CONNECTIONS else cls(connections=connections)
        if not isinstance(options, Mapping) or not all(isinstance(key, str) for key in options):
            raise TypeError(f"storage_options must be a dict with str keys, got a {type(options).__name__}")
        return cls(dict(options), connections)

    # --- reading -------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def open_input(self, path: str, block: int = STREAM_BLOCK) -> Iterator[BinaryIO]:
        """Open `path` to read, seekable: a local file, or a remote one read `block` bytes per request."""
        if not is_url(path):
            with open(local_path(path), "rb") as file:
                yield file
            return
        fs, key = self.filesystem(path)
        if block >= STREAM_BLOCK and _protocol(fs) in ("s3", "s3a") and hasattr(fs, "call_s3"):
            with _s3_body(fs, key, path, self.options) as body:
                yield body  # type: ignore[misc]
            return
        if block < STREAM_BLOCK and getattr(fs, "async_impl", False):
            with _Ranges(fs, key, path, block) as ranges:
                yield ranges  # type: ignore[misc]
            return
        # A header's block is kept (the header is read twice: checked, then parsed); its gzip trailer is
        # fetched on its own. Streamed voxels: a block ahead of the reader.
        cache = "first" if block < STREAM_BLOCK else "readahead"
        with _failures(path, "reading"):
            remote = fs.open(key, "rb", block_size=block, cache_type=cache)
        with _RemoteReader(remote, path) as reader:
            yield reader  # type: ignore[misc]

    def is_file(self, path: str) -> bool:
        """Whether `path` is an existing file or object (the store is asked afresh, not its listing cache)."""
        if not is_url(path):
            return os.path.isfile(local_path(path))
        fs, key = self.filesystem(path)
        with _failures(path, "looking at"):
            fs.invalidate_cache(key)
            try:
                return fs.info(key).get("type") == "file"
            except FileNotFoundError:
                return False

    def check_input(self, url: str, suffix: str) -> str:
        """Check that the object at `url` exists and its name ends in `suffix`; return `url`.

        Raises
        ------
        FileNotFoundError, PermissionError, ConnectionError, OSError
            As :class:`Storage` says, naming `url`.
        IsADirectoryError
            If `url` is a prefix holding objects, not an object.
        ValueError
            If the name does not end in `suffix`.
        """
        fs, key = self.filesystem(url)
        with _failures(url, "looking at"):
            fs.invalidate_cache(key)
            info = fs.info(key)
        if info.get("type") != "file":
            raise IsADirectoryError(
                errno.EISDIR, f"a folder, not a '{suffix}' object (resampling_dataset() resamples one)", url
            )
        if not name_of(url).endswith(suffix):
            raise ValueError(f"the input file must be a '{suffix}' file, got '{url}'{uncompressed_hint(url)}")
        return url

    def check_output_folder(self, url: str, reached: str | None = None) -> str:
        """Check that the bucket of `url` exists and answers (nothing is written); return `url`.

        `reached`: what this call has already had the store answer for (its input, looked at or
        listed); an output in the same bucket of the same store is not asked about again.
        """
        fs, key = self.filesystem(url)
        if _protocol(fs) not in _COMMITTING:
            return url  # memory://, ftp://...: folders are made as they are written
        bucket = key.split("/", 1)[0]
        if reached is not None and is_url(reached):
            known, known_key = self.filesystem(reached)
            if known is fs and known_key.split("/", 1)[0] == bucket:
                return url
        _check_bucket(fs, url, bucket)
        return url

    def list_folder(self, url: str, suffix: str) -> list[str]:
        """URLs of the objects directly under the prefix `url` whose name ends in `suffix`, sorted.

        Raises
        ------
        FileNotFoundError
            If nothing is under `url`, or no such object.
        """
        fs, key = self.filesystem(url)
        with _failures(url, "listing"):
            fs.invalidate_cache(key)
            try:
                entries = fs.ls(key.rstrip("/"), detail=True)
            except FileNotFoundError:
                entries = []
        names = sorted(
            name
            for entry in entries
            if entry.get("type") == "file" and (name := entry["name"].rsplit("/", 1)[-1]).endswith(suffix)
        )
        if not names:
            if not entries and _protocol(fs) in _COMMITTING:  # nothing at all: is there a bucket?
                _check_bucket(fs, url, key.split("/", 1)[0])
            raise FileNotFoundError(errno.ENOENT, f"no '{suffix}' objects under this prefix", url)
        return [join(url, name) for name in names]

    def stamps(self, url: str) -> dict[str, tuple[str, str]]:
        """Return the (ETag, modification time) of every object under the prefix `url`, by URL.

        One listing (a request per thousand objects on S3), not a request per object.
        """
        fs, key = self.filesystem(url)
        base = key.rstrip("/")
        with _failures(url, "listing"):
            fs.invalidate_cache(base)
            found = fs.find(base, detail=True)
        return {
            join(url, name[len(base) + 1 :]): _stamp(info)
            for name, info in found.items()
            if name.startswith(base + "/")
        }

    # --- writing -------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def upload(self, path: str, waiting: Callable[[], None] | None = None) -> Iterator[BinaryIO]:
        """Open `path` to write; it appears under that name only if the block ends without an error.

        `waiting`, for a URL, is called once the block has ended well, when all that is left is the
        store's: taking the last bytes and making the object appear (a Dask task gives its thread back
        to its worker then). Not for a local path, whose commit is a rename.
        """
        if not is_url(path):
            with atomic_file(local_path(path)) as file:
                yield file
            return
        fs, key = self.filesystem(path)
        if _protocol(fs) in _COMMITTING:
            # The object appears when the file closes: s3fs completes its multipart upload (a file under
            # one part goes up whole then, by one PUT), gcsfs finalizes its resumable upload, adlfs
            # commits its block list. Even in a transaction someone opened on the (shared) file system:
            # with autocommit=False fsspec keeps the file there, and s3fs or gcsfs would leave its
            # object to the transaction's end (adlfs ignores autocommit).
            with _failures(path, "writing"):
                remote = fs.open(key, "wb", block_size=_UPLOAD_BLOCK, autocommit=True)
            try:
                yield _RemoteWriter(remote, path)  # type: ignore[misc]
                if waiting is not None:
                    waiting()
                with _failures(path, "writing"):
                    remote.close()  # the last part, and the store's commit: only now does the object appear
            except BaseException:
                _abandon(remote, path)  # never closed: nothing is committed
                raise
            return
        folder, name = key.rsplit("/", 1) if "/" in key else ("", key)
        hidden = f"{folder}/{temporary_name(name)}" if folder else temporary_name(name)
        with _failures(path, "writing"):
            remote = fs.open(hidden, "wb")
        try:
            yield _RemoteWriter(remote, path)  # type: ignore[misc]
            if waiting is not None:
                waiting()
            with _failures(path, "writing"):
                remote.close()
                _move(fs, hidden, key)
        except BaseException:
            with contextlib.suppress(AttributeError):  # fsspec's buffered files: their finalizer must not
                remote.closed = True  # write what they hold after the hidden key is deleted
            with contextlib.suppress(Exception):
                _remove(fs, hidden)
            raise

    def abort_unfinished(self, urls: Sequence[str]) -> int:
        """Clear what killed writers left of the objects `urls`; return how many uploads or keys went.

        S3: the unfinished uploads to those objects (they hold parts, never an object), found by a listing
        per bucket of their common prefix. Stores written under hidden temporary keys: those keys, found
        by a listing of each folder. Nothing here can tell a killed writer from a live one: two runs must
        not write the same outputs at the same time. Local paths have nothing to clear here.
        """
        remote = [url for url in urls if is_url(url)]
        if not remote:
            return 0
        fs, _ = self.filesystem(remote[0])
        call = getattr(fs, "call_s3", None)
        if _protocol(fs) not in _COMMITTING:
            return self._remove_hidden(fs, remote)
        if _protocol(fs) not in ("s3", "s3a") or call is None:
            return 0
        scheme = remote[0].split("://", 1)[0]
        wanted: dict[str, set[str]] = {}
        for url in remote:
            bucket, _, name = self.filesystem(url)[1].partition("/")
            wanted.setdefault(bucket, set()).add(name)
        try:
            return self._abort(call, scheme, wanted)
        except PermissionError as err:  # a role that may write objects but not list uploads: nothing lost
            if _credentials_refused(err):  # unless no request of these credentials would be taken
                raise
            logger.warning("cannot list the unfinished uploads under %s: %s", err.filename, err.strerror)
            return 0

    def _remove_hidden(self, fs: Any, urls: Sequence[str]) -> int:
        """Delete the hidden temporary keys of `urls` (a store without committed uploads)."""
        by_folder: dict[str, set[str]] = {}
        for url in urls:
            key = self.filesystem(url)[1]
            folder, _, name = key.rpartition("/")
            by_folder.setdefault(folder, set()).add(name)
        removed = 0
        for folder, names in by_folder.items():
            try:
                entries = fs.ls(folder, detail=False) if folder else []
            except FileNotFoundError:
                continue
            for entry in entries:
                name = entry.rstrip("/").rsplit("/", 1)[-1]
                if any(is_temporary_of(name, final) for final in names):
                    try:
                        _remove(fs, entry)
                    except FileNotFoundError:
                        continue
                    except NotImplementedError:
                        logger.warning("cannot delete %s, left by a killed run, from this store", entry)
                        continue
                    removed += 1
        return removed

    @staticmethod
    def _abort(call: Any, scheme: str, wanted: dict[str, set[str]]) -> int:
        aborted = 0
        for bucket, names in wanted.items():
            common = os.path.commonprefix(sorted(names))  # noqa: RUF071  # S3 prefixes are strings
            page: dict[str, str] = {}
            with _failures(f"{scheme}://{bucket}/{common}", "listing the uploads of"):
                while True:
                    found = call("list_multipart_uploads", Bucket=bucket, Prefix=common, **page)
                    for upload in found.get("Uploads", []):
                        if upload.get("Key") in names:
                            key, number = upload["Key"], upload["UploadId"]
                            call("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=number)
                            logger.info("aborted an unfinished upload to %s://%s/%s", scheme, bucket, key)
                            aborted += 1
                    if not found.get("IsTruncated"):
                        break
                    page = {
                        "KeyMarker": found["NextKeyMarker"],
                        "UploadIdMarker": found["NextUploadIdMarker"],
                    }
        return aborted

    def filesystem(self, url: str) -> tuple[Any, str]:
        """Return the fsspec file system of `url` with this call's options, and the path it knows `url` by.

        fsspec keeps one file system per protocol and options in each process (in each thread before
        fsspec 2026.6). An S3 client gets :attr:`connections` unless the options set their number, and
        computes no checksum of what it downloads unless they ask for one (see the comment below).

        Raises
        ------
        ImportError
            If fsspec, or the package of `url`'s protocol, is not installed.
        ValueError
            If fsspec knows no such protocol, or the options do not suit it.
        """
        try:
            from fsspec.core import url_to_fs
        except ImportError as err:
            raise ImportError(
                f"'{url}' is a URL: reading and writing URLs needs fsspec, which is not installed: "
                "pip install 'nidataset[cloud]'"
            ) from err
        options = dict(self.options)
        if url.split("://", 1)[0].lower() in ("s3", "s3a"):
            config = dict(options.get("config_kwargs") or {})
            config.setdefault("max_pool_connections", self.connections)
            if _botocore_knows("response_checksum_validation"):
                # botocore's CRC of a whole object's body (5-8 ms per 12 MB) is checked only by a read
                # past its end, which a stream of known length never makes; the gzip stream's own
                # CRC-32, checked as the voxels are read, covers every byte (a test corrupts one).
                config.setdefault("response_checksum_validation", "when_required")
            options["config_kwargs"] = config
        try:
            return url_to_fs(url, **options)
        except ImportError as err:
            raise ImportError(f"cannot open '{url}': {err}") from err
        except (ValueError, TypeError) as err:
            keys = ", ".join(sorted(self.options)) or "none"  # their values may be secrets
            raise ValueError(f"cannot open '{url}' (storage_options given: {keys}): {err}") from err


#: The storage of calls that give no ``storage_options``.
LOCAL = Storage()


def _botocore_knows(option: str) -> bool:
    """Whether botocore's ``Config`` takes `option` (newer releases add options; older ones refuse them)."""
    try:
        from botocore.config import Config
    except ImportError:  # pragma: no cover  # s3fs needs botocore
        return False
    return option in getattr(Config, "OPTION_DEFAULTS", {})


def _stamp(info: Mapping[str, Any]) -> tuple[str, str]:
    """Return an object's (tag, modification time) as its store lists them: a rewrite changes either.

    The tag: s3fs's ``ETag``, gcsfs's ``generation`` (else its ``etag``), adlfs's ``etag``. The time:
    ``LastModified`` (s3fs), ``last_modified`` (adlfs), ``mtime`` (gcsfs), ``created`` (memory://).
    """
    tag = next((info[name] for name in ("ETag", "generation", "etag") if info.get(name) is not None), "")
    times = ("LastModified", "last_modified", "mtime", "created")
    when = next((info[name] for name in times if info.get(name) is not None), "")
    return str(tag), str(when)


def _protocol(fs: Any) -> str:
    protocol = fs.protocol
    return protocol if isinstance(protocol, str) else protocol[0]


def _check_bucket(fs: Any, url: str, bucket: str) -> None:
    """Check that `bucket` (of `url`) exists and answers.

    Raises
    ------
    FileNotFoundError
        If there is no such bucket (naming the bucket's URL).
    NotADirectoryError, ConnectionError, OSError
        As :class:`Storage` says. Refused credentials are not an error here: a policy may allow objects
        under a prefix and not the bucket itself, whose objects then tell.
    """
    where = _bucket_url(url, bucket)
    try:
        with _failures(where, "looking at"):
            fs.invalidate_cache(bucket)
            info = fs.info(bucket)
    except FileNotFoundError as err:
        raise FileNotFoundError(errno.ENOENT, "no such bucket", where) from err
    except PermissionError as err:
        logger.info("cannot look at the bucket of %s (%s): its objects will tell", url, err.strerror)
        return
    if info.get("type") == "file":  # pragma: no cover  # a bucket is never an object
        raise NotADirectoryError(errno.ENOTDIR, "not in a bucket", url)


def _bucket_url(url: str, bucket: str) -> str:
    return f"{url.split('://', 1)[0]}://{bucket}"


def _move(fs: Any, source: str, target: str) -> None:
    """Move the object `source` of `fs` to `target`, both names read as they are written.

    fsspec's generic move (a copy, then a delete: ``memory://``...) expands its paths as glob patterns: a
    ``*``, ``?`` or ``[`` in a name would move nothing, or other objects. There such names are copied and
    deleted one object at a time instead. A store's own move (a rename: FTP, SFTP, HDFS) is used as it is.
    """
    from fsspec import AbstractFileSystem

    generic = getattr(type(fs), "mv", None) is AbstractFileSystem.mv
    if generic and (_GLOB_MAGIC.search(source) or _GLOB_MAGIC.search(target)):
        fs.cp_file(source, target)
        _remove(fs, source)
    else:
        fs.mv(source, target)


def _remove(fs: Any, path: str) -> None:
    """Delete the object `path` of `fs`, its name read as it is written (not as a glob pattern)."""
    try:
        fs.rm_file(path)
    except NotImplementedError:  # a store with its own rm only (Databricks')
        if _GLOB_MAGIC.search(path):
            raise
        fs.rm(path)


def _abandon(remote: Any, url: str) -> None:
    """Throw away an upload that failed: its object never appears."""
    try:
        remote.discard()
    except Exception as err:  # the store may be what failed: its parts then wait for the next upload
        logger.warning("could not abort the upload to %s: %s", url, err)
    with contextlib.suppress(AttributeError):
        remote.closed = True  # nothing to finish: its finalizer must not upload what was buffered


class _RemoteReader(io.RawIOBase):
    """A remote file read through fsspec, whose failures are OSErrors naming its URL."""

    def __init__(self, remote: Any, url: str):
        self.remote, self.url = remote, url

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        with _failures(self.url, "reading"):
            data = self.remote.read(len(memoryview(buffer)))
        memoryview(buffer).cast("B")[: len(data)] = data
        return len(data)

    def read(self, size: int = -1) -> bytes:
        with _failures(self.url, "reading"):
            return self.remote.read(size)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        with _failures(self.url, "reading"):
            return self.remote.seek(offset, whence)

    def tell(self) -> int:
        return self.remote.tell()

    def close(self) -> None:
        if not self.closed:
            with contextlib.suppress(Exception):
                self.remote.close()
        super().close()


class _Pieces(io.RawIOBase):
    """A remote file of `size` bytes read from pieces held in memory, fetched as reads need them."""

    position = 0
    size = 0

    def _held(self) -> Sequence[tuple[int, Any]]:
        """Return the pieces held, as ``(start, bytes)`` (or any buffer)."""
        raise NotImplementedError

    def _fetch(self, count: int) -> tuple[int, Any]:
        """Fetch and hold the piece at :attr:`position` (`count` bytes are asked for); return it."""
        raise NotImplementedError

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        view = memoryview(buffer).cast("B")
        if self.position >= self.size or not len(view):
            return 0
        for start, data in self._held():
            if start <= self.position < start + len(data):
                break
        else:
            start, data = self._fetch(len(view))
        piece = memoryview(data)[self.position - start : self.position - start + len(view)]
        view[: len(piece)] = piece
        self.position += len(piece)
        return len(piece)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = offset + (0, self.position, self.size)[whence]
        if target < 0:
            raise ValueError(f"negative seek position {target}")
        self.position = target
        return target  # what is held serves it; otherwise the next read fetches from there

    def tell(self) -> int:
        return self.position


class _Ranges(_Pieces):
    """A remote file of an asynchronous fsspec file system (S3, GCS, Azure, HTTP) read by ranged requests.

    Opening it asks at once for its size, its first `block` bytes and its last 4 (a header and a gzip
    trailer: one round trip, not three); other reads ask for at least `block` bytes from where they
    start, and the last answer is kept.
    """

    def __init__(self, fs: Any, key: str, url: str, block: int):
        from fsspec.asyn import sync

        self.fs, self.key, self.url, self.block = fs, key, url, block
        with _failures(url, "reading"):
            self.size, head, tail = sync(fs.loop, _opening, fs, key, block)
        self.held = [(0, head), (self.size - len(tail), tail)]

    def _held(self) -> Sequence[tuple[int, bytes]]:
        return self.held

    def _fetch(self, count: int) -> tuple[int, bytes]:
        start, end = self.position, min(self.size, self.position + max(count, self.block))
        with _failures(self.url, "reading"):
            data = self.fs.cat_file(self.key, start=start, end=end)
        if not data:
            ended = f"the store ended it at byte {start:,} of {self.size:,}"
            raise ConnectionError(errno.ECONNRESET, ended, self.url)
        self.held[2:] = [(start, data)]
        return start, data


#: Stores whose fsspec file system asks for the last bytes of an object (a negative start) as such
#: (``Range: bytes=-4``), without knowing its size. adlfs sends the negative offset on as it is.
_SUFFIX_RANGES = frozenset({"s3", "s3a", "gs", "gcs", "http", "https"})


async def _opening(fs: Any, key: str, block: int) -> tuple[int, bytes, bytes]:
    """Ask at once for the size of `key`, its first `block` bytes and its last 4.

    Where the store cannot be asked for the last bytes without their offset, they are asked for once
    its size is known (unless the first block holds them).
    """
    suffix = _protocol(fs) in _SUFFIX_RANGES
    asked = [fs._info(key), fs._cat_file(key, start=0, end=block)]
    if suffix:
        asked.append(fs._cat_file(key, start=-4))
    answers: list[Any] = await asyncio.gather(*asked, return_exceptions=True)
    info, head = answers[:2]
    if isinstance(info, BaseException):
        raise info
    size = int(info["size"])
    if size == 0:  # a range of nothing is refused (416): there is nothing to read
        return 0, b"", b""
    for answer in answers[1:]:
        if isinstance(answer, BaseException):
            raise answer
    if suffix:
        return size, head, answers[2]
    if size <= len(head):
        return size, head, head[-4:]
    return size, head, await fs._cat_file(key, start=size - 4, end=size)


class _Body(_Pieces):
    """A remote file read from one answer's body as it arrives: its first chunk kept, the last one held.

    Subclasses take the chunks (:meth:`_fetch`) and forget the answer (:meth:`_drop`: at close, and once
    the body is read to its end, when no more than the first chunk is held).
    """

    first: tuple[int, Any] = (0, b"")  # (start, bytes): the first chunk (kept), the one taken last
    last: tuple[int, Any] = (0, b"")

    def _held(self) -> Sequence[tuple[int, Any]]:
        return self.last, self.first

    def _drop(self) -> None:
        """Forget the answer: the chunk asked for, the connection."""
        raise NotImplementedError

    def readinto(self, buffer: Any) -> int:
        count = super().readinto(buffer)
        if self.position >= self.size:  # read to its end
            self.last = (0, b"")
            self._drop()
        return count

    def close(self) -> None:
        if not self.closed:
            self._drop()
        super().close()


class _S3Body(_Body):
    """An S3 object read by one GET, its body taken as it arrives, a chunk ahead of its reader.

    The first chunk taken (:data:`HEADER_BLOCK` bytes) is kept, so that a header can be read, checked and
    read again before the voxels stream on, all from that one GET. The next chunks (:data:`_AHEAD` bytes)
    are fetched by the store client's own event loop (fsspec's I/O thread) while the caller works on the
    one before: waiting for the network overlaps the computation, and at most two more are held. A read
    elsewhere, and a read that fails mid-way (once), ask for the rest from there (``Range:
    bytes=<position>-`` of the same version: ``If-Match`` its ETag).
    """

    def __init__(self, fs: Any, key: str, url: str):
        self.fs, self.url = fs, url
        bucket, name, version = fs.split_path(key)
        self.request = {"Bucket": bucket, "Key": name, **({"VersionId": version} if version else {})}
        self.request.update(getattr(fs, "req_kw", None) or {})  # requester pays: s3fs 2025.3 leaves it out
        self.position = 0  # where the caller reads
        self.fetched = 0  # bytes taken from the body: where it goes on
        self.pending: concurrent.futures.Future[bytes] | None = None
        self.body: Any = None
        self.etag: str | None = None
        self.size = -1
        self._get(0)

    def _get(self, start: int) -> None:
        """Ask for the object from byte `start` (of the version read so far), and for its first chunk."""
        more: dict[str, str] = {"Range": f"bytes={start}-"} if start else {}
        if self.etag:  # the same version as the bytes already read
            more["IfMatch"] = self.etag
        with _failures(self.url, "reading"):
            response = self.fs.call_s3("get_object", **self.request, **more)
        self.body, self.etag, self.fetched = response["Body"], response.get("ETag"), start
        if self.size < 0:
            self.size = int(response["ContentLength"])
        self._ask()

    def _ask(self) -> None:
        self.pending = None
        if self.fetched < self.size:
            ahead = HEADER_BLOCK if self.fetched == 0 else _AHEAD  # the first chunk, kept, holds a header
            chunk = _gather(self.body, min(ahead, self.size - self.fetched))
            self.pending = asyncio.run_coroutine_threadsafe(chunk, self.fs.loop)

    def _take(self) -> None:
        """Take the chunk at the reading position, waiting for it; ask for the next (once more on failure)."""
        for attempt in (1, 2):
            try:
                if self.pending is None or self.fetched != self.position:
                    self._drop()
                    self._get(self.position)
                assert self.pending is not None
                with _failures(self.url, "reading"):
                    data = self.pending.result()
                if not data:
                    raise ConnectionError(
                        errno.ECONNRESET,
                        f"the store ended it at byte {self.fetched:,} of {self.size:,}",
                        self.url,
                    )
                self.last = (self.fetched, data)
                if not self.fetched:
                    self.first = self.last
                self.fetched += len(data)
                self._ask()
                return
            except OSError as err:
                if attempt == 2:
                    raise
                logger.info("reading %s again from byte %d: %s", self.url, self.position, err)
                self._drop()
        raise AssertionError("unreachable")  # pragma: no cover

    def _fetch(self, count: int) -> tuple[int, bytes]:
        self._take()
        return self.last

    def _drop(self) -> None:
        if self.pending is not None:
            self.pending.cancel()
            self.pending = None
        if self.body is not None:
            from fsspec.asyn import sync

            with contextlib.suppress(Exception):
                sync(self.fs.loop, _close, self.body)
            self.body = None


def _s3_body(fs: Any, key: str, url: str, options: Mapping[str, Any]) -> _Pieces:
    """Open the S3 object `key` of `fs` (at `url`) for one GET: over plain HTTP where that is the same.

    A presigned GET read by :mod:`http.client` in a thread of the reader's costs a fraction of the CPU
    of the same body moved through the client's event loop (aiobotocore, aiohttp: 6 ms instead of 12-15
    per 12 MB). It is used where nothing the client was configured with would be left out: no proxy, no
    client certificate, no extra GET parameter (requester pays, SSE-C keys...). If the plain request
    cannot be made, fails or is refused (an endpoint only the client can reach, a missing key...), the
    client asks again, and its error says what is wrong.
    """
    plain = _PlainHttp.of(fs, options, url)
    if plain is not None:
        try:
            return _SignedGet(fs, key, url, plain)
        except _NotPlain as err:
            logger.debug("reading %s through the S3 client: %s", url, err)
    return _S3Body(fs, key, url)


class _NotPlain(Exception):
    """A plain HTTP request could not serve this object: the store's client is to be used instead."""


@dataclass(frozen=True)
class _PlainHttp:
    """How the S3 client reaches its endpoint, for plain HTTP requests: its certificates and timeouts."""

    cafile: str | None  # None: no check of the server's certificate (the client's ``verify=False``)
    connect_timeout: float | None
    read_timeout: float | None

    @classmethod
    def of(cls, fs: Any, options: Mapping[str, Any], url: str) -> _PlainHttp | None:
        """Return how `fs`'s S3 client, made with `options`, reaches its endpoint; None if not plainly.

        None also when the client cannot be made: it then says why itself.
        """
        from fsspec.asyn import sync

        try:
            client = sync(fs.loop, fs.set_session)  # made once, then returned as it is
            config = client.meta.config
            if getattr(config, "proxies", None) or getattr(config, "client_cert", None):
                return None
            if getattr(config, "response_checksum_validation", None) not in (None, "when_required"):
                return None  # the caller asked for botocore's checksum of downloads
            extra = {
                **(getattr(fs, "s3_additional_kwargs", None) or {}),
                **(getattr(fs, "req_kw", None) or {}),
            }
            if set(extra) & set(client.meta.service_model.operation_model("GetObject").input_shape.members):
                return None  # requester pays, a customer's key (SSE-C)...: only the client sends them
            # The client's bundle, as botocore chooses it: its `verify`, else its configuration's
            # ``ca_bundle`` (AWS_CA_BUNDLE, the profile's), else REQUESTS_CA_BUNDLE, else its own.
            verify = dict(options.get("client_kwargs") or {}).get("verify")
            if verify is None:
                verify = fs.session.get_config_variable("ca_bundle")
            if verify is None:
                verify = os.environ.get("REQUESTS_CA_BUNDLE") or True
            from botocore.httpsession import get_cert_path

            return cls(get_cert_path(verify) if verify else None, config.connect_timeout, config.read_timeout)
        except Exception as err:  # the client, asked next, raises it again, translated
            logger.debug("reading %s through the S3 client: %s", url, _one_line(err))
            return None

    def connect(self, target: urllib.parse.SplitResult) -> http.client.HTTPConnection:
        """Return a new connection to the host of `target`, unless its scheme or a proxy stands in the way.

        Raises
        ------
        _NotPlain
            If `target` is not an ``http`` or ``https`` URL, the environment names a proxy for it, or the
            client's certificate bundle cannot be loaded.
        """
        host, port = target.hostname or "", target.port
        proxies = urllib.request.getproxies()
        if (proxies.get(target.scheme) or proxies.get("all")) and not urllib.request.proxy_bypass(host):
            raise _NotPlain(f"a proxy stands between this process and {target.scheme}://{host}")
        if target.scheme == "http":
            return http.client.HTTPConnection(host, port, timeout=self.connect_timeout)
        if target.scheme != "https":
            raise _NotPlain(f"a presigned URL of scheme {target.scheme!r}")
        try:
            context = _tls_context(self.cafile)
        except (OSError, ValueError) as err:  # ssl.SSLError is an OSError
            raise _NotPlain(f"the certificate bundle {self.cafile!r} cannot be used: {err}") from err
        return http.client.HTTPSConnection(host, port, timeout=self.connect_timeout, context=context)


@functools.lru_cache(maxsize=8)
def _tls_context(cafile: str | None) -> ssl.SSLContext:
    """Return a TLS client context checking servers against `cafile` (None: not checking them).

    Made once per bundle (loading one costs some 20 ms) and shared: a context serves any thread.
    """
    if cafile is None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        return context
    return ssl.create_default_context(cafile=cafile)


#: How long a presigned GET is valid, in seconds. It is sent at once (each request is signed anew), so
#: this only needs to cover a clock that differs from the store's (S3 refuses a skew of over 15 minutes).
_SIGNED_FOR = 900


class _SignedGet(_Body):
    """An S3 object read by one presigned GET over a plain HTTP connection, a chunk ahead of its reader.

    As :class:`_S3Body`: the first chunk (:data:`HEADER_BLOCK` bytes) is kept; the next ones
    (:data:`_AHEAD` bytes) are read by a thread of its own while the caller works on the one before, into
    two buffers in turn (new ones would each fault their pages afresh where the allocator returns them
    to the system at once, as in Dask's workers). A read elsewhere asks for the rest from there
    (``Range``, ``If-Match`` its ETag); so does a read that fails mid-way, once (again if that one
    brought some bytes before it failed). The requests are signed by the store's client (credentials,
    region, endpoint), and the signed URL is never shown (it is a credential while it lasts): errors
    name `url`.

    Raises
    ------
    _NotPlain
        If the first request cannot be made, fails or is refused: the store's client is to read it.
    """

    def __init__(self, fs: Any, key: str, url: str, plain: _PlainHttp):
        self.fs, self.key, self.url, self.plain = fs, key, url, plain
        self.position = self.fetched = 0
        self.connection: http.client.HTTPConnection | None = None
        self.response: http.client.HTTPResponse | None = None
        self.socket: socket.socket | None = None  # the connection's, also once the response holds it
        self.pending: concurrent.futures.Future[int] | None = None
        self.reader: concurrent.futures.ThreadPoolExecutor | None = None
        self.buffers: list[memoryview] = []
        self.in_last = 0  # the buffer holding the last chunk
        self.etag: str | None = None
        self.size = -1
        try:
            self._get(0)
            header = memoryview(bytearray(min(HEADER_BLOCK, self.size)))
            self.first = self.last = (0, header[: self._take(header) if len(header) else 0])
            self.fetched = len(self.first[1])
            self._ask()
        except BaseException:
            self.close()
            raise

    def _get(self, start: int) -> None:
        """Ask for the object from byte `start` (of the version read so far)."""
        self._drop()
        with _failures(self.url, "signing a request for"):
            target = urllib.parse.urlsplit(self.fs.url(self.key, expires=_SIGNED_FOR))
        headers = {"Range": f"bytes={start}-"} if start else {}
        if self.etag:
            headers["If-Match"] = self.etag
        first = self.size < 0
        try:
            connection = self.plain.connect(target)
        except _NotPlain as err:
            if first:
                raise
            raise OSError(errno.EIO, f"reading it again failed: {err}", self.url) from None
        try:
            connection.request(
                "GET", f"{target.path}?{target.query}" if target.query else target.path, headers=headers
            )
            self.socket = connection.sock
            if self.socket is not None:
                self.socket.settimeout(self.plain.read_timeout)
            response = connection.getresponse()
        except (OSError, http.client.HTTPException) as err:
            connection.close()
            self.socket = None
            if first:
                raise _NotPlain(f"{type(err).__name__}: {err}") from None
            raise _translated(err, self.url, "reading") from None
        finally:
            del target  # the signed URL: no frame kept by an error report holds it
        self.connection, self.response, self.fetched = connection, response, start
        if response.status != (206 if start else 200) or (first and response.length is None):
            self._drop()
            if first:
                raise _NotPlain(f"the store answered {response.status} {response.reason}")
            raise _answered(response.status, response.reason, self.url)
        self.etag = response.getheader("ETag") or self.etag
        if first:
            self.size = response.length or 0

    def _free(self) -> memoryview:
        """Return where the next chunk goes: the buffer that does not hold the last one."""
        if not self.buffers:  # each holds any chunk: _AHEAD bytes, or the whole object if smaller
            self.buffers = [memoryview(bytearray(min(_AHEAD, self.size))) for _ in range(2)]
        return self.buffers[1 - self.in_last][: self.size - self.fetched]

    def _ask(self) -> None:
        """Have the next chunk read into the free buffer while the caller works on this one."""
        if self.fetched < self.size and self.response is not None:
            if self.reader is None:
                self.reader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="nidataset-read")
            self.pending = self.reader.submit(self.response.readinto, self._free())

    def _take(self, into: memoryview) -> int:
        """Read the chunk at :attr:`fetched` into `into` (where a chunk asked for goes); return its length.

        A read that fails is asked again once from where it stopped.
        """
        for attempt in (1, 2):
            try:
                if self.pending is not None:
                    count = self.pending.result()  # an interrupt here leaves it to _drop()
                    self.pending = None
                else:
                    if self.response is None:
                        self._get(self.fetched)
                    assert self.response is not None
                    count = self.response.readinto(into)
                if not count:
                    raise ConnectionError(
                        errno.ECONNRESET, f"the store ended it at byte {self.fetched:,} of {self.size:,}"
                    )
                return count
            except (OSError, http.client.HTTPException) as err:
                self._drop()
                if attempt == 2 or (isinstance(err, OSError) and err.filename == self.url):
                    raise _translated(err, self.url, "reading") from None
                logger.info("reading %s again from byte %d: %s", self.url, self.fetched, _one_line(err))
        raise AssertionError("unreachable")  # pragma: no cover

    def _fetch(self, count: int) -> tuple[int, Any]:
        if self.fetched != self.position:
            self._get(self.position)  # what was asked for is forgotten
        into = self._free()
        self.last = (self.fetched, into[: self._take(into)])
        self.in_last = 1 - self.in_last
        self.fetched += len(self.last[1])
        self._ask()
        return self.last

    def _drop(self) -> None:
        """Forget the answer: the chunk being read (its read is cut short), the connection, the buffers."""
        pending, self.pending = self.pending, None
        if pending is not None:
            if self.socket is not None:
                with contextlib.suppress(OSError):
                    self.socket.shutdown(socket.SHUT_RDWR)  # the read under way ends
            concurrent.futures.wait([pending])
        if self.response is not None:
            self.response.close()
        if self.connection is not None:
            self.connection.close()
        self.connection = self.response = self.socket = None
        self.buffers = []  # a read that goes on makes them anew (one under way keeps its own)

    def close(self) -> None:
        super().close()
        if self.reader is not None:
            self.reader.shutdown()


def _answered(status: int, reason: str, url: str) -> OSError:
    """Return the OSError, naming `url`, of the HTTP answer `status` to a request to read it."""
    said = f"the store answered {status} {reason}"
    if status == 404:
        return FileNotFoundError(errno.ENOENT, f"no such object ({said})", url)
    if status == 403:
        return PermissionError(errno.EACCES, f"access refused, check the credentials ({said})", url)
    if status == 412:
        return OSError(errno.ESTALE, f"it changed while reading it ({said})", url)
    return OSError(errno.EIO, f"reading it failed ({said})", url)


async def _gather(body: Any, count: int) -> bytes:
    """Read `count` bytes of a response body (fewer at its end), in the event loop's thread."""
    parts, got = [], 0
    while got < count:
        data = await body.read(count - got)
        if not data:
            break
        parts.append(data)
        got += len(data)
    return b"".join(parts)


async def _close(body: Any) -> None:
    body.close()  # in the event loop's thread, where the connection lives


class _RemoteWriter(io.RawIOBase):
    """An upload through fsspec, whose failures are OSErrors naming its URL (closed by its owner)."""

    def __init__(self, remote: Any, url: str):
        self.remote, self.url = remote, url

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        with _failures(self.url, "writing"):
            self.remote.write(data)
        return memoryview(data).nbytes

    def flush(self) -> None:
        # Not once the upload is closed (committed or thrown away): io's finalizer flushes what it closes.
        if not self.closed and not getattr(self.remote, "closed", False):
            with _failures(self.url, "writing"):
                self.remote.flush()


#: Words in the names of the exceptions that mean the endpoint cannot be reached (botocore, aiohttp,
#: azure-core's ServiceRequestError and ServiceResponseError...).
_UNREACHABLE = (
    "Connect",
    "Connection",
    "Timeout",
    "ServerDisconnected",
    "EndpointConnection",
    "ServiceRequestError",
    "ServiceResponseError",
    "TransportError",  # google-auth's: its token endpoint or metadata server did not answer
    # An answer cut short: aiohttp's ClientPayloadError, botocore's ResponseStreamingError and
    # IncompleteReadError, http.client's IncompleteRead.
    "ClientPayloadError",
    "ResponseStreamingError",
    "IncompleteRead",
)
#: S3's error codes, as s3fs leaves them in its messages, for refused credentials.
_REFUSED = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken", "InvalidToken")
#: S3's error codes for requests refused whatever they ask: the credentials (or the clock) are wrong.
_UNSIGNABLE = (
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "RequestTimeTooSkewed",
)
#: Names of the exceptions of refused or missing credentials: google-auth's, azure-core's, botocore's.
_REFUSED_KINDS = ("RefreshError", "DefaultCredentialsError", "ClientAuthenticationError", "NoCredentials")


@contextlib.contextmanager
def _failures(url: str, doing: str) -> Iterator[None]:
    """Raise what a store raises while `doing` something to `url` as an OSError naming `url`."""
    try:
        yield
    except (ImportError, MemoryError, KeyboardInterrupt):
        raise
    except Exception as err:
        raise _translated(err, url, doing) from err


def _translated(err: Exception, url: str, doing: str) -> OSError:
    # What the store said may lie under the client's own wrapping (adlfs: "Failed to upload block" as a
    # RuntimeError from azure-core's error), so the exceptions it was raised from count too.
    chain = _chain(err)
    names = " ".join(kind.__name__ for raised in chain for kind in type(raised).__mro__)
    statuses = {_status(raised) for raised in chain}
    text = _one_line(err)
    if isinstance(err, OSError) and err.filename == url:
        return err  # already said
    if isinstance(err, FileNotFoundError) or "NoSuchBucket" in text or "NoSuchKey" in text:
        what = "bucket" if "NoSuchBucket" in text or "bucket does not exist" in text.lower() else "object"
        said = f" ({text})" if " " in text else ""  # the server's words, not the path again
        return FileNotFoundError(errno.ENOENT, f"no such {what}{said}", url)
    unreachable = any(isinstance(raised, (ConnectionError, TimeoutError)) for raised in chain) or any(
        word in names for word in _UNREACHABLE
    )  # (also credentials that could not be refreshed for want of a connection: their cause says so)
    if not isinstance(err, PermissionError) and unreachable:
        return ConnectionError(
            errno.ECONNREFUSED,
            f"cannot reach the store, or it stopped answering, while {doing} it ({text})",
            url,
        )
    if (
        isinstance(err, PermissionError)
        or any(kind in names for kind in _REFUSED_KINDS)
        or any(code in text for code in _REFUSED)
        or not statuses.isdisjoint((401, 403))
        or text.startswith("Forbidden")  # gcsfs: a 403 as an OSError
    ):
        return PermissionError(errno.EACCES, f"access refused, check the credentials ({text})", url)
    if "pre-condition" in text or "PreconditionFailed" in text:
        return OSError(errno.ESTALE, f"it changed while {doing} it ({text})", url)
    number = err.errno if isinstance(err, OSError) and err.errno else errno.EIO
    return OSError(number, f"{doing} it failed ({type(err).__name__}: {text})", url)


def _credentials_refused(err: BaseException) -> bool:
    """Whether the store refused `err`'s request for the credentials themselves, not for what they may do.

    An unknown key, a bad signature, an expired token, a clock too far off, or no credentials found; not
    S3's AccessDenied (a policy).
    """
    for raised in _chain(err):
        if any(word in kind.__name__ for kind in type(raised).__mro__ for word in _REFUSED_KINDS):
            return True  # (botocore's NoCredentialsError...)
        answer = getattr(raised, "response", None)
        code = answer.get("Error", {}).get("Code") if isinstance(answer, dict) else None
        if code in _UNSIGNABLE:
            return True
    return False


def _chain(err: BaseException) -> list[BaseException]:
    """Return `err` and the exceptions it was raised from (``raise ... from``), four at most."""
    chain: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and len(chain) < 4 and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__
    return chain


def _status(err: BaseException) -> int | None:
    """Return the HTTP status `err` carries, None if none.

    gcsfs's errors carry it as ``code``, azure-core's as ``status_code``, aiohttp's as ``status``.
    """
    for name in ("status_code", "code", "status"):
        value = getattr(err, name, None)
        if isinstance(value, int) and 100 <= value < 600:
            return value
    return None


def _one_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    if lines[0].startswith("Forbidden") and len(lines) > 1:  # gcsfs: the reason of a 403 on the next line
        return f"{lines[0]}: {lines[1]}"
    return lines[0]
