"""Test-suite settings.

Under CI (``CI`` set, as ``.ci/run`` runs) hypothesis draws its examples deterministically, so a
landing never depends on a lucky draw; locally it explores new examples on every run.
"""

import os

import pytest
import torch
from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny networks on a shared 2-core machine: one torch thread avoids OpenMP contention.  A module
    opts in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
