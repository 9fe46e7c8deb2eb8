"""Locate or build the reference implementation, nidataset 0.9.1 from PyPI, in a virtual environment of
its own (it is never a dependency of this project, and none of its code is copied here).

Set ``NIDATASET_REFERENCE_PYTHON`` to a Python that has it, or let this module create
``benchmarks/.ref-venv`` with ``pip install nidataset==0.9.1``.
"""

import os
import subprocess
import sys
import venv

HERE = os.path.dirname(os.path.abspath(__file__))
VENV = os.path.join(HERE, ".ref-venv")
REQUIREMENT = "nidataset==0.9.1"


def reference_python() -> str:
    """Path of a Python interpreter that imports nidataset 0.9.1."""
    python = os.environ.get("NIDATASET_REFERENCE_PYTHON") or os.path.join(VENV, "bin", "python")
    if not _has_reference(python):
        if os.environ.get("NIDATASET_REFERENCE_PYTHON"):
            sys.exit(f"NIDATASET_REFERENCE_PYTHON={python} does not import {REQUIREMENT}")
        print(f"creating {VENV} with {REQUIREMENT} ...", file=sys.stderr)
        venv.create(VENV, with_pip=True, clear=True)
        subprocess.run([python, "-m", "pip", "install", "--quiet", REQUIREMENT], check=True)
    return python


def _has_reference(python: str) -> bool:
    if not os.path.exists(python):
        return False
    check = "import importlib.metadata as m; assert m.version('nidataset') == '0.9.1'"
    return subprocess.run([python, "-c", check], capture_output=True).returncode == 0


def run_reference(python: str, code: str) -> str:
    """Run `code` with the reference's interpreter; returns its stdout."""
    done = subprocess.run([python, "-c", code], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"the reference failed:\n{done.stderr}")
    return done.stdout
