"""Where the bytes live: local paths, or fsspec URLs for object storage (``s3://``, ``gs://``, ``az://``...).

A URL (:mod:`nidataset._paths`) is opened through fsspec (imported only when a URL is met: ``pip install
'nidataset[cloud]'``); the remote files it gives are read and written through :mod:`nidataset._remote_io`.

:class:`Storage` carries the call's ``storage_options`` (endpoints, credentials), is picklable so that a
Dask task carries it to workers that share no file system, and opens things:

- :meth:`Storage.open_input`: a file to read, local or remote; a remote one is read by ranged requests
  of a block at a time (small for headers, larger when streaming the voxels); an S3 object streamed
  (its header, then its voxels) by one request whose body is read as it arrives (a request per block
  would wait for each): a GET presigned by the S3 client and sent over plain HTTP where nothing the
  client was configured with would be left out, through the client otherwise;
- :meth:`Storage.upload`: a file to write, which appears under its final name only when complete. Local
  files are written to a hidden temporary file and renamed (:mod:`nidataset._atomic`). Object stores
  (S3, GCS, Azure) publish an upload under its key only when it is committed: a multipart upload,
  committed once complete, aborted on failure; a killed writer leaves no object (S3 keeps the parts of an
  unfinished upload until it is aborted: :meth:`Storage.abort_unfinished`, called by the next run that
  writes the same objects). Other stores
  (``memory://``, FTP...) are written under a hidden temporary key, then moved.

Every failure of a remote store is raised as an OSError naming the URL, with its errno where one fits
(:mod:`nidataset._store_errors`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from ._atomic import atomic_file, is_temporary_of, temporary_name
from ._paths import is_url, join, local_path, name_of, uncompressed_hint
from ._remote_io import Ranges, RemoteReader, RemoteWriter, abandon, protocol, s3_body
from ._store_errors import credentials_refused, failures

__all__ = ["LOCAL", "Storage", "clients_shared_by_threads"]

logger = logging.getLogger(__name__)

#: What makes fsspec read a path as a glob pattern.
_GLOB_MAGIC = re.compile(r"[*?\[]")
#: Stores whose uploads appear under their key only once committed (multipart, resumable, block lists).
_COMMITTING = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl"})
#: Bytes fetched per request while voxels stream in from stores other than S3 (S3: one request).
STREAM_BLOCK = 1 << 21
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
        if block >= STREAM_BLOCK and protocol(fs) in ("s3", "s3a") and hasattr(fs, "call_s3"):
            with s3_body(fs, key, path, self.options) as body:
                yield body  # type: ignore[misc]
            return
        if block < STREAM_BLOCK and getattr(fs, "async_impl", False):
            with Ranges(fs, key, path, block) as ranges:
                yield ranges  # type: ignore[misc]
            return
        # A header's block is kept (the header is read twice: checked, then parsed); its gzip trailer is
        # fetched on its own. Streamed voxels: a block ahead of the reader.
        cache = "first" if block < STREAM_BLOCK else "readahead"
        with failures(path, "reading"):
            remote = fs.open(key, "rb", block_size=block, cache_type=cache)
        with RemoteReader(remote, path) as reader:
            yield reader  # type: ignore[misc]

    def is_file(self, path: str) -> bool:
        """Whether `path` is an existing file or object (the store is asked afresh, not its listing cache)."""
        if not is_url(path):
            return os.path.isfile(local_path(path))
        fs, key = self.filesystem(path)
        with failures(path, "looking at"):
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
        with failures(url, "looking at"):
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
        if protocol(fs) not in _COMMITTING:
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
        with failures(url, "listing"):
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
            if not entries and protocol(fs) in _COMMITTING:  # nothing at all: is there a bucket?
                _check_bucket(fs, url, key.split("/", 1)[0])
            others = [entry["name"].rsplit("/", 1)[-1] for entry in entries if entry.get("type") == "file"]
            hint = uncompressed_hint(*others, folder=True)
            raise FileNotFoundError(errno.ENOENT, f"no '{suffix}' objects under this prefix{hint}", url)
        return [join(url, name) for name in names]

    def stamps(self, url: str) -> dict[str, tuple[str, str]]:
        """Return the (ETag, modification time) of every object under the prefix `url`, by URL.

        One listing (a request per thousand objects on S3), not a request per object.
        """
        fs, key = self.filesystem(url)
        base = key.rstrip("/")
        with failures(url, "listing"):
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
        if protocol(fs) in _COMMITTING:
            # The object appears when the file closes: s3fs completes its multipart upload (a file under
            # one part goes up whole then, by one PUT), gcsfs finalizes its resumable upload, adlfs
            # commits its block list. Even in a transaction someone opened on the (shared) file system:
            # with autocommit=False fsspec keeps the file there, and s3fs or gcsfs would leave its
            # object to the transaction's end (adlfs ignores autocommit).
            with failures(path, "writing"):
                remote = fs.open(key, "wb", block_size=_UPLOAD_BLOCK, autocommit=True)
            try:
                yield RemoteWriter(remote, path)  # type: ignore[misc]
                if waiting is not None:
                    waiting()
                with failures(path, "writing"):
                    remote.close()  # the last part, and the store's commit: only now does the object appear
            except BaseException:
                abandon(remote, path)  # never closed: nothing is committed
                raise
            return
        folder, name = key.rsplit("/", 1) if "/" in key else ("", key)
        hidden = f"{folder}/{temporary_name(name)}" if folder else temporary_name(name)
        with failures(path, "writing"):
            remote = fs.open(hidden, "wb")
        try:
            yield RemoteWriter(remote, path)  # type: ignore[misc]
            if waiting is not None:
                waiting()
            with failures(path, "writing"):
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
        if protocol(fs) not in _COMMITTING:
            return self._remove_hidden(fs, remote)
        if protocol(fs) not in ("s3", "s3a") or call is None:
            return 0
        scheme = remote[0].split("://", 1)[0]
        wanted: dict[str, set[str]] = {}
        for url in remote:
            bucket, _, name = self.filesystem(url)[1].partition("/")
            wanted.setdefault(bucket, set()).add(name)
        try:
            return self._abort(call, scheme, wanted)
        except PermissionError as err:  # a role that may write objects but not list uploads: nothing lost
            if credentials_refused(err):  # unless no request of these credentials would be taken
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
            with failures(f"{scheme}://{bucket}/{common}", "listing the uploads of"):
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
        with failures(where, "looking at"):
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
