"""The two distributions hold what they must: the server's wheel installs alone, the client's stays the client.

Each wheel is built from a copy of the sources it needs (as a fresh clone or the Dockerfile's build
stage holds them), offline and without build isolation, so the repository gains no build folders.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
import turnout

from tests.support.paths import ROOT

CLIENT = Path("clients/python")
STUBS = ("turnout/kv/v1/kv_pb2.py", "turnout/kv/v1/kv_pb2.pyi", "turnout/kv/v1/kv_pb2_grpc.py",
         "turnout/kv/v1/kv_pb2_grpc.pyi", "turnout/admin/v1/admin_pb2.py", "turnout/admin/v1/admin_pb2.pyi",
         "turnout/admin/v1/admin_pb2_grpc.py", "turnout/admin/v1/admin_pb2_grpc.pyi")
_LEFT_BY_BUILDS = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist")


def sources(folder: Path) -> Path:
    """What the Dockerfile's build stage copies: the server's metadata, the proxy and the client."""
    shutil.copy(ROOT / "pyproject.toml", folder / "pyproject.toml")
    shutil.copytree(ROOT / "proxy", folder / "proxy", ignore=_LEFT_BY_BUILDS)
    shutil.copytree(ROOT / CLIENT, folder / CLIENT, ignore=_LEFT_BY_BUILDS)
    return folder


def build_wheel(project: Path, out: Path) -> zipfile.ZipFile:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "--no-deps",
                    "--no-build-isolation", "--no-index", "--wheel-dir", str(out), str(project)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = out.glob("*.whl")
    return zipfile.ZipFile(wheel)


def python_files(root: Path, package: str) -> set[str]:
    return {path.relative_to(root).as_posix() for path in (root / package).rglob("*.py")
            if "__pycache__" not in path.parts}


def metadata(wheel: zipfile.ZipFile) -> tuple[str, str]:
    """(METADATA, entry_points.txt) of a wheel."""
    dist_info = next(name.split("/")[0] for name in wheel.namelist() if name.endswith(".dist-info/METADATA"))
    entry_points = f"{dist_info}/entry_points.txt"
    points = wheel.read(entry_points).decode() if entry_points in wheel.namelist() else ""
    return wheel.read(f"{dist_info}/METADATA").decode(), points


def requirement_names(metadata_text: str) -> set[str]:
    """The distributions a wheel requires at run time (its extras left out)."""
    requires = Parser().parsestr(metadata_text).get_all("Requires-Dist") or []
    return {re.split(r"[^A-Za-z0-9._-]", req, maxsplit=1)[0].lower() for req in requires if "extra ==" not in req}


@pytest.fixture(scope="module")
def server_wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    project = sources(tmp_path_factory.mktemp("server"))
    return build_wheel(project, tmp_path_factory.mktemp("server-wheel"))


@pytest.fixture(scope="module")
def client_wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    project = sources(tmp_path_factory.mktemp("client")) / CLIENT
    return build_wheel(project, tmp_path_factory.mktemp("client-wheel"))


def test_the_server_wheel_holds_every_module_of_the_proxy_and_of_the_client(server_wheel: zipfile.ZipFile) -> None:
    """Every .py under proxy/ and clients/python/turnout/ is in the server's wheel, so it installs alone."""
    names = set(server_wheel.namelist())
    assert python_files(ROOT, "proxy") <= names
    assert python_files(ROOT / CLIENT, "turnout") <= names
    assert {"proxy/py.typed", "turnout/py.typed", *STUBS} <= names
    assert {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")} == {
        "proxy", "turnout"}


def test_the_server_wheel_installs_the_turnout_command(server_wheel: zipfile.ZipFile) -> None:
    """The wheel's console script `turnout` runs proxy.cli:main."""
    _, entry_points = metadata(server_wheel)
    assert "[console_scripts]" in entry_points
    assert "turnout = proxy.cli:main" in entry_points


def test_the_server_needs_no_distribution_that_no_index_has(server_wheel: zipfile.ZipFile,
                                                              client_wheel: zipfile.ZipFile) -> None:
    """The server does not require turnout-client, and requires whatever the client's own code needs."""
    server = requirement_names(metadata(server_wheel)[0])
    client = requirement_names(metadata(client_wheel)[0])
    assert "turnout-client" not in server
    assert client <= server


def test_the_client_wheel_holds_the_client_alone(client_wheel: zipfile.ZipFile) -> None:
    """`pip install ./clients/python` brings the `turnout` package with its stubs, and no proxy."""
    names = set(client_wheel.namelist())
    assert python_files(ROOT / CLIENT, "turnout") <= names
    assert {"turnout/py.typed", *STUBS} <= names
    assert {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")} == {"turnout"}
    assert metadata(client_wheel)[1] == ""


def test_the_development_install_imports_the_client_from_its_source() -> None:
    """In the editable install `turnout` is clients/python/turnout itself, so regenerated stubs are used at once."""
    assert Path(turnout.__file__).parent == ROOT / CLIENT / "turnout"
