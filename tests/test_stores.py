"""Object stores other than S3 as their fsspec packages present them (gcsfs, adlfs), which are not installed
here: a store in memory stands in for them where the difference matters to nidataset.

What it takes from them (read in gcsfs 2026.10 and adlfs 2026.8): files are fsspec buffered files whose
upload appears when the file closes (gcsfs finalizes its resumable upload then, adlfs commits its block
list; with ``autocommit=False`` gcsfs waits for ``commit()``), listings carry ``etag`` and gcsfs's
``generation`` and ``mtime`` or adlfs's ``last_modified``, adlfs cannot be asked for an object's last
bytes without their offset, and their failures are their own exceptions (gcsfs's ``HttpError`` with a
``code``, google-auth's, azure-core's).
"""

import errno
import gc
import itertools
import os
import zlib

import fsspec
import numpy as np
import pytest
from fsspec.spec import AbstractBufferedFile, AbstractFileSystem

from helpers import write_nifti
from nidataset import _remote_io, _storage, _store_errors
from nidataset.preprocessing import resampling_dataset

_generations = itertools.count(1)


class Upload(AbstractBufferedFile):
    """An upload whose object appears when it is closed (or at commit() if not autocommit), as gcsfs's."""

    def _initiate_upload(self):
        self.parts = []

    def _upload_chunk(self, final=False):
        self.parts.append(self.buffer.getvalue())
        if final and self.autocommit:
            self.commit()
        return True

    def commit(self):
        self.fs.objects[self.path] = (b"".join(self.parts), next(_generations))

    def discard(self):  # adlfs: nothing (its staged blocks are never committed); gcsfs: DELETE the session
        self.fs.discarded.append(self.path)


class Download(AbstractBufferedFile):
    def _fetch_range(self, start, end):
        return self.fs.objects[self.path][0][start:end]


class CommittingStore(AbstractFileSystem):
    """A bucket store in memory listed as adlfs lists (``etag``, ``last_modified``); its protocol is gs."""

    protocol = ("gs", "fake-committing")
    root_marker = ""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.objects, self.discarded, self.waiting_saw = {}, [], []
        self.listed_as = "adlfs"

    def _open(self, path, mode="rb", block_size=None, autocommit=True, cache_options=None, **kwargs):
        path = self._strip_protocol(path)
        kind = Download if "r" in mode else Upload
        if kind is Download and path not in self.objects:
            raise FileNotFoundError(path)
        return kind(self, path, mode, block_size=block_size or 2**20, autocommit=autocommit)

    def info(self, path, **kwargs):
        path = self._strip_protocol(path).rstrip("/")
        if path in self.objects:
            data, generation = self.objects[path]
            entry = {"name": path, "size": len(data), "type": "file"}
            if self.listed_as == "adlfs":  # (a datetime) a rewrite changes both
                return {
                    **entry,
                    "etag": f'"0x{generation}"',
                    "last_modified": f"2026-11-22T00:00:{generation:02d}Z",
                }
            # gcsfs: the etag of the contents (the same bytes written again keep it), and a generation
            etag = f"{zlib.crc32(data):08x}"
            return {**entry, "etag": etag, "generation": str(generation), "mtime": "2026-11-22T00:00:00Z"}
        if "/" not in path or any(key.startswith(path + "/") for key in self.objects):
            return {"name": path, "size": 0, "type": "directory"}
        raise FileNotFoundError(path)

    def ls(self, path, detail=True, **kwargs):
        path = self._strip_protocol(path).rstrip("/")
        names = {
            path + "/" + key[len(path) + 1 :].split("/")[0]
            for key in self.objects
            if key.startswith(path + "/")
        }
        if not names:
            raise FileNotFoundError(path)
        entries = [self.info(name) for name in sorted(names)]
        return entries if detail else [entry["name"] for entry in entries]

    def _rm(self, path):
        self.objects.pop(self._strip_protocol(path), None)


@pytest.fixture
def store():
    fsspec.register_implementation("fake-committing", CommittingStore, clobber=True)
    fs = fsspec.filesystem("fake-committing")  # the instance the URLs below are opened with (cached)
    fs.objects.clear()
    fs.discarded.clear()
    return fs


def test_an_upload_appears_when_its_file_closes_and_not_before(store):
    storage = _storage.Storage()
    url = "fake-committing://bucket/out/a.nii.gz"
    data = os.urandom(3 * 2**20 + 5)

    def waiting():  # all is written: the store's part is left
        store.waiting_saw.append(dict(store.objects))

    with storage.upload(url, waiting=waiting) as file:
        file.write(data)
    assert store.waiting_saw == [{}]
    assert store.objects["bucket/out/a.nii.gz"][0] == data
    # Not left in the file system's transaction (where fsspec keeps files opened with autocommit=False,
    # and their buffers, until the process ends).
    assert not store.transaction.files


def test_an_upload_is_not_left_to_a_transaction_open_on_the_store(store):
    # fsspec file systems are shared (by every thread since fsspec 2026.6): a transaction someone else
    # has open on one must not hold back, or throw away, an output of ours.
    with pytest.raises(RuntimeError, match="theirs"):
        with store.transaction:
            with _storage.Storage().upload("fake-committing://bucket/out/a.nii.gz") as file:
                file.write(b"voxels")
            assert store.objects["bucket/out/a.nii.gz"][0] == b"voxels"
            raise RuntimeError("theirs failed")
    assert store.objects["bucket/out/a.nii.gz"][0] == b"voxels"
    assert store.discarded == []


def test_a_failed_upload_leaves_nothing(store):
    storage = _storage.Storage()
    with pytest.raises(RuntimeError, match="mid-way"):
        with storage.upload("fake-committing://bucket/out/a.nii.gz") as file:
            file.write(os.urandom(3 * 2**20))
            raise RuntimeError("mid-way")
    del file
    gc.collect()  # a file left open would be closed by its finalizer: adlfs's would commit what it holds
    assert store.objects == {}
    assert store.discarded == ["bucket/out/a.nii.gz"]
    assert not store.transaction.files


def test_a_dataset_through_the_store_matches_a_local_run(store, tmp_path, rng):
    for name in "ab":
        data = rng.integers(-1000, 3000, (20, 18, 12)).astype(np.int16)
        local = write_nifti(tmp_path / "in" / f"{name}.nii.gz", data)
        with open(local, "rb") as file:
            store.objects[f"bucket/in/{name}.nii.gz"] = (file.read(), next(_generations))
    outputs = resampling_dataset("fake-committing://bucket/in/", "fake-committing://bucket/out/", (9, 11, 7))
    local = resampling_dataset(tmp_path / "in", tmp_path / "out", (9, 11, 7))
    assert len(outputs) == len(local) == 2
    for url, path in zip(outputs, local, strict=True):
        with open(path, "rb") as file:
            assert store.objects[url[len("fake-committing://") :]][0] == file.read()


def test_a_prefix_of_uncompressed_files_says_to_gzip_them(store):
    store.objects["bucket/raw/a.nii"] = (b"whatever", next(_generations))
    store.objects["bucket/raw/b.nii"] = (b"whatever", next(_generations))
    with pytest.raises(
        FileNotFoundError, match=r"it holds 2 '\.nii' files, uncompressed NIfTI: gzip them first"
    ):
        resampling_dataset("fake-committing://bucket/raw/", "fake-committing://bucket/out/", (9, 11, 7))


@pytest.mark.parametrize("listed_as", ["adlfs", "gcsfs"])
def test_stamps_read_the_keys_each_store_lists(store, listed_as):
    store.listed_as = listed_as
    store.objects["bucket/out/a/a_resampled.nii.gz"] = (b"x", next(_generations))
    storage = _storage.Storage()
    before = storage.stamps("fake-committing://bucket/out/")
    assert list(before) == ["fake-committing://bucket/out/a/a_resampled.nii.gz"]
    assert all(before["fake-committing://bucket/out/a/a_resampled.nii.gz"])  # adlfs: etag, last_modified
    store.objects["bucket/out/a/a_resampled.nii.gz"] = (b"x", next(_generations))  # rewritten, the same bytes
    after = storage.stamps("fake-committing://bucket/out/")
    assert after != before


class Ranged:
    """The asynchronous calls _Ranges makes, recorded; a negative start fails as adlfs's SDK fails it."""

    def __init__(self, protocol, data):
        self.protocol, self.data, self.asked = protocol, data, []

    async def _info(self, key):
        return {"size": len(self.data)}

    async def _cat_file(self, key, start=None, end=None):
        self.asked.append((start, end))
        if start < 0 and self.protocol == "az":
            raise ValueError("Content-Range header missing")  # what the SDK raises on bytes=-4-...
        return self.data[start:end] if start >= 0 else self.data[start:]


@pytest.mark.parametrize("size", [3, 100, 2**16 + 2, 70_000])
def test_a_store_without_suffix_ranges_is_asked_for_the_tail_by_its_offset(size):
    import asyncio

    data = os.urandom(size)
    azure = Ranged("az", data)
    assert asyncio.run(_remote_io._opening(azure, "k", 2**16)) == (size, data[: 2**16], data[-4:])
    assert all(start >= 0 for start, _ in azure.asked)
    assert len(azure.asked) == (1 if size <= 2**16 else 2)  # a first block that holds the tail: no more
    s3 = Ranged("s3", data)
    assert asyncio.run(_remote_io._opening(s3, "k", 2**16)) == (size, data[: 2**16], data[-4:])
    assert s3.asked == [(0, 2**16), (-4, None)]  # at once, with the size


# --- their failures ---------------------------------------------------------------------------------------


class HttpError(Exception):
    """gcsfs's, with the status as ``code``."""

    def __init__(self, message, code):
        super().__init__(message)
        self.code = code


class GoogleAuthError(Exception):
    pass


class RefreshError(GoogleAuthError):
    pass


class AzureError(Exception):
    pass


class HttpResponseError(AzureError):
    def __init__(self, message, status_code):
        super().__init__(message)
        self.status_code = status_code


class ClientAuthenticationError(HttpResponseError):
    pass


class ServiceRequestError(AzureError):
    pass


class TransportError(GoogleAuthError):
    """google-auth's: its token endpoint or the metadata server did not answer."""


def raised_from(outer, inner):
    """`outer` as ``raise outer from inner`` leaves it."""
    try:
        raise outer from inner
    except type(outer) as err:
        return err


def refresh_failed_for_want_of_a_connection():
    transport = TransportError("HTTPSConnectionPool(host='oauth2.googleapis.com'): name resolution failed")
    return raised_from(RefreshError("Failed to retrieve an access token"), transport)


def adlfs_upload_refused():  # adlfs wraps what the service said
    refused = HttpResponseError("AuthorizationPermissionMismatch", 403)
    return raised_from(RuntimeError("Failed to upload block: AuthorizationPermissionMismatch!"), refused)


@pytest.mark.parametrize(
    ("raised", "kind", "number"),
    [
        (HttpError("Invalid Credentials", 401), PermissionError, errno.EACCES),
        (
            OSError("Forbidden: https://storage.googleapis.com/b/o\nno storage.objects.get"),
            PermissionError,
            errno.EACCES,
        ),
        (
            TransportError("HTTPSConnectionPool(host='oauth2.googleapis.com')"),
            ConnectionError,
            errno.ECONNREFUSED,
        ),
        (refresh_failed_for_want_of_a_connection(), ConnectionError, errno.ECONNREFUSED),
        (adlfs_upload_refused(), PermissionError, errno.EACCES),
        (
            raised_from(RuntimeError("Failed to upload block"), HttpResponseError("Server busy", 503)),
            OSError,
            errno.EIO,
        ),
        (RefreshError("invalid_grant: Bad Request"), PermissionError, errno.EACCES),
        (
            ClientAuthenticationError("Server failed to authenticate the request.", 403),
            PermissionError,
            errno.EACCES,
        ),
        (HttpResponseError("This request is not authorized", 403), PermissionError, errno.EACCES),
        (
            ServiceRequestError("Cannot connect to host account.blob.core.windows.net"),
            ConnectionError,
            errno.ECONNREFUSED,
        ),
        (HttpResponseError("Internal error", 500), OSError, errno.EIO),
        (HttpError("Backend Error", 503), OSError, errno.EIO),
    ],
)
def test_the_failures_of_other_stores_say_what_is_wrong(raised, kind, number):
    url = "gs://bucket/in/ct.nii.gz"
    with pytest.raises(OSError) as info:
        with _store_errors.failures(url, "reading"):
            raise raised
    assert type(info.value) is kind
    assert (info.value.errno, info.value.filename) == (number, url)
    said = str(raised).splitlines()
    assert said[0] in info.value.strerror  # the store's own words are kept
    if said[0].startswith("Forbidden"):
        assert said[1] in info.value.strerror  # and gcsfs's reason of a 403, on its second line


def test_a_bucket_a_role_may_not_look_at_is_left_to_its_objects(monkeypatch, store):
    # gcsfs's 403 on the bucket: the run goes on (its objects will say), as with S3's.
    def refuse(path, **kwargs):
        raise OSError("Forbidden: https://storage.googleapis.com/storage/v1/b/bucket")

    monkeypatch.setattr(store, "info", refuse)
    assert (
        _storage.Storage().check_output_folder("fake-committing://bucket/out/")
        == "fake-committing://bucket/out/"
    )


def test_an_output_bucket_is_asked_about_unless_the_input_was_just_read_from_it(store, monkeypatch):
    asked = []
    monkeypatch.setattr(store, "info", lambda path, **kwargs: asked.append(path) or {"type": "directory"})
    storage = _storage.Storage()
    out = "fake-committing://data/out/"
    storage.check_output_folder(out, reached="fake-committing://data/in/a.nii.gz")  # its bucket answered
    assert asked == []
    storage.check_output_folder(out, reached="fake-committing://other/in/a.nii.gz")  # another bucket
    storage.check_output_folder(out, reached="s3://data/in/a.nii.gz")  # another store, the same name
    storage.check_output_folder(out, reached="/data/in/a.nii.gz")  # a local path
    storage.check_output_folder(out)
    assert asked == ["data"] * 4


class PlainStore(CommittingStore):
    """A store without commits whose files write what they hold when closed, with a rename of its own
    and no copy (as FTP's, SFTP's)."""

    protocol = ("fake-plain",)

    def mv(self, path1, path2, **kwargs):
        path1, path2 = self._strip_protocol(path1), self._strip_protocol(path2)
        self.objects[path2] = self.objects.pop(path1)


class RmOnlyStore(PlainStore):
    """A store that deletes by its own rm only (as Databricks')."""

    protocol = ("fake-rmonly",)

    def rm_file(self, path):
        raise NotImplementedError

    def rm(self, path, recursive=False, maxdepth=None):
        self.objects.pop(self._strip_protocol(path))


@pytest.mark.parametrize("name", ["plain", "st*r", "what?", "brack[1]"])
def test_a_store_with_its_own_rename_writes_any_name(name):
    # Its rename takes names as they are; fsspec's generic move (a copy, then a delete) would read them as
    # glob patterns, and this store has no copy.
    fsspec.register_implementation("fake-plain", PlainStore, clobber=True)
    store = fsspec.filesystem("fake-plain")
    store.objects.clear()
    data = os.urandom(1000)
    with _storage.Storage().upload(f"fake-plain://bucket/out/{name}.nii.gz") as file:
        file.write(data)
    assert {key: value[0] for key, value in store.objects.items()} == {f"bucket/out/{name}.nii.gz": data}


def test_a_store_that_deletes_by_rm_only_has_a_killed_runs_hidden_key_removed():
    from nidataset._atomic import temporary_name

    fsspec.register_implementation("fake-rmonly", RmOnlyStore, clobber=True)
    store = fsspec.filesystem("fake-rmonly")
    store.objects.clear()
    store.objects["bucket/out/" + temporary_name("a.nii.gz")] = (b"half", 1)
    store.objects["bucket/out/notes.txt"] = (b"theirs", 2)
    assert _storage.Storage().abort_unfinished(["fake-rmonly://bucket/out/a.nii.gz"]) == 1
    assert list(store.objects) == ["bucket/out/notes.txt"]


def test_a_failed_write_on_a_store_without_commits_leaves_no_hidden_key():
    # The output goes to a hidden key first. A failure deletes that key; the file, never closed, must not
    # write it again when its finalizer closes it.
    fsspec.register_implementation("fake-plain", PlainStore, clobber=True)
    store = fsspec.filesystem("fake-plain")
    store.objects.clear()
    with pytest.raises(RuntimeError, match="mid-way"):
        with _storage.Storage().upload("fake-plain://bucket/out/a.nii.gz") as file:
            file.write(os.urandom(3 * 2**20))
            raise RuntimeError("mid-way")
    del file
    gc.collect()
    assert store.objects == {}
