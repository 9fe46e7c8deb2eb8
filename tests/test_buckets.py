"""Inputs and outputs in object storage, against a real S3 server (moto's) on 127.0.0.1.

The server runs in this process, on a port the OS chooses, and is stopped at the end; each test has a
bucket of its own. Local runs of the same files are the oracle: bucket outputs are compared byte for byte.
"""

import contextlib
import functools
import gzip
import itertools
import logging
import os
import random
import re
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse

import numpy as np
import pytest

from helpers import write_nifti
from nidataset import _remote_io, _storage, _store_errors
from nidataset.preprocessing import DatasetError, InvalidVolumeError, resampling, resampling_dataset

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

CREDENTIALS = {"key": "testing", "secret": "testing"}
#: Fail fast where nothing answers: one attempt, a short connect timeout (s3fs retries otherwise).
FAST = {"config_kwargs": {"connect_timeout": 2, "read_timeout": 10, "retries": {"max_attempts": 1}}}


class Server:
    """moto's S3 server in a thread of this process: its state outlives a stop, so it can come back.

    Its port is a free one below the range the OS hands out to clients: stopped, the server can come
    back on it without a client connection having taken it meanwhile.
    """

    def __init__(self):
        self.port = None
        self.thread = None

    def start(self):
        if self.port is None:
            self.port = next(port for port in random.sample(range(20000, 32768), 500) if self.free(port))
        deadline = time.monotonic() + 30
        while not self.free(self.port):  # ThreadedMotoServer waits forever if it cannot bind
            assert time.monotonic() < deadline, f"port {self.port} stays taken"
            time.sleep(0.1)
        self.thread = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.thread.start()

    @staticmethod
    def free(port):
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                return False
        return True

    def stop(self):
        self.thread.stop()

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.port}"

    def options(self, **more):
        return {**CREDENTIALS, "endpoint_url": self.endpoint, **more}

    def cli_options(self):
        return [f"--storage-option={key}={value}" for key, value in self.options().items()]


@pytest.fixture(scope="session")
def server():
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    running = Server()
    running.start()
    yield running
    running.stop()


@pytest.fixture
def bucket(server):
    """A new bucket: ``(name, s3fs file system)``."""
    import s3fs

    fs = s3fs.S3FileSystem(**server.options(), skip_instance_cache=True)
    name = f"test-{secrets.token_hex(6)}"
    fs.mkdir(name)
    return name, fs


@pytest.fixture
def scans(tmp_path, rng):
    """Three small int16 scans in a local folder, also in the bucket under ``scans/``."""
    folder = tmp_path / "scans"
    paths = []
    for i, name in enumerate(["b_scan", "a_scan", "c_scan"]):
        data = rng.integers(-1000, 3000, (30 + i, 28, 20)).astype(np.int16)
        paths.append(write_nifti(folder / f"{name}.nii.gz", data))
    return folder, sorted(paths)


def upload(fs, local_folder, prefix):
    for name in sorted(os.listdir(local_folder)):
        fs.put(os.path.join(local_folder, name), f"{prefix}/{name}")


def scans_to_out(server, name, **kwargs):
    """Resample ``s3://<name>/scans/`` to ``s3://<name>/out/`` at 15 x 14 x 10, with `kwargs`."""
    return resampling_dataset(
        f"s3://{name}/scans/",
        f"s3://{name}/out/",
        (15, 14, 10),
        progress=False,
        storage_options=server.options(),
        **kwargs,
    )


def read(path):
    with open(path, "rb") as file:
        return file.read()


def unfinished_uploads(fs, bucket):
    return fs.call_s3("list_multipart_uploads", Bucket=bucket).get("Uploads", [])


# --- 1, 2: URLs in, URLs out, the same bytes and layouts ---------------------------------------------------


@pytest.mark.parametrize(("saving_mode", "workers"), [("case", 1), ("folder", 1), ("case", 2)])
def test_a_prefix_to_a_prefix_gives_the_local_outputs_byte_for_byte(
    server, bucket, scans, tmp_path, saving_mode, workers
):
    name, fs = bucket
    folder, _ = scans
    upload(fs, folder, f"{name}/scans")
    fs.pipe(f"{name}/scans/notes.txt", b"not a volume")  # not listed
    fs.pipe(f"{name}/scans/deeper/d_scan.nii.gz", read(scans[1][0]))  # not directly under the prefix
    local = resampling_dataset(folder, tmp_path / "local", (15, 14, 10), saving_mode, progress=False)
    remote = resampling_dataset(
        f"s3://{name}/scans/",
        f"s3://{name}/out",
        (15, 14, 10),
        saving_mode,
        progress=False,
        workers=workers,  # 2: threads sharing this process's client
        storage_options=server.options(),
    )
    expected = [f"s3://{name}/out/{os.path.relpath(p, tmp_path / 'local')}" for p in local]
    assert remote == expected  # sorted, same layout and names
    for url, path in zip(remote, local, strict=True):
        assert fs.cat(url) == read(path)
    assert not unfinished_uploads(fs, name)


def test_workers_on_urls_are_threads_of_this_process(server, bucket, scans, monkeypatch):
    # A process of a pool would make its own client of the store (a third of a CPU-second each).
    from nidataset import _runner

    name, fs = bucket
    folder, paths = scans
    upload(fs, folder, f"{name}/scans")
    running = []
    real = _runner.resample_file

    def spy(*args, **kwargs):
        running.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(_runner, "resample_file", spy)
    outputs = scans_to_out(server, name, workers=2)
    assert len(outputs) == len(paths)
    assert len(running) == len(paths) and all(name.startswith("nidataset-file") for name in running)


def test_an_s3_client_has_two_connections_per_file_at_once():
    # A file holds its input's connection while its output's parts need one: threads sharing a client
    # would wait for each other forever once they held them all (botocore's default is 10).
    def connections(storage, url="s3://b/x.nii.gz"):
        return storage.filesystem(url)[0].config_kwargs["max_pool_connections"]

    options = {"key": "k", "secret": "s", "endpoint_url": "http://127.0.0.1:1"}
    assert connections(_storage.Storage.of(options)) == _storage.CONNECTIONS >= 4
    assert connections(_storage.Storage.of(options, files=40)) == 82
    assert connections(_storage.Storage.of(None, files=40)) == 82
    mine = {**options, "config_kwargs": {"max_pool_connections": 5, "retries": {"max_attempts": 1}}}
    assert connections(_storage.Storage.of(mine, files=40)) == 5  # the caller's, as given
    assert _storage.Storage.of(mine).options == mine  # not changed in place


def test_a_download_is_checked_by_the_gzip_crc(server, bucket, volume, tmp_path):
    # The S3 client computes no checksum of a download (it would check it only on a read past the end,
    # which a stream of known length never makes): gzip's CRC-32 of the voxels covers every byte.
    name, fs = bucket
    path, _ = volume
    corrupt = bytearray(read(path))
    corrupt[-8] ^= 0xFF  # the CRC-32 in the gzip trailer
    fs.pipe(f"{name}/in/bad.nii.gz", bytes(corrupt))
    with pytest.raises(InvalidVolumeError, match=f"s3://{name}/in/bad.nii.gz.*CRC check failed"):
        resampling(
            f"s3://{name}/in/bad.nii.gz", f"s3://{name}/out/", (9, 9, 9), storage_options=server.options()
        )
    assert not fs.find(f"{name}/out")
    storage = _storage.Storage.of(server.options())
    config = storage.filesystem(f"s3://{name}/in/bad.nii.gz")[0].config_kwargs
    if _storage._botocore_knows("response_checksum_validation"):
        assert config["response_checksum_validation"] == "when_required"
    mine = {**server.options(), "config_kwargs": {"response_checksum_validation": "when_supported"}}
    config = _storage.Storage.of(mine).filesystem(f"s3://{name}/x")[0].config_kwargs
    assert config["response_checksum_validation"] == "when_supported"  # the caller's, as given


def test_ten_threads_streaming_in_and_out_do_not_wait_for_each_other(server, bucket, tmp_path, rng):
    # Nearest streams both ways: every output's first part goes up while its input is still open.
    name, fs = bucket
    for i in range(10):
        data = rng.integers(-30000, 30000, (256, 256, 64)).astype(np.int16)  # 8 MB, incompressible
        fs.put(write_nifti(tmp_path / f"s{i}.nii.gz", data), f"{name}/in/s{i}.nii.gz")
    outputs = resampling_dataset(
        f"s3://{name}/in/",
        f"s3://{name}/out/",
        (256, 256, 192),
        interpolation="nearest",
        workers=10,
        progress=False,
        storage_options=server.options(),
    )
    assert len(outputs) == 10 and all(fs.info(url)["size"] > 5 << 20 for url in outputs)  # several parts


def test_one_object_with_its_preview_and_every_url_form(server, bucket, volume, tmp_path):
    pytest.importorskip("matplotlib")
    name, fs = bucket
    path, _ = volume
    fs.put(path, f"{name}/in/v.nii.gz")
    local = resampling(path, tmp_path / "local", (10, 15, 9), preview=True)
    url = resampling(
        f"s3://{name}/in/v.nii.gz",
        f"s3://{name}/one/",
        (10, 15, 9),
        preview=True,
        storage_options=server.options(),
    )
    assert url == f"s3://{name}/one/v_resampled.nii.gz"
    assert fs.cat(url) == read(local)
    assert fs.cat(f"{name}/one/v_preview.png")[:8] == b"\x89PNG\r\n\x1a\n"
    # https:// (here http://) for reading: a public object at its path-style address, and a signed URL.
    fs.chmod(f"{name}/in/v.nii.gz", acl="public-read")
    from_http = resampling(f"{server.endpoint}/{name}/in/v.nii.gz", tmp_path / "http", (10, 15, 9))
    assert read(from_http) == read(local)
    signed = fs.url(f"{name}/in/v.nii.gz")
    assert "?" in signed
    from_signed = resampling(signed, tmp_path / "signed", (10, 15, 9))
    assert from_signed == str(tmp_path / "signed" / "v_resampled.nii.gz") and read(from_signed) == read(local)
    # file:// URLs are local paths.
    from_file = resampling(f"file://{path}", f"file://{tmp_path / 'file'}", (10, 15, 9))
    assert from_file == str(tmp_path / "file" / "v_resampled.nii.gz") and read(from_file) == read(local)


def test_file_urls_are_read_as_file_uris(volume, tmp_path):
    # As pathlib writes them (percent-escapes) and with the local host named; another host is refused
    # before anything is read or written (it once became a relative path under the current folder).
    import shutil

    path, _ = volume
    folder = tmp_path / "my scans" / "café"
    folder.mkdir(parents=True)
    source = folder / "ct 1.nii.gz"
    shutil.copy(path, source)
    expected = read(resampling(source, tmp_path / "plain", (10, 15, 9)))
    out = tmp_path / "out put"
    written = resampling(source.as_uri(), out.as_uri(), (10, 15, 9))
    assert written == str(out / "ct 1_resampled.nii.gz") and read(written) == expected
    localhost = "file://localhost" + urllib.parse.quote(str(folder))
    assert resampling_dataset(localhost, out.as_uri(), (10, 15, 9), progress=False) == [
        str(out / "ct 1" / "ct 1_resampled.nii.gz")
    ]
    with pytest.raises(ValueError, match="names the host 'server'"):
        resampling("file://server/share/ct.nii.gz", tmp_path / "none", (10, 15, 9))
    for nothing in ("file://", "file://localhost"):  # (not the root folder, nor the current one)
        with pytest.raises(ValueError, match="names no file"):
            resampling(source, nothing, (10, 15, 9))
    assert not (tmp_path / "none").exists()


def test_memory_urls_and_an_upload_that_fails_leaves_nothing(volume, tmp_path, monkeypatch):
    import fsspec

    store = fsspec.filesystem("memory")
    path, _ = volume
    store.put(path, "memory://in/v.nii.gz")
    try:
        out = resampling("memory://in/v.nii.gz", "memory://out", (10, 15, 9))
        assert store.cat(out) == read(resampling(path, tmp_path, (10, 15, 9)))
        # A failure while writing: neither the object nor its hidden temporary key remains.
        monkeypatch.setattr(_remote_io.RemoteWriter, "write", fail_write)
        with pytest.raises(OSError, match="the store broke"):
            resampling("memory://in/v.nii.gz", "memory://broken", (10, 15, 9))
        assert not store.exists("memory://broken") or not store.ls("memory://broken")
    finally:
        store.rm("memory://in", recursive=True)
        store.rm("memory://out", recursive=True)


def fail_write(self, data):
    raise OSError(5, "the store broke")


def test_a_killed_runs_hidden_key_is_removed_by_the_next_run(volume, tmp_path):
    import fsspec

    from nidataset._atomic import temporary_name

    store = fsspec.filesystem("memory")
    path, _ = volume
    store.put(path, "memory://hidden/in/v.nii.gz")
    left = f"memory://hidden/out/v/{temporary_name('v_resampled.nii.gz')}"
    store.pipe(left, b"half an output")  # what a killed writer leaves on a store without commits
    other = "memory://hidden/out/v/.notes.txt"
    store.pipe(other, b"someone else's")
    try:
        resampling_dataset("memory://hidden/in/", "memory://hidden/out/", (10, 15, 9), progress=False)
        assert not store.exists(left) and store.exists(other)
        assert store.exists("memory://hidden/out/v/v_resampled.nii.gz")
    finally:
        store.rm("memory://hidden", recursive=True)


@pytest.mark.parametrize("stem", ["star*", "what?", "brack[1]", "plain"])
def test_names_that_look_like_glob_patterns_are_written_where_they_say(volume, tmp_path, stem, monkeypatch):
    # On a store without commits the output is written under a hidden key, then moved: fsspec's move
    # reads its paths as glob patterns, which once moved nothing (the call said it had written the
    # output) or failed. Here the names are folders and files; a killed run's hidden key is cleared.
    import fsspec

    from nidataset._atomic import temporary_name

    store = fsspec.filesystem("memory")
    path, _ = volume
    root = f"memory://glob-{secrets.token_hex(4)}/{stem}"
    for name in (stem, "other"):
        store.put(path, f"{root}/in/{name}.nii.gz")
    left = f"{root}/out/{stem}/{temporary_name(f'{stem}_resampled.nii.gz')}"
    store.pipe(left, b"half an output")
    local = read(resampling(path, tmp_path, (10, 15, 9)))
    try:
        single = resampling(f"{root}/in/{stem}.nii.gz", f"{root}/single", (10, 15, 9))
        assert single == f"{root}/single/{stem}_resampled.nii.gz" and store.cat_file(single) == local
        written = resampling_dataset(f"{root}/in/", f"{root}/out/", (10, 15, 9), progress=False)
        assert written == [f"{root}/out/{name}/{name}_resampled.nii.gz" for name in sorted((stem, "other"))]
        assert all(store.cat_file(url) == local for url in written)
        # Nothing else is left: no hidden key, the killed run's included.
        expected = {single, *written, f"{root}/in/{stem}.nii.gz", f"{root}/in/other.nii.gz"}
        assert {f"memory://{name.lstrip('/')}" for name in store.find(root)} == expected
        # A write that fails leaves nothing either.
        monkeypatch.setattr(_remote_io.RemoteWriter, "write", fail_write)
        with pytest.raises(OSError, match="the store broke"):
            resampling(f"{root}/in/{stem}.nii.gz", f"{root}/broken", (10, 15, 9))
        assert store.find(f"{root}/broken") == []
    finally:
        store.rm(root.rsplit("/", 1)[0], recursive=True)


def test_credentials_stay_out_of_reprs_and_messages(capsys):
    from nidataset._options import Options
    from nidataset._runner import DatasetJob

    storage = _storage.Storage.of({"key": "AKIA-visible-name", "secret": "s3cr3t-value"})
    job = DatasetJob("s3://b/out", "case", (9, 9, 9), Options(), 1, storage=storage)
    assert "s3cr3t-value" not in repr(storage) and "s3cr3t-value" not in repr(job)
    assert "secret" in repr(storage)  # the names are shown
    with pytest.raises(TypeError) as info:
        _storage.Storage.of([("secret", "s3cr3t-value")])
    assert "s3cr3t-value" not in str(info.value)
    from nidataset.cli import main

    with pytest.raises(SystemExit):
        main(
            [
                "resample",
                "s3://b/in/",
                "s3://b/out/",
                "--size",
                "4",
                "4",
                "4",
                "--storage-option",
                "s3cr3t-value",
            ]
        )
    said = capsys.readouterr().err
    assert "expected KEY=VALUE" in said and "s3cr3t-value" not in said


def test_importing_the_package_does_not_import_fsspec():
    code = "import nidataset, nidataset.preprocessing, nidataset.cli, sys; print('fsspec' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        == "False\n"
    )


# --- 3: streaming, memory bounded ------------------------------------------------------------------------


READ_PEAK = """
import itertools, json, sys, tracemalloc
import numpy as np
from nidataset import _nifti, _storage
source = _nifti.open_volume(sys.argv[1], _storage.Storage.of(json.loads(sys.argv[2])))
buffer = np.empty((8,) + source.stored_shape[1:], source.dtype)
tracemalloc.start()
total = sum(block.size for block in _nifti.read_slabs(source, 8, itertools.repeat(buffer)))
print(total, tracemalloc.get_traced_memory()[1])
"""


def test_a_remote_input_is_read_a_block_at_a_time(server, bucket, tmp_path, rng):
    # In a process of its own: this one runs the server, whose copies tracemalloc would count too.
    import json

    name, fs = bucket
    data = rng.integers(-30000, 30000, (256, 256, 192)).astype(np.int16)  # 25 MB, incompressible
    path = write_nifti(tmp_path / "big.nii.gz", data)
    fs.put(path, f"{name}/big.nii.gz")
    done = subprocess.run(
        [sys.executable, "-c", READ_PEAK, f"s3://{name}/big.nii.gz", json.dumps(server.options())],
        capture_output=True,
        text=True,
        check=True,
    )
    total, peak = (int(n) for n in done.stdout.split())
    assert total == data.size
    compressed = os.path.getsize(path)
    # Two chunks of the body ahead of the reader, the chunk being joined, gzip's buffers: not the object.
    assert peak < 8 * _remote_io.AHEAD < compressed / 3, (peak, compressed)


WRITE_PEAK = """
import json, sys, tracemalloc
import nibabel as nib
import numpy as np
from nidataset import _nifti, _storage
shape = (256, 256, int(sys.argv[3]))  # incompressible int16
header = nib.Nifti1Header()
header.set_data_dtype(np.int16)
header.set_data_shape(shape)
rng = np.random.default_rng(0)
slab = rng.integers(-30000, 30000, (8, 256, 256)).astype(np.int16)
storage = _storage.Storage.of(json.loads(sys.argv[2]))
storage.is_file(sys.argv[1])  # the S3 client made first: its service model alone is some 20 MB
tracemalloc.start()
with _nifti.SlabWriter(sys.argv[1], header, storage=storage) as writer:
    for _ in range(shape[2] // 8):
        slab += 1  # no two slabs alike
        writer.write(slab)
print(tracemalloc.get_traced_memory()[1])
"""


def requests_logged(caplog):
    """The requests the server logged, as (method, path) pairs."""
    found = []
    for record in caplog.records:
        if record.name == "werkzeug" and (asked := re.search(r"([A-Z]+) (/\S*) HTTP/", record.getMessage())):
            found.append((asked.group(1), asked.group(2).split("?")[0]))
    return found


def test_a_dataset_reads_each_object_by_one_get(server, bucket, scans, caplog):
    # Header and voxels from one GET; no HEAD per object; one PUT per output.
    name, fs = bucket
    folder, paths = scans
    upload(fs, folder, f"{name}/scans")
    caplog.set_level(logging.INFO, logger="werkzeug")
    outputs = scans_to_out(server, name)
    asked = requests_logged(caplog)
    for path, url in zip(paths, outputs, strict=True):
        key = f"/{name}/scans/{os.path.basename(path)}"
        assert [method for method, where in asked if where == key] == ["GET"], asked
        assert [method for method, where in asked if where == url[len("s3:/") :]] == ["PUT"], asked
    # The bucket itself: listed for the inputs, then for unfinished uploads; not asked whether it exists
    # (its listing said so).
    assert [method for method, where in asked if where.rstrip("/") == f"/{name}"] == ["GET", "GET"], asked


def test_one_file_asks_its_bucket_only_for_unfinished_uploads(server, bucket, scans, caplog):
    name, fs = bucket
    fs.put(scans[1][0], f"{name}/in/a.nii.gz")
    caplog.set_level(logging.INFO, logger="werkzeug")
    resampling(f"s3://{name}/in/a.nii.gz", f"s3://{name}/out/", (9, 9, 9), storage_options=server.options())
    asked = requests_logged(caplog)
    assert [method for method, where in asked if where == f"/{name}/in/a.nii.gz"] == ["HEAD", "GET"], asked
    # The input's HEAD said the bucket is there: it is asked only for the uploads killed runs left.
    assert [method for method, where in asked if where.rstrip("/") == f"/{name}"] == ["GET"], asked


def test_a_body_serves_its_first_chunk_again_without_asking(server, bucket, caplog):
    name, fs = bucket
    data = os.urandom(3 * _remote_io.AHEAD + 123)
    fs.pipe(f"{name}/blob.nii.gz", data)
    storage = _storage.Storage.of(server.options())
    caplog.set_level(logging.INFO, logger="werkzeug")

    def gets():
        return sum(where == f"/{name}/blob.nii.gz" for _, where in requests_logged(caplog))

    with storage.open_input(f"s3://{name}/blob.nii.gz") as raw:
        assert raw.read(1000) == data[:1000]  # a header
        raw.seek(10)
        assert raw.read(10) == data[10:20]  # read again
        raw.seek(0)
        assert raw.read() == data  # then on through the whole body
        assert gets() == 1
        raw.seek(_remote_io.AHEAD + 5)  # somewhere not held: the rest from there
        assert raw.read(100) == data[_remote_io.AHEAD + 5 :][:100]
        assert raw.read() == data[_remote_io.AHEAD + 105 :]  # on the same answer
        assert gets() == 2


class Relay:
    """A TCP relay to the server that records each request's head and can cut answers short.

    The answer on the k-th connection is cut after ``cuts[k]`` bytes (headers included), if given. With
    `tls` (a server-side SSL context), the relay is an HTTPS endpoint in front of the plain HTTP server.
    """

    def __init__(self, endpoint, cuts=(), tls=None):
        self.target = endpoint.rsplit(":", 1)
        self.cuts, self.tls = list(cuts), tls
        self.heads = []
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        scheme = "https" if tls else "http"
        self.endpoint = f"{scheme}://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            limit = self.cuts[self.connections - 1] if self.connections <= len(self.cuts) else None
            threading.Thread(target=self._serve, args=(client, limit), daemon=True).start()

    def _serve(self, client, limit):
        try:
            if self.tls:
                client = self.tls.wrap_socket(client, server_side=True)
            head = client.recv(65536)
        except OSError:  # a refused handshake
            client.close()
            return
        self.heads.append(head.decode("latin-1"))
        upstream = socket.create_connection((self.target[0][len("http://") :], int(self.target[1])))
        upstream.sendall(head)
        threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
        self._pump(upstream, client, limit)

    @staticmethod
    def _pump(source, sink, limit=None):
        sent = 0
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if limit is not None and sent + len(data) > limit:
                    sink.sendall(data[: limit - sent])
                    break
                sink.sendall(data)
                sent += len(data)
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()

    def close(self):
        self.listener.close()


@pytest.fixture
def relay(server):
    made = []

    def make(**kwargs):
        made.append(Relay(server.endpoint, **kwargs))
        return made[-1]

    yield make
    for one in made:
        one.close()


def reader_threads():
    return [t for t in threading.enumerate() if t.name.startswith("nidataset-read")]


def test_an_s3_body_comes_by_a_presigned_get_read_ahead_in_a_thread_of_its_own(server, bucket, relay):
    name, fs = bucket
    data = os.urandom(3 * _remote_io.AHEAD + 123)
    fs.pipe(f"{name}/blob.nii.gz", data)
    through = relay()
    storage = _storage.Storage.of(server.options(endpoint_url=through.endpoint))
    with storage.open_input(f"s3://{name}/blob.nii.gz") as raw:
        assert raw.read(100) == data[:100]
        assert len(reader_threads()) == 1  # the next chunk is on its way
        assert raw.read() == data[100:]
    assert not reader_threads()
    [head] = through.heads
    assert re.match(rf"GET /{name}/blob.nii.gz\?\S*(Signature|X-Amz-Credential)=", head), head
    assert "Authorization:" not in head  # signed in its URL, by the S3 client
    fs.pipe(f"{name}/empty.nii.gz", b"")
    with storage.open_input(f"s3://{name}/empty.nii.gz") as raw:
        assert raw.read() == b""


def test_an_s3_body_cut_mid_way_is_asked_again_from_there_once(server, bucket, relay):
    name, fs = bucket
    data = os.urandom(3 * _remote_io.AHEAD + 123)
    fs.pipe(f"{name}/blob.nii.gz", data)
    url = f"s3://{name}/blob.nii.gz"
    once = relay(cuts=[_remote_io.AHEAD + 5000])  # headers, the first MiB and some
    with _storage.Storage.of(server.options(endpoint_url=once.endpoint)).open_input(url) as raw:
        assert raw.read() == data
    first, second = once.heads
    etag = fs.info(f"{name}/blob.nii.gz")["ETag"]
    assert "Range:" not in first
    start = int(re.search(r"Range: bytes=(\d+)-\r\n", second).group(1))  # after what came
    assert _remote_io.HEADER_BLOCK < start < _remote_io.AHEAD + 5000, second
    assert f"If-Match: {etag}" in second, second
    twice = relay(cuts=[_remote_io.AHEAD + 5000, 0, 0])  # and again at once: the read fails, naming it
    with _storage.Storage.of(server.options(endpoint_url=twice.endpoint)).open_input(url) as raw:
        with pytest.raises(ConnectionError, match="cannot reach the store, or it stopped answering") as info:
            raw.read()
    assert info.value.filename == url
    assert len(twice.heads) == 2
    for secret in ("Signature", "X-Amz", "AWSAccessKeyId", "Expires"):  # the signed URL is not shown
        assert secret not in str(info.value)
    assert not reader_threads()


def test_an_s3_body_the_plain_get_cannot_serve_is_read_by_the_client(server, bucket, relay, monkeypatch):
    name, fs = bucket
    data = os.urandom(_remote_io.AHEAD + 123)
    fs.pipe(f"{name}/blob.nii.gz", data)
    url = f"s3://{name}/blob.nii.gz"
    through = relay()
    # Requester pays: a parameter only the client sends (so would be SSE-C keys): not over plain HTTP.
    with _storage.Storage.of(server.options(endpoint_url=through.endpoint, requester_pays=True)).open_input(
        url
    ) as raw:
        assert raw.read() == data
    [head] = through.heads
    assert head.startswith(f"GET /{name}/blob.nii.gz HTTP/1.1"), head
    assert "x-amz-request-payer: requester" in head.lower()
    # A missing key: refused over plain HTTP, then asked by the client, whose answer is translated.
    storage = _storage.Storage.of(server.options(endpoint_url=through.endpoint))
    with pytest.raises(FileNotFoundError, match="no such object") as info:
        with storage.open_input(f"s3://{name}/missing.nii.gz"):
            pass
    assert info.value.filename == f"s3://{name}/missing.nii.gz"
    asked = [head.split()[1].split("?") for head in through.heads[1:]]
    assert [(path, bool(query)) for path, *query in asked] == [
        (f"/{name}/missing.nii.gz", True),
        (f"/{name}/missing.nii.gz", False),
    ]
    # A proxy for plain HTTP to the endpoint: left to the client (which knows how to use it).
    plain = _remote_io._PlainHttp.of(storage.filesystem(url)[0], storage.options, url)
    target = urllib.parse.urlsplit(f"{through.endpoint}/{name}/blob.nii.gz")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with pytest.raises(_remote_io._NotPlain, match="proxy"):
        plain.connect(target)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    plain.connect(target).close()


def test_an_https_endpoint_is_read_over_tls_checked_as_the_client_checks(server, bucket, relay, tmp_path):
    trustme = pytest.importorskip("trustme")
    name, fs = bucket
    authority = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(context)
    bundle = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(bundle))
    data = os.urandom(_remote_io.AHEAD + 123)
    fs.pipe(f"{name}/blob.nii.gz", data)
    url = f"s3://{name}/blob.nii.gz"
    through = relay(tls=context)
    trusted = server.options(endpoint_url=through.endpoint, client_kwargs={"verify": str(bundle)}, **FAST)
    with _storage.Storage.of(trusted).open_input(url) as raw:
        assert raw.read() == data
    [head] = through.heads
    assert re.match(rf"GET /{name}/blob.nii.gz\?\S*(Signature|X-Amz-Credential)=", head), head  # plain
    # A certificate the client does not trust: refused over plain HTTPS, then by the client, named.
    strange = server.options(
        endpoint_url=through.endpoint, client_kwargs={"verify": certifi_bundle()}, **FAST
    )
    with pytest.raises(ConnectionError, match="cannot reach the store") as info:
        with _storage.Storage.of(strange).open_input(url):
            pass
    assert info.value.filename == url
    assert len(through.heads) == 1  # no request went through an unchecked connection


def certifi_bundle():
    from botocore.httpsession import get_cert_path

    return get_cert_path(True)


def test_plain_http_checks_certificates_and_times_out_as_the_client_would(
    server, bucket, monkeypatch, tmp_path
):
    name, _ = bucket
    from botocore.httpsession import get_cert_path

    def plain(**options):  # a client of its own each time: botocore reads its configuration once
        storage = _storage.Storage.of(server.options(**options, skip_instance_cache=True))
        fs = storage.filesystem(f"s3://{name}/x")[0]
        return _remote_io._PlainHttp.of(fs, storage.options, "s3://x"), fs

    bundles = {name: tmp_path / f"{name}.pem" for name in ("mine", "aws", "requests")}
    for variable in ("AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE"):
        monkeypatch.delenv(variable, raising=False)
    assert plain()[0].cafile == get_cert_path(True)  # botocore's own bundle
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundles["requests"]))  # botocore honours it next
    assert plain()[0].cafile == str(bundles["requests"])
    monkeypatch.setenv("AWS_CA_BUNDLE", str(bundles["aws"]))  # before it, its configuration
    assert plain()[0].cafile == str(bundles["aws"])
    assert plain(client_kwargs={"verify": str(bundles["mine"])})[0].cafile == str(bundles["mine"])  # first
    assert plain(client_kwargs={"verify": False})[0].cafile is None  # told not to check
    assert plain(config_kwargs={"proxies": {"http": "http://127.0.0.1:9"}})[0] is None
    settings, fs = plain()
    config = fs.s3.meta.config  # s3fs's defaults, not botocore's
    assert (settings.connect_timeout, settings.read_timeout) == (config.connect_timeout, config.read_timeout)
    settings, _ = plain(config_kwargs={"connect_timeout": 3, "read_timeout": 7})
    assert (settings.connect_timeout, settings.read_timeout) == (3, 7)
    assert plain(profile="no-such-profile")[0] is None  # the client, asked next, says what is wrong
    if _storage._botocore_knows("response_checksum_validation"):  # asked for: only the client computes it
        assert plain(config_kwargs={"response_checksum_validation": "when_supported"})[0] is None


def test_a_body_read_in_small_pieces_is_never_overwritten_by_the_next_chunk(server, bucket):
    name, fs = bucket
    data = os.urandom(4 * _remote_io.AHEAD + 123)
    fs.pipe(f"{name}/blob.nii.gz", data)
    read_ = bytearray()
    with _storage.Storage.of(server.options()).open_input(f"s3://{name}/blob.nii.gz") as raw:
        assert type(raw).__name__ == "_SignedGet"
        while piece := raw.read(64 << 10):  # the next chunk arrives while this one is still being read
            read_ += piece
            time.sleep(0.002)
    assert read_ == data


class Stall(Relay):
    """A relay whose answers stop after ``cuts[k]`` bytes, the connection held open (a stalled server)."""

    @staticmethod
    def _pump(source, sink, limit=None):
        if limit is None:
            return Relay._pump(source, sink)
        with contextlib.suppress(OSError):
            while limit > 0 and (data := source.recv(limit)):
                sink.sendall(data)
                limit -= len(data)
            while sink.recv(65536):  # until the client goes
                pass
        for end in (source, sink):
            end.close()


@pytest.mark.parametrize("stop", ["error", "interrupt"])
def test_a_body_closed_while_its_next_chunk_stalls_closes_at_once(server, bucket, stop):
    name, fs = bucket
    data = os.urandom(3 * _remote_io.AHEAD)
    fs.pipe(f"{name}/blob.nii.gz", data)
    stalled = Stall(server.endpoint, cuts=[_remote_io.HEADER_BLOCK + 20000])  # its headers, and a bit more
    slow = server.options(endpoint_url=stalled.endpoint, config_kwargs={"read_timeout": 60})
    timer = None
    try:
        with pytest.raises(RuntimeError if stop == "error" else KeyboardInterrupt):
            with _storage.Storage.of(slow).open_input(f"s3://{name}/blob.nii.gz") as raw:
                assert raw.read(100) == data[:100]
                if stop == "error":
                    start = time.monotonic()
                    raise RuntimeError("the caller fails while the next chunk is on its way")
                raw.seek(_remote_io.HEADER_BLOCK)
                main = threading.main_thread().ident  # a real SIGINT, to the thread that waits: wakes it
                timer = threading.Timer(0.5, signal.pthread_kill, (main, signal.SIGINT))
                timer.start()
                start = time.monotonic()
                raw.read(100)  # waits for the stalled chunk: Ctrl-C
    finally:
        stalled.close()
        if timer is not None:
            timer.cancel()  # never a SIGINT in another test
    assert time.monotonic() - start < 10  # not the read timeout (60 s)
    assert not reader_threads()
    assert stalled.connections == 1  # the stalled answer was not asked again


def test_an_object_shorter_than_its_header_says_fails_as_it_streams(server, bucket, tmp_path, rng, caplog):
    # Its gzip trailer is not asked for (a second request): the stream ends early, naming the URL.
    name, fs = bucket
    data = rng.integers(-30000, 30000, (64, 64, 48)).astype(np.int16)
    whole = read(write_nifti(tmp_path / "whole.nii.gz", data))
    fs.pipe(f"{name}/in/short.nii.gz", whole[: len(whole) * 2 // 3])
    caplog.set_level(logging.INFO, logger="werkzeug")
    with pytest.raises(InvalidVolumeError, match=f"s3://{name}/in/short.nii.gz"):
        resampling(
            f"s3://{name}/in/short.nii.gz",
            f"s3://{name}/out/",
            (32, 32, 24),
            storage_options=server.options(),
        )
    assert not fs.find(f"{name}/out")
    assert not unfinished_uploads(fs, name)
    asked = [method for method, where in requests_logged(caplog) if where == f"/{name}/in/short.nii.gz"]
    assert asked == ["HEAD", "GET"]  # resampling() checks it is there; then one GET, read to its end
    # A header that claims more than the object could hold is still refused before any voxel is read.
    zeros = read(write_nifti(tmp_path / "zeros.nii.gz", np.zeros((256, 256, 200), np.int16)))  # 26 MB
    fs.pipe(f"{name}/in/tiny.nii.gz", zeros[:4096])
    with pytest.raises(InvalidVolumeError, match="more than a 4,096-byte gzip file can hold"):
        resampling(
            f"s3://{name}/in/tiny.nii.gz", f"s3://{name}/out/", (32, 32, 24), storage_options=server.options()
        )


def test_an_output_is_uploaded_as_it_is_compressed(server, bucket):
    # In a process of its own, as the read test. Parts of 5 MiB go up while the file is written: what
    # is held does not grow with the output (a few parts' worth: the part, its request, the compressor).
    import json

    name, fs = bucket
    peaks, sizes = [], []
    for slices in (192, 768):  # 25 MB, then 100 MB
        url = f"s3://{name}/big_{slices}_resampled.nii.gz"
        done = subprocess.run(
            [sys.executable, "-c", WRITE_PEAK, url, json.dumps(server.options()), str(slices)],
            capture_output=True,
            text=True,
            check=True,
        )
        peaks.append(int(done.stdout))
        sizes.append(fs.info(url)["size"])
    assert sizes[1] > 100e6 and sizes[1] > 3.9 * sizes[0]
    assert peaks[1] < peaks[0] + 5 * 2**20 and peaks[1] < sizes[1] / 3, (peaks, sizes)


@pytest.mark.parametrize("runner", ["threads", "dask"])
def test_the_next_file_computes_while_the_store_takes_an_output(
    server, bucket, scans, tmp_path, monkeypatch, runner
):
    # Every upload, once only the store's part of it is left, is held until a file beyond those that
    # fill the run's places (2 threads; Dask: 1 worker of 1 thread) has started computing. Only a file
    # that makes way while it waits lets that one compute: otherwise each held upload waits out its
    # patience.
    from nidataset import _pipeline

    if runner == "dask" and old_fsspec():
        pytest.skip("with fsspec before 2026.6 a Dask task keeps its thread (a client per thread)")
    name, fs = bucket
    folder, paths = scans
    upload(fs, folder, f"{name}/scans")
    local = resampling_dataset(folder, tmp_path / "local", (15, 14, 10), progress=False)
    places = 2 if runner == "threads" else 1
    started, later, held = set(), threading.Event(), []
    computing, most, lock = set(), [0], threading.Lock()
    go, upload_to = _pipeline._Run.go, _storage.Storage.upload

    def counting(self):
        with lock:
            started.add(self.target)
            computing.add(self.target)
            most[0] = max(most[0], len(computing))
            if len(started) > places:
                later.set()
        time.sleep(0.3)  # long enough for any other file allowed to compute to start too
        return go(self)

    def holding(self, path, waiting=None):
        def then_hold():
            with lock:  # the file's computing is done
                computing.discard(path)
            if waiting is not None:
                waiting()
            held.append(later.wait(10))

        return upload_to(self, path, then_hold)

    monkeypatch.setattr(_pipeline._Run, "go", counting)
    monkeypatch.setattr(_storage.Storage, "upload", holding)
    run = functools.partial(scans_to_out, server, name)
    if runner == "threads":
        outputs = run(workers=2)
    else:
        distributed = pytest.importorskip("distributed")
        with (
            distributed.LocalCluster(
                n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
            ) as cluster,
            distributed.Client(cluster) as client,
        ):
            outputs = run(executor=client.get_executor())
    assert len(started) == len(paths) == len(outputs) == len(held) == 3
    assert all(held), held  # no upload waited out its patience
    assert most[0] <= places  # never more files computing at once than the run's places
    for url, path in zip(outputs, local, strict=True):
        assert fs.cat(url) == read(path)


def test_threads_open_the_next_inputs_while_others_compute(server, bucket, scans, monkeypatch):
    # 2 threads compute at once; a third file opens its input (the store's first bytes) meanwhile: each
    # computing file waits for that before it goes on. Taking turns before opening, it would wait out
    # its patience.
    from nidataset import _pipeline

    name, fs = bucket
    folder, _ = scans
    upload(fs, folder, f"{name}/scans")
    opened, third, went_on = set(), threading.Event(), []
    open_input, go = _storage.Storage.open_input, _pipeline._Run.go

    def counting(self, path, *args, **kwargs):
        opened.add(path)
        if len(opened) == 3:
            third.set()
        return open_input(self, path, *args, **kwargs)

    def waiting_for_the_third(self):
        went_on.append(third.wait(10))
        return go(self)

    monkeypatch.setattr(_storage.Storage, "open_input", counting)
    monkeypatch.setattr(_pipeline._Run, "go", waiting_for_the_third)
    outputs = scans_to_out(server, name, workers=2)
    assert len(outputs) == 3 and all(went_on), went_on


@pytest.mark.parametrize("fsspec_version", [None, "2025.3.2"])  # as installed; before fsspec 2026.6
def test_a_dask_worker_has_no_more_files_waiting_on_the_store_than_threads(
    server, bucket, scans, monkeypatch, fsspec_version
):
    # A store slower than the computing: each upload's end takes a second. The worker (1 thread) lets
    # one file wait on the store while the next computes, and no more: the third waits for a thread.
    # With an fsspec that makes a client per thread, no file makes way (the next would make a client).
    distributed = pytest.importorskip("distributed")
    import fsspec

    if fsspec_version is not None:
        monkeypatch.setattr(fsspec, "__version__", fsspec_version)
    name, fs = bucket
    folder, paths = scans
    upload(fs, folder, f"{name}/scans")
    started, most, lock = set(), [0], threading.Lock()
    open_input, upload_to = _storage.Storage.open_input, _storage.Storage.upload

    def counting(self, path, *args, **kwargs):
        with lock:
            started.add(path.rsplit("/", 1)[1].removesuffix(".nii.gz"))
            most[0] = max(most[0], len(started))
        return open_input(self, path, *args, **kwargs)

    def slow(self, path, waiting=None):
        def then_wait():
            if waiting is not None:
                waiting()
            time.sleep(1)
            with lock:
                started.discard(path.rsplit("/", 1)[1].removesuffix("_resampled.nii.gz"))

        return upload_to(self, path, then_wait)

    monkeypatch.setattr(_storage.Storage, "open_input", counting)
    monkeypatch.setattr(_storage.Storage, "upload", slow)
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
        ) as c,
        distributed.Client(c) as client,
    ):
        outputs = scans_to_out(server, name, executor=client.get_executor())
    assert len(outputs) == len(paths) == 3
    if old_fsspec():
        assert most[0] == 1
    else:
        assert most[0] <= 2  # one computing beside one waiting on the store: never the third


def old_fsspec():
    return not _storage.clients_shared_by_threads()


def test_an_output_is_thrown_away_at_once_when_closing_its_input_fails(volume, tmp_path, monkeypatch):
    # Between the computation and the output's commit the input is closed: a failure there throws the
    # output away at once (not whenever the garbage collector gets to it) and leaves no folder.
    import gc

    from nidataset import _nifti

    real = _nifti.opened_volume

    @contextlib.contextmanager
    def failing(path, storage):
        with real(path, storage) as source:
            yield source
        raise OSError(5, "the input fails as it closes")

    monkeypatch.setattr(_nifti, "opened_volume", failing)
    path, _ = volume
    gc.disable()
    try:
        with pytest.raises(DatasetError, match="the input fails as it closes"):
            resampling_dataset(os.path.dirname(path), tmp_path / "out", (10, 15, 9), progress=False)
        assert not list((tmp_path / "out").rglob("*"))  # no temporary file, no case folder
    finally:
        gc.enable()


def nan_volume(path):
    data = np.arange(20 * 30 * 17, dtype=np.float32).reshape(20, 30, 17)
    data[3, 4, 5] = np.nan
    return write_nifti(path, data)


@pytest.mark.parametrize(
    "way",
    [
        "down",  # the output held, then written
        "up",  # the input held, the output streamed
        "nearest",  # both streamed
        "nan",  # the input read again whole (NaN found), the output streamed
        "preview",  # the preview's upload comes last
    ],
)
def test_a_file_says_it_waits_once_when_only_its_last_upload_is_left(volume, tmp_path, way):
    import fsspec

    from nidataset._options import Options
    from nidataset._runner import DatasetJob

    store = fsspec.filesystem("memory")
    path = nan_volume(tmp_path / "v.nii.gz") if way == "nan" else volume[0]
    store.put(str(path), "memory://waits/in/v.nii.gz")
    seen = []  # at each call: the output, then the preview, on the store?
    names = "memory://waits/out/v/v_resampled.nii.gz", "memory://waits/out/v/v_preview.png"
    options = Options(interpolation="nearest" if way == "nearest" else "bspline", preview=way == "preview")
    shape = (30, 40, 20) if way == "up" else (10, 15, 9)
    job = DatasetJob("memory://waits/out", "case", shape, options, 1)
    try:
        job("memory://waits/in/v.nii.gz", waiting=lambda: seen.append([store.exists(n) for n in names]))
        # The volume's upload, or the preview's, which is drawn after the volume is in place.
        assert seen == [[True, False] if way == "preview" else [False, False]]
        assert [store.exists(n) for n in names] == [True, way == "preview"]
        local = resampling(str(path), tmp_path / "local", shape, interpolation=options.interpolation)
        assert store.cat(names[0]) == read(local)
    finally:
        store.rm("memory://waits", recursive=True)


@pytest.mark.parametrize("shape", [(48, 40, 24), (160, 150, 70)])  # the output held; the input held
def test_a_file_waiting_on_the_store_holds_only_its_compressed_output(tmp_path, shape):
    import tracemalloc

    import fsspec

    from nidataset._options import Options
    from nidataset._runner import DatasetJob

    store = fsspec.filesystem("memory")
    x, y, z = np.meshgrid(*(np.arange(n) for n in (96, 90, 40)), indexing="ij")
    path = write_nifti(tmp_path / "v.nii.gz", np.asfortranarray(x + 2 * y + 3 * z).astype(np.int16))  # 0.7 MB
    store.put(str(path), "memory://holds/in/v.nii.gz")
    at_waiting = []
    job = DatasetJob("memory://holds/out", "case", shape, Options(), 1)
    job("memory://holds/in/v.nii.gz")  # once first: what is kept between calls (operators...) is made
    store.rm("memory://holds/out", recursive=True)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        job("memory://holds/in/v.nii.gz", waiting=lambda: at_waiting.append(tracemalloc.get_traced_memory()))
        ((now, peak),) = at_waiting
        compressed = store.info("memory://holds/out/v/v_resampled.nii.gz")["size"]
    finally:
        tracemalloc.stop()
        store.rm("memory://holds", recursive=True)
    assert peak - before > 2 * 2**20  # the arrays of the computation (held input or output, engine)
    assert now - before < compressed + 2**18, (now - before, compressed)  # gone by then


def test_an_upload_that_fails_at_its_end_leaves_nothing(volume, tmp_path, monkeypatch):
    # The end of an upload comes after the computation (the rename on a store without commits): its
    # failure names the URL and leaves neither the object nor its hidden key; a local rename's, no file.
    import fsspec

    store = fsspec.filesystem("memory")
    path, _ = volume
    store.put(path, "memory://ends/in/v.nii.gz")

    def refused(*args, **kwargs):
        raise PermissionError(13, "the store refuses the rename")

    monkeypatch.setattr(type(store), "mv", refused)
    monkeypatch.setattr(os, "replace", refused)
    try:
        with pytest.raises(OSError, match=re.escape("memory://ends/out/v_resampled.nii.gz")):
            resampling("memory://ends/in/v.nii.gz", "memory://ends/out", (10, 15, 9))
        assert not store.exists("memory://ends/out") or not store.ls("memory://ends/out")
        with pytest.raises(DatasetError) as info:
            resampling_dataset(os.path.dirname(path), tmp_path / "local", (10, 15, 9), progress=False)
        assert isinstance(info.value.failures[0][1], PermissionError)
        assert not list((tmp_path / "local").rglob("*"))  # not even the case's folder
    finally:
        store.rm("memory://ends", recursive=True)


# --- 4: atomic uploads, skip_existing --------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, _storage._UPLOAD_BLOCK - 1, _storage._UPLOAD_BLOCK, 11 << 20])
def test_an_upload_is_sent_whole_under_a_part_and_in_parts_beyond(server, bucket, size, caplog):
    # Under a part: one PUT when the block ends. From a part on: a multipart upload (its POSTs around
    # the parts). The bytes are stored as written, whatever the pieces they came in.
    name, fs = bucket
    data = os.urandom(size)
    cuts = sorted({0, size, *(random.Random(size).randrange(size) for _ in range(6))})
    caplog.set_level(logging.INFO, logger="werkzeug")
    with _storage.Storage.of(server.options()).upload(f"s3://{name}/out/a.nii.gz") as file:
        for start, end in itertools.pairwise(cuts):
            assert file.write(memoryview(data)[start:end]) == end - start
        assert not fs.exists(f"{name}/out/a.nii.gz")  # nothing appears before the end
    asked = [
        method
        for method, where in requests_logged(caplog)
        if where == f"/{name}/out/a.nii.gz" and method in ("PUT", "POST")  # (not the test's HEAD)
    ]
    if size < _storage._UPLOAD_BLOCK:
        assert asked == ["PUT"]
    else:  # started, its parts (each of at least 5 MiB but the last), completed
        assert asked[0] == asked[-1] == "POST" and asked[1:-1] == ["PUT"] * len(asked[1:-1]), asked
        assert 1 <= len(asked[1:-1]) <= size // _storage._UPLOAD_BLOCK, asked
    fs.invalidate_cache()
    assert fs.cat_file(f"{name}/out/a.nii.gz") == data
    assert not unfinished_uploads(fs, name)


def test_the_store_options_reach_every_upload(server, bucket, volume, tmp_path, rng):
    # What the options ask of every object written (here server-side encryption) holds for an output
    # sent whole and for one sent in parts; both are the bytes a local run writes.
    name, fs = bucket
    path, _ = volume
    big = write_nifti(tmp_path / "big.nii.gz", rng.integers(-30000, 30000, (128, 128, 96)).astype(np.int16))
    options = {**server.options(), "s3_additional_kwargs": {"ServerSideEncryption": "AES256"}}
    for source, shape in ((path, (10, 15, 9)), (big, (256, 128, 96))):  # 6.2 MB, incompressible
        fs.put(str(source), f"{name}/in/{os.path.basename(source)}")
        url = resampling(
            f"s3://{name}/in/{os.path.basename(source)}",
            f"s3://{name}/out",
            shape,
            interpolation="nearest",
            storage_options=options,
        )
        local = resampling(source, tmp_path / "local", shape, interpolation="nearest")
        key = url[len("s3://") :].split("/", 1)[1]
        assert fs.call_s3("head_object", Bucket=name, Key=key)["ServerSideEncryption"] == "AES256"
        fs.invalidate_cache()
        assert fs.cat_file(url) == read(local)
    assert fs.info(f"{name}/out/big_resampled.nii.gz")["size"] > _storage._UPLOAD_BLOCK


def test_an_upload_that_fails_before_a_part_asks_nothing_of_the_store(server, bucket, caplog):
    name, fs = bucket
    caplog.set_level(logging.INFO, logger="werkzeug")
    with pytest.raises(RuntimeError, match="the writer broke"):
        with _storage.Storage.of(server.options()).upload(f"s3://{name}/out/a.nii.gz") as file:
            file.write(b"some bytes")
            raise RuntimeError("the writer broke")
    assert [where for _, where in requests_logged(caplog) if where.startswith(f"/{name}/out")] == []
    assert not fs.exists(f"{name}/out/a.nii.gz")


def test_a_failure_mid_upload_leaves_no_object_and_no_parts(server, bucket, tmp_path, rng, monkeypatch):
    name, fs = bucket
    data = rng.integers(-30000, 30000, (128, 128, 96)).astype(np.int16)  # 3 MB, incompressible
    fs.put(write_nifti(tmp_path / "x.nii.gz", data), f"{name}/x.nii.gz")
    calls = []
    real = _remote_io.RemoteWriter.write

    def write_then_fail(self, chunk):
        calls.append(len(chunk))
        if sum(calls) > 5.5 * 2**20:  # after the first 5 MiB part went up
            raise OSError(5, "the store broke")
        return real(self, chunk)

    monkeypatch.setattr(_remote_io.RemoteWriter, "write", write_then_fail)
    with pytest.raises(OSError, match="the store broke"):
        resampling(
            f"s3://{name}/x.nii.gz",
            f"s3://{name}/out",
            (256, 128, 96),  # each value twice: 6.2 MB written
            interpolation="nearest",
            storage_options=server.options(),
        )
    assert sum(calls) > 5.5 * 2**20
    assert not fs.exists(f"{name}/out/x_resampled.nii.gz")
    assert not unfinished_uploads(fs, name)


def test_skip_existing_reads_headers_only_and_redoes_a_mismatch(server, bucket, scans, tmp_path, monkeypatch):
    name, fs = bucket
    folder, paths = scans
    upload(fs, folder, f"{name}/scans")
    options = server.options()
    first = resampling_dataset(
        f"s3://{name}/scans", f"s3://{name}/out", (15, 14, 10), progress=False, storage_options=options
    )
    # One output replaced by one of another shape: redone; the others kept, their voxels never read.
    other = resampling(
        f"s3://{name}/scans/a_scan.nii.gz", f"s3://{name}/other", (9, 9, 9), storage_options=options
    )
    fs.copy(other, first[0])
    before = {url: fs.info(url)["ETag"] for url in first}
    opened = []
    real_open = _storage.Storage.open_input

    def spy(self, path, block=_storage.STREAM_BLOCK):
        opened.append((path, block))
        return real_open(self, path, block)

    monkeypatch.setattr(_storage.Storage, "open_input", spy)
    again = resampling_dataset(
        f"s3://{name}/scans",
        f"s3://{name}/out",
        (15, 14, 10),
        progress=False,
        skip_existing=True,
        storage_options=options,
    )
    assert again == first
    after = {url: fs.info(url)["ETag"] for url in first}
    assert after[first[0]] != before[first[0]]
    assert [after[url] for url in first[1:]] == [before[url] for url in first[1:]]
    assert fs.cat(first[0]) == read(resampling(paths[0], tmp_path / "local", (15, 14, 10)))
    streamed = {path for path, block in opened if block == _storage.STREAM_BLOCK}
    assert not streamed & set(first[1:])  # kept outputs: their headers only, by small ranged requests
    assert {path for path, block in opened if block == _remote_io.HEADER_BLOCK} >= set(first)


# --- 5: Dask workers with no shared file system -----------------------------------------------------------


def test_a_dask_cluster_without_shared_storage_writes_the_local_bytes(server, bucket, scans, tmp_path):
    distributed = pytest.importorskip("distributed")
    name, fs = bucket
    folder, _ = scans
    upload(fs, folder, f"{name}/scans")
    fs.pipe(f"{name}/scans/broken.nii.gz", gzip.compress(b"not a volume"))
    local = resampling_dataset(folder, tmp_path / "local", (15, 14, 10), progress=False)
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            scheduler_port=0,
            dashboard_address=None,
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
            local_directory=str(tmp_path / "workers"),  # each worker makes its own folder in it
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        with pytest.raises(DatasetError) as info:
            scans_to_out(server, name, executor=client.get_executor())
        folders = client.run(lambda dask_worker: dask_worker.local_directory)
    err = info.value
    assert [path for path, _ in err.failures] == [f"s3://{name}/scans/broken.nii.gz"]
    assert f"s3://{name}/scans/broken.nii.gz" in str(err.failures[0][1])
    assert len(set(folders.values())) == 2  # a working folder each
    written = [p for p in tmp_path.rglob("*_resampled.nii.gz") if "local" not in p.parts]
    assert not written  # nothing went through a file system of ours
    for url, path in zip(err.outputs, local, strict=True):
        assert fs.cat(url) == read(path)


# --- 6: errors name the URL -----------------------------------------------------------------------------


def test_missing_bucket_key_and_prefix_are_named(server, bucket, scans, tmp_path):
    name, fs = bucket
    folder, paths = scans
    fs.put(paths[0], f"{name}/a.nii.gz")
    options = server.options()
    with pytest.raises(FileNotFoundError, match="no such object") as info:
        resampling(f"s3://{name}/absent.nii.gz", tmp_path, (9, 9, 9), storage_options=options)
    assert info.value.filename == f"s3://{name}/absent.nii.gz"
    assert name.startswith("test-") and "bucket" not in name
    fs.mkdir(f"{name}-bucket")  # a bucket whose name says bucket: a missing object is still an object
    with pytest.raises(FileNotFoundError, match="no such object"):
        resampling(f"s3://{name}-bucket/absent.nii.gz", tmp_path, (9, 9, 9), storage_options=options)
    with pytest.raises(FileNotFoundError, match="no such bucket") as info:
        resampling(f"s3://{name}-absent/a.nii.gz", tmp_path, (9, 9, 9), storage_options=options)
    assert info.value.filename == f"s3://{name}-absent/a.nii.gz"
    with pytest.raises(FileNotFoundError, match="no such bucket") as info:
        resampling(f"s3://{name}/a.nii.gz", f"s3://{name}-absent/out", (9, 9, 9), storage_options=options)
    assert info.value.filename == f"s3://{name}-absent"
    fs.put(paths[0], f"{name}/in/a.nii.gz")
    with pytest.raises(FileNotFoundError, match="no such bucket") as info:
        resampling_dataset(f"s3://{name}/in/", f"s3://{name}-absent/out/", (9, 9, 9), storage_options=options)
    assert info.value.filename == f"s3://{name}-absent"
    with pytest.raises(FileNotFoundError, match=r"no '\.nii\.gz' objects") as info:
        resampling_dataset(f"s3://{name}/nothing/", tmp_path, (9, 9, 9), storage_options=options)
    assert info.value.filename == f"s3://{name}/nothing/"
    with pytest.raises(FileNotFoundError, match="no such bucket") as info:  # not an empty prefix
        resampling_dataset(f"s3://{name}-absent/in/", tmp_path, (9, 9, 9), storage_options=options)
    assert info.value.filename == f"s3://{name}-absent"
    with pytest.raises(IsADirectoryError):
        upload(fs, folder, f"{name}/dir.nii.gz")
        resampling(f"s3://{name}/dir.nii.gz", tmp_path, (9, 9, 9), storage_options=options)


@contextlib.contextmanager
def credentials_checked(server):
    """Have moto take only requests signed by a key of its IAM (the tests' key is not) within the block."""
    import urllib.request

    def switch(on):
        address = f"{server.endpoint}/moto-api/reset-auth"
        request = urllib.request.Request(address, b"0" if on else b"inf", {"Content-Type": "text/plain"})
        urllib.request.urlopen(request, timeout=10).close()

    switch(True)
    try:
        yield
    finally:
        switch(False)


def test_credentials_the_store_refuses_are_named(server, bucket, volume, tmp_path):
    name, fs = bucket
    fs.put(volume[0], f"{name}/a.nii.gz")
    with credentials_checked(server):
        with pytest.raises(PermissionError, match="access refused") as info:
            resampling(f"s3://{name}/a.nii.gz", tmp_path, (9, 9, 9), storage_options=server.options())
        assert info.value.filename == f"s3://{name}/a.nii.gz"
        with pytest.raises(PermissionError, match="access refused") as info:
            resampling_dataset(f"s3://{name}/", tmp_path, (9, 9, 9), storage_options=server.options())
        assert info.value.filename == f"s3://{name}/"


def test_a_role_that_cannot_list_uploads_still_writes(server, bucket, volume, tmp_path, monkeypatch, caplog):
    name, fs = bucket
    fs.put(volume[0], f"{name}/in/v.nii.gz")

    def refused(*args):
        raise PermissionError(13, "access refused, check the credentials (AccessDenied)", f"s3://{name}/out/")

    monkeypatch.setattr(_storage.Storage, "_abort", staticmethod(refused))
    outputs = resampling_dataset(
        f"s3://{name}/in/", f"s3://{name}/out/", (10, 15, 9), progress=False, storage_options=server.options()
    )
    assert fs.exists(outputs[0])
    assert "cannot list the unfinished uploads" in caplog.text


def test_credentials_no_store_would_take_are_refused_before_any_work(
    server, bucket, scans, tmp_path, monkeypatch
):
    # Local inputs, outputs in a bucket, a key the store does not know. The bucket's HEAD says only
    # "Forbidden" (a policy may allow objects and not the bucket); the listing of unfinished uploads says
    # why, and the run stops there, before any file is computed.
    from nidataset import _pipeline

    name, _ = bucket
    folder, paths = scans
    computed = []
    run = _pipeline._Run.go
    monkeypatch.setattr(_pipeline._Run, "go", lambda self: computed.append(self) or run(self))
    with credentials_checked(server):
        with pytest.raises(PermissionError, match="access refused") as info:
            resampling_dataset(folder, f"s3://{name}/out/", (9, 9, 9), storage_options=server.options())
        assert info.value.filename.startswith(f"s3://{name}/out/")
        assert "Access Key Id you provided does not exist" in str(info.value)
        with pytest.raises(PermissionError, match="access refused"):
            resampling(paths[0], f"s3://{name}/single/", (9, 9, 9), storage_options=server.options())
    assert computed == []


def test_no_credentials_at_all_are_refused_before_any_work(server, bucket, scans, monkeypatch):
    # Nothing in the options, the environment or the configuration files: botocore finds none.
    from nidataset import _pipeline

    for variable in [name for name in os.environ if name.startswith("AWS_")]:
        monkeypatch.delenv(variable)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # (no instance to ask either)
    name, _ = bucket
    folder, _ = scans
    computed = []
    run = _pipeline._Run.go
    monkeypatch.setattr(_pipeline._Run, "go", lambda self: computed.append(self) or run(self))
    options = {"endpoint_url": server.endpoint, **FAST}
    with pytest.raises(PermissionError, match="access refused") as info:
        resampling_dataset(folder, f"s3://{name}/out/", (9, 9, 9), storage_options=options)
    assert info.value.filename.startswith(f"s3://{name}/out/") and computed == []


def test_a_body_cut_short_on_the_clients_path_is_a_connection_error():
    # aiohttp's ClientPayloadError (s3fs's reads), botocore's ResponseStreamingError, http.client's
    # IncompleteRead: the store stopped answering mid-way, as on the plain path.
    import http.client

    class ClientPayloadError(Exception):  # aiohttp's, by name: aiohttp is s3fs's, not a test dependency
        pass

    for err in (ClientPayloadError("Response payload is not completed"), http.client.IncompleteRead(b"x", 9)):
        translated = _store_errors.translated(err, "s3://b/k.nii.gz", "reading")
        assert isinstance(translated, ConnectionError) and translated.filename == "s3://b/k.nii.gz"
        assert "stopped answering" in str(translated)


def test_an_endpoint_that_does_not_answer_is_named(tmp_path):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    options = {**CREDENTIALS, **FAST, "endpoint_url": f"http://127.0.0.1:{port}"}
    start = time.monotonic()
    with pytest.raises(ConnectionError, match="cannot reach the store") as info:
        resampling("s3://nowhere/a.nii.gz", tmp_path, (9, 9, 9), storage_options=options)
    assert info.value.filename == "s3://nowhere/a.nii.gz"
    assert time.monotonic() - start < 30


def test_storage_options_on_the_command_line_are_json_or_text():
    from nidataset.cli import _storage_option

    assert _storage_option("anon=true") == ("anon", True)
    assert _storage_option("endpoint_url=http://127.0.0.1:9000") == ("endpoint_url", "http://127.0.0.1:9000")
    assert _storage_option('client_kwargs={"region_name": "eu-west-1"}') == (
        "client_kwargs",
        {"region_name": "eu-west-1"},
    )
    assert _storage_option("token=a=b") == ("token", "a=b")


def test_storage_options_are_checked():
    with pytest.raises(TypeError, match="storage_options"):
        resampling("s3://b/a.nii.gz", "out", (9, 9, 9), storage_options=[("key", "x")])


# --- the command line: a kill mid-upload, a server that stops, and the reruns ------------------------------


def cli(*args, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "nidataset", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def wait_for(condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_a_cli_run_killed_mid_upload_leaves_no_object_and_its_rerun_completes(server, bucket, tmp_path, rng):
    name, fs = bucket
    data = rng.integers(-30000, 30000, (64, 64, 48)).astype(np.int16)
    path = write_nifti(tmp_path / "x.nii.gz", data)
    fs.put(path, f"{name}/in/x.nii.gz")
    size = ["--size", "256", "256", "192"]  # a 25 MB output: several 5 MiB parts
    run = cli("resample", f"s3://{name}/in/x.nii.gz", f"s3://{name}/out/", *size, *server.cli_options(), "-q")
    try:
        assert wait_for(lambda: unfinished_uploads(fs, name) or run.poll() is not None)
        assert run.poll() is None, run.communicate()
        run.send_signal(signal.SIGKILL)
    finally:
        run.communicate()
    target = f"{name}/out/x_resampled.nii.gz"
    assert not fs.exists(target) and unfinished_uploads(fs, name)  # parts only, invisible
    again = cli(
        "resample",
        f"s3://{name}/in/x.nii.gz",
        f"s3://{name}/out/",
        *size,
        *server.cli_options(),
        "-q",
        "--skip-existing",
    )
    _, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    assert fs.cat(target) == read(resampling(path, tmp_path / "local", (256, 256, 192)))
    assert not unfinished_uploads(fs, name)  # the killed run's parts were aborted


@pytest.mark.parametrize("workers", [1, 2])  # 2: threads, asked to stop when the main thread is interrupted
def test_ctrl_c_mid_upload_aborts_it_and_says_what_is_complete(server, bucket, tmp_path, rng, workers):
    name, fs = bucket
    for i in range(2):
        data = rng.integers(-30000, 30000, (64, 64, 48)).astype(np.int16)
        fs.put(write_nifti(tmp_path / f"x{i}.nii.gz", data), f"{name}/in/x{i}.nii.gz")
    size = ["--size", "256", "256", "192", "--workers", str(workers)]
    run = cli("resample", f"s3://{name}/in/", f"s3://{name}/out/", *size, *server.cli_options(), "-q")
    try:
        assert wait_for(lambda: unfinished_uploads(fs, name) or run.poll() is not None)
        assert run.poll() is None, run.communicate()
        run.send_signal(signal.SIGINT)
        _, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == 130, err
    assert "0 of 2 outputs complete (none partial)" in err, err
    assert "Traceback" not in err, err
    assert not fs.find(f"{name}/out")
    assert not unfinished_uploads(fs, name)  # aborted, not left for the next run


def test_a_server_that_stops_mid_run_fails_the_rest_by_url_and_the_rerun_completes(
    server, bucket, tmp_path, rng
):
    name, fs = bucket
    for i in range(6):
        data = rng.integers(-30000, 30000, (64, 64, 40)).astype(np.int16)
        fs.put(write_nifti(tmp_path / "in" / f"s{i}.nii.gz", data), f"{name}/in/s{i}.nii.gz")
    options = [*server.cli_options(), *(f"--storage-option={k}={v}" for k, v in FAST.items())]
    options = [o.replace("'", '"') for o in options]  # the dict values as JSON
    size = ["--size", "128", "128", "80"]
    run = cli("resample", f"s3://{name}/in/", f"s3://{name}/out/", *size, *options, "-q")
    stopped = False
    try:
        assert wait_for(lambda: fs.exists(f"{name}/out/s0/s0_resampled.nii.gz") or run.poll() is not None)
        server.stop()
        stopped = True
        _, err = run.communicate(timeout=180)
    finally:
        if stopped:
            server.start()
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == 1, err
    failed = [line for line in err.splitlines() if line.startswith("nidataset: failed: s3://")]
    assert failed and all(f"s3://{name}/in/s" in line for line in failed), err
    assert any("cannot reach the store" in line for line in failed), err
    again = cli("resample", f"s3://{name}/in/", f"s3://{name}/out/", *size, *options, "-q", "--skip-existing")
    _, err = again.communicate(timeout=180)
    assert again.returncode == 0, err
    local = resampling_dataset(tmp_path / "in", tmp_path / "local", (128, 128, 80), progress=False)
    for i, path in enumerate(local):
        assert fs.cat(f"{name}/out/s{i}/s{i}_resampled.nii.gz") == read(path)
    assert not unfinished_uploads(fs, name)


def test_a_kept_output_takes_its_turn_only_to_draw_its_missing_preview(volume):
    import fsspec

    from nidataset._options import Options
    from nidataset._runner import DatasetJob

    store = fsspec.filesystem("memory")
    path, _ = volume
    store.put(path, "memory://kept/in/v.nii.gz")
    job = DatasetJob("memory://kept/out", "case", (10, 15, 9), Options(preview=True), 1, skip_existing=True)
    turns = []
    try:
        job("memory://kept/in/v.nii.gz", ready=lambda: turns.append("first run"))
        job("memory://kept/in/v.nii.gz", ready=lambda: turns.append("kept, with its preview"))
        store.rm("memory://kept/out/v/v_preview.png")
        job("memory://kept/in/v.nii.gz", ready=lambda: turns.append("kept, its preview drawn"))
        assert turns == ["first run", "kept, its preview drawn"]
        assert store.exists("memory://kept/out/v/v_preview.png")
    finally:
        store.rm("memory://kept", recursive=True)


def test_the_cli_tells_a_prefix_from_a_file_and_an_input_from_an_output(server, bucket, volume):
    # A prefix given with its slash is a folder even where its name ends in .nii.gz. A missing input is
    # a usage error (exit 2), as a missing local folder; a missing output bucket is a failure (exit 1),
    # as a local output folder that cannot be made, and says so on one line.
    name, fs = bucket
    fs.put(volume[0], f"{name}/batch.nii.gz/a.nii.gz")
    size = ["--size", "10", "15", "9", *server.cli_options(), "-q"]
    _, err = cli("resample", f"s3://{name}/batch.nii.gz/", f"s3://{name}/out/", *size).communicate()
    assert fs.exists(f"{name}/out/a/a_resampled.nii.gz"), err
    run = cli("resample", f"s3://{name}/batch.nii.gz/", f"s3://{name}-absent/out/", *size)
    _, err = run.communicate()
    assert run.returncode == 1 and err == f"nidataset: failed: no such bucket: 's3://{name}-absent'\n", err
    run = cli("resample", f"s3://{name}-absent/in/", f"s3://{name}/out/", *size)
    _, err = run.communicate()
    assert run.returncode == 2 and f"no such bucket: 's3://{name}-absent'" in err and "usage:" in err, err
