"""Fixtures of the whole suite (the builders themselves are in tests/helpers/), the
threads each xdist worker's torch takes, and the e2e mark of every test in tests/e2e/."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from helpers.repos import Repo

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import helpers` from any test folder

# Under pytest-xdist, each worker gets its share of the cores for torch's OpenMP threads,
# and so do the stages and tools its tests start (they inherit the environment). Two
# workers of two threads each on two cores made OpenMP's spinning threads fight: the
# unit tests took 30 s to 2 min from run to run instead of 16 s.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    if "torch" in sys.modules:  # too late for the variable to take effect in this process
        sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


TESTS = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by mark
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything in tests/e2e/ runs DVC, torchrun, act or a stage as a process: mark it
    e2e here, so that no test there can be left out of the mark by mistake. Everything in
    tests/unit/ runs in the quick loop (`-m "not e2e"`), so nothing there may carry it."""
    for item in items:
        if TESTS / "e2e" in item.path.parents:
            item.add_marker(pytest.mark.e2e)
        elif TESTS / "unit" not in item.path.parents:
            raise pytest.UsageError(f"{item.nodeid}: a test lives in tests/unit/ or tests/e2e/")
        elif item.get_closest_marker("e2e"):
            raise pytest.UsageError(f"{item.nodeid}: marked e2e in tests/unit/; move it to tests/e2e/")


# The fixtures import helpers (and so torch) when first used: after OMP_NUM_THREADS is
# set above, and never in pytest-xdist's controller, which runs no test.

@pytest.fixture
def tiny_raw(tmp_path: Path) -> Path:
    from helpers.data import write_raw

    return write_raw(tmp_path / "raw-source")


@pytest.fixture
def repo(tmp_path: Path, tiny_raw: Path) -> Repo:
    from helpers.repos import make_repo

    return make_repo(tmp_path / "repo", tiny_raw)


@pytest.fixture(scope="session")
def model_file(tmp_path_factory) -> Path:
    """A cnn trained for a few epochs on generated images, saved as the train stage saves it."""
    from helpers.pictures import write_model_file

    return write_model_file(tmp_path_factory.mktemp("model") / "model.pt")


@pytest.fixture
def no_hang():
    """Fail the test, rather than hang the suite, if it is still running after a minute:
    for tests of what must never wait (a pipe with no writer, a device). Not a timed
    assertion: the bound is a hundred times what the tests take."""
    def give_up(signum, frame):  # pytest.fail: not an OSError, which the code under test may catch
        pytest.fail("still running after 60 s: something waits on a pipe or a device", pytrace=True)

    previous = signal.signal(signal.SIGALRM, give_up)
    signal.alarm(60)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
