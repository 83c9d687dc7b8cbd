"""The privacy test: a whole session against a real `ndop serve` subprocess (JSON logs), then a
search of everything that came out of it for the identifiers that went in.

The session: `ndop register load`, `ndop check` in both modes on a cohort of known synthetic
numbers (some opted out, written every way people write them, with duplicates and rows that
are not valid numbers), a check over quota, a check with a wrong token, malformed input files,
and bad requests through the raw generated stubs built from the cohort's own digests and
blinded elements (wrong lengths, the identity, non-canonical encodings, oversize batches, bad
purposes, over quota).

Searched: every server log line, every client stdout and stderr, every error reply's details,
the reports, the receipts, the audit log, the Prometheus metrics and the status page.
Forbidden: every register and cohort number (canonical, spaced, hyphenated), every digest,
blinded element, evaluated element and OPRF output (hex either case, base64 at any alignment,
raw bytes), and the organisations' tokens.
A self-check proves the search finds what it looks for.

Only synthetic 999-range numbers are used.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from ndop_client import Client, NdopError
from ndop_core.crypto import oprf
from ndop_core.hashing import DIGEST_SIZE, Hasher
from ndop_core.proto import ndop_pb2, ndop_pb2_grpc
from ndop_server import keys as keyfile
from ndop_server.matching import MAX_BATCH_ITEMS
from ndop_server.synthetic import hyphenated, spaced, valid_numbers
from ndop_server.tokens import Tokenizer

NDOP = [sys.executable, "-m", "ndop_client.cli.main"]
TIMEOUT = 30.0
STARTUP_DEADLINE_S = 30.0
# p = 2^255 - 19, little-endian: a field element that is not reduced, so never canonical.
FIELD_PRIME = (2**255 - 19).to_bytes(32, "little")
SAMPLE = 60  # numbers per cohort group; kept small so the search stays quick


# --- the search ----------------------------------------------------------------------------------


def canon(value: int) -> str:
    return f"{value:010d}"


def base64_fragments(item: bytes) -> set[str]:
    """Base64 text that encodes `item` wherever it sits in a longer encoded payload: for each
    of the three alignments, the run of characters that depends on `item` bytes alone."""
    fragments = set()
    for alphabet in (base64.b64encode, base64.urlsafe_b64encode):
        for offset in range(3):
            encoded = alphabet(b"\x00" * offset + item).decode("ascii")
            start = 4 if offset else 0  # the first quantum mixes in the padding bytes
            usable = (offset + len(item)) // 3 * 4  # drop the last, possibly padded, quantum
            fragment = encoded[start:usable]
            if len(fragment) >= 16:
                fragments.add(fragment[:24])
    return fragments


@dataclass
class Forbidden:
    """What must never appear, each with a label saying what it is."""

    texts: dict[str, str] = field(default_factory=dict)
    raw: dict[bytes, str] = field(default_factory=dict)

    def number(self, value: int, label: str) -> None:
        for form in (canon(value), spaced(value), hyphenated(value)):
            self.texts[form] = f"{label} {form}"

    def item(self, data: bytes, label: str) -> None:
        """A digest or group element: its hex (both cases, whole or its first 8 bytes), its
        base64 at every alignment, and its raw bytes."""
        assert len(data) >= 16
        name = f"{label} {data[:4].hex()}..."
        for text in (data.hex(), data[:8].hex()):
            self.texts[text] = name
            self.texts[text.upper()] = name
        for fragment in base64_fragments(data):
            self.texts[fragment] = name
        self.raw[data] = name
        self.raw[data[:12]] = name

    def secret(self, value: str, label: str) -> None:
        self.texts[value] = label
        self.texts[value.removeprefix("ndop_")] = label

    def find(self, content: str | bytes) -> list[str]:
        if isinstance(content, bytes):
            text = content.decode("utf-8", errors="replace")
            data = content
        else:
            text = content
            data = content.encode("utf-8", errors="surrogateescape")
        found = [label for needle, label in self.texts.items() if needle in text]
        found += [label for needle, label in self.raw.items() if needle in data]
        return sorted(set(found))


# --- the session ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@dataclass
class Evidence:
    """Everything the session produced that a person or a log collector could see."""

    root: Path
    forbidden: Forbidden
    numbers_only: Forbidden
    tokens: dict[str, str]
    server_log: bytes = b""
    outputs: dict[str, str] = field(default_factory=dict)
    """client stdout and stderr, by command"""
    operator_outputs: dict[str, str] = field(default_factory=dict)
    """operator commands whose job is to print a token (org add)"""
    details: dict[str, str] = field(default_factory=dict)
    """error replies: details strings and the SDK's messages"""
    files: dict[str, bytes] = field(default_factory=dict)
    """reports, receipts, audit log"""
    codes: dict[str, grpc.StatusCode] = field(default_factory=dict)
    exit_codes: dict[str, int] = field(default_factory=dict)
    store: bytes = b""


class Session:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.env = dict(os.environ)
        self.env.pop("NDOP_TOKEN", None)
        self.env.pop("NDOP_DEBUG", None)
        self.env["XDG_CACHE_HOME"] = str(root / "xdg-cache")

    def run(self, *args: str | Path, token: str | None = None) -> subprocess.CompletedProcess[str]:
        env = dict(self.env)
        if token is not None:
            env["NDOP_TOKEN"] = token
        return subprocess.run(
            [*NDOP, *map(str, args)],
            cwd=self.root,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


class Rpc:
    def __init__(self, channel: grpc.Channel, token: str) -> None:
        self.stub = ndop_pb2_grpc.OptOutRegisterStub(channel)
        self.metadata = (("authorization", f"Bearer {token}"),)

    def call(self, method: str, requests: list[Any]) -> tuple[list[Any], grpc.Call | None]:
        call = getattr(self.stub, method)(iter(requests), metadata=self.metadata, timeout=TIMEOUT)
        received: list[Any] = []
        try:
            for response in call:
                received.append(response)
        except grpc.RpcError as exc:
            assert isinstance(exc, grpc.Call)
            return received, exc
        return received, None


def _hashed(purpose: str, batches: list[bytes], expected: int = 0) -> list[Any]:
    context = ndop_pb2.CheckContext(
        purpose=purpose, request_id=str(uuid.uuid4()), expected_items=expected
    )
    return [ndop_pb2.HashedCheckRequest(context=context)] + [
        ndop_pb2.HashedCheckRequest(batch_id=i, digests=d) for i, d in enumerate(batches)
    ]


def _evaluate(purpose: str, batches: list[bytes]) -> list[Any]:
    context = ndop_pb2.CheckContext(
        purpose=purpose, request_id=str(uuid.uuid4()), register_version=1
    )
    return [ndop_pb2.EvaluateRequest(context=context)] + [
        ndop_pb2.EvaluateRequest(batch_id=i, blinded_elements=b) for i, b in enumerate(batches)
    ]


def _bad_requests(
    evidence: Evidence,
    address: str,
    tokens: dict[str, str],
    digests: list[bytes],
    elements: list[bytes],
) -> None:
    """Raw-stub calls built from the cohort's own digests and blinded elements."""
    all_digests = b"".join(digests)
    valid = elements[0]
    top_bit = valid[:31] + bytes([valid[31] | 0x80])
    evidence.forbidden.item(top_bit, "malformed element")
    with grpc.insecure_channel(
        address,
        options=[("grpc.max_send_message_length", -1), ("grpc.enable_retries", 0)],
    ) as channel:
        rpc = Rpc(channel, tokens["leak-org"])
        quota = Rpc(channel, tokens["tiny-quota"])
        wrong = Rpc(channel, "ndop_" + "x" * 43)
        cases: dict[str, tuple[Rpc, str, list[Any]]] = {
            "digests-33-bytes": (rpc, "CheckHashed", _hashed("research", [all_digests[:33]])),
            "digests-31-bytes": (rpc, "CheckHashed", _hashed("research", [all_digests[:31]])),
            "digests-65-bytes-after-good": (
                rpc,
                "CheckHashed",
                _hashed("research", [all_digests[:320], all_digests[32:97]]),
            ),
            "digests-oversize-batch": (
                rpc,
                "CheckHashed",
                _hashed(
                    "research",
                    [
                        (all_digests * (MAX_BATCH_ITEMS // len(digests) + 2))[
                            : (MAX_BATCH_ITEMS + 1) * DIGEST_SIZE
                        ]
                    ],
                ),
            ),
            "digests-bad-purpose": (rpc, "CheckHashed", _hashed("marketing", [all_digests])),
            "digests-no-purpose": (rpc, "CheckHashed", _hashed("", [all_digests])),
            "digests-over-quota-up-front": (
                quota,
                "CheckHashed",
                _hashed("research", [all_digests], expected=len(digests)),
            ),
            "digests-over-quota-crossing": (
                quota,
                "CheckHashed",
                _hashed("research", [all_digests[: 5 * 32], all_digests[5 * 32 :]]),
            ),
            "digests-wrong-token": (wrong, "CheckHashed", _hashed("research", [all_digests])),
            "elements-31-bytes": (rpc, "Evaluate", _evaluate("research", [valid[:31]])),
            "elements-33-bytes": (rpc, "Evaluate", _evaluate("research", [valid + valid[:1]])),
            "elements-identity-inside": (
                rpc,
                "Evaluate",
                _evaluate("research", [b"".join(elements[:3]) + bytes(32) + elements[3]]),
            ),
            "elements-non-canonical": (
                rpc,
                "Evaluate",
                _evaluate("research", [elements[1] + FIELD_PRIME + elements[2]]),
            ),
            "elements-top-bit": (rpc, "Evaluate", _evaluate("research", [elements[4] + top_bit])),
            "elements-oversize-batch": (
                rpc,
                "Evaluate",
                _evaluate(
                    "research",
                    [
                        (b"".join(elements) * (MAX_BATCH_ITEMS // len(elements) + 2))[
                            : (MAX_BATCH_ITEMS + 1) * 32
                        ]
                    ],
                ),
            ),
            "elements-bad-purpose": (rpc, "Evaluate", _evaluate("Research", [b"".join(elements)])),
            "elements-over-quota": (
                quota,
                "Evaluate",
                _evaluate("research", [b"".join(elements)] * 3),
            ),
        }
        for name, (caller, method, requests) in cases.items():
            received, error = caller.call(method, requests)
            assert error is not None, f"{name} was answered"
            evidence.codes[name] = error.code()
            evidence.details[name] = error.details() or ""
            evidence.details[f"{name} (as raised)"] = str(error)
            assert not any(r.HasField("summary") for r in received), name

        # a good private-mode call: its evaluated elements are forbidden in logs as well
        received, error = rpc.call("Evaluate", _evaluate("research", [b"".join(elements)]))
        assert error is None
        evaluated = received[0].batch.evaluated_elements
        for start in range(0, len(evaluated), 32):
            evidence.forbidden.item(evaluated[start : start + 32], "evaluated element")
        assert received[-1].HasField("summary")


def _wait_until_ready(process: subprocess.Popen[bytes], address: str, token: str) -> None:
    deadline = time.monotonic() + STARTUP_DEADLINE_S
    last: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"ndop serve exited early ({process.returncode})")
        try:
            with Client(address, insecure=True, token=token, timeout=2) as client:
                client.info()
                return
        except NdopError as exc:
            last = exc
            time.sleep(0.1)
    raise AssertionError(f"ndop serve did not become ready: {last}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def evidence(tmp_path_factory: pytest.TempPathFactory) -> Evidence:
    root = tmp_path_factory.mktemp("privacy")
    session = Session(root)
    numbers = [int(v) for v in valid_numbers(4 * SAMPLE, "999", seed=90210).tolist()]
    register_only = numbers[:SAMPLE]  # opted out, not in the cohort
    cohort_opted = numbers[SAMPLE : 2 * SAMPLE]  # opted out and in the cohort
    cohort_clear = numbers[2 * SAMPLE : 3 * SAMPLE]  # in the cohort, not opted out
    near_misses = numbers[3 * SAMPLE :]  # written with a wrong check digit: invalid rows
    cohort = cohort_opted + cohort_clear
    register_numbers = register_only + cohort_opted

    keys_path = root / "keys.json"
    store = root / "register.sqlite3"
    keys = keyfile.write_new(keys_path)
    forbidden = Forbidden()
    for value in register_numbers:
        forbidden.number(value, "register number")
    for value in cohort_clear:
        forbidden.number(value, "cohort number")
    invalid_rows = [canon(v)[:9] + str((v % 10 + 1) % 10) for v in near_misses]
    for row in invalid_rows:
        forbidden.texts[row] = f"invalid cohort row {row}"
        forbidden.texts[f"{row[:3]} {row[3:6]} {row[6:]}"] = f"invalid cohort row {row}"
    numbers_only = Forbidden(dict(forbidden.texts), dict(forbidden.raw))

    hasher = Hasher(keys.salt)
    tokenizer = Tokenizer(keys.store_key)
    digests = [hasher.digest(canon(v)) for v in sorted(cohort)]
    for value in register_numbers + cohort_clear:
        digest = hasher.digest(canon(value))
        forbidden.item(digest, "digest")
        forbidden.item(tokenizer.tokens(digest, DIGEST_SIZE), "store token")
        forbidden.item(oprf.evaluate_input(keys.oprf_key, canon(value).encode()), "OPRF output")
    elements = [oprf.blind(canon(v).encode())[1] for v in cohort[:40]]
    for element in elements:
        forbidden.item(element, "blinded element")

    evidence = Evidence(root, forbidden, numbers_only, {})

    def record(
        name: str, result: subprocess.CompletedProcess[str], *, operator: bool = False
    ) -> None:
        evidence.exit_codes[name] = result.returncode
        target = evidence.operator_outputs if operator else evidence.outputs
        target[f"{name} stdout"] = result.stdout
        target[f"{name} stderr"] = result.stderr

    snapshot = root / "snapshot.dat"
    snapshot.write_text("".join(f"{canon(v)},\n" for v in register_numbers))
    record(
        "register load",
        session.run(
            "register",
            "load",
            snapshot,
            "--store",
            store,
            "--keys",
            keys_path,
            "--workers",
            "2",
            "--log-format",
            "json",
        ),
    )
    assert evidence.exit_codes["register load"] == 0, evidence.outputs
    for name, quota in (("leak-org", "1000000"), ("tiny-quota", "20")):
        added = session.run("org", "add", name, "--store", store, "--daily-quota", quota)
        record(f"org add {name}", added, operator=True)
        evidence.tokens[name] = added.stdout.strip().splitlines()[-1].strip()
    for name, token in evidence.tokens.items():
        forbidden.secret(token, f"token of {name}")

    # cohort files: .dat with BOM, CRLF, every written form, duplicates, invalid rows
    rows = [f"{canon(v)}," for v in cohort_opted[:20]]
    rows += [f"{spaced(v)}," for v in cohort_opted[20:40]]
    rows += [f"{hyphenated(v)}," for v in cohort_opted[40:]]
    rows += ["", *(f"{canon(v)}," for v in cohort_clear), f"{canon(cohort_clear[0])},"]
    rows += [f"{row}," for row in invalid_rows] + ["hello,", "12345,"]
    dat = root / "cohort.dat"
    dat.write_text("\ufeff" + "".join(f"{row}\r\n" for row in rows), newline="")
    csv_file = root / "cohort.csv"
    csv_file.write_text(
        "patient_ref,NHS Number,age\n"
        + "".join(f"ref-{i},{spaced(v)},{40 + i % 30}\n" for i, v in enumerate(cohort))
        + "".join(f"bad-{i},{row},50\n" for i, row in enumerate(invalid_rows))
    )

    port = free_port()
    address = f"127.0.0.1:{port}"
    monitoring = f"http://127.0.0.1:{free_port()}"
    log_path = root / "serve.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [
                *NDOP,
                "serve",
                "--store",
                str(store),
                "--keys",
                str(keys_path),
                "--listen",
                address,
                "--insecure",
                "--metrics-listen",
                monitoring.removeprefix("http://"),
                "--log-format",
                "json",
            ],
            cwd=root,
            env=session.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_until_ready(server, address, evidence.tokens["leak-org"])
            leak_token = evidence.tokens["leak-org"]
            for mode, source in (("hashed", dat), ("private", csv_file)):
                report = root / f"report-{mode}.json"
                result = session.run(
                    "check",
                    source,
                    "--server",
                    address,
                    "--insecure",
                    "--out",
                    root / f"cleared-{mode}{source.suffix}",
                    "--report",
                    report,
                    "--mode",
                    mode,
                    "--purpose",
                    "research",
                    "--workers",
                    "1",
                    token=leak_token,
                )
                record(f"check {mode}", result)
                evidence.files[f"report {mode}"] = report.read_bytes()
                evidence.files[f"receipt {mode}"] = (
                    root / f"report-{mode}.receipt.json"
                ).read_bytes()
            cli_failures: dict[str, tuple[list[str | Path], str]] = {
                "check over quota": (
                    [dat, "--mode", "hashed", "--purpose", "research"],
                    evidence.tokens["tiny-quota"],
                ),
                "check private over quota": (
                    [dat, "--mode", "private", "--purpose", "research"],
                    evidence.tokens["tiny-quota"],
                ),
                "check wrong token": (
                    [
                        dat,
                        "--mode",
                        "hashed",
                        "--purpose",
                        "research",
                        "--token",
                        "ndop_" + "y" * 43,
                    ],
                    leak_token,
                ),
                "check csv missing column": (
                    [csv_file, "--column", "nhs_no", "--purpose", "research"],
                    leak_token,
                ),
                "check missing file": ([root / "nope.dat", "--purpose", "research"], leak_token),
            }
            garbage = root / "garbage.txt"
            garbage.write_bytes(b"\xff\xfe" + canon(cohort[0]).encode() + b"\x00\x81\n")
            cli_failures["check undecodable file"] = (
                [garbage, "--purpose", "research"],
                leak_token,
            )
            only_bad = root / "only-bad.dat"
            only_bad.write_text("".join(f"{row},\n" for row in invalid_rows))
            cli_failures["check only invalid rows"] = (
                [
                    only_bad,
                    "--mode",
                    "hashed",
                    "--purpose",
                    "research",
                    "--report",
                    root / "report-only-bad.json",
                ],
                leak_token,
            )
            for name, (args, token) in cli_failures.items():
                result = session.run(
                    "check",
                    args[0],
                    "--server",
                    address,
                    "--insecure",
                    "--out",
                    root / f"out-{len(evidence.outputs)}.txt",
                    *args[1:],
                    token=token,
                )
                record(name, result)
            if (root / "report-only-bad.json").exists():
                evidence.files["report only invalid rows"] = (
                    root / "report-only-bad.json"
                ).read_bytes()

            # SDK errors, as a caller would log them
            with Client(address, insecure=True, token=evidence.tokens["tiny-quota"]) as sdk:
                try:
                    sdk.check([canon(v) for v in cohort], mode="hashed", purpose="research")
                except NdopError as exc:
                    evidence.details["sdk over quota"] = str(exc)
            _bad_requests(evidence, address, evidence.tokens, digests, elements)
            record("audit", session.run("audit", "--store", store))
            audit_json = session.run("audit", "--store", store, "--json")
            record("audit json", audit_json)
            evidence.files["audit json"] = audit_json.stdout.encode()
            record("register info", session.run("register", "info", "--store", store))
            record("org list", session.run("org", "list", "--store", store, "--json"))
            for page in ("metrics", "status"):
                with urllib.request.urlopen(f"{monitoring}/{page}", timeout=TIMEOUT) as reply:
                    evidence.files[f"{page} page"] = reply.read()
        finally:
            _stop(server)
    evidence.exit_codes["serve"] = server.returncode
    evidence.server_log = log_path.read_bytes()
    evidence.store = b"".join(
        path.read_bytes() for path in root.iterdir() if path.name.startswith(store.name)
    )
    return evidence


def _assert_clean(forbidden: Forbidden, sources: dict[str, str] | dict[str, bytes]) -> None:
    leaks = {name: found for name, content in sources.items() if (found := forbidden.find(content))}
    assert not leaks, f"identifiers leaked: { {k: v[:5] for k, v in leaks.items()} }"


# --- the search finds what it looks for ----------------------------------------------------------


def test_search_finds_planted_identifiers() -> None:
    value = int(valid_numbers(1, "999", seed=1)[0])
    digest = Hasher(bytes(32)).digest(canon(value))
    element = oprf.blind(canon(value).encode())[1]
    forbidden = Forbidden()
    forbidden.number(value, "number")
    forbidden.item(digest, "digest")
    forbidden.item(element, "element")
    forbidden.secret("ndop_s3cret-token-value-for-the-self-check", "token")
    clean = '{"event": "check.completed", "items": 120, "register_version": 3}'
    assert forbidden.find(clean) == []

    planted = {
        "canonical": f'{{"event": "x", "number": "{canon(value)}"}}',
        "spaced": f"row held {spaced(value)} here",
        "hyphenated": f"row held {hyphenated(value)},",
        "hex": f"digest={digest.hex()}",
        "HEX": f"digest={digest.hex().upper()}",
        "truncated hex": f"digest prefix {digest[:8].hex()}",
        "base64": f"b64 {base64.b64encode(digest).decode()}",
        "urlsafe base64": f"{base64.urlsafe_b64encode(element).decode()}",
        "base64 inside a batch (offset 1)": base64.b64encode(b"\x01" + element + b"\x02").decode(),
        "base64 inside a batch (offset 2)": base64.b64encode(b"\x01\x02" + digest).decode(),
        "base64 inside a batch (offset 32)": base64.b64encode(bytes(32) + digest).decode(),
        "token": "authorization: Bearer ndop_s3cret-token-value-for-the-self-check",
        "token without prefix": "s3cret-token-value-for-the-self-check",
    }
    for name, sample in planted.items():
        assert forbidden.find(sample), f"the search missed a planted {name}"
    assert forbidden.find(b"log line \x00" + digest + b" end")
    assert forbidden.find(b"elements " + element[:12] + b"...")
    assert forbidden.find(("raw " + spaced(value)).encode())


def test_the_session_happened(evidence: Evidence) -> None:
    """The search below is only worth something if the session did what it says."""
    assert evidence.exit_codes["check hashed"] == 0, evidence.outputs["check hashed stderr"]
    assert evidence.exit_codes["check private"] == 0, evidence.outputs["check private stderr"]
    assert evidence.exit_codes["check over quota"] == 3
    assert evidence.exit_codes["check wrong token"] == 3
    assert evidence.exit_codes["check csv missing column"] == 2
    assert evidence.exit_codes["check missing file"] == 2
    for mode in ("hashed", "private"):
        report = json.loads(evidence.files[f"report {mode}"])
        assert report["opted_out"] == SAMPLE, report
        assert report["invalid"]["count"] >= SAMPLE, report
    events = [json.loads(line) for line in evidence.server_log.splitlines() if line.strip()]
    names = [event.get("event") for event in events]
    assert names.count("check.completed") >= 3, names
    completed = [event for event in events if event.get("event") == "check.completed"]
    assert all(isinstance(event.get("seconds"), float | int) for event in completed), completed
    assert names.count("check.refused") >= 10, names
    codes = set(evidence.codes.values())
    assert {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNAUTHENTICATED,
    } <= codes


def test_server_log_is_json_lines(evidence: Evidence) -> None:
    lines = [line for line in evidence.server_log.decode().splitlines() if line.strip()]
    assert lines
    for line in lines:
        assert isinstance(json.loads(line), dict), line
    assert evidence.exit_codes["serve"] == 0


# --- nothing identifying anywhere ----------------------------------------------------------------


def test_server_log_holds_no_identifier(evidence: Evidence) -> None:
    _assert_clean(evidence.forbidden, {"server log": evidence.server_log})
    per_line = {
        f"server log line {i}": line for i, line in enumerate(evidence.server_log.splitlines())
    }
    _assert_clean(evidence.forbidden, per_line)


def test_client_output_holds_no_identifier(evidence: Evidence) -> None:
    _assert_clean(evidence.forbidden, evidence.outputs)


def test_failed_client_runs_say_one_sentence(evidence: Evidence) -> None:
    failed = [name for name, code in evidence.exit_codes.items() if code != 0]
    assert len(failed) >= 6, failed
    for name in failed:
        lines = [line for line in evidence.outputs[f"{name} stderr"].splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("ndop: "), (name, lines)
    for name, text in evidence.outputs.items():
        assert "Traceback" not in text, name


def test_operator_output_holds_no_number(evidence: Evidence) -> None:
    """`org add` prints its token by design, and nothing else secret."""
    _assert_clean(evidence.numbers_only, evidence.operator_outputs)


def test_error_replies_hold_no_identifier(evidence: Evidence) -> None:
    assert len(evidence.details) >= 30
    _assert_clean(evidence.forbidden, evidence.details)
    for name, details in evidence.details.items():
        if "(as raised)" not in name:
            assert details.strip(), f"{name}: a refusal must say why"


def test_reports_receipts_and_audit_hold_no_identifier(evidence: Evidence) -> None:
    _assert_clean(evidence.forbidden, evidence.files)


def test_metrics_and_status_page_hold_no_identifier(evidence: Evidence) -> None:
    """Scraped after the whole session: they count what happened, and name nothing."""
    metrics = evidence.files["metrics page"].decode()
    assert 'ndop_checks_total{mode="hashed",outcome="completed"}' in metrics
    assert 'code="UNAUTHENTICATED"' in metrics
    assert "Audit chain intact" in evidence.files["status page"].decode()
    _assert_clean(
        evidence.forbidden,
        {name: evidence.files[name] for name in ("metrics page", "status page")},
    )


def test_reports_hold_line_numbers_not_numbers(evidence: Evidence) -> None:
    for name, content in evidence.files.items():
        if not name.startswith("report"):
            continue
        report = json.loads(content)
        for row in report["invalid"]["rows"]:
            assert set(row) == {"line", "reason"}, row
            assert isinstance(row["line"], int)
        assert not any(len(run) >= 9 for run in _digit_runs(json.dumps(report["invalid"])))


def _digit_runs(text: str) -> list[str]:
    runs, current = [], ""
    for character in text:
        if character.isdigit():
            current += character
        else:
            if current:
                runs.append(current)
            current = ""
    if current:
        runs.append(current)
    return runs


def test_store_holds_no_number_and_no_digest(evidence: Evidence) -> None:
    """The store on disk: no raw number, no hashed-mode digest (only keyed tokens)."""
    digests_and_numbers = Forbidden(
        dict(evidence.numbers_only.texts),
        {raw: label for raw, label in evidence.forbidden.raw.items() if label.startswith("digest")},
    )
    found = digests_and_numbers.find(evidence.store)
    assert not found, found[:5]
