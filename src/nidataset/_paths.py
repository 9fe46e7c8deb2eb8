"""Names of files and folders, local or in object storage: what is a URL, and how names are put together.

A path with a scheme other than ``file://`` is a URL (opened through fsspec, :mod:`nidataset._storage`);
a ``file://`` URL is its local path. In a bucket, a "folder" is a prefix: ``s3://bucket/scans/`` holds
the objects whose keys start with ``scans/``. Nothing here opens anything.
"""

from __future__ import annotations

import os
import re
import urllib.request

__all__ = ["address", "ends_in_slash", "is_url", "join", "local_path", "name_of", "uncompressed_hint"]

#: A URL's scheme: ``s3://``, ``gs://``, ``simplecache::s3://`` (fsspec's chained URLs) ...
_SCHEME = re.compile(r"\A([A-Za-z][A-Za-z0-9+.-]*)(::[A-Za-z][A-Za-z0-9+.-]*)*://")


def is_url(path: str) -> bool:
    """Whether `path` is a URL for fsspec rather than a local path (``file://`` URLs are local paths).

    Examples
    --------
    >>> is_url("s3://bucket/scans/"), is_url("scans/ct.nii.gz"), is_url("file:///data/ct.nii.gz")
    (True, False, False)
    """
    match = _SCHEME.match(path)
    return match is not None and not (match.group(1).lower() == "file" and match.group(2) is None)


def local_path(path: str) -> str:
    """Return the local path of a ``file://`` URL, read as a file URI (RFC 8089); a local path as it is.

    Percent-escapes are decoded, as :meth:`pathlib.Path.as_uri` writes them and ``Path.from_uri`` reads
    them; the host is empty or ``localhost``.

    Raises
    ------
    ValueError
        If the URL names another host (``file://server/data``: a file there is not a local file), or no
        path (``file://``, ``file://localhost``).

    Examples
    --------
    >>> local_path("file:///data/ct.nii.gz"), local_path("data/ct.nii.gz")
    ('/data/ct.nii.gz', 'data/ct.nii.gz')
    >>> local_path("file://localhost/data/my%20scans/caf%C3%A9.nii.gz")
    '/data/my scans/café.nii.gz'
    """
    if path[:7].lower() != "file://":
        return path
    host, slash, rest = path[7:].partition("/")
    if os.name == "nt" and re.fullmatch(r"[A-Za-z][:|]", host):  # file://C:/data, as older tools write
        host, rest = "", f"{host}/{rest}"
    if not slash:
        raise ValueError(f"'{path}' names no file: a file:// URL is file:///path or file://localhost/path")
    if host and host.lower() != "localhost":
        raise ValueError(
            f"'{path}' names the host '{host}': a file:// URL names a local file, "
            "file:///path or file://localhost/path"
        )
    return urllib.request.url2pathname("/" + rest)  # (on Windows, /C:/data is C:\\data)


def join(folder: str, name: str) -> str:
    """`name` in `folder`: a local path, or a key under a URL's prefix.

    Examples
    --------
    >>> join("s3://bucket/out/", "ct_resampled.nii.gz"), join("s3://bucket", "ct.nii.gz")
    ('s3://bucket/out/ct_resampled.nii.gz', 's3://bucket/ct.nii.gz')
    """
    if is_url(folder):
        return f"{folder.rstrip('/')}/{name}"
    return os.path.join(folder, name)


def name_of(path: str) -> str:
    """Return the last part of a path or URL (an HTTP URL's without its query: a signed URL's name).

    Examples
    --------
    >>> name_of("s3://bucket/scans/ct.nii.gz"), name_of("scans/ct.nii.gz")
    ('ct.nii.gz', 'ct.nii.gz')
    >>> name_of("https://host/bucket/ct.nii.gz?X-Amz-Signature=0f3c&X-Amz-Expires=3600")
    'ct.nii.gz'
    """
    if not is_url(path):
        return os.path.basename(path)
    return address(path).rstrip("/").rsplit("/", 1)[-1]


def ends_in_slash(url: str) -> bool:
    """Whether the URL ends in a slash (an HTTP URL's query aside): it names a folder, a prefix.

    Examples
    --------
    >>> ends_in_slash("s3://bucket/scans.nii.gz/"), ends_in_slash("https://host/ct.nii.gz?sig=a/")
    (True, False)
    """
    return address(url).endswith("/")


def address(url: str) -> str:
    """Return `url` without an HTTP URL's query and fragment (a store's key may hold ``?`` and ``#``)."""
    return url.split("?", 1)[0].split("#", 1)[0] if url[:4].lower() == "http" else url


def uncompressed_hint(*names: str, folder: bool = False) -> str:
    """Say how to read the uncompressed NIfTI files (``.nii``) among `names`, if any (those of a `folder`)."""
    count = sum(name.endswith(".nii") for name in names)
    if not count:
        return ""
    if not folder:
        return " ('.nii' is uncompressed NIfTI: gzip it first, e.g. gzip -k FILE.nii)"
    files, them = ("1 '.nii' file", "it") if count == 1 else (f"{count} '.nii' files", "them")
    return f" (it holds {files}, uncompressed NIfTI: gzip {them} first, e.g. gzip -k FILE.nii)"
