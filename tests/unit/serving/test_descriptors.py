"""fit_descriptors (proxy/serving/app.py): start-up raises the soft descriptor limit to the hard one, and
refuses limits that leave no room for the stores, health and admin, naming the field."""

from __future__ import annotations

import resource
from collections.abc import Iterator

import pytest

from proxy.config import Limits
from proxy.errors import ConfigError
from proxy.serving.app import RESERVED_DESCRIPTORS, fit_descriptors


@pytest.fixture
def nofile() -> Iterator[tuple[int, int]]:
    """This process's descriptor limits, put back after the test."""
    limits = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        yield limits
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, limits)


def test_the_soft_limit_is_raised_to_the_hard_one(nofile: tuple[int, int]) -> None:
    """With the soft limit below the hard one, fit_descriptors raises it and returns what it got."""
    _, hard = nofile
    if hard == resource.RLIM_INFINITY or hard < 2048:
        pytest.skip("needs a finite hard limit of at least 2048")
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    assert fit_descriptors(Limits()) == hard
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)


def test_limits_past_the_descriptors_are_refused_naming_the_field(nofile: tuple[int, int]) -> None:
    """A max_connections that leaves too few descriptors is a ConfigError naming it and the largest that fits."""
    _, hard = nofile
    if hard == resource.RLIM_INFINITY:
        pytest.skip("needs a finite hard limit")
    limits = Limits(max_connections=hard, admin_max_connections=10)
    with pytest.raises(ConfigError, match=r"^limits\.max_connections: ") as refused:
        fit_descriptors(limits)
    assert f"at most {hard - 20 - RESERVED_DESCRIPTORS}" in str(refused.value)


def test_the_default_limits_fit_in_1024_descriptors() -> None:
    """The default limits, with the room kept back, fit in the common 1024 descriptors."""
    limits = Limits()
    assert limits.max_connections + 2 * limits.admin_max_connections + RESERVED_DESCRIPTORS <= 1024
