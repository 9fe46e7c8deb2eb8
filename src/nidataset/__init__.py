"""Resample 3D medical volumes (NIfTI) to a fixed array size for deep-learning pipelines.

>>> import nidataset as nid
>>> nid.resampling is nid.preprocessing.resampling
True
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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


def __getattr__(name: str) -> Any:
    # Imported on first use, so that the command line starts (and answers Ctrl-C) before numpy and
    # nibabel are loaded.
    if name in __all__ and name != "__version__":
        preprocessing = importlib.import_module(".preprocessing", __name__)
        value = preprocessing if name == "preprocessing" else getattr(preprocessing, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
