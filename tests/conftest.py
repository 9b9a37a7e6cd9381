"""Test-suite settings.

Under CI (``CI`` set, as ``.ci/run`` runs) hypothesis draws its examples deterministically, so a
landing never depends on a lucky draw; locally it explores new examples on every run.
"""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
