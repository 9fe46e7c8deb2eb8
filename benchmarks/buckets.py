"""Object storage: scans from a local S3 server back to it, against disk to disk and the bare transfer.

The S3 server is moto's (``python -m moto.server``), run in its own process on 127.0.0.1 (a free port,
credentials "testing") for the length of the run. Two parts (``--parts``, both by default):

time: 8 int16 CT-like scans of 256x256x160 (``ct_phantom``, a seed each, as executors.py makes them) ->
(128, 128, 96), ``saving_mode="case"``, uploaded to ``s3://bench/in/`` before anything is timed. Rows, the
call alone in this process, interleaved round by round, medians (every row runs once first, uncounted):

- a. disk -> disk, ``resampling_dataset(..., workers=2)``;
- b. bucket -> bucket (``s3://bench/in/`` -> ``s3://bench/out/``), ``workers=2``;
- c. the transfer alone: every input downloaded and every output (those of row a) uploaded, to and from
  memory, two at a time (a ``ThreadPoolExecutor(2)``), with s3fs and with boto3; the faster counts;
- d. bucket -> bucket on a ``distributed.LocalCluster`` of 2 processes x 1 thread (each worker in its
  own folder of a scratch directory) through ``executor=client.get_executor()``;
- e. disk -> disk on that cluster, for context.

Outputs are deleted before every run, so that each run really writes. Targets: time(bucket) /
max(time(disk), time(transfer)) <= 1.3, with workers=2 (b against a, c) and on Dask (d against e, c).
Beside each ratio, the CPU seconds per volume of every process that worked during the row (this one:
its pool, or the Dask scheduler and client; the S3 server; the Dask workers), for both jobs and the
bare transfer: where the disk job already keeps the cores busy, the bucket job's time grows with the
CPU its requests cost on both ends, the server's included (it runs on the same cores). (A pool's
processes count where they are this process's children: not under the "forkserver" start method, which
the line then says. With --latency, the relay's threads count in this process's CPU.)
Then, per volume, for the "cost on paper" of a large collection: the CPU seconds of the workers=2 job
(user + sys of a fresh process and its pool, imports included; disk -> disk beside it), the bytes that
crossed the network each way (counted by a relay in front of the server, HTTP headers included; the
objects' sizes beside them) and the requests by kind (from the server's log).

mem: one 512x512x300 int16 CT (``ct_phantom``, as single_volume.py makes it) -> (224, 224, 128), one
``resampling()`` in a fresh process each: local file -> local folder, and S3 -> S3; peak RSS (VmHWM),
median of the rounds. Target: bucket / local <= 1.5. For context, the peak of a process that only
imports nidataset.preprocessing, and of one that only imports s3fs, makes the filesystem and lists once
(the S3 client stack).

    .venv/bin/python benchmarks/buckets.py                  # both parts, 5 rounds (a few minutes)
    .venv/bin/python benchmarks/buckets.py --parts mem      # the memory part alone
    .venv/bin/python benchmarks/buckets.py --quick          # tiny scans, 1 round (the tests')
    .venv/bin/python benchmarks/buckets.py --parts time --latency 30   # a store 30 ms away
"""

import argparse
import contextlib
import inspect
import io
import json
import logging
import multiprocessing
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine_line, median, target_line, whole_process
from executors import make_scans
from nidataset._phantom import ct_phantom
from nidataset.preprocessing import resampling, resampling_dataset

BUCKET = "bench"
CREDENTIALS = {"key": "testing", "secret": "testing"}
SPACING = (0.7, 0.7, 1.25)
DISK, BUCKET_W2 = "a. disk -> disk, workers=2", "b. bucket -> bucket, workers=2"
S3FS, BOTO3 = "c. transfer alone, s3fs", "c. transfer alone, boto3"
DASK_BUCKET, DASK_DISK = "d. bucket -> bucket, Dask 2 processes x 1 thread", "e. disk -> disk, Dask 2 x 1"

#: One resampling_dataset() (workers=2) in a fresh process: its CPU seconds, pool processes included.
DATASET = """
import json, resource, time
start = time.perf_counter()
from nidataset.preprocessing import resampling_dataset
resampling_dataset({src!r}, {out!r}, {size!r}, workers=2, progress=False, **{kwargs!r})
wall = time.perf_counter() - start
own, pool = (resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
own, pool = own.ru_utime + own.ru_stime, pool.ru_utime + pool.ru_stime
print("RESULT " + json.dumps(dict(wall=wall, cpu=own + pool, pool=pool)))
"""

#: The peak RSS of a process that only imports (and, given storage options, lists the bucket once).
STACK = """
import json
if {options!r} is None:
    import nidataset.preprocessing
else:
    import s3fs
    s3fs.S3FileSystem(**{options!r}).ls({bucket!r})
with open("/proc/self/status") as status:
    peak = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
print("RESULT " + json.dumps(dict(peak=peak)))
"""


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class S3Server:
    """moto's S3 server in its own process, its request log in a file; stopped on leaving the block."""

    def __init__(self, log):
        self.port = free_port()
        self.log = log
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.process = None

    def __enter__(self):
        command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(self.endpoint + "/", timeout=2).close()
                return self
            except urllib.error.HTTPError:
                return self  # it answers
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.__exit__()
                    with open(self.log) as log:
                        raise RuntimeError(f"the S3 server did not start:\n{log.read()}") from None
                time.sleep(0.05)

    def __exit__(self, *exc):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def options(self, endpoint=None):
        """The storage_options of fsspec/s3fs for this server (or for a relay in front of it)."""
        return dict(CREDENTIALS, endpoint_url=endpoint or self.endpoint)

    def cpu(self):
        """CPU seconds (user + sys) the server has used so far."""
        with open(f"/proc/{self.process.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_size(self):
        return os.path.getsize(self.log)

    def requests(self, since):
        """Requests logged after byte `since` of the log, by kind: GET, HEAD, PUT, POST, DELETE, LIST."""
        with open(self.log, "rb") as log:
            log.seek(since)
            text = log.read().decode(errors="replace")
        kinds = {}
        for method, target in re.findall(r'"(?:\x1b\[[0-9;]*m)*([A-Z]+) (\S+) HTTP/', text):
            listing = method == "GET" and ("list-type=" in target or "prefix=" in target)
            kind = "LIST" if listing else method
            kinds[kind] = kinds.get(kind, 0) + 1
        return kinds


class CountingRelay:
    """A TCP relay in front of the server that counts the bytes each way (HTTP headers included).

    With a `delay` (seconds), each answer's first bytes are held that long: a store across a network.
    """

    def __init__(self, port, delay=0.0):
        self.target, self.delay = port, delay
        self.up = self.down = 0
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def reset(self):
        with self.lock:
            self.up = self.down = 0

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            server = socket.create_connection(("127.0.0.1", self.target))
            for end in (client, server):
                end.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pending = [2]
            for source, sink, up in ((client, server, True), (server, client, False)):
                threading.Thread(target=self._pump, args=(source, sink, up, pending), daemon=True).start()

    def _pump(self, source, sink, up, pending):
        try:
            while data := source.recv(1 << 16):
                if self.delay and not up and data.startswith(b"HTTP/1."):
                    time.sleep(self.delay)  # an answer starts (one at a time on a connection)
                sink.sendall(data)
                with self.lock:
                    if up:
                        self.up += len(data)
                    else:
                        self.down += len(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
        with self.lock:
            pending[0] -= 1
            last = not pending[0]
        if last:
            source.close()
            sink.close()

    def close(self):
        self.listener.close()


def fresh_process(code):
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"a benchmark process failed:\n{done.stderr}")
    line = [s for s in done.stdout.splitlines() if s.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


def start_cluster(scratch):
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        host="127.0.0.1",
        scheduler_port=0,  # the OS chooses every port: also the scheduler's HTTP routes (default 8787)
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
        local_directory=scratch,  # each worker makes its own worker-* folder in it
        silence_logs=logging.ERROR,
    )
    return cluster, Client(cluster, set_as_default=False)


def case_of(path):
    return os.path.basename(path)[: -len(".nii.gz")]


def bucket_options_supported():
    return "storage_options" in inspect.signature(resampling_dataset).parameters


def time_part(args, root, server, fs, relay):
    """The timed rows, then the per-volume accounting. Returns the lines to print."""
    import boto3

    size = tuple(args.size)
    scans = os.path.join(root, "scans")
    paths = make_scans(scans, args.scans, tuple(args.shape))
    for path in paths:
        fs.put_file(path, f"{BUCKET}/in/{os.path.basename(path)}")
    inputs = {case_of(p): f"in/{os.path.basename(p)}" for p in paths}
    # The bytes to upload in the transfer rows: the outputs of one disk -> disk run.
    resampling_dataset(scans, os.path.join(root, "reference"), size, workers=2, progress=False)
    outputs = {}
    for case in inputs:
        with open(os.path.join(root, "reference", case, f"{case}_resampled.nii.gz"), "rb") as file:
            outputs[case] = file.read()
    sizes_in = sum(os.path.getsize(p) for p in paths)
    sizes_out = sum(len(b) for b in outputs.values())

    import s3fs

    far = CountingRelay(server.port, delay=args.latency / 1000) if args.latency else None
    options = server.options(far.endpoint if far else None)
    store = s3fs.S3FileSystem(**options, skip_instance_cache=True)  # the transfer rows' s3fs
    s3 = boto3.client(
        "s3",
        endpoint_url=options["endpoint_url"],
        aws_access_key_id=CREDENTIALS["key"],
        aws_secret_access_key=CREDENTIALS["secret"],
        region_name="us-east-1",
    )

    def transfer(down, up):
        def move(task):
            kind, case = task
            if kind == "down":
                down(inputs[case])
            else:
                up(f"transfer/{case}/{case}_resampled.nii.gz", outputs[case])

        with ThreadPoolExecutor(2) as pool:
            list(pool.map(move, [(kind, case) for case in inputs for kind in ("down", "up")]))

    def with_s3fs(out):
        transfer(
            lambda key: store.cat_file(f"{BUCKET}/{key}"),
            lambda key, data: store.pipe_file(f"{BUCKET}/{key}", data),
        )

    def with_boto3(out):
        transfer(
            lambda key: s3.download_fileobj(BUCKET, key, io.BytesIO()),
            lambda key, data: s3.upload_fileobj(io.BytesIO(data), BUCKET, key),
        )

    def dataset(src, **options_):
        return lambda out: resampling_dataset(src, out, size, progress=False, **options_)

    bucket = bucket_options_supported()
    clusters = []
    try:
        runs = {DISK: dataset(scans, workers=2)}
        if bucket:
            runs[BUCKET_W2] = dataset(f"s3://{BUCKET}/in/", workers=2, storage_options=options)
        runs[S3FS], runs[BOTO3] = with_s3fs, with_boto3
        if not args.no_dask:
            clusters.append(start_cluster(os.path.join(root, "dask")))
            executor = clusters[0][1].get_executor()
            if bucket:
                runs[DASK_BUCKET] = dataset(f"s3://{BUCKET}/in/", executor=executor, storage_options=options)
            runs[DASK_DISK] = dataset(scans, executor=executor)
        times = {name: [] for name in runs}
        accounts = {"bucket": [], "disk": []}
        warm = {DASK_BUCKET: [], DASK_DISK: []}  # CPU seconds of the Dask workers, whose clients are warm
        # CPU seconds of every process that worked during a row: this one (its pool's threads or processes,
        # the Dask scheduler and client), the S3 server and the Dask workers.
        spent = {name: [] for name in runs}
        for round_ in range(args.rounds + 1):  # round 0: the warm-up, not counted
            for name, run in runs.items():
                remote = name in (BUCKET_W2, DASK_BUCKET)
                out = f"s3://{BUCKET}/out/" if remote else os.path.join(root, "out")
                clear(fs, root)
                before = workers_cpu(clusters[0][1]) if name in warm else 0.0
                own, served = own_cpu(), server.cpu()
                start = time.perf_counter()
                run(out)
                elapsed = time.perf_counter() - start
                own, served = own_cpu() - own, server.cpu() - served
                if round_:
                    times[name].append(elapsed)
                    workers = 0.0
                    if name in warm:
                        workers = workers_cpu(clusters[0][1]) - before
                        warm[name].append(workers)
                    spent[name].append((own, served, workers))
                elif remote:  # once: the outputs are where they belong
                    fs.invalidate_cache()
                    found = fs.find(f"{BUCKET}/out/")
                    expected = [f"{BUCKET}/out/{c}/{c}_resampled.nii.gz" for c in inputs]
                    if sorted(found) != sorted(expected):
                        raise RuntimeError(f"{name} wrote {found}, not {expected}")
            if round_:
                accounts["disk"].append(account(args, scans, os.path.join(root, "out"), {}, fs, root))
                if bucket:
                    relayed = server.options(relay.endpoint)
                    src, out = f"s3://{BUCKET}/in/", f"s3://{BUCKET}/out/"
                    accounts["bucket"].append(account(args, src, out, relayed, fs, root, server, relay))
        clear(fs, root)
    finally:
        logging.getLogger("distributed").setLevel(logging.ERROR)  # no lines about closing
        for cluster, client in clusters:
            client.close()
            cluster.close()
        if far is not None:
            far.close()

    medians = {name: median(samples) for name, samples in times.items()}
    shape = "x".join(map(str, args.shape))
    lines = [
        f"time: {args.scans} int16 CT-like scans {shape} ({sizes_in / args.scans / 1e6:.1f} MB .nii.gz each) "
        f"-> {size}, saving_mode='case'; the call alone, in this process (median)",
    ]
    if args.latency:
        lines.append(f"every answer of the store {args.latency:g} ms late (a relay holds its first bytes)")
    lines.append("")
    for name, seconds in medians.items():
        lines.append(f"  {name:<52}{seconds:>8.2f} s")
    if not bucket:
        lines.append("  (no bucket rows: this nidataset's resampling_dataset() takes no storage_options)")
        return lines
    transfer_ = min(medians[S3FS], medians[BOTO3])
    faster = "s3fs" if medians[S3FS] <= medians[BOTO3] else "boto3"
    lines.append("")
    width = 70
    count = args.scans
    pairs = [("1. workers=2", BUCKET_W2, DISK)]
    if not args.no_dask:
        pairs.append(("2. Dask 2x1", DASK_BUCKET, DASK_DISK))
    for label, remote, local in pairs:
        ratio = medians[remote] / max(medians[local], transfer_)
        serial = medians[local] + transfer_
        lines.append(
            f"   {label[3:]}: disk {medians[local]:.2f} s, transfer ({faster}) {transfer_:.2f} s; "
            f"one after the other would take {serial:.2f} s, the bucket job took {medians[remote]:.2f} s"
        )
        lines.append(
            target_line(
                f"{label}: time(bucket) / max(disk, transfer):", f"{ratio:.2f}", "<= 1.3", ratio <= 1.3, width
            )
        )
        # The S3 server shares the cores: where the disk job already keeps them busy, the bucket job's
        # time grows with the CPU that the store's requests cost (server and clients) on top of it.
        cpu = {}  # per volume: the total, then this process, the server, the workers
        for name in (local, remote, S3FS):
            cpu[name] = [median([sum(parts) for parts in spent[name]]) / count]
            cpu[name] += [median([parts[i] for parts in spent[name]]) / count for i in range(3)]
        local_cpu, remote_cpu, moved_cpu = (cpu[name][0] for name in (local, remote, S3FS))
        if not local_cpu:  # tiny scans, on a coarse clock
            continue
        lines.append("   CPU per volume (this process and its pool, the S3 server, the Dask workers):")
        if local == DISK and multiprocessing.get_start_method() == "forkserver":
            lines[-1] += " (not the disk job's pool: its processes are the forkserver's children)"
        for what, name in (("disk", local), ("bucket", remote), ("transfer alone (s3fs)", S3FS)):
            total, own, served, workers = (round(1000 * seconds) for seconds in cpu[name])
            lines.append(f"     {what:<22} {total:4d} ms ({own} + {served} + {workers})")
        lines.append(
            f"   bucket / disk in CPU: {remote_cpu / local_cpu:.2f}, of which the server's "
            f"{cpu[remote][2] / local_cpu:.2f}; (disk + transfer alone) / disk: "
            f"{(local_cpu + moved_cpu) / local_cpu:.2f} (where the disk job keeps the {os.cpu_count()} "
            "cores busy, time follows CPU)"
        )

    bucket_runs, disk_runs = accounts["bucket"], accounts["disk"]
    requests = {}
    for kind in sorted({k for run in bucket_runs for k in run["requests"]}):
        requests[kind] = median([run["requests"].get(kind, 0) for run in bucket_runs]) / count
    lines += [
        "",
        f"per volume, bucket -> bucket, workers=2 (a fresh process each round, medians over {args.rounds}):",
        f"  CPU: {median(bucket_runs, 'cpu') / count:.2f} s user+sys, the whole process (imports included), "
        f"{median(bucket_runs, 'pool') / count:.2f} s of it in the pool's processes; disk -> disk: "
        f"{median(disk_runs, 'cpu') / count:.2f} s, {median(disk_runs, 'pool') / count:.2f} s",
        f"  the local S3 server's CPU besides: {median(bucket_runs, 'server') / count:.2f} s",
        f"  bytes down: {median(bucket_runs, 'down') / count / 1e6:.2f} MB on the wire, headers included "
        f"(the input object: {sizes_in / count / 1e6:.2f} MB)",
        f"  bytes up:   {median(bucket_runs, 'up') / count / 1e6:.2f} MB on the wire, headers included "
        f"(the output object: {sizes_out / count / 1e6:.2f} MB)",
        "  requests: " + ", ".join(f"{kind} {n:.2f}" for kind, n in requests.items()),
        f"  (wall of that whole process, through the counting relay: {median(bucket_runs, 'wall'):.2f} s; "
        f"disk -> disk: {median(disk_runs, 'wall'):.2f} s)",
    ]
    if warm[DASK_BUCKET]:
        lines.append(
            f"  steady state, Dask workers' CPU (S3 clients made): {median(warm[DASK_BUCKET]) / count:.2f} "
            f"s per volume; disk -> disk on them: {median(warm[DASK_DISK]) / count:.2f} s"
        )
    return lines


def own_cpu():
    """CPU seconds (user + sys) of this process and of its children that have ended (a pool's processes)."""
    import resource

    own, ended = (resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + ended.ru_utime + ended.ru_stime


def workers_cpu(client):
    """CPU seconds (user + sys) the cluster's worker processes have used so far."""

    def used():
        import resource

        own = resource.getrusage(resource.RUSAGE_SELF)
        return own.ru_utime + own.ru_stime

    return sum(client.run(used).values())


def clear(fs, root):
    """Delete every output: the local one, and those in the bucket."""
    shutil.rmtree(os.path.join(root, "out"), ignore_errors=True)
    for prefix in ("out", "transfer", "mem-out"):
        with contextlib.suppress(FileNotFoundError):
            fs.rm(f"{BUCKET}/{prefix}/", recursive=True)
    fs.invalidate_cache()


def account(args, src, out, options, fs, root, server=None, relay=None):
    """One workers=2 job in a fresh process: its CPU seconds; through the relay, bytes and requests."""
    clear(fs, root)
    kwargs = {"storage_options": options} if options else {}
    code = DATASET.format(src=src, out=out, size=tuple(args.size), kwargs=kwargs)
    if server is None:
        return fresh_process(code)
    relay.reset()
    logged, cpu = server.log_size(), server.cpu()
    result = fresh_process(code)
    time.sleep(0.2)  # the server's last log lines
    return dict(
        result,
        up=relay.up,
        down=relay.down,
        server=server.cpu() - cpu,
        requests=server.requests(logged),
    )


def memory_part(args, root, server, fs):
    """Peak RSS of one resampling() in a fresh process, local and S3. Returns the lines to print."""
    import nibabel as nib

    src = os.path.join(root, "ct.nii.gz")
    data, affine = ct_phantom(tuple(args.mem_shape), SPACING, seed=0)
    nib.save(nib.Nifti1Image(data, affine), src)
    del data
    fs.put_file(src, f"{BUCKET}/mem/ct.nii.gz")
    options = server.options()
    bucket = "storage_options" in inspect.signature(resampling).parameters
    size = tuple(args.mem_size)
    runs = {"local file -> local folder": (src, os.path.join(root, "mem-out"), {})}
    if bucket:
        kwargs = {"storage_options": options}
        runs["S3 -> S3"] = (f"s3://{BUCKET}/mem/ct.nii.gz", f"s3://{BUCKET}/mem-out/", kwargs)
    results = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, (source, out, kwargs) in runs.items():
            shutil.rmtree(os.path.join(root, "mem-out"), ignore_errors=True)
            clear(fs, root)
            results[name].append(whole_process(sys.executable, source, out, size, kwargs=kwargs))
    alone = {
        "a process that only imports nidataset.preprocessing": STACK.format(options=None, bucket=BUCKET),
        "one that only imports s3fs, makes the filesystem, lists once": STACK.format(
            options=options, bucket=BUCKET
        ),
    }
    stacks = {
        name: median([fresh_process(code)["peak"] for _ in range(args.rounds)])
        for name, code in alone.items()
    }

    shape = "x".join(map(str, args.mem_shape))
    megabytes = os.path.getsize(src) / 1e6
    lines = [
        f"mem: one {shape} int16 CT-like volume ({megabytes:.0f} MB .nii.gz) -> {size}, one resampling() "
        "in a fresh process (median)",
        "",
        f"  {'':<62}{'wall':>8}{'call':>8}{'peak RSS':>12}",
    ]
    for name, samples in results.items():
        lines.append(
            f"  {name:<62}{median(samples, 'wall'):>7.2f}s{median(samples, 'call'):>7.2f}s"
            f"{median(samples, 'peak') / 2**20:>8.0f} MiB"
        )
    for name, peak in stacks.items():
        lines.append(f"  {name:<62}{'':>16}{peak / 2**20:>8.0f} MiB")
    if not bucket:
        lines.append("  (no S3 row: this nidataset's resampling() takes no storage_options)")
        return lines
    ratio = median(results["S3 -> S3"], "peak") / median(results["local file -> local folder"], "peak")
    lines += ["", target_line("3. peak RSS, S3 -> S3 / local:", f"{ratio:.2f}", "<= 1.5", ratio <= 1.5, 70)]
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=("time", "mem"), default=["time", "mem"])
    parser.add_argument("--scans", type=int, default=8)
    parser.add_argument("--shape", type=int, nargs=3, default=(256, 256, 160))
    parser.add_argument("--size", type=int, nargs=3, default=(128, 128, 96))
    parser.add_argument("--mem-shape", type=int, nargs=3, default=(512, 512, 300))
    parser.add_argument("--mem-size", type=int, nargs=3, default=(224, 224, 128))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-dask", action="store_true", help="leave the Dask rows out")
    parser.add_argument(
        "--latency",
        type=float,
        default=0.0,
        metavar="MS",
        help="time rows: every answer of the store (the transfer rows' too) comes MS ms late, through a "
        "relay, as from a store across a network (default 0: straight to the server)",
    )
    parser.add_argument("--quick", action="store_true", help="2 tiny scans, 1 round (the tests')")
    args = parser.parse_args()
    if args.quick:
        args.scans, args.shape, args.size, args.rounds = 2, (40, 40, 30), (20, 20, 15), 1
        args.mem_shape, args.mem_size = (64, 64, 40), (28, 28, 16)

    import moto
    import s3fs

    lines = []
    with tempfile.TemporaryDirectory() as root, S3Server(os.path.join(root, "s3.log")) as server:
        fs = s3fs.S3FileSystem(**server.options())
        fs.mkdir(BUCKET)
        relay = CountingRelay(server.port)
        try:
            if "time" in args.parts:
                lines += time_part(args, root, server, fs, relay)
            if "mem" in args.parts:
                lines += [""] if lines else []
                lines += memory_part(args, root, server, fs)
        finally:
            relay.close()

    print(f"S3: moto {moto.__version__} server on 127.0.0.1, its own process; s3fs {s3fs.__version__}")
    print(machine_line(args.rounds))
    print(f"nidataset: {os.path.dirname(sys.modules['nidataset'].__file__)}\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
