"""The layout the protocol issue set: a shared core that neither side owns.

- no server module imports the SDK, no SDK module imports the server, and the core imports
  neither;
- `import ndop_core` loads nothing heavy;
- the client works with none of the server's dependencies installed: `ndop check` runs in
  both modes, worker processes included, with those packages made unimportable, and operator
  commands say which extra to install.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ndop_server.server import RunningServer
from tests.conftest import Register, write_numbers

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {
    "ndop_core": ROOT / "core" / "ndop_core",
    "ndop_client": ROOT / "client" / "ndop_client",
    "ndop_server": ROOT / "server" / "ndop_server",
}
FORBIDDEN = {
    "ndop_core": {"ndop_client", "ndop_server"},
    "ndop_client": {"ndop_server"},
    "ndop_server": {"ndop_client"},
}
SERVER_ONLY = ("ndop_server", "pybloom_live", "structlog", "grpc_health", "grpc_reflection")


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_no_package_imports_the_other_side(package: str) -> None:
    offending = {
        str(path.relative_to(ROOT)): sorted(_imported_packages(path) & FORBIDDEN[package])
        for path in PACKAGES[package].rglob("*.py")
    }
    assert {path: names for path, names in offending.items() if names} == {}


def test_importing_the_core_loads_nothing_heavy() -> None:
    code = (
        "import sys, ndop_core\n"
        "heavy = {'grpc', 'numpy', 'google.protobuf', 'cryptography', 'rbcl'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"


def _python(code: str, **env: str) -> str:
    """What `python -c code` prints, in an environment without BLAS thread settings."""
    environment = {
        k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")
    }
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        env={**environment, **env},
    )
    return done.stdout.strip()


def test_the_sdk_loads_its_names_on_first_use_and_all_of_them_resolve() -> None:
    code = (
        "import sys, ndop_client\n"
        "print(sorted({'grpc', 'numpy'} & set(sys.modules)))\n"
        "print(sorted(ndop_client.__all__) == sorted(ndop_client._HOMES))\n"
        "print(all(getattr(ndop_client, name) for name in ndop_client.__all__))\n"
        "print(len(dir(ndop_client)) == len(set(dir(ndop_client))))\n"
    )
    assert _python(code).splitlines() == ["[]", "True", "True", "True"]


def test_the_command_asks_for_one_blas_thread_and_the_sdk_leaves_it_alone() -> None:
    """NumPy's OpenBLAS starts a spinning thread per core as it loads; ndop never multiplies
    matrices, so its own processes ask for one, but a library must not decide that for the
    program that imports it."""
    show = "import os; print(os.environ.get('OPENBLAS_NUM_THREADS'))"
    assert _python(f"import ndop_client; ndop_client.Client; {show}") == "None"
    assert _python(f"import ndop_client.cli.main; {show}") == "1"
    assert _python(f"import ndop_client.cli.main; {show}", OPENBLAS_NUM_THREADS="4") == "4"


def test_a_hashed_check_loads_only_what_it_runs(
    register: Register, server: RunningServer, address: str, token: str, tmp_path: Path
) -> None:
    """No receipt verification (cryptography), filter cache, TOML or package metadata: a
    hashed check's start-up is part of what it costs."""
    cohort = write_numbers(tmp_path / "cohort.dat", register.not_opted_out[:5])
    code = (
        "import sys\n"
        "from ndop_client.cli.main import main\n"
        f"args = ['check', {str(cohort)!r}, '--server', {address!r}, '--insecure', "
        f"'--mode', 'hashed', '--purpose', 'research', '--out', {str(tmp_path / 'out.dat')!r}]\n"
        "code = main(args)\n"
        "unneeded = {'cryptography', 'tomllib', 'importlib.metadata', "
        "'ndop_client.filter_cache', 'ndop_client.private_mode', 'rbcl'}\n"
        "print(code, sorted(unneeded & set(sys.modules)))\n"
    )
    printed = _python(code, NDOP_TOKEN=token, XDG_CACHE_HOME=str(tmp_path / "cache"))
    assert printed.splitlines()[-1] == "0 []"


BLOCKER = textwrap.dedent(
    f"""
    import importlib.abc
    import sys

    BLOCKED = {SERVER_ONLY!r}

    class ServerPackagesAbsent(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None

    sys.meta_path.insert(0, ServerPackagesAbsent())
    """
)


def _client_only(
    tmp_path: Path, *args: str | Path, token: str = ""
) -> subprocess.CompletedProcess[str]:
    """`ndop ARGS` in a Python where the server's packages cannot be imported, in every
    process it starts (sitecustomize runs in spawned workers too)."""
    site = tmp_path / "client-only-site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
        "NDOP_TOKEN": token,
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }
    return subprocess.run(
        [sys.executable, "-m", "ndop_client", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )


def test_the_blocker_really_hides_the_server(tmp_path: Path) -> None:
    site = tmp_path / "probe"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run(
        [sys.executable, "-c", "import pybloom_live"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0 and "ModuleNotFoundError" in done.stderr


@pytest.mark.parametrize("mode", ["hashed", "private"])
def test_a_client_only_install_checks_a_cohort(
    register: Register, server: RunningServer, address: str, token: str, tmp_path: Path, mode: str
) -> None:
    cohort = write_numbers(
        tmp_path / "cohort.dat", [*register.opted_out[:5], *register.not_opted_out[:7]]
    )
    out = tmp_path / "cleared.dat"
    done = _client_only(
        tmp_path,
        "check",
        cohort,
        "--server",
        address,
        "--insecure",
        "--mode",
        mode,
        "--purpose",
        "research",
        "--out",
        out,
        "--workers",
        "2",
        token=token,
    )
    assert done.returncode == 0, done.stderr
    expected = "".join(f"{int(v):010d},\n" for v in register.not_opted_out[:7])
    assert out.read_text() == expected


def test_operator_commands_on_a_client_only_install_say_what_to_install(tmp_path: Path) -> None:
    done = _client_only(tmp_path, "serve", "--store", "x.sqlite3")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines == [
        "ndop: 'ndop serve' is an operator command and the server is not installed: "
        "pip install 'ndop[server]'"
    ]
