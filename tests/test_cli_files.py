"""`ndop check` as people use files, run as real subprocesses against a real server: `-` for
standard input and output, pipes, FIFOs and `<(...)`, collisions between outputs, delimiters,
TSV, encodings, gzip, decimal exports, mostly-invalid inputs, wrong and missing columns,
headerless CSVs, --version, and bounded memory on junk.

Only synthetic 999-range numbers are used.
"""

from __future__ import annotations

import gzip
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import pytest

from ndop_server.server import RunningServer
from tests.conftest import Register

NDOP = [sys.executable, "-m", "ndop_client"]
PURPOSE = ("--purpose", "research")


def canon(value: object) -> str:
    return f"{int(str(value)):010d}"


def ndop(
    cwd: Path,
    *args: str | Path,
    stdin: bytes | None = None,
    timeout: float = 120,
    preexec: Callable[[], object] | None = None,
    stdout: IO[bytes] | None = None,
    unset: Sequence[str] = (),
) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env["XDG_CACHE_HOME"] = str(cwd / "cache")
    return subprocess.run(
        [*NDOP, *map(str, args)],
        cwd=cwd,
        input=stdin,
        stdout=stdout or subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        timeout=timeout,
        check=False,
        preexec_fn=preexec,
    )


def check(
    cwd: Path, address: str, cohort: str | Path, out: str | Path, *extra: str | Path, **kw: Any
) -> subprocess.CompletedProcess[bytes]:
    args = ["check", cohort, "--server", address, "--insecure", "--out", out, *PURPOSE, *extra]
    return ndop(cwd, *args, **kw)


def one_sentence(stderr: bytes) -> str:
    text = stderr.decode()
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert "Traceback" not in text and "Error:" not in text.split("ndop:")[0], text
    assert lines[0].startswith("ndop: "), text
    return lines[0]


@pytest.fixture
def numbers(register: Register) -> tuple[list[str], list[str]]:
    """Five opted-out numbers and seven that are not, as text."""
    return [canon(v) for v in register.opted_out[:5]], [
        canon(v) for v in register.not_opted_out[:7]
    ]


def test_version(tmp_path: Path) -> None:
    done = ndop(tmp_path, "--version")
    assert done.returncode == 0
    assert done.stdout.decode().startswith("ndop ")


# --- standard input and output, pipes -----------------------------------------------------------


@pytest.mark.parametrize("mode", ["hashed", "private"])
def test_stdin_to_stdout(
    server: RunningServer,
    address: str,
    tmp_path: Path,
    numbers: tuple[list[str], list[str]],
    mode: str,
) -> None:
    opted, kept = numbers
    text = "".join(f"{n}\n" for n in [*opted, *kept])
    done = check(
        tmp_path,
        address,
        "-",
        "-",
        "--report",
        tmp_path / "r.json",
        "--mode",
        mode,
        stdin=text.encode(),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode() == "".join(f"{n}\n" for n in kept)
    report = json.loads((tmp_path / "r.json").read_text())
    assert (report["rows"], report["opted_out"], report["cleared"]) == (12, 5, 7)
    assert (tmp_path / "r.receipt.json").exists()
    assert "cleared 7" in done.stderr.decode()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_standard_output_is_an_error_not_exit_0(
    server: RunningServer, address: str, tmp_path: Path, numbers: tuple[list[str], list[str]]
) -> None:
    opted, kept = numbers
    cohort = tmp_path / "c.dat"
    cohort.write_text("".join(f"{n},\n" for n in [*opted, *kept]))
    for extra in ((), ("--report", "-")):
        with open("/dev/full", "wb") as full:
            # Buffered, as a user's shell leaves Python: the failure comes at the last flush.
            done = check(
                tmp_path,
                address,
                cohort,
                tmp_path / "out.dat",
                "--mode",
                "hashed",
                *extra,
                stdout=full,
                unset=("PYTHONUNBUFFERED",),
            )
        assert done.returncode != 0
        assert "No space left on device" in one_sentence(done.stderr)


def test_report_to_stdout(
    server: RunningServer, address: str, tmp_path: Path, numbers: tuple[list[str], list[str]]
) -> None:
    opted, kept = numbers
    cohort = tmp_path / "c.dat"
    cohort.write_text("".join(f"{n},\n" for n in [*opted, *kept]))
    done = check(
        tmp_path, address, cohort, tmp_path / "out.dat", "--report", "-", "--mode", "hashed"
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["cleared"] == 7
    assert not (tmp_path / "-").exists()
    assert (tmp_path / "out.dat.receipt.json").exists()


def test_a_large_pipe_is_read_once_and_checked_whole(
    server: RunningServer, address: str, register: Register, tmp_path: Path
) -> None:
    """6,000 piped rows through /dev/stdin: once opened three times and checked as empty."""
    values = [canon(v) for v in register.not_opted_out[:1500]] * 4
    (tmp_path / "in.txt").write_text("\n".join(values) + "\n")
    script = f"{' '.join(NDOP)} check /dev/stdin --server {address} --insecure --purpose research "
    script += f"--mode hashed --out {tmp_path / 'out.txt'} --report {tmp_path / 'r.json'}"
    piped = subprocess.run(
        ["bash", "-c", f"cat {tmp_path / 'in.txt'} | {script}"],
        cwd=tmp_path,
        env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")},
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert piped.returncode == 0, piped.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert (report["rows"], report["valid"], report["duplicates"]) == (6000, 6000, 4500)
    assert (tmp_path / "out.txt").read_text().count("\n") == 6000


def test_process_substitution_and_a_fifo(
    server: RunningServer, address: str, tmp_path: Path, numbers: tuple[list[str], list[str]]
) -> None:
    opted, kept = numbers
    source = tmp_path / "source.csv"
    source.write_text(
        "nhs_number,id\n" + "".join(f"{n},{i}\n" for i, n in enumerate([*opted, *kept]))
    )
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    command = f"{' '.join(NDOP)} check <(cat {source}) --format csv --server {address} --insecure "
    command += f"--purpose research --out {tmp_path / 'sub.csv'}"
    done = subprocess.run(
        ["bash", "-c", command],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "sub.csv").read_text().splitlines()[1:] == [
        f"{n},{i}" for i, n in enumerate([*opted, *kept]) if n in kept
    ]

    fifo = tmp_path / "cohort.fifo"
    os.mkfifo(fifo)
    writer = subprocess.Popen(["bash", "-c", f"cat {source} > {fifo}"])
    try:
        done = check(tmp_path, address, fifo, tmp_path / "fifo.csv", "--format", "csv", timeout=60)
    finally:
        writer.wait(timeout=30)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "fifo.csv").read_text() == (tmp_path / "sub.csv").read_text()


# --- collisions ----------------------------------------------------------------------------------


def test_outputs_that_collide_are_refused_before_any_work(
    server: RunningServer, address: str, tmp_path: Path, numbers: tuple[list[str], list[str]]
) -> None:
    cohort = tmp_path / "c.dat"
    cohort.write_text("".join(f"{n},\n" for n in numbers[1]))
    original = cohort.read_text()
    (tmp_path / "out.dat").write_text("previous\n")
    cases: list[tuple[Sequence[str | Path], str]] = [
        ((cohort, tmp_path / "out.dat", "--report", tmp_path / "out.dat"), "same file"),
        ((cohort, cohort), "input file"),
        ((cohort, tmp_path / "x.dat", "--report", cohort), "input file"),
        ((cohort, "-", "--report", "-"), "standard output"),
        ((cohort, "-"), "--receipt"),
        (
            (
                cohort,
                tmp_path / "y.dat",
                "--receipt",
                tmp_path / "out.dat",
                "--report",
                tmp_path / "out.dat",
            ),
            "same file",
        ),
    ]
    for args, words in cases:
        done = check(tmp_path, address, *args)
        assert done.returncode == 2, (args, done.stderr)
        assert words in one_sentence(done.stderr), args
    assert cohort.read_text() == original
    assert (tmp_path / "out.dat").read_text() == "previous\n"
    assert not (tmp_path / "-").exists()


# --- formats -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "delimiter"), [("c.tsv", "\t"), ("c.csv", ";"), ("c.csv", "\t"), ("c.csv", "|")]
)
def test_delimiters_are_detected_and_kept(
    server: RunningServer,
    address: str,
    tmp_path: Path,
    numbers: tuple[list[str], list[str]],
    name: str,
    delimiter: str,
) -> None:
    opted, kept = numbers
    rows = [["id", "NHS Number", "note"]] + [
        [str(i), n, "x,y"] for i, n in enumerate([*opted, *kept])
    ]
    (tmp_path / name).write_text("".join(delimiter.join(r) + "\n" for r in rows))
    done = check(
        tmp_path, address, name, "out" + name[1:], "--mode", "hashed", "--report", "r.json"
    )
    assert done.returncode == 0, done.stderr
    expected = [rows[0]] + [r for r in rows[1:] if r[1] in kept]
    assert (tmp_path / ("out" + name[1:])).read_text() == "".join(
        delimiter.join(r) + "\n" for r in expected
    ) or delimiter == ","
    assert json.loads((tmp_path / "r.json").read_text())["valid"] == 12


def test_latin1_and_cp1252_with_encoding(
    server: RunningServer, address: str, tmp_path: Path, numbers: tuple[list[str], list[str]]
) -> None:
    opted, kept = numbers
    text = "nhs_number,name\n" + "".join(f"{n},Zoë Müller\n" for n in [*opted, *kept])
    (tmp_path / "latin.csv").write_bytes(text.encode("latin-1"))
    refused = check(tmp_path, address, "latin.csv", "out.csv", "--mode", "hashed")
    assert refused.returncode == 2
    assert "--encoding" in one_sentence(refused.stderr)
    for encoding in ("latin-1", "cp1252"):
        done = check(
            tmp_path,
            address,
            "latin.csv",
            f"{encoding}.csv",
            "--mode",
            "hashed",
            "--encoding",
            encoding,
        )
        assert done.returncode == 0, done.stderr
        written = (tmp_path / f"{encoding}.csv").read_bytes().decode(encoding)
        assert written.splitlines()[1:] == [f"{n},Zoë Müller" for n in kept]
    wrong = check(tmp_path, address, "latin.csv", "x.csv", "--encoding", "utf-16")
    assert wrong.returncode == 2 and "--encoding" in one_sentence(wrong.stderr)


def test_gzip_input_by_content_and_gzip_output_by_name(
    server: RunningServer, address: str, tmp_path: Path, numbers: tuple[list[str], list[str]]
) -> None:
    opted, kept = numbers
    text = "".join(f"{n},\n" for n in [*opted, *kept])
    (tmp_path / "c.dat.gz").write_bytes(gzip.compress(text.encode()))
    done = check(tmp_path, address, "c.dat.gz", "out.dat.gz", "--mode", "hashed")
    assert done.returncode == 0, done.stderr
    assert gzip.decompress((tmp_path / "out.dat.gz").read_bytes()).decode() == "".join(
        f"{n},\n" for n in kept
    )
    (tmp_path / "broken.dat.gz").write_bytes(gzip.compress(text.encode())[:-12])
    broken = check(tmp_path, address, "broken.dat.gz", "b.dat", "--mode", "hashed")
    assert broken.returncode == 2 and "gzip" in one_sentence(broken.stderr)
    assert not (tmp_path / "b.dat").exists()


def test_decimal_exports_are_accepted_and_reported(
    server: RunningServer, address: str, tmp_path: Path, numbers: tuple[list[str], list[str]]
) -> None:
    opted, kept = numbers
    rows = [f"{n}.0,{i}" for i, n in enumerate(opted + kept)]
    (tmp_path / "pandas.csv").write_text("nhs_number,id\n" + "\n".join(rows) + "\n")
    done = check(
        tmp_path, address, "pandas.csv", "out.csv", "--report", "r.json", "--mode", "hashed"
    )
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert (report["valid"], report["float_exports"], report["cleared"]) == (12, 12, 7)
    assert "decimals" in done.stderr.decode()
    for number in opted + kept:
        assert number not in done.stderr.decode() + done.stdout.decode()


def test_most_rows_invalid_warns_and_max_invalid_rate_refuses(
    server: RunningServer, address: str, tmp_path: Path, numbers: tuple[list[str], list[str]]
) -> None:
    _, kept = numbers
    rows = ["nhs_number,name"] + [f"{n},a" for n in kept[:2]] + [f"{i},b" for i in range(8)]
    (tmp_path / "c.csv").write_text("\n".join(rows) + "\n")
    warned = check(tmp_path, address, "c.csv", "out.csv", "--mode", "hashed")
    assert warned.returncode == 0
    assert "WARNING: 80% of the rows" in warned.stderr.decode()
    refused = check(
        tmp_path, address, "c.csv", "strict.csv", "--mode", "hashed", "--max-invalid-rate", "0.1"
    )
    assert refused.returncode == 2
    assert "nothing was sent" in one_sentence(refused.stderr)
    assert not (tmp_path / "strict.csv").exists()


def test_a_wrong_column_lists_the_columns(
    server: RunningServer, address: str, tmp_path: Path
) -> None:
    (tmp_path / "c.csv").write_text("patient_id,nhs_no_x,dob\n1,2,3\n")
    done = check(tmp_path, address, "c.csv", "out.csv", "--column", "nhs")
    assert done.returncode == 2
    line = one_sentence(done.stderr)
    assert "'patient_id', 'nhs_no_x', 'dob'" in line
    default = check(tmp_path, address, "c.csv", "out.csv")
    assert default.returncode == 2 and "'patient_id'" in one_sentence(default.stderr)


def test_a_headerless_csv_is_refused_not_copied_into_the_header(
    server: RunningServer, address: str, tmp_path: Path, numbers: tuple[list[str], list[str]]
) -> None:
    opted, kept = numbers
    (tmp_path / "c.csv").write_text("".join(f"{n},x\n" for n in [opted[0], *kept]))
    done = check(tmp_path, address, "c.csv", "out.csv", "--column", opted[0])
    assert done.returncode == 2
    line = one_sentence(done.stderr)
    assert "header row" in line and opted[0] not in line
    assert not (tmp_path / "out.csv").exists()


# --- bounded memory on junk ----------------------------------------------------------------------


def test_dev_zero_is_refused_with_bounded_memory(
    server: RunningServer, address: str, tmp_path: Path
) -> None:
    done = check(tmp_path, address, "/dev/zero", "out.txt", timeout=60)
    assert done.returncode == 2
    assert "longer than 1 MiB" in one_sentence(done.stderr)


@pytest.mark.slow
def test_200_mb_of_junk_lines_take_bounded_memory_and_a_bounded_report(
    server: RunningServer, address: str, register: Register, tmp_path: Path
) -> None:
    line = ("junk " * 19 + "x\n").encode()  # 100 bytes
    junk = tmp_path / "junk.txt"
    good = "".join(f"{canon(v)}\n" for v in register.not_opted_out[:10]).encode()
    with open(junk, "wb") as handle:
        handle.write(good)
        block = line * 10_000
        for _ in range(200):
            handle.write(block)
    command: list[str | Path] = [*NDOP, "check", junk, "--server", address, "--insecure"]
    command += [*PURPOSE, "--mode", "hashed", "--out", tmp_path / "out.txt"]
    command += ["--report", tmp_path / "r.json"]
    started = time.monotonic()
    with open(tmp_path / "stderr.txt", "wb") as errors:
        probe = subprocess.Popen(
            command,
            cwd=tmp_path,
            env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")},
            stdout=subprocess.DEVNULL,
            stderr=errors,
        )
        _, status, usage = os.wait4(probe.pid, 0)
    probe.returncode = os.waitstatus_to_exitcode(status)
    err = (tmp_path / "stderr.txt").read_bytes()
    assert probe.returncode == 0, err
    peak_mb = usage.ru_maxrss / 1024
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["invalid"]["count"] == 2_000_000
    assert len(report["invalid"]["rows"]) == 1000
    assert (tmp_path / "r.json").stat().st_size < 200_000
    assert report["valid"] == 10
    assert peak_mb < 700, f"peak resident memory {peak_mb:.0f} MB"
    assert "WARNING" in err.decode()
    print(f"200 MB of junk: {time.monotonic() - started:.1f} s, peak {peak_mb:.0f} MB")


# --- full disk -----------------------------------------------------------------------------------
# rbcl writes its 2.8 MB libsodium to the temporary directory whenever it is imported, so a
# process cannot run with less room than that; the limits below leave it room.


def _files_up_to(limit: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 KiB tmpfs: really full, ENOSPC, once a file needs more than a page."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


def test_a_file_too_large_for_out_is_one_sentence(
    server: RunningServer, address: str, register: Register, tmp_path: Path
) -> None:
    values = [canon(v) for v in register.not_opted_out[:1000]]
    cohort = tmp_path / "c.dat"
    cohort.write_text("".join(f"{v},\n" for v in values) * 300)
    (tmp_path / "out.dat").write_text("previous\n")
    limit = _files_up_to(3 << 20)
    done = check(tmp_path, address, cohort, "out.dat", "--mode", "hashed", preexec=limit)
    assert done.returncode == 2, done.stderr
    line = one_sentence(done.stderr)
    assert "cannot write output out.dat" in line and "too large" in line
    assert (tmp_path / "out.dat").read_text() == "previous\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_full_disk_for_out_is_one_sentence(
    server: RunningServer, address: str, register: Register, tmp_path: Path, tiny_disk: Path
) -> None:
    cohort = tmp_path / "c.dat"
    cohort.write_text("".join(f"{canon(v)},\n" for v in register.not_opted_out[:1000]))
    done = check(tmp_path, address, cohort, tiny_disk / "out.dat", "--mode", "hashed")
    assert done.returncode == 2, done.stderr
    assert "No space left on device" in one_sentence(done.stderr)
    assert list(tiny_disk.iterdir()) == []


def test_a_full_disk_for_the_filter_cache_is_one_sentence(
    server: RunningServer, address: str, register: Register, tmp_path: Path, tiny_disk: Path
) -> None:
    cohort = tmp_path / "c.dat"
    cohort.write_text("".join(f"{canon(v)},\n" for v in register.not_opted_out[:5]))
    env = {**os.environ, "XDG_CACHE_HOME": str(tiny_disk)}
    done = subprocess.run(
        [*NDOP, "check", cohort, "--server", address, "--insecure", *PURPOSE, "--out", "o.dat"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    line = one_sentence(done.stderr)
    assert "cannot save the register's filter" in line and "No space left on device" in line
    assert not (tmp_path / "o.dat").exists()


def test_a_piped_one_column_csv_is_recognised_by_its_header(
    server: RunningServer, address: str, tmp_path: Path, numbers: tuple[list[str], list[str]]
) -> None:
    opted, kept = numbers
    text = "NHS Number\n" + "".join(f"{n}\n" for n in [*opted, *kept])
    done = check(
        tmp_path, address, "-", "-", "--receipt", "r.json", "--mode", "hashed", stdin=text.encode()
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode() == "NHS Number\n" + "".join(f"{n}\n" for n in kept)
