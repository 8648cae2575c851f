import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    torch.manual_seed(0)
    yield
    torch.set_num_threads(1)  # an in-process CLI run may have raised it


def pytest_configure(config):
    # One thread: the suite is many small models, where a second thread only adds contention.
    torch.set_num_threads(1)
