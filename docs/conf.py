"""Sphinx configuration of nidataset's documentation (``make docs``)."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "_ext"))

import nidataset

project = "nidataset"
author = "the nidataset developers"
copyright = "the nidataset developers"
release = nidataset.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.doctest",
    "numpydoc",
    "nidataset_docs",
]

exclude_patterns = ["_build", "_generated", ".gitignore"]
default_role = "py:obj"
smartquotes = False  # quotes in code-like text stay straight
nitpicky = False
html_theme = "alabaster"
html_theme_options = {
    "description": "Resample 3D NIfTI volumes to a fixed array size",
    "page_width": "1100px",
}
html_static_path: list[str] = []

autodoc_typehints = "signature"
autodoc_member_order = "bysource"
numpydoc_show_class_members = False
numpydoc_xref_param_type = False

# The API pages render these docstrings a section at a time (docstring-section); their autodoc entry keeps
# only the signature.
nidataset_sectioned = {"nidataset.preprocessing.resampling", "nidataset.preprocessing.resampling_dataset"}

# `make docs` runs the doctest builder as well: every >>> block and console example runs in a fresh folder
# holding scans/ (a small copy of the demo dataset), with the docstrings' names imported.
doctest_global_setup = """
import nidataset_docs
nidataset_docs.enter_example_folder()
from nidataset.preprocessing import resampling, resampling_dataset
"""
doctest_global_cleanup = """
nidataset_docs.leave_example_folder()
"""
