"""Settings from the environment and a TOML file: `ndop serve` starts from either, the command
line wins over the environment and the environment over the file, and mistakes are one
sentence."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ndop_client.cli.main import build_parser
from ndop_core import settings
from ndop_core.errors import UsageError
from ndop_server.accounts import Accounts
from tests.conftest import Register
from tests.serve_process import NDOP, ServeProcess, watch_serve


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen")
    parser.add_argument("--poll-seconds", type=float, default=1.0)
    parser.add_argument("--insecure", action="store_true")
    parser.add_argument("--mode", choices=("private", "hashed"), default="private")
    return parser


def test_the_environment_gives_defaults_the_command_line_overrides() -> None:
    parser = _parser()
    settings.environment_defaults(
        parser,
        {"NDOP_LISTEN": "127.0.0.1:9", "NDOP_POLL_SECONDS": "0.5", "NDOP_INSECURE": "yes"},
    )
    args = parser.parse_args([])
    assert (args.listen, args.poll_seconds, args.insecure) == ("127.0.0.1:9", 0.5, True)
    assert parser.parse_args(["--listen", "127.0.0.1:7"]).listen == "127.0.0.1:7"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("NDOP_POLL_SECONDS", "soon", "NDOP_POLL_SECONDS is not a valid poll seconds"),
        ("NDOP_INSECURE", "perhaps", "NDOP_INSECURE must be true or false"),
        ("NDOP_MODE", "secret", "NDOP_MODE must be one of: private, hashed"),
    ],
)
def test_a_bad_environment_value_is_one_sentence(name: str, value: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        settings.environment_defaults(_parser(), {name: value})


def test_a_file_fills_what_neither_the_command_line_nor_the_environment_gave(
    tmp_path: Path,
) -> None:
    config = tmp_path / "ndop.toml"
    config.write_text('listen = "0.0.0.0:8443"\npoll-seconds = 2.5\nmode = "hashed"\n')
    parser = _parser()
    settings.environment_defaults(parser, {})
    args = parser.parse_args(["--mode", "private"])
    settings.apply_file(args, parser, config, {"NDOP_POLL_SECONDS": "0.5"})
    assert (args.listen, args.poll_seconds, args.mode) == ("0.0.0.0:8443", 1.0, "private")
    config.write_text('lisen = "0.0.0.0:8443"\n')
    with pytest.raises(UsageError, match="names an unknown setting 'lisen'"):
        settings.apply_file(parser.parse_args([]), parser, config, {})
    config.write_text("listen = \n")
    with pytest.raises(UsageError, match="is not valid TOML"):
        settings.apply_file(parser.parse_args([]), parser, config, {})


def _stop(served: ServeProcess) -> None:
    assert served.stop() == 0


def test_serve_starts_from_the_environment_alone(register: Register) -> None:
    environment = {
        **os.environ,
        "NDOP_STORE": register.location,
        "NDOP_KEYS": str(register.keys_path),
        "NDOP_LISTEN": "127.0.0.1:0",
        "NDOP_INSECURE": "1",
        "NDOP_LOG_FORMAT": "json",
        "NDOP_IDLE_TIMEOUT": "7",
    }
    served = watch_serve(
        subprocess.Popen([*NDOP, "serve"], env=environment, stderr=subprocess.PIPE, text=True)
    )
    try:
        assert served.started["tls"] == "off" and served.started["register_version"] == 1
    finally:
        _stop(served)


def test_serve_starts_from_a_settings_file(register: Register, tmp_path: Path) -> None:
    config = tmp_path / "ndop.toml"
    config.write_text(
        f'store = "{register.location}"\nkeys = "{register.keys_path}"\n'
        'listen = "127.0.0.1:0"\ninsecure = true\nlog-format = "json"\n'
    )
    served = watch_serve(
        subprocess.Popen(
            [*NDOP, "serve", "--config", str(config)], stderr=subprocess.PIPE, text=True
        )
    )
    try:
        assert served.started["register_version"] == 1
    finally:
        _stop(served)


def test_serve_without_a_store_says_every_way_to_give_one(register: Register) -> None:
    done = subprocess.run(
        [*NDOP, "serve", "--keys", str(register.keys_path), "--listen", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("NDOP_")},
    )
    assert done.returncode == 2
    assert done.stderr.strip() == "ndop: give --store (or NDOP_STORE, or store in --config)"


def test_check_takes_its_settings_from_the_environment(
    register: Register, server: object, address: str, token: str, tmp_path: Path
) -> None:
    cohort = tmp_path / "cohort.dat"
    cohort.write_text("".join(f"{int(v):010d},\n" for v in register.not_opted_out[:5]))
    environment = {
        **os.environ,
        "NDOP_SERVER": address,
        "NDOP_INSECURE": "true",
        "NDOP_PURPOSE": "research",
        "NDOP_MODE": "hashed",
        "NDOP_TOKEN": token,
    }
    done = subprocess.run(
        [*NDOP, "check", str(cohort), "--out", str(tmp_path / "cleared.dat")],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "mode hashed" in done.stdout
    assert (tmp_path / "cleared.dat").read_text() == cohort.read_text()
    environment["NDOP_MODE"] = "secret"
    refused = subprocess.run(
        [*NDOP, "check", str(cohort), "--out", str(tmp_path / "x.dat")],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert refused.returncode == 2
    assert refused.stderr.strip() == "ndop: NDOP_MODE must be one of: private, hashed"


def test_a_reader_that_goes_away_is_not_an_error(register: Register) -> None:
    """`ndop org list --json | head -c 1`: a closed pipe ends the command quietly. The list
    is made longer than a pipe's buffer, so the writer really meets the closed pipe."""
    with Accounts(register.location) as accounts:
        for i in range(800):
            accounts.add(f"org-{i:04d}")
    listing = subprocess.Popen(
        f"{sys.executable} -m ndop_client org list --json --store {register.location} | head -c 1",
        shell=True,
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    out, err = listing.communicate(timeout=60)
    assert out == "["
    assert err == ""


def test_the_readme_documents_every_setting() -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for name in ("check", "serve"):
        for action in settings._options(commands.choices[name]):
            assert f"`{settings.variable(action)}`" in readme, settings.variable(action)
