"""Cohort files end to end through the SDK: reading .dat, .csv and plain text, the cleared file
written back in the same format, the report's counts, and the failures a user can cause.

Only synthetic 999-range numbers are used (the `register` fixture's, or completed 999 prefixes).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ndop_client import Client, InputError, ServerUnavailable
from ndop_client import report as report_module
from ndop_client.check import FileCheck, check_file
from ndop_client.cleared import ClearedWriter
from ndop_client.matching import MatchOutcome
from ndop_core.cohort_files import Chunk, CohortFile, Format
from ndop_core.nhs_number import InvalidReason, with_check_digit
from ndop_server.synthetic import valid_numbers
from tests.conftest import Register

BOM = "\ufeff"
SYNTHETIC = [int(v) for v in valid_numbers(16, "999", seed=77).tolist()]
MISMATCH = str(InvalidReason.CHECK_DIGIT_MISMATCH)
NOT_DIGITS = str(InvalidReason.NOT_DIGITS)
WRONG_LENGTH = str(InvalidReason.WRONG_LENGTH)
CHECK_10 = str(InvalidReason.CHECK_DIGIT_10)


# --- helpers -----------------------------------------------------------------------------------


def canon(value: int) -> str:
    return f"{int(value):010d}"


def spaced(value: int) -> str:
    text = canon(value)
    return f"{text[:3]} {text[3:6]} {text[6:]}"


def hyphenated(value: int) -> str:
    text = canon(value)
    return f"{text[:3]}-{text[3:6]}-{text[6:]}"


def wrong_check(value: int) -> str:
    text = canon(value)
    return text[:9] + str((int(text[9]) + 1) % 10)


def check_10_number() -> str:
    for prefix in range(999_000_000, 999_001_000):
        if with_check_digit(str(prefix)) is None:
            return f"{prefix}0"
    raise AssertionError("no 999 prefix with check digit 10 found")


def free_closed_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def leftovers(directory: Path, expected: set[str]) -> set[str]:
    return {p.name for p in directory.iterdir()} - expected


class SetMatcher:
    """An in-process matcher: opted out means 'in this set'. Records what it was asked."""

    def __init__(self, opted_out: set[int]) -> None:
        self.opted_out = opted_out
        self.asked: list[list[int]] = []

    def __call__(self, unique: np.ndarray) -> MatchOutcome:
        self.asked.append(unique.tolist())
        flags = np.array([int(v) in self.opted_out for v in unique.tolist()], dtype=bool)
        return MatchOutcome(flags, 7, len(self.opted_out), None)


class SmallChunks(CohortFile):
    """A cohort file read three rows at a time, to cross chunk boundaries with few rows."""

    def chunks(self, size: int = 3) -> Iterator[Chunk]:
        return super().chunks(3)


@pytest.fixture
def client(address: str, tmp_path: Path) -> Iterator[Client]:
    with Client(
        address,
        insecure=True,
        purpose="research",
        cache_dir=tmp_path / "filter-cache",
        workers=1,
    ) as c:
        yield c


def build_report(check: FileCheck) -> dict[str, Any]:
    return report_module.build(check, "research")


def invalid_rows(report: dict[str, Any]) -> list[tuple[int, str]]:
    return [(row["line"], row["reason"]) for row in report["invalid"]["rows"]]


def assert_no_numbers(text: str, values: list[int]) -> None:
    for value in values:
        assert canon(value) not in text
        assert spaced(value) not in text


# --- .dat --------------------------------------------------------------------------------------


def dat_cohort(register: Register) -> tuple[str, list[str], dict[str, Any]]:
    """A CfNDO .dat file with a BOM, CRLF, blank lines, duplicates and invalid rows; the expected
    cleared lines and the expected report counts."""
    c = [int(v) for v in register.not_opted_out[:4].tolist()]
    o = [int(v) for v in register.opted_out[:2].tolist()]
    lines = [
        f"{canon(c[0])},",  # 1 cleared
        f"{canon(o[0])},",  # 2 opted out
        "",  # 3 blank
        f"{spaced(c[1])},",  # 4 cleared, written spaced
        f"{wrong_check(c[2])},",  # 5 invalid: check digit
        f"{canon(c[0])},",  # 6 duplicate, cleared again
        f"{canon(o[0])},",  # 7 duplicate, opted out again
        f" {hyphenated(c[2])} ,",  # 8 cleared, hyphenated with spaces
        "abc,",  # 9 invalid: letters
        "   ",  # 10 blank (white space only)
        f"{canon(c[3])}",  # 11 cleared, no comma
        f"{canon(o[1])},",  # 12 opted out
        f"{check_10_number()},",  # 13 invalid: check digit 10
        "99900000,",  # 14 invalid: 8 digits
    ]
    text = BOM + "".join(f"{line}\r\n" for line in lines)
    cleared = [canon(c[0]), canon(c[1]), canon(c[0]), canon(c[2]), canon(c[3])]
    expected = {
        "rows": 12,
        "blank_lines": 2,
        "valid": 8,
        "invalid": [(5, MISMATCH), (9, NOT_DIGITS), (13, CHECK_10), (14, WRONG_LENGTH)],
        "duplicates": 2,
        "unique_checked": 6,
        "opted_out": 3,
        "opted_out_unique": 2,
        "cleared": 5,
    }
    return text, cleared, expected


def assert_report(report: dict[str, Any], expected: dict[str, Any]) -> None:
    for key, value in expected.items():
        if key == "invalid":
            assert invalid_rows(report) == value
            assert report["invalid"]["count"] == len(value)
        else:
            assert report[key] == value, key


def test_dat_file_cleared_canonically_with_crlf_in_input_order(
    register: Register, client: Client, tmp_path: Path
) -> None:
    text, cleared, expected = dat_cohort(register)
    work = tmp_path / "work"
    work.mkdir()
    cohort = work / "cohort.dat"
    cohort.write_bytes(text.encode("utf-8"))
    out = work / "cleared.dat"

    check = client.check_file(cohort, out, mode="hashed")

    data = out.read_bytes()
    assert data.removeprefix(BOM.encode()) == "".join(f"{n},\r\n" for n in cleared).encode()
    report = build_report(check)
    assert_report(report, expected)
    assert report["mode"] == "hashed"
    assert report["register"] == {"version": 1, "count": 1000}
    assert report["register_national_count"] == 1000
    assert report["cohort_opt_out_rate"] == round(2 / 6, 6)
    assert report["input"]["format"] == "dat"
    assert report["input"]["column"] is None
    every = [int(v) for v in register.opted_out.tolist() + register.not_opted_out.tolist()]
    assert_no_numbers(json.dumps(report), every)
    assert leftovers(work, {"cohort.dat", "cleared.dat"}) == {"cleared.dat.receipt.json"}


def test_dat_file_private_mode_gives_the_same_cleared_file_and_counts(
    register: Register, client: Client, tmp_path: Path
) -> None:
    text, cleared, expected = dat_cohort(register)
    cohort = tmp_path / "cohort.dat"
    cohort.write_bytes(text.encode("utf-8"))
    hashed_out = tmp_path / "hashed.dat"
    private_out = tmp_path / "private.dat"

    hashed = client.check_file(cohort, hashed_out, mode="hashed")
    private = client.check_file(cohort, private_out, mode="private")

    assert private_out.read_bytes() == hashed_out.read_bytes()
    assert private_out.read_bytes().removeprefix(BOM.encode()).decode().splitlines() == [
        f"{n}," for n in cleared
    ]
    private_report = build_report(private)
    assert_report(private_report, expected)
    assert private_report["mode"] == "private"
    hashed_report = build_report(hashed)
    for key in expected:
        assert private_report[key] == hashed_report[key]


def test_dat_file_with_lf_keeps_lf_and_last_line_without_newline(tmp_path: Path) -> None:
    c, o = SYNTHETIC[:3], SYNTHETIC[3]
    cohort = tmp_path / "lf.dat"
    cohort.write_text(f"{canon(c[0])},\n{canon(o)},\n{spaced(c[1])},\n{canon(c[2])},")
    out = tmp_path / "lf-cleared.dat"

    check = check_file(CohortFile(cohort), out, SetMatcher({o}), "hashed")

    assert out.read_bytes() == f"{canon(c[0])},\n{canon(c[1])},\n{canon(c[2])},\n".encode()
    tally = check.classified.tally
    assert (tally.rows, tally.valid, tally.opted_out_rows, tally.cleared) == (4, 4, 1, 3)


def test_only_valid_unique_numbers_are_matched(tmp_path: Path) -> None:
    a, b = (int(with_check_digit(p) or 0) for p in ("999000001", "999765432"))
    cohort_path = tmp_path / "c.dat"
    cohort_path.write_text(f"{a},\n{a},\nnot a number,\n{b},\n\n{wrong_check(b)},\n")
    matcher = SetMatcher({b})

    check = check_file(CohortFile(cohort_path), tmp_path / "out.dat", matcher, "hashed")

    assert matcher.asked == [sorted([a, b])]
    assert (tmp_path / "out.dat").read_text() == f"{a},\n{a},\n"
    assert check.classified.tally.opted_out_rows == 1


def test_line_numbers_and_offsets_across_chunks(tmp_path: Path) -> None:
    numbers = [with_check_digit(f"9990001{i:02d}") for i in range(30)]
    valid = [int(n) for n in numbers if n is not None][:8]
    lines = [
        canon(valid[0]),
        "bad",  # 2
        canon(valid[1]),
        "",  # 4 blank
        canon(valid[2]),
        wrong_check(valid[3]),  # 6
        canon(valid[3]),
        canon(valid[4]),
        "12345",  # 9
        canon(valid[5]),
        canon(valid[6]),
        canon(valid[7]),
    ]
    cohort_path = tmp_path / "c.txt"
    cohort_path.write_text("\n".join(lines) + "\n")
    matcher = SetMatcher({valid[1], valid[6]})

    check = check_file(SmallChunks(cohort_path), tmp_path / "out.txt", matcher, "hashed")

    report = build_report(check)
    assert invalid_rows(report) == [(2, NOT_DIGITS), (6, MISMATCH), (9, WRONG_LENGTH)]
    assert report["rows"] == 11
    assert report["cleared"] == 6
    expected = [valid[i] for i in (0, 2, 3, 4, 5, 7)]
    assert (tmp_path / "out.txt").read_text() == "".join(f"{canon(v)}\n" for v in expected)


# --- .csv --------------------------------------------------------------------------------------


def test_csv_default_column_quoted_fields_and_extra_columns(
    register: Register, client: Client, tmp_path: Path
) -> None:
    c = [int(v) for v in register.not_opted_out[20:23].tolist()]
    o = int(register.opted_out[20])
    text = (
        "patient_id,nhs_number,notes\n"
        f'p1,"{spaced(c[0])}","likes, commas"\n'  # 2 cleared
        f'p2,{canon(o)},"said ""hello"", twice"\n'  # 3 opted out
        "p3,not-a-number,x\n"  # 4 invalid
        f"p4,{canon(c[1])},extra,columns,here\n"  # 5 cleared, extra columns
        "\n"  # 6 blank
        f'p5,"{hyphenated(c[0])}",dup\n'  # 7 duplicate, cleared
        f"p6,{canon(c[2])}\n"  # 8 cleared, fewer columns
    )
    cohort = tmp_path / "cohort.csv"
    cohort.write_text(text)
    out = tmp_path / "cleared.csv"

    check = client.check_file(cohort, out, mode="hashed")

    rows = list(csv.reader(io.StringIO(out.read_text(), newline="")))
    assert rows == [
        ["patient_id", "nhs_number", "notes"],
        ["p1", spaced(c[0]), "likes, commas"],
        ["p4", canon(c[1]), "extra", "columns", "here"],
        ["p5", hyphenated(c[0]), "dup"],
        ["p6", canon(c[2])],
    ]
    assert b"\r\n" not in out.read_bytes()
    report = build_report(check)
    assert report["input"]["format"] == "csv"
    assert report["input"]["column"] == "nhs_number"
    assert_report(
        report,
        {
            "rows": 6,
            "blank_lines": 1,
            "valid": 5,
            "invalid": [(4, NOT_DIGITS)],
            "duplicates": 1,
            "opted_out": 1,
            "cleared": 4,
        },
    )


def test_csv_with_bom_crlf_and_spaced_header_name(tmp_path: Path) -> None:
    c, o = SYNTHETIC[4], SYNTHETIC[5]
    cohort = tmp_path / "cohort.csv"
    cohort.write_bytes((BOM + f"id,NHS Number\r\na,{canon(c)}\r\nb,{canon(o)}\r\n").encode("utf-8"))
    out = tmp_path / "cleared.csv"

    check = check_file(CohortFile(cohort), out, SetMatcher({o}), "hashed")

    assert (
        out.read_bytes().removeprefix(BOM.encode()) == f"id,NHS Number\r\na,{canon(c)}\r\n".encode()
    )
    assert check.cohort.column_name == "NHS Number"


def test_csv_explicit_column(register: Register, client: Client, tmp_path: Path) -> None:
    c = int(register.not_opted_out[40])
    o = int(register.opted_out[40])
    cohort = tmp_path / "cohort.csv"
    cohort.write_text(f"id,Patient NHS,other\n1,{canon(c)},{canon(o)}\n2,{canon(o)},{canon(c)}\n")
    out = tmp_path / "cleared.csv"

    with pytest.raises(InputError, match="--column"):
        CohortFile(cohort)
    check = client.check_file(cohort, out, mode="hashed", column="Patient NHS")

    assert out.read_text() == f"id,Patient NHS,other\n1,{canon(c)},{canon(o)}\n"
    assert check.cohort.column_name == "Patient NHS"


@pytest.mark.parametrize(
    "header",
    ["nhs_number,NHS Number,x", "id,name,dob", "id,nhs_numbers_old"],
)
def test_csv_ambiguous_or_missing_default_column_is_an_input_error(
    header: str, tmp_path: Path
) -> None:
    cohort = tmp_path / "cohort.csv"
    value = with_check_digit("999000001")
    cohort.write_text(f"{header}\n{value},{value},{value}\n")
    with pytest.raises(InputError, match="--column") as raised:
        CohortFile(cohort)
    assert "\n" not in str(raised.value)
    assert str(value) not in str(raised.value)


def test_csv_unknown_explicit_column_and_column_on_dat_are_input_errors(tmp_path: Path) -> None:
    csv_path = tmp_path / "cohort.csv"
    csv_path.write_text("id,nhs_number\n")
    with pytest.raises(InputError, match="no column named"):
        CohortFile(csv_path, column="NHS")
    dat_path = tmp_path / "cohort.dat"
    dat_path.write_text("")
    with pytest.raises(InputError, match="--column"):
        CohortFile(dat_path, column="nhs_number")


def test_csv_row_with_empty_number_field_is_reported_not_silently_dropped(
    tmp_path: Path,
) -> None:
    """A CSV row that has data but an empty NHS number cell is not a blank line: it is left out
    of the cleared file, so it must be accounted for as an invalid row."""
    a = int(with_check_digit("999000001") or 0)
    cohort_path = tmp_path / "cohort.csv"
    cohort_path.write_text(f"id,nhs_number,name\n1,{a},x\n2,,Someone\n3\n")
    out = tmp_path / "cleared.csv"

    check = check_file(CohortFile(cohort_path), out, SetMatcher(set()), "hashed")

    report = build_report(check)
    assert out.read_text() == f"id,nhs_number,name\n1,{a},x\n"
    # no line of the file is blank: three data rows, one valid, two without a number
    assert report["blank_lines"] == 0
    assert report["rows"] == 3
    assert [row["line"] for row in report["invalid"]["rows"]] == [3, 4]
    assert all(row["reason"] for row in report["invalid"]["rows"])


# --- plain text --------------------------------------------------------------------------------


def test_text_file_keeps_original_lines_verbatim(
    register: Register, client: Client, tmp_path: Path
) -> None:
    c = [int(v) for v in register.not_opted_out[50:53].tolist()]
    o = int(register.opted_out[50])
    lines = [
        spaced(c[0]),
        f"  {hyphenated(c[1])}\t",
        canon(o),
        "",
        "nonsense",
        f"{canon(c[2])},",
    ]
    cohort = tmp_path / "cohort.txt"
    cohort.write_text("\n".join(lines))  # no final newline
    out = tmp_path / "cleared.txt"

    check = client.check_file(cohort, out, mode="hashed")

    assert out.read_text() == (f"{spaced(c[0])}\n  {hyphenated(c[1])}\t\n{canon(c[2])},\n")
    report = build_report(check)
    assert report["input"]["format"] == "text"
    assert_report(
        report,
        {"rows": 5, "blank_lines": 1, "valid": 4, "invalid": [(5, NOT_DIGITS)], "cleared": 3},
    )


def test_text_file_with_crlf_keeps_crlf(tmp_path: Path) -> None:
    c, o = SYNTHETIC[6], SYNTHETIC[7]
    cohort = tmp_path / "cohort.txt"
    cohort.write_bytes(f"{spaced(c)}\r\n{spaced(o)}\r\n".encode())
    out = tmp_path / "cleared.txt"
    check_file(CohortFile(cohort), out, SetMatcher({o}), "hashed")
    assert out.read_bytes() == f"{spaced(c)}\r\n".encode()


def test_empty_file_gives_an_empty_cleared_file(tmp_path: Path) -> None:
    cohort = tmp_path / "empty.dat"
    cohort.write_text("")
    out = tmp_path / "cleared.dat"
    matcher = SetMatcher(set())
    check = check_file(CohortFile(cohort), out, matcher, "hashed")
    assert matcher.asked in ([], [[]])
    assert out.read_bytes() == b""
    assert build_report(check)["rows"] == 0


# --- ClearedWriter -----------------------------------------------------------------------------


def test_cleared_writer_commit_and_abort(tmp_path: Path) -> None:
    a, b = (int(with_check_digit(p) or 0) for p in ("999000001", "999765432"))
    cohort_path = tmp_path / "c.dat"
    cohort_path.write_text(f"{spaced(a)},\r\n{spaced(b)},\r\n")
    cohort = CohortFile(cohort_path)
    assert cohort.format is Format.DAT
    assert cohort.newline == "\r\n"
    chunk = next(cohort.chunks())
    values = np.array([a, b], dtype=np.int64)

    out = tmp_path / "out.dat"
    writer = ClearedWriter(cohort, out)
    writer.write(chunk, np.array([False, True]), values)
    assert not out.exists()
    writer.commit()
    assert out.read_bytes() == f"{canon(b)},\r\n".encode()

    zipped = tmp_path / "out.dat.gz"
    writer = ClearedWriter(cohort, zipped)
    writer.write(chunk, np.array([True, True]), values)
    writer.commit()
    # Complete the moment commit returns, while the writer still lives (the command exits
    # without tearing objects down, so nothing may wait for them to be collected).
    assert gzip.decompress(zipped.read_bytes()) == f"{canon(a)},\r\n{canon(b)},\r\n".encode()

    aborted = tmp_path / "aborted.dat"
    writer = ClearedWriter(cohort, aborted)
    writer.write(chunk, np.array([True, True]), values)
    writer.abort()
    assert not aborted.exists()
    assert leftovers(tmp_path, {"c.dat", "out.dat", "out.dat.gz"}) == set()


def test_output_replaced_atomically_and_kept_when_writing_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = int(with_check_digit("999000001") or 0)
    cohort_path = tmp_path / "c.dat"
    cohort_path.write_text(f"{a},\n")
    out = tmp_path / "out.dat"
    out.write_text("previous result\n")
    original = ClearedWriter.write_numbers  # how .dat rows are written

    def failing_write(self: ClearedWriter, values: np.ndarray) -> None:
        original(self, values)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ClearedWriter, "write_numbers", failing_write)
    with pytest.raises(OSError):
        check_file(CohortFile(cohort_path), out, SetMatcher(set()), "hashed")
    assert out.read_text() == "previous result\n"
    assert leftovers(tmp_path, {"c.dat", "out.dat", "out.dat.gz"}) == set()

    monkeypatch.setattr(ClearedWriter, "write_numbers", original)
    check_file(CohortFile(cohort_path), out, SetMatcher(set()), "hashed")
    assert out.read_text() == f"{a},\n"
    assert leftovers(tmp_path, {"c.dat", "out.dat", "out.dat.gz"}) == set()


def test_output_in_missing_directory_is_an_input_error(tmp_path: Path) -> None:
    a = int(with_check_digit("999000001") or 0)
    cohort_path = tmp_path / "c.dat"
    cohort_path.write_text(f"{a},\n")
    with pytest.raises(InputError) as raised:
        check_file(CohortFile(cohort_path), tmp_path / "no" / "out.dat", SetMatcher(set()), "x")
    assert "\n" not in str(raised.value)


# --- unreadable input and unreachable server ---------------------------------------------------


def test_missing_input_is_one_sentence_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist") as raised:
        CohortFile(tmp_path / "missing.dat")
    assert "\n" not in str(raised.value)


def test_unreadable_input_is_one_sentence_input_error(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root can read a file whatever its mode")
    cohort = tmp_path / "secret.dat"
    cohort.write_text(f"{with_check_digit('999000001')},\n")
    cohort.chmod(0)
    with pytest.raises(InputError, match="cannot read") as raised:
        CohortFile(cohort)
    assert "\n" not in str(raised.value)


def test_directory_as_input_is_an_input_error(tmp_path: Path) -> None:
    folder = tmp_path / "folder.dat"
    folder.mkdir()
    with pytest.raises(InputError) as raised:
        CohortFile(folder)
    assert "\n" not in str(raised.value)


def test_missing_input_through_the_sdk_creates_no_output(client: Client, tmp_path: Path) -> None:
    out = tmp_path / "cleared.dat"
    with pytest.raises(InputError):
        client.check_file(tmp_path / "missing.dat", out, mode="hashed")
    assert not out.exists()


def test_non_utf8_first_line_is_an_input_error(tmp_path: Path) -> None:
    cohort = tmp_path / "latin1.csv"
    cohort.write_bytes("nhs_number,caf\xe9\n".encode("latin-1"))
    with pytest.raises(InputError, match="UTF-8") as raised:
        CohortFile(cohort)
    assert "\n" not in str(raised.value)


def test_non_utf8_later_line_is_an_input_error_and_no_output(
    client: Client, tmp_path: Path
) -> None:
    a = int(with_check_digit("999000001") or 0)
    work = tmp_path / "work"
    work.mkdir()
    cohort = work / "mixed.txt"
    cohort.write_bytes(f"{a}\n".encode() + b"\xff\xfe\xfd\n" + f"{a}\n".encode())
    out = work / "cleared.txt"
    with pytest.raises(InputError, match="UTF-8") as raised:
        client.check_file(cohort, out, mode="hashed")
    assert "\n" not in str(raised.value)
    assert not out.exists()
    assert leftovers(work, {"mixed.txt"}) == set()


@pytest.mark.parametrize("mode", ["hashed", "private"])
def test_unreachable_server_leaves_no_output(register: Register, tmp_path: Path, mode: str) -> None:
    cohort = tmp_path / "cohort.dat"
    cohort.write_text("".join(f"{canon(v)},\n" for v in register.not_opted_out[:5].tolist()))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "cleared.dat"
    existing = out_dir / "existing.dat"
    existing.write_text("previous\n")
    address = f"127.0.0.1:{free_closed_port()}"
    with Client(
        address, insecure=True, purpose="research", cache_dir=tmp_path / "cache", workers=1
    ) as offline:
        with pytest.raises(ServerUnavailable) as raised:
            offline.check_file(cohort, out, mode="hashed" if mode == "hashed" else "private")
        with pytest.raises(ServerUnavailable):
            offline.check_file(cohort, existing, mode="hashed")
    assert "\n" not in str(raised.value)
    assert not out.exists()
    assert existing.read_text() == "previous\n"
    assert leftovers(out_dir, {"existing.dat"}) == set()
