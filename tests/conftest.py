"""Shared pytest configuration: Hypothesis profiles.

Profiles
--------
``ci`` (the default)
    ``derandomize=True`` and no example database, so every CI run draws the same examples
    and a red build is reproducible on any machine; ``deadline=None`` because exact
    ``Fraction`` arithmetic on a loaded 2-core runner has no stable per-example time.
``soak``
    Random seeds, the local example database (so a failure found once is replayed first),
    no deadline. Chosen with ``PERPMARGIN_SOAK=1`` (which also makes the stateful engine
    test run 2000 examples × 200 steps, see ``tests/test_stateful.py``) or with
    ``HYPOTHESIS_PROFILE=soak``.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "soak",
    deadline=None,
    derandomize=False,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)

SOAK = os.environ.get("PERPMARGIN_SOAK", "") not in ("", "0")
"""True when the long randomized soak run was asked for (``PERPMARGIN_SOAK=1``)."""

settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "soak" if SOAK else "ci"))
