"""Helpers shared by single_volume.py, streaming.py, executors.py, labels_preview.py and identical.py.

- one ``resampling()`` call in a fresh process (the reference's interpreter, this project's, or another
  checkout's ``src`` put first on ``PYTHONPATH``), with its wall time and peak resident memory;
- the ``threads=`` keyword, passed only to a function whose signature has it (older checkouts and
  nidataset 0.9.1 do not);
- medians and the one-line verdicts the scripts print for their targets.
"""

import inspect
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
#: This checkout's sources; the default "other checkout" for the comparisons is the frozen copy below.
BASELINE_SRC = "/tmp/baseline/src"

#: One resampling() in a fresh process. Prints one line "RESULT {json}" (the last of its stdout).
RUN = """
import json, resource, sys, time
start = time.perf_counter()
from nidataset.preprocessing import resampling
imported = time.perf_counter()
import inspect
kwargs = {kwargs!r}
threads = {threads!r}
used = threads is not None and "threads" in inspect.signature(resampling).parameters
if used:
    kwargs["threads"] = threads
called = time.perf_counter()
resampling({src!r}, {out!r}, {size!r}, **kwargs)
done = time.perf_counter()
try:  # this process's own high-water mark (getrusage would count the parent's pages up to the exec)
    with open("/proc/self/status") as status:
        peak = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
except OSError:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
import nidataset
result = dict(imported=imported - start, call=done - called, peak=peak, threads=used)
print("RESULT " + json.dumps(dict(result, where=nidataset.__file__)))
"""


def environment(src=None, isolated=False):
    """The environment of a child process; with `src`, that folder comes first on ``PYTHONPATH``.

    `isolated` drops ``PYTHONPATH``: for the reference's own venv, which must not import a checkout that
    this run was pointed at.
    """
    env = dict(os.environ)
    if isolated:
        env.pop("PYTHONPATH", None)
    if src:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


def isolated_reference_python():
    """_reference.reference_python(), checked (or built) without this run's ``PYTHONPATH``."""
    from _reference import reference_python

    saved = os.environ.pop("PYTHONPATH", None)
    try:
        return reference_python()
    finally:
        if saved is not None:
            os.environ["PYTHONPATH"] = saved


def whole_process(python, src, out, size, kwargs=None, threads=None, env=None):
    """Run one ``resampling(src, out, size, **kwargs)`` in a new process of `python`.

    Returns a dict: ``wall`` (seconds, the whole process), ``imported`` (the import of
    nidataset.preprocessing), ``call`` (the call alone), ``peak`` (peak RSS in bytes), ``threads`` (whether
    threads= was passed) and ``where`` (the nidataset package that ran).
    """
    code = RUN.format(src=src, out=out, size=tuple(size), kwargs=dict(kwargs or {}), threads=threads)
    start = time.perf_counter()
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"{python} failed:\n{done.stderr}")
    line = [s for s in done.stdout.splitlines() if s.startswith("RESULT ")][-1]
    return {"wall": wall, **json.loads(line[len("RESULT ") :])}


def thread_kwargs(function, threads):
    """``{"threads": threads}`` if `threads` is given and `function` takes that keyword, else ``{}``."""
    if threads is None or "threads" not in inspect.signature(function).parameters:
        return {}
    return {"threads": threads}


def median(runs, key=None):
    """Median of `runs`, or of ``run[key]`` over them."""
    return statistics.median(runs if key is None else [run[key] for run in runs])


def verdict(met):
    return "met" if met else "NOT MET"


def target_line(label, figure, target, met, width=52):
    """One line of a target row: what, the figure (with its ratio), the target and whether it is met."""
    return f"{label:<{width}}{figure}  (target {target})  {verdict(met)}"


def default_baseline(given):
    """The other checkout's src to compare with: `given`, else /tmp/baseline/src when it exists."""
    if given is not None:
        return given or None  # "" leaves it out
    return BASELINE_SRC if os.path.isdir(BASELINE_SRC) else None


def machine_line(rounds):
    return f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, {rounds} interleaved rounds"
