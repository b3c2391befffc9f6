"""fit_descriptors (proxy/serving/app.py): start-up raises the soft descriptor limit to the hard one, and
refuses limits that leave no room for the stores, health and admin, naming the field."""

from __future__ import annotations

import resource
import subprocess
import sys

from proxy.config import Limits
from proxy.serving.app import RESERVED_DESCRIPTORS
from tests.support.paths import ROOT


def run_under(soft: int, hard: int, script: str) -> str:
    """Run script in a child whose descriptor limits are (soft, hard): lowering a hard limit is always
    allowed, so every machine gives the test a finite one, whatever its own is."""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)),
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def finite_hard_limit() -> int:
    """A hard limit this process may set in a child: 4096, or its own when that is lower."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 4096 if hard == resource.RLIM_INFINITY or hard >= 4096 else hard


def test_the_soft_limit_is_raised_to_the_hard_one() -> None:
    """With the soft limit below the hard one, fit_descriptors raises it and returns what it got."""
    hard = finite_hard_limit()
    out = run_under(hard // 2, hard, (
        "import resource; from proxy.config import Limits; from proxy.serving.app import fit_descriptors; "
        "print(fit_descriptors(Limits()), *resource.getrlimit(resource.RLIMIT_NOFILE))"))
    assert out.split() == [str(hard)] * 3


def test_limits_past_the_descriptors_are_refused_naming_the_field() -> None:
    """A max_connections that leaves too few descriptors is a ConfigError naming it and the largest that fits."""
    hard = finite_hard_limit()
    out = run_under(hard, hard, (
        "from proxy.config import Limits; from proxy.errors import ConfigError; "
        "from proxy.serving.app import fit_descriptors\n"
        f"try:\n    fit_descriptors(Limits(max_connections={hard}, admin_max_connections=10))\n"
        "except ConfigError as exc:\n    print(exc)\n"))
    assert out.startswith("limits.max_connections: ")
    assert f"at most {hard - 20 - RESERVED_DESCRIPTORS}" in out


def test_the_default_limits_fit_in_1024_descriptors() -> None:
    """The default limits, with the room kept back, fit in the common 1024 descriptors."""
    limits = Limits()
    assert limits.max_connections + 2 * limits.admin_max_connections + RESERVED_DESCRIPTORS <= 1024
