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
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from pg_support import PG_BASE, PG_SKIP, pg_admin

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


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL journal URL in a fresh schema of its own (dropped afterwards)."""
    if PG_SKIP is not None:
        pytest.skip(PG_SKIP)
    schema = f"pm_test_{uuid.uuid4().hex[:12]}"
    sep = "&" if "?" in PG_BASE else "?"
    yield f"{PG_BASE}{sep}schema={schema}"
    pg_admin(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh journal URL on each backend."""
    if request.param == "sqlite":
        return str(tmp_path / "journal.sqlite")
    return str(request.getfixturevalue("pg_url"))
