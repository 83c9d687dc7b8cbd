"""The `ndop` command line end to end, run as real subprocesses: keys, register load/apply/info,
a real `ndop serve`, `ndop check` in both modes on .dat, .csv and text, exit codes, one-line
errors, graceful shutdown, and no NHS number ever printed.

Only synthetic 999-range numbers are used.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ndop_client import Client, NdopError
from ndop_server.synthetic import valid_numbers

NDOP = [sys.executable, "-m", "ndop_client.cli.main"]
STARTUP_DEADLINE_S = 20.0
SHUTDOWN_DEADLINE_S = 8.0
PURPOSE = ("--purpose", "research")
# Both modes fail on the same first call; the SDK tests (test_cohort_files) cover private mode.
UNREACHABLE_MODES = ("hashed",)


# --- helpers -----------------------------------------------------------------------------------


def canon(value: int) -> str:
    return f"{value:010d}"


def spaced(value: int) -> str:
    text = canon(value)
    return f"{text[:3]} {text[3:6]} {text[6:]}"


def hyphenated(value: int) -> str:
    text = canon(value)
    return f"{text[:3]}-{text[3:6]}-{text[6:]}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@dataclass
class Numbers:
    """The synthetic numbers of the whole module: what the register holds and the cohort."""

    snapshot: list[int]
    added: list[int]
    removed: list[int]
    outsiders: list[int]

    @property
    def opted_out(self) -> set[int]:
        return (set(self.snapshot) - set(self.removed)) | set(self.added)

    @property
    def every(self) -> list[int]:
        return self.snapshot + self.added + self.outsiders

    def forbidden(self) -> list[str]:
        return [form(v) for v in self.every for form in (canon, spaced, hyphenated)]


@dataclass
class Session:
    """One temporary operator/user workspace shared by the module's tests."""

    root: Path
    env: dict[str, str]
    numbers: Numbers
    transcript: list[str] = field(default_factory=list)

    def run(self, *args: str | Path, expect: int | None = 0) -> subprocess.CompletedProcess[str]:
        return self.run_all({"only": (args, expect)})["only"]

    def run_all(
        self, commands: dict[str, tuple[Sequence[str | Path], int | None]]
    ) -> dict[str, subprocess.CompletedProcess[str]]:
        """Run independent `ndop` commands side by side; check each one's exit code."""
        started = {
            name: subprocess.Popen(
                [*NDOP, *map(str, args)],
                cwd=self.root,
                env=dict(self.env),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for name, (args, _) in commands.items()
        }
        results: dict[str, subprocess.CompletedProcess[str]] = {}
        for name, process in started.items():
            out, err = process.communicate(timeout=60)
            results[name] = subprocess.CompletedProcess(process.args, process.returncode, out, err)
        for name, result in results.items():
            self.record(result.stdout, result.stderr)
            expect = commands[name][1]
            if expect is not None:
                assert result.returncode == expect, (name, result.returncode, result.stderr)
        return results

    def record(self, *outputs: str) -> None:
        text = "\n".join(outputs)
        self.transcript.append(text)
        leaked = [n for n in self.numbers.forbidden() if n in text]
        assert not leaked, "an NHS number was printed"
        assert "Traceback" not in text


@dataclass
class Operator:
    keys: Path
    store: Path
    init: subprocess.CompletedProcess[str]
    second_init: subprocess.CompletedProcess[str]
    load: subprocess.CompletedProcess[str]
    apply: subprocess.CompletedProcess[str]
    token: str


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Session:
    root = tmp_path_factory.mktemp("cli")
    env = dict(os.environ)
    env["XDG_CACHE_HOME"] = str(root / "cache")
    env.pop("NDOP_TOKEN", None)
    env.pop("NDOP_DEBUG", None)
    values = [int(v) for v in valid_numbers(80, "999", seed=2024).tolist()]
    numbers = Numbers(
        snapshot=values[:30], added=values[30:35], removed=values[:5], outsiders=values[35:]
    )
    return Session(root, env, numbers)


@pytest.fixture(scope="module")
def operator(session: Session) -> Operator:
    root, numbers = session.root, session.numbers
    keys = root / "keys.json"
    store = root / "register.sqlite3"
    init = session.run("keys", "init", "--keys", keys)

    snapshot = root / "snapshot.dat"
    snapshot.write_text("".join(f"{canon(v)},\n" for v in numbers.snapshot) + "not a number,\n\n")
    first = session.run_all(
        {
            "second-init": (["keys", "init", "--keys", keys], None),
            "load": (
                ["register", "load", snapshot, "--store", store, "--keys", keys, "--workers", "1"],
                0,
            ),
        }
    )
    second_init, load = first["second-init"], first["load"]

    add = root / "add.dat"
    add.write_text("".join(f"{canon(v)},\n" for v in numbers.added))
    remove = root / "remove.txt"
    remove.write_text("".join(f"{spaced(v)}\n" for v in numbers.removed))
    apply = session.run(
        "register", "apply", "--add", add, "--remove", remove,
        "--store", store, "--keys", keys, "--workers", "1",
    )  # fmt: skip
    org = session.run("org", "add", "cli-tests", "--store", store)
    token = org.stdout.strip().splitlines()[-1].strip()
    assert token and " " not in token
    session.env["NDOP_TOKEN"] = token
    return Operator(keys, store, init, second_init, load, apply, token)


class Served:
    """An `ndop serve` subprocess on a free loopback port."""

    def __init__(self, session: Session, operator: Operator) -> None:
        self.session = session
        self.token = operator.token
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [
                *NDOP,
                "serve",
                "--store",
                str(operator.store),
                "--keys",
                str(operator.keys),
                "--listen",
                self.address,
                "--insecure",
            ],
            cwd=session.root,
            env=session.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def wait_until_ready(self) -> int:
        deadline = time.monotonic() + STARTUP_DEADLINE_S
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                _, err = self.process.communicate()
                raise AssertionError(f"ndop serve exited early ({self.process.returncode}): {err}")
            try:
                with Client(self.address, insecure=True, timeout=2, token=self.token) as client:
                    return client.info().version
            except NdopError as exc:
                last = exc
                time.sleep(0.1)
        raise AssertionError(f"ndop serve did not become ready: {last}")

    def terminate(self) -> tuple[int | None, str, str]:
        """SIGTERM, then wait; the return code is None if it did not stop in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            out, err = self.process.communicate(timeout=SHUTDOWN_DEADLINE_S)
            code: int | None = self.process.returncode
        except subprocess.TimeoutExpired:
            code = None
            self.process.kill()
            out, err = self.process.communicate()
        self.session.record(out, err)
        return code, out, err


@pytest.fixture(scope="module")
def served(session: Session, operator: Operator) -> Iterator[Served]:
    server = Served(session, operator)
    try:
        server.wait_until_ready()
        yield server
    finally:
        code, _, err = server.terminate()
    assert code == 0, f"ndop serve did not shut down gracefully on SIGTERM: {code} {err}"


def cohort_dat(numbers: Numbers) -> tuple[str, list[str]]:
    """.dat text (BOM, CRLF, blank line, duplicate, invalid rows) and the expected cleared rows."""
    kept_withdrawn = numbers.removed[0]  # withdrawn by `register apply`: cleared
    added = numbers.added[0]  # set by `register apply`: opted out
    still_out = numbers.snapshot[10]  # in the snapshot, never withdrawn: opted out
    a, b, c = numbers.outsiders[:3]
    bad = canon(numbers.outsiders[3])[:9] + str((numbers.outsiders[3] % 10 + 1) % 10)
    rows = [
        f"{canon(a)},",
        f"{canon(still_out)},",
        "",
        f"{spaced(b)},",
        f"{bad},",
        f"{canon(kept_withdrawn)},",
        f"{canon(a)},",
        f"{canon(added)},",
        "hello,",
        f"{hyphenated(c)},",
    ]
    text = "\ufeff" + "".join(f"{row}\r\n" for row in rows)
    cleared = [canon(a), canon(b), canon(kept_withdrawn), canon(a), canon(c)]
    return text, cleared


def read_report(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def single_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


# --- operator commands -------------------------------------------------------------------------


def test_keys_init_writes_a_0600_file_and_refuses_to_overwrite(operator: Operator) -> None:
    assert operator.init.returncode == 0
    assert stat.S_IMODE(operator.keys.stat().st_mode) == 0o600
    before = operator.keys.read_bytes()
    assert operator.second_init.returncode == 2
    assert "exist" in single_line(operator.second_init.stderr)
    assert operator.keys.read_bytes() == before


def test_register_load_and_apply_report_counts(operator: Operator) -> None:
    assert "version 1" in operator.load.stdout
    assert "30 opted out" in operator.load.stdout
    assert "1 invalid" in operator.load.stdout
    assert "line 31" in operator.load.stdout
    assert "version 2" in operator.apply.stdout
    assert "+5 -5" in operator.apply.stdout
    assert "30 opted out" in operator.apply.stdout


def test_register_info_text_and_json(session: Session, operator: Operator) -> None:
    runs = session.run_all(
        {
            "text": (["register", "info", "--store", operator.store], 0),
            "json": (["register", "info", "--store", operator.store, "--json"], 0),
        }
    )
    lines = runs["text"].stdout.strip().splitlines()
    assert lines[0].startswith("register reg-")
    assert len(lines) == 4  # register id, column titles, two versions
    table = {line.split()[0]: line.split() for line in lines[2:]}
    assert set(table) == {"1", "2"}
    assert "snapshot" in table["1"]

    info = json.loads(runs["json"].stdout)
    assert info["register_id"] == lines[0].split()[1]
    by_version = {v["version"]: v for v in info["versions"]}
    assert sorted(by_version) == [1, 2]
    assert [by_version[n]["count"] for n in (1, 2)] == [30, 30]
    assert (by_version[1]["added"], by_version[1]["removed"]) == (30, 0)
    assert (by_version[2]["added"], by_version[2]["removed"]) == (5, 5)


# --- ndop check --------------------------------------------------------------------------------


def check_command(cohort: Path, address: str, out: Path, *extra: str | Path) -> list[str | Path]:
    return ["check", cohort, "--server", address, "--out", out, "--insecure", *PURPOSE, *extra]


def test_check_dat_file_in_both_modes(session: Session, served: Served) -> None:
    text, cleared = cohort_dat(session.numbers)
    commands: dict[str, tuple[Sequence[str | Path], int | None]] = {}
    for mode in ("hashed", "private"):
        work = session.root / f"dat-{mode}"
        work.mkdir()
        cohort = work / "cohort.dat"
        cohort.write_bytes(text.encode("utf-8"))
        commands[mode] = (
            check_command(
                cohort, served.address, work / "cleared.dat",
                "--mode", mode, "--report", work / "report.json",
            ),
            0,
        )  # fmt: skip
    runs = session.run_all(commands)

    outputs: dict[str, bytes] = {}
    for mode in ("hashed", "private"):
        work = session.root / f"dat-{mode}"
        outputs[mode] = (work / "cleared.dat").read_bytes()
        assert outputs[mode].removeprefix("\ufeff".encode()) == (
            "".join(f"{n},\r\n" for n in cleared).encode()
        )
        report_path = work / "report.json"
        report = read_report(report_path)
        assert report["mode"] == mode
        assert report["register"]["version"] == 2
        assert report["register"]["count"] == 30
        assert report["register_national_count"] == 30
        assert report["rows"] == 9
        assert report["valid"] == 7
        assert [(r["line"], r["reason"]) for r in report["invalid"]["rows"]] == [
            (5, "check digit does not match"),
            (9, "contains characters other than digits, spaces and hyphens"),
        ]
        assert report["duplicates"] == 1
        assert report["opted_out"] == 2
        assert report["cleared"] == 5
        assert report["cohort_opt_out_rate"] == round(2 / 6, 6)
        assert "timings_s" in report
        session.record(report_path.read_text())
        assert "version 2" in runs[mode].stdout
        names = {p.name for p in work.iterdir()}
        assert {"cleared.dat", "cohort.dat", "report.json"} <= names
        extras = names - {"cleared.dat", "cohort.dat", "report.json"}
        assert all(name.endswith(".receipt.json") for name in extras), extras
        for name in extras:
            session.record((work / name).read_text())
    assert outputs["hashed"] == outputs["private"]


def test_check_csv_with_column_in_both_modes(session: Session, served: Served) -> None:
    n = session.numbers
    a, b = n.outsiders[10:12]
    out_1, out_2 = n.snapshot[20], n.added[1]
    text = (
        "id,Patient NHS,notes\n"
        f'1,"{spaced(a)}","one, two"\n'
        f"2,{canon(out_1)},x\n"
        f'3,{hyphenated(b)},"say ""hi"""\n'
        f"4,{canon(out_2)},y\n"
        "5,nope,z\n"
    )
    work = session.root / "csv"
    work.mkdir()
    cohort = work / "cohort.csv"
    cohort.write_text(text)
    commands: dict[str, tuple[Sequence[str | Path], int | None]] = {
        mode: (
            check_command(
                cohort, served.address, work / f"cleared-{mode}.csv", "--mode", mode,
                "--report", work / f"report-{mode}.json", "--column", "Patient NHS",
            ),
            0,
        )
        for mode in ("hashed", "private")
    }  # fmt: skip
    # without --column the header has no recognisable NHS number column: bad usage
    commands["no-column"] = (check_command(cohort, served.address, work / "x.csv"), 2)
    runs = session.run_all(commands)

    outputs = {}
    for mode in ("hashed", "private"):
        outputs[mode] = (work / f"cleared-{mode}.csv").read_bytes()
        report = read_report(work / f"report-{mode}.json")
        assert report["mode"] == mode
        assert report["input"]["column"] == "Patient NHS"
        counts = (report["rows"], report["valid"], report["opted_out"], report["cleared"])
        assert counts == (5, 4, 2, 2)
        assert [r["line"] for r in report["invalid"]["rows"]] == [6]
    assert outputs["hashed"] == outputs["private"]
    rows = list(csv.reader(io.StringIO(outputs["hashed"].decode(), newline="")))
    assert rows == [
        ["id", "Patient NHS", "notes"],
        ["1", spaced(a), "one, two"],
        ["3", hyphenated(b), 'say "hi"'],
    ]
    assert "--column" in single_line(runs["no-column"].stderr)
    assert not (work / "x.csv").exists()


def test_check_text_file_keeps_lines_and_default_mode_is_private(
    session: Session, served: Served
) -> None:
    n = session.numbers
    a, b = n.outsiders[20:22]
    lines = [spaced(a), canon(n.snapshot[25]), "", f"  {hyphenated(b)}", spaced(n.removed[1])]
    work = session.root / "txt"
    work.mkdir()
    cohort = work / "cohort.txt"
    cohort.write_text("\n".join(lines) + "\n")
    session.run_all(
        {
            "hashed": (
                check_command(cohort, served.address, work / "hashed.txt", "--mode", "hashed"),
                0,
            ),
            "default": (
                check_command(
                    cohort, served.address, work / "default.txt",
                    "--report", work / "default.json",
                ),
                0,
            ),
        }
    )  # fmt: skip
    hashed = (work / "hashed.txt").read_text()
    assert hashed == f"{spaced(a)}\n  {hyphenated(b)}\n{spaced(n.removed[1])}\n"
    assert (work / "default.txt").read_text() == hashed
    report = read_report(work / "default.json")
    assert report["mode"] == "private"
    assert report["input"]["format"] == "text"
    assert (report["rows"], report["blank_lines"], report["opted_out"]) == (4, 1, 1)


# --- failures ----------------------------------------------------------------------------------


def test_refused_token_exits_3_and_unwritable_report_exits_2(
    session: Session, served: Served
) -> None:
    work = session.root / "refused"
    work.mkdir()
    cohort = work / "cohort.dat"
    cohort.write_text(f"{canon(session.numbers.outsiders[42])},\n")
    runs = session.run_all(
        {
            "bad-token": (
                check_command(
                    cohort, served.address, work / "refused.dat",
                    "--mode", "hashed", "--token", "ndop_not-a-real-token",
                ),
                None,
            ),
            "report-in-missing-dir": (
                check_command(
                    cohort, served.address, work / "cleared.dat",
                    "--mode", "hashed", "--report", work / "no-such-dir" / "report.json",
                ),
                None,
            ),
        }
    )  # fmt: skip
    refused = runs["bad-token"]
    assert refused.returncode == 3, refused.stderr
    assert single_line(refused.stderr).startswith("ndop: ")
    assert not (work / "refused.dat").exists()

    # an output path that cannot be written is bad usage (2), told in one sentence naming it
    unwritable = runs["report-in-missing-dir"]
    line = single_line(unwritable.stderr)
    assert unwritable.returncode == 2, line
    assert "internal error" not in line
    assert "report.json" in line


@dataclass
class Failures:
    root: Path
    runs: dict[str, subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def failures(session: Session, operator: Operator) -> Failures:
    """Every failure case, run side by side once for the module."""
    root = session.root / "failures"
    root.mkdir()
    cohort = root / "cohort.dat"
    cohort.write_text("".join(f"{canon(v)},\n" for v in session.numbers.outsiders[:5]))
    for mode in UNREACHABLE_MODES:
        (root / mode).mkdir()
    closed = f"127.0.0.1:{free_port()}"
    commands: dict[str, tuple[Sequence[str | Path], int | None]] = {
        f"unreachable-{mode}": (
            check_command(
                cohort, closed, root / mode / "cleared.dat",
                "--mode", mode, "--report", root / mode / "report.json",
            ),
            None,
        )
        for mode in UNREACHABLE_MODES
    }  # fmt: skip
    commands.update(
        {
            "missing-input": (
                check_command(root / "no-such-cohort.dat", closed, root / "never.dat"),
                None,
            ),
            "out-is-input": (check_command(cohort, closed, cohort), None),
            "serve-without-tls": (
                [
                    "serve", "--store", operator.store, "--keys", operator.keys,
                    "--listen", f"127.0.0.1:{free_port()}",
                ],
                None,
            ),
            "usage-no-args": ([], None),
            "usage-check-no-server": (
                ["check", cohort, "--out", root / "x.dat", *PURPOSE],
                None,
            ),
            "usage-check-bad-mode": (
                check_command(cohort, closed, root / "x.dat", "--mode", "plain"),
                None,
            ),
        }
    )  # fmt: skip
    before = cohort.read_bytes()
    runs = session.run_all(commands)
    assert cohort.read_bytes() == before
    return Failures(root, runs)


@pytest.mark.parametrize("mode", UNREACHABLE_MODES)
def test_unreachable_server_exits_3_with_one_line(failures: Failures, mode: str) -> None:
    result = failures.runs[f"unreachable-{mode}"]
    assert result.returncode == 3, result.stderr
    assert single_line(result.stderr).startswith("ndop: ")
    assert result.stdout == ""
    assert sorted(p.name for p in (failures.root / mode).iterdir()) == []


def test_missing_input_exits_2(failures: Failures) -> None:
    result = failures.runs["missing-input"]
    assert result.returncode == 2, result.stderr
    line = single_line(result.stderr)
    assert line.startswith("ndop: ")
    assert "no-such-cohort.dat" in line
    assert not (failures.root / "never.dat").exists()


@pytest.mark.parametrize("case", ["out-is-input"])
def test_unusable_options_exit_2_with_one_line(failures: Failures, case: str) -> None:
    result = failures.runs[case]
    assert result.returncode == 2, result.stderr
    assert single_line(result.stderr).startswith("ndop: ")


def test_serve_without_insecure_or_tls_exits_2_with_one_sentence(failures: Failures) -> None:
    result = failures.runs["serve-without-tls"]
    assert result.returncode == 2, result.stderr
    line = single_line(result.stderr)
    assert line.startswith("ndop: ")
    assert "--insecure" in line or "TLS" in line or "tls" in line


@pytest.mark.parametrize(
    "case",
    ["usage-no-args", "usage-check-no-server", "usage-check-bad-mode"],
)
def test_bad_usage_exits_2(failures: Failures, case: str) -> None:
    result = failures.runs[case]
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("ndop")
    assert result.stdout == ""
    assert not (failures.root / "x.dat").exists()


def test_serve_stops_gracefully_on_sigterm(session: Session, operator: Operator) -> None:
    server = Served(session, operator)
    try:
        assert server.wait_until_ready() == 2
    finally:
        code, _, err = server.terminate()
    assert code == 0, err
    assert "Traceback" not in err


def test_whole_transcript_never_shows_a_number(session: Session) -> None:
    """Every output above was checked as it was produced; this re-checks the whole run."""
    assert session.transcript
    everything = "\n".join(session.transcript)
    assert not [n for n in session.numbers.forbidden() if n in everything]


def test_the_leak_check_itself_catches_numbers(session: Session) -> None:
    """The no-number check above must be able to fail: feed it each form of a cohort number."""
    probe = Session(session.root, session.env, session.numbers)
    value = session.numbers.outsiders[0]
    for form in (canon(value), spaced(value), hyphenated(value)):
        with pytest.raises(AssertionError):
            probe.record(f"summary line mentioning {form} by mistake")
    probe.record("rows 9: valid 7, invalid 2, duplicates 1")
