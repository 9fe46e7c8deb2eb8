"""The table of options: each check refuses what it should, with one message for the API and the CLI."""

import threading
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np
import pytest

from nidataset._options import (
    INTERPOLATIONS,
    Options,
    available_cores,
    check_desired_volume,
    check_flag,
    check_options,
    check_positive_int,
    check_saving_mode,
    resolve_threads,
)


def test_every_interpolation_has_its_order():
    assert {name: Options(name).order for name in INTERPOLATIONS} == {
        "bspline": 3,
        "linear": 1,
        "nearest": 0,
        "label": None,
    }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"interpolation": "cubic"},
            r"interpolation must be one of \('bspline', 'linear', 'nearest', 'label'\)",
        ),
        ({"align": "corner"}, r"align must be one of \('origin', 'center'\), got 'corner'"),
        ({"antialias": "no"}, "antialias must be True or False, got 'no'"),
        ({"preview": "no"}, "preview must be True or False, got 'no'"),
        ({"preview": 1}, "preview must be True or False, got 1"),
        ({"interpolation": "label", "antialias": True}, "not to 'label'"),
    ],
)
def test_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        check_options(**kwargs)


def test_flags_take_numpy_bools():
    assert check_options(antialias=np.bool_(True), preview=np.False_) == Options(antialias=True)
    assert check_flag("skip_existing", np.True_) is True


@pytest.mark.parametrize("bad", [(1, 2), (1, 2, 3, 4), (1, 2, 0), (1.0, 2, 3), (True, 2, 3), "abc", 5, None])
def test_desired_volume_refused(bad):
    with pytest.raises(ValueError, match="desired_volume must be three positive integers"):
        check_desired_volume(bad)


def test_other_checks():
    assert check_saving_mode("folder") == "folder"
    with pytest.raises(ValueError, match="saving_mode must be 'case' or 'folder', got 'cases'"):
        check_saving_mode("cases")
    assert check_positive_int("workers", np.int32(3)) == 3
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="workers must be a positive integer"):
            check_positive_int("workers", bad)


def _threads_in_a_child(_):
    return resolve_threads(None)


def test_default_threads_follow_where_the_call_runs():
    # A lone call from the main thread has the process's cores; other threads and pool processes one.
    assert threading.current_thread() is threading.main_thread()
    assert resolve_threads(None) == available_cores()
    assert resolve_threads(3) == 3
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(resolve_threads, None).result() == 1
        assert pool.submit(resolve_threads, 2).result() == 2
    with ProcessPoolExecutor(1) as pool:
        assert pool.submit(_threads_in_a_child, 0).result() == 1
    with pytest.raises(ValueError, match="threads must be a positive integer, got 0"):
        resolve_threads(0)
