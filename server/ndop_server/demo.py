"""`ndop demo`: the whole loop on synthetic 999-range data, with nothing to set up.

Makes register keys, loads a snapshot, adds an organisation, starts a server on a loopback
port, checks a messy cohort file in private mode (and hashed mode), applies a change set that
the running server picks up, verifies the signed receipt, shows the audit log and prints the
report. The operator's steps run here; the research organisation's run as the real
`ndop check` command in a child process, as a researcher would type it (the server never
imports the client SDK).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Final

import numpy as np

from ndop_core import receipts
from ndop_server import keys as keyfile
from ndop_server.accounts import Accounts
from ndop_server.errors import ConfigurationError
from ndop_server.logs import configure
from ndop_server.register import Publisher
from ndop_server.register_view import RegisterHolder
from ndop_server.server import start_server
from ndop_server.store import Store
from ndop_server.synthetic import hyphenated, spaced, valid_numbers

REGISTER_SIZE: Final = 20_000
COHORT_SIZE: Final = 5_000


def write_demo_files(directory: Path, seed: int = 7) -> tuple[Path, Path, Path]:
    """(register snapshot, cohort .dat, change set) in `directory`."""
    numbers = valid_numbers(REGISTER_SIZE + COHORT_SIZE, "999", seed)
    register = numbers[:REGISTER_SIZE]
    rng = np.random.default_rng(seed)
    in_register = rng.choice(register, size=COHORT_SIZE // 20, replace=False)
    cohort = np.concatenate(
        [numbers[REGISTER_SIZE:][: COHORT_SIZE - len(in_register)], in_register]
    )
    rng.shuffle(cohort)

    snapshot = directory / "register-snapshot.dat"
    snapshot.write_text("".join(f"{value:010d},\r\n" for value in register.tolist()))

    lines = []
    for i, value in enumerate(cohort.tolist()):
        form = i % 4
        text = f"{value:010d}," if form < 2 else spaced(value) if form == 2 else hyphenated(value)
        lines.append(text)
    # What real files hold: duplicates, a blank line, typos, wrong lengths, letters.
    lines[10:10] = [lines[3], "", "9990000019,", "99900000,", "999000001X,", "99900000181,"]
    cohort_file = directory / "cohort.dat"
    cohort_file.write_bytes(("\ufeff" + "\r\n".join(lines) + "\r\n").encode("utf-8"))

    changes = directory / "withdrawn.dat"
    changes.write_text("".join(f"{value:010d},\n" for value in in_register[:20].tolist()))
    return snapshot, cohort_file, changes


MODES: Final = ("private", "hashed")


def run_demo(directory: Path, modes: str) -> int:
    configure("console", level="warning")
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    keys_path = directory / "register-keys.json"
    store_path = directory / "register.sqlite3"
    snapshot, cohort, withdrawn = write_demo_files(directory)
    steps = iter(range(1, 100))

    print(f"{next(steps)}. ndop keys init --keys {keys_path}")
    keys = keyfile.write_new(keys_path)
    print(
        f"{next(steps)}. ndop register load {snapshot.name}  ({REGISTER_SIZE:,} synthetic opt-outs)"
    )
    with Store(store_path, create=True) as store:
        record = Publisher(store, keys).load_snapshot(snapshot).record
    print(f"   published version {record.version}: {record.count:,} entries")
    print(f"{next(steps)}. ndop org add demo-research-org  (its API token is printed once)")
    with Accounts(store_path) as accounts:
        token = accounts.add("demo-research-org")

    running = start_server(
        store_path, keys, "127.0.0.1:0", tls=None, insecure=True, poll_seconds=0.2
    )
    server = f"127.0.0.1:{running.port}"
    print(f"{next(steps)}. ndop serve --listen {server} --insecure  (loopback only, for the demo)")
    chosen = [mode for mode in MODES if modes in (mode, "both")]
    researcher = _Researcher(directory, server, token)
    try:
        for mode in chosen:
            print(
                f"{next(steps)}. ndop check {cohort.name} --mode {mode} --purpose research "
                f"--out cleared-{mode}.dat --report report-{mode}.json"
            )
            researcher.check(cohort, mode, mode)
        if len(chosen) == 2:
            same = (directory / "cleared-private.dat").read_bytes() == (
                directory / "cleared-hashed.dat"
            ).read_bytes()
            print(f"   private and hashed cleared files identical: {same}")

        print(f"{next(steps)}. ndop register apply --remove {withdrawn.name}  (20 withdrawn)")
        with Store(store_path) as store:
            record = Publisher(store, keys).apply_changes(None, withdrawn).record
        _wait_for_version(running.holder, record.version)
        print(f"   the running server now answers from version {record.version}")
        print(f"{next(steps)}. ndop check {cohort.name} again")
        researcher.check(cohort, chosen[0], "after-change")

        receipt = directory / f"report-{chosen[0]}.receipt.json"
        print(f"{next(steps)}. ndop receipt verify {receipt.name} --public-key $(ndop keys public)")
        statement = receipts.verify_file(receipt, keys.signing_public_key)
        print(
            f"   verified: {statement['organisation']} checked {statement['items_checked']:,} "
            f"numbers for {statement['purpose']} against version {statement['register_version']}"
        )
        print(f"{next(steps)}. ndop audit --store {store_path}")
        with Accounts(store_path) as accounts:
            for entry in accounts.audit():
                print(
                    f"   {entry.at}  {entry.organisation}  {entry.mode:<7}  "
                    f"{entry.items_checked:,} checked, version {entry.register_version}, "
                    f"{entry.outcome}"
                )
        shown = json.loads((directory / f"report-{chosen[0]}.json").read_text())
        shown["invalid"]["rows"] = shown["invalid"]["rows"][:5]
        print(f"\nreport-{chosen[0]}.json:")
        print(json.dumps(shown, indent=2))
        print(f"\nall files are in {directory}/")
    finally:
        running.stop(grace=1)
    return 0


def _wait_for_version(holder: RegisterHolder, version: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = holder.current
        if current is not None and current.version >= version:
            return
        time.sleep(0.05)
    raise ConfigurationError(f"the demo server did not pick up version {version} in time")


class _Researcher:
    """Runs `ndop check` as a research organisation would, with its token in the environment."""

    def __init__(self, directory: Path, server: str, token: str) -> None:
        self._directory = directory
        self._server = server
        self._env = {**os.environ, "NDOP_TOKEN": token}

    def check(self, cohort: Path, mode: str, name: str) -> None:
        command = [
            sys.executable,
            "-m",
            "ndop_client",
            "check",
            str(cohort),
            "--server",
            self._server,
            "--insecure",
            "--mode",
            mode,
            "--purpose",
            "research",
            "--out",
            str(self._directory / f"cleared-{name}.dat"),
            "--report",
            str(self._directory / f"report-{name}.json"),
        ]
        done = subprocess.run(command, env=self._env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ConfigurationError(
                f"the demo's ndop check failed (exit {done.returncode}): {done.stderr.strip()}"
            )
        for line in done.stdout.splitlines():
            print(f"   {line}")
