"""Bytes to and from object storage, as Python files: streamed reads, ranged reads, committed writes.

Opened by :class:`nidataset._storage.Storage`, which chooses among them:

- :class:`RemoteReader`: a file fsspec opened, read through; its failures are OSErrors naming its URL.
- :class:`Ranges`: ranged requests of a block at a time (a header, then the rest).
- :func:`s3_body`: an S3 object streamed (its header, then its voxels) by one request whose body is
  read as it arrives: a GET presigned by the S3 client and sent over plain HTTP where nothing the client
  was configured with would be left out, through the client otherwise.
- :class:`RemoteWriter`: an upload, committed by the store once complete; :func:`abandon` throws one
  away.
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
import socket
import ssl
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._store_errors import failures, one_line, translated

__all__ = [
    "AHEAD",
    "HEADER_BLOCK",
    "Ranges",
    "RemoteReader",
    "RemoteWriter",
    "abandon",
    "protocol",
    "s3_body",
]

logger = logging.getLogger(__name__)

#: Bytes fetched per request while a header is checked (the header and its extensions fit in one).
HEADER_BLOCK = 1 << 16
#: Bytes of an S3 body fetched ahead of its reader (two such chunks are held at most).
AHEAD = 1 << 20


def protocol(fs: Any) -> str:
    """Return the protocol of an fsspec file system (its first, if it has several names)."""
    name = fs.protocol
    return name if isinstance(name, str) else name[0]


def abandon(remote: Any, url: str) -> None:
    """Throw away an upload that failed: its object never appears."""
    try:
        remote.discard()
    except Exception as err:  # the store may be what failed: its parts then wait for the next upload
        logger.warning("could not abort the upload to %s: %s", url, err)
    with contextlib.suppress(AttributeError):
        remote.closed = True  # nothing to finish: its finalizer must not upload what was buffered


class RemoteReader(io.RawIOBase):
    """A remote file read through fsspec, whose failures are OSErrors naming its URL."""

    def __init__(self, remote: Any, url: str):
        self.remote, self.url = remote, url

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        with failures(self.url, "reading"):
            data = self.remote.read(len(memoryview(buffer)))
        memoryview(buffer).cast("B")[: len(data)] = data
        return len(data)

    def read(self, size: int = -1) -> bytes:
        with failures(self.url, "reading"):
            return self.remote.read(size)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        with failures(self.url, "reading"):
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


class Ranges(_Pieces):
    """A remote file of an asynchronous fsspec file system (S3, GCS, Azure, HTTP) read by ranged requests.

    Opening it asks at once for its size, its first `block` bytes and its last 4 (a header and a gzip
    trailer: one round trip, not three); other reads ask for at least `block` bytes from where they
    start, and the last answer is kept.
    """

    def __init__(self, fs: Any, key: str, url: str, block: int):
        from fsspec.asyn import sync

        self.fs, self.key, self.url, self.block = fs, key, url, block
        with failures(url, "reading"):
            self.size, head, tail = sync(fs.loop, _opening, fs, key, block)
        self.held = [(0, head), (self.size - len(tail), tail)]

    def _held(self) -> Sequence[tuple[int, bytes]]:
        return self.held

    def _fetch(self, count: int) -> tuple[int, bytes]:
        start, end = self.position, min(self.size, self.position + max(count, self.block))
        with failures(self.url, "reading"):
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
    suffix = protocol(fs) in _SUFFIX_RANGES
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
    read again before the voxels stream on, all from that one GET. The next chunks (:data:`AHEAD` bytes)
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
        with failures(self.url, "reading"):
            response = self.fs.call_s3("get_object", **self.request, **more)
        self.body, self.etag, self.fetched = response["Body"], response.get("ETag"), start
        if self.size < 0:
            self.size = int(response["ContentLength"])
        self._ask()

    def _ask(self) -> None:
        self.pending = None
        if self.fetched < self.size:
            ahead = HEADER_BLOCK if self.fetched == 0 else AHEAD  # the first chunk, kept, holds a header
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
                with failures(self.url, "reading"):
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


def s3_body(fs: Any, key: str, url: str, options: Mapping[str, Any]) -> _Pieces:
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
            logger.debug("reading %s through the S3 client: %s", url, one_line(err))
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
    (:data:`AHEAD` bytes) are read by a thread of its own while the caller works on the one before, into
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
        with failures(self.url, "signing a request for"):
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
            raise translated(err, self.url, "reading") from None
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
        if not self.buffers:  # each holds any chunk: AHEAD bytes, or the whole object if smaller
            self.buffers = [memoryview(bytearray(min(AHEAD, self.size))) for _ in range(2)]
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
                    raise translated(err, self.url, "reading") from None
                logger.info("reading %s again from byte %d: %s", self.url, self.fetched, one_line(err))
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


class RemoteWriter(io.RawIOBase):
    """An upload through fsspec, whose failures are OSErrors naming its URL (closed by its owner)."""

    def __init__(self, remote: Any, url: str):
        self.remote, self.url = remote, url

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        with failures(self.url, "writing"):
            self.remote.write(data)
        return memoryview(data).nbytes

    def flush(self) -> None:
        # Not once the upload is closed (committed or thrown away): io's finalizer flushes what it closes.
        if not self.closed and not getattr(self.remote, "closed", False):
            with failures(self.url, "writing"):
                self.remote.flush()
