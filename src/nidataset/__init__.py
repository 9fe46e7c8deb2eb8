"""Resample 3D medical volumes (NIfTI) to a fixed array size for deep-learning pipelines.

>>> import nidataset as nid
>>> nid.resampling is nid.preprocessing.resampling
True
"""

import logging

from . import preprocessing
from .preprocessing import DatasetError, InvalidVolumeError, resampling, resampling_dataset

__all__ = [
    "DatasetError",
    "InvalidVolumeError",
    "__version__",
    "preprocessing",
    "resampling",
    "resampling_dataset",
]
__version__ = "1.0.0.dev0"

# A library emits log records only where the application configures logging (Python logging HOWTO).
logging.getLogger(__name__).addHandler(logging.NullHandler())
