"""TLS and mutual TLS with the certificates `ndop dev-certs` makes: the files and their modes,
TLS round trips from the SDK and the CLI, clients that cannot verify the server, client
certificates mapped to organisations, and `ndop serve` refusing to run without TLS material.

Only synthetic 999-range numbers are used.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ndop_client import (
    AuthenticationFailed,
    Client,
    ServerUnavailable,
    ServiceError,
)
from ndop_server.accounts import Accounts
from ndop_server.audit_view import summarise
from ndop_server.server import RunningServer, ServerTls, start_server
from tests.conftest import GENEROUS, Register, make_register, write_numbers

NDOP = [sys.executable, "-m", "ndop_client.cli.main"]
TIMEOUT = 20.0
ORGANISATIONS = ("org-a", "org-b", "org-gone")


# --- helpers -----------------------------------------------------------------------------------


def cli_env(root: Path, token: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("NDOP_TOKEN", None)
    env.pop("NDOP_DEBUG", None)
    env["XDG_CACHE_HOME"] = str(root / "xdg-cache")
    if token is not None:
        env["NDOP_TOKEN"] = token
    return env


def ndop(
    root: Path, *args: str | Path, token: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*NDOP, *map(str, args)],
        cwd=root,
        env=cli_env(root, token),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def one_sentence(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    assert lines[0].startswith("ndop: "), stderr
    return lines[0]


def texts(values: object) -> list[str]:
    return [f"{int(v):010d}" for v in values]  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Certs:
    directory: Path
    ca: Path
    ca_key: Path
    server: Path
    server_key: Path
    stdout: str

    def client(self, organisation: str) -> tuple[Path, Path]:
        return (
            self.directory / f"client-{organisation}.pem",
            self.directory / f"client-{organisation}-key.pem",
        )


def dev_certs(directory: Path, *organisations: str) -> Certs:
    flags = [part for name in organisations for part in ("--org", name)]
    made = ndop(directory.parent, "dev-certs", directory, *flags)
    assert made.returncode == 0, made.stderr
    return Certs(
        directory,
        directory / "ca.pem",
        directory / "ca-key.pem",
        directory / "server.pem",
        directory / "server-key.pem",
        made.stdout,
    )


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tls")


@pytest.fixture(scope="module")
def certs(root: Path) -> Certs:
    return dev_certs(root / "certs", *ORGANISATIONS)


@pytest.fixture(scope="module")
def foreign_certs(root: Path) -> Certs:
    """Another CA entirely, with a client certificate for the same organisation name."""
    return dev_certs(root / "foreign-certs", "org-a")


@pytest.fixture(scope="module")
def register(root: Path) -> Register:
    return make_register(root, total=1500, opted_out=500, seed=77)


@pytest.fixture(scope="module")
def tokens(register: Register) -> dict[str, str]:
    with Accounts(register.store_path) as accounts:
        issued = {name: accounts.add(name, GENEROUS) for name in ("tls-org", "org-a")}
        accounts.add("org-gone", GENEROUS)
        accounts.revoke("org-gone")
    return issued  # org-b is deliberately not an organisation


def serve(register: Register, tls: ServerTls) -> RunningServer:
    return start_server(register.store_path, register.keys, "127.0.0.1:0", tls=tls)


@pytest.fixture(scope="module")
def tls_server(register: Register, certs: Certs, tokens: dict[str, str]) -> Iterator[str]:
    running = serve(register, ServerTls(certs.server, certs.server_key))
    try:
        yield f"localhost:{running.port}"
    finally:
        running.stop(grace=1)


@pytest.fixture(scope="module")
def mtls_server(register: Register, certs: Certs, tokens: dict[str, str]) -> Iterator[str]:
    running = serve(
        register,
        ServerTls(certs.server, certs.server_key, client_ca=certs.ca, require_client_cert=True),
    )
    try:
        yield f"localhost:{running.port}"
    finally:
        running.stop(grace=1)


@pytest.fixture(autouse=True)
def no_ambient_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NDOP_TOKEN", raising=False)


def audit_organisations(register: Register, request_id: str) -> list[str]:
    """Who the audit log says made the check (one line per check, from all its rows)."""
    with Accounts(register.store_path) as accounts:
        return [
            line.organisation
            for line in summarise(accounts.audit())
            if line.request_id == request_id
        ]


# --- dev-certs -----------------------------------------------------------------------------------


def test_dev_certs_writes_a_ca_a_server_and_client_certificates(certs: Certs) -> None:
    expected = {
        "ca.pem",
        "ca-key.pem",
        "server.pem",
        "server-key.pem",
        *(f"client-{name}.pem" for name in ORGANISATIONS),
        *(f"client-{name}-key.pem" for name in ORGANISATIONS),
    }
    assert {p.name for p in certs.directory.iterdir()} >= expected
    assert "PRIVATE KEY" not in certs.stdout

    ca = x509.load_pem_x509_certificate(certs.ca.read_bytes())
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca

    server = x509.load_pem_x509_certificate(certs.server.read_bytes())
    server.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    usages = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usages

    for name in ORGANISATIONS:
        cert_path, _ = certs.client(name)
        client = x509.load_pem_x509_certificate(cert_path.read_bytes())
        client.verify_directly_issued_by(ca)
        [common_name] = client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        assert common_name.value == name
        usages = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert ExtendedKeyUsageOID.CLIENT_AUTH in usages


def test_dev_certs_key_files_are_private(certs: Certs) -> None:
    keys = sorted(certs.directory.glob("*-key.pem"))
    assert len(keys) == 2 + len(ORGANISATIONS)
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
        assert b"PRIVATE KEY" in key.read_bytes()
    for cert in certs.directory.glob("*.pem"):
        if not cert.name.endswith("-key.pem"):
            assert b"PRIVATE KEY" not in cert.read_bytes(), cert


def test_dev_certs_rerun_keeps_keys_private(root: Path) -> None:
    directory = root / "rerun"
    dev_certs(directory, "org-a")
    for key in directory.glob("*-key.pem"):
        key.chmod(0o644)
    dev_certs(directory, "org-a")
    for key in directory.glob("*-key.pem"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key


# --- TLS -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["hashed", "private"])
def test_check_over_tls_with_the_ca_file(
    register: Register,
    certs: Certs,
    tokens: dict[str, str],
    tls_server: str,
    root: Path,
    mode: str,
) -> None:
    with Client(
        tls_server,
        ca_file=certs.ca,
        token=tokens["tls-org"],
        purpose="research",
        workers=1,
        cache_dir=root / "filters",
        timeout=TIMEOUT,
    ) as client:
        assert client.info().version == 1
        cohort = texts(register.opted_out[:6]) + texts(register.not_opted_out[:4])
        result = client.check(cohort, mode=mode)  # type: ignore[arg-type]
    assert result.opted_out_count == 6
    assert result.cleared == cohort[6:]
    assert audit_organisations(register, result.request_id) == ["tls-org"]


def test_cli_check_over_tls(
    register: Register, certs: Certs, tokens: dict[str, str], tls_server: str, root: Path
) -> None:
    cohort = write_numbers(root / "tls-cohort.dat", list(register.not_opted_out[:5]))
    out = root / "tls-cleared.dat"
    result = ndop(
        root,
        "check",
        cohort,
        "--server",
        tls_server,
        "--ca-file",
        certs.ca,
        "--out",
        out,
        "--mode",
        "hashed",
        "--purpose",
        "research",
        token=tokens["tls-org"],
    )
    assert result.returncode == 0, result.stderr
    assert out.read_text() == cohort.read_text()


def test_client_without_the_ca_cannot_connect(
    register: Register, tokens: dict[str, str], tls_server: str, root: Path
) -> None:
    with Client(tls_server, token=tokens["tls-org"], purpose="research", timeout=TIMEOUT) as client:
        with pytest.raises(ServerUnavailable):
            client.info()
        with pytest.raises(ServiceError):
            client.check(texts(register.opted_out[:2]), mode="hashed")


def test_client_with_another_ca_cannot_connect(
    tokens: dict[str, str], tls_server: str, foreign_certs: Certs
) -> None:
    with (
        Client(tls_server, ca_file=foreign_certs.ca, token=tokens["tls-org"], timeout=TIMEOUT) as c,
        pytest.raises(ServerUnavailable),
    ):
        c.info()


def test_plaintext_client_cannot_talk_to_a_tls_server(
    tokens: dict[str, str], tls_server: str
) -> None:
    with (
        Client(tls_server, insecure=True, token=tokens["tls-org"], timeout=TIMEOUT) as c,
        pytest.raises(ServiceError),
    ):
        c.info()


def test_cli_without_the_ca_exits_3(
    register: Register, tokens: dict[str, str], tls_server: str, root: Path
) -> None:
    cohort = write_numbers(root / "no-ca.dat", list(register.not_opted_out[:3]))
    result = ndop(
        root,
        "check",
        cohort,
        "--server",
        tls_server,
        "--out",
        root / "no-ca-cleared.dat",
        "--mode",
        "hashed",
        "--purpose",
        "research",
        token=tokens["tls-org"],
    )
    assert result.returncode == 3, result.stderr
    one_sentence(result.stderr)
    assert not (root / "no-ca-cleared.dat").exists()


# --- mutual TLS ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["hashed", "private"])
def test_client_certificate_alone_authenticates_its_organisation(
    register: Register, certs: Certs, mtls_server: str, root: Path, mode: str
) -> None:
    cert, key = certs.client("org-a")
    with Client(
        mtls_server,
        ca_file=certs.ca,
        client_cert=cert,
        client_key=key,
        token=None,
        purpose="planning",
        workers=1,
        cache_dir=root / "filters",
        timeout=TIMEOUT,
    ) as client:
        cohort = texts(register.opted_out[:3]) + texts(register.not_opted_out[:3])
        result = client.check(cohort, mode=mode)  # type: ignore[arg-type]
    assert result.opted_out_count == 3
    assert audit_organisations(register, result.request_id) == ["org-a"]
    receipt = result.receipt
    assert receipt is not None


def test_cli_check_with_a_client_certificate(
    register: Register, certs: Certs, mtls_server: str, root: Path
) -> None:
    cert, key = certs.client("org-a")
    cohort = write_numbers(root / "mtls-cohort.dat", list(register.opted_out[:2]))
    report = root / "mtls-report.json"
    result = ndop(
        root,
        "check",
        cohort,
        "--server",
        mtls_server,
        "--ca-file",
        certs.ca,
        "--cert",
        cert,
        "--key",
        key,
        "--out",
        root / "mtls-cleared.dat",
        "--report",
        report,
        "--mode",
        "hashed",
        "--purpose",
        "consent",
    )
    assert result.returncode == 0, result.stderr
    assert (root / "mtls-cleared.dat").read_text() == ""
    assert (root / "mtls-report.receipt.json").exists()


@pytest.mark.parametrize("organisation", ["org-b", "org-gone"])
def test_client_certificate_of_no_active_organisation_is_unauthenticated(
    register: Register, certs: Certs, mtls_server: str, organisation: str
) -> None:
    """org-b is not an organisation; org-gone was revoked."""
    cert, key = certs.client(organisation)
    with Client(
        mtls_server,
        ca_file=certs.ca,
        client_cert=cert,
        client_key=key,
        purpose="research",
        timeout=TIMEOUT,
    ) as client:
        with pytest.raises(AuthenticationFailed):
            client.info()
        with pytest.raises(AuthenticationFailed):
            client.check(texts(register.opted_out[:2]), mode="hashed")


def test_mutual_tls_server_refuses_clients_without_a_certificate(
    tokens: dict[str, str], certs: Certs, mtls_server: str
) -> None:
    with (
        Client(mtls_server, ca_file=certs.ca, token=tokens["tls-org"], timeout=TIMEOUT) as c,
        pytest.raises(ServiceError),
    ):
        c.info()


def test_mutual_tls_server_refuses_certificates_of_another_ca(
    certs: Certs, foreign_certs: Certs, mtls_server: str
) -> None:
    cert, key = foreign_certs.client("org-a")
    with (
        Client(
            mtls_server, ca_file=certs.ca, client_cert=cert, client_key=key, timeout=TIMEOUT
        ) as c,
        pytest.raises(ServiceError),
    ):
        c.info()


def test_client_certificate_without_its_key_is_a_usage_error(certs: Certs, root: Path) -> None:
    cert, _ = certs.client("org-a")
    result = ndop(
        root,
        "check",
        root / "whatever.dat",
        "--server",
        "localhost:1",
        "--ca-file",
        certs.ca,
        "--cert",
        cert,
        "--out",
        root / "x.dat",
        "--purpose",
        "research",
    )
    assert result.returncode == 2, result.stderr
    one_sentence(result.stderr)


# --- tokens on --listen, certificates on --client-cert-listen ------------------------------------


@pytest.fixture(scope="module")
def two_port_server(
    register: Register, certs: Certs, tokens: dict[str, str]
) -> Iterator[tuple[str, str]]:
    """(token address, certificate address) of one server with both kinds of organisation."""
    tls = ServerTls(
        certs.server, certs.server_key, client_ca=certs.ca, client_cert_listen="127.0.0.1:0"
    )
    running = serve(register, tls)
    assert running.client_cert_port is not None
    try:
        yield f"localhost:{running.port}", f"localhost:{running.client_cert_port}"
    finally:
        running.stop(grace=1)


def test_token_and_certificate_organisations_share_one_server(
    register: Register, certs: Certs, tokens: dict[str, str], two_port_server: tuple[str, str]
) -> None:
    token_address, certificate_address = two_port_server
    cert, key = certs.client("org-a")
    cohort = texts(register.opted_out[:2]) + texts(register.not_opted_out[:2])
    with Client(
        token_address, ca_file=certs.ca, token=tokens["tls-org"], purpose="research"
    ) as by_token:
        first = by_token.check(cohort, mode="hashed")
    with Client(
        certificate_address,
        ca_file=certs.ca,
        client_cert=cert,
        client_key=key,
        purpose="research",
    ) as by_certificate:
        second = by_certificate.check(cohort, mode="hashed")
    assert first.opted_out_count == second.opted_out_count == 2
    assert audit_organisations(register, first.request_id) == ["tls-org"]
    assert audit_organisations(register, second.request_id) == ["org-a"]


def test_the_certificate_port_refuses_a_token_alone(
    tokens: dict[str, str], certs: Certs, two_port_server: tuple[str, str]
) -> None:
    _, certificate_address = two_port_server
    with (
        Client(certificate_address, ca_file=certs.ca, token=tokens["tls-org"]) as client,
        pytest.raises(ServiceError),
    ):
        client.info()


def test_the_token_port_does_not_take_a_certificate_for_a_token(
    certs: Certs, two_port_server: tuple[str, str]
) -> None:
    token_address, _ = two_port_server
    cert, key = certs.client("org-a")
    with (
        Client(token_address, ca_file=certs.ca, client_cert=cert, client_key=key) as client,
        pytest.raises(AuthenticationFailed),
    ):
        client.info()


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (("--client-ca", "CA"), "--require-client-cert"),
        (("--require-client-cert",), "need --client-ca"),
        (("--client-cert-listen", "127.0.0.1:0"), "need --client-ca"),
        (
            ("--client-ca", "CA", "--require-client-cert", "--client-cert-listen", "127.0.0.1:0"),
            "drop --client-cert-listen",
        ),
    ],
)
def test_serve_refuses_client_certificate_options_that_do_not_fit(
    register: Register, certs: Certs, root: Path, options: tuple[str, ...], expected: str
) -> None:
    substitutions = {"CA": str(certs.ca)}
    result = ndop(
        root,
        "serve",
        "--store",
        register.store_path,
        "--keys",
        register.keys_path,
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        certs.server,
        "--tls-key",
        certs.server_key,
        *(substitutions.get(part, part) for part in options),
        timeout=30,
    )
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert expected in one_sentence(result.stderr)


def test_serve_refuses_client_certificates_without_tls(
    register: Register, certs: Certs, root: Path
) -> None:
    result = ndop(
        root,
        "serve",
        "--store",
        register.store_path,
        "--keys",
        register.keys_path,
        "--listen",
        "127.0.0.1:0",
        "--insecure",
        "--client-ca",
        certs.ca,
        timeout=30,
    )
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "need TLS" in one_sentence(result.stderr)


# --- ndop serve ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        (),
        ("--tls-cert", "CERT"),
        ("--tls-key", "KEY"),
        ("--tls-cert", "missing.pem", "--tls-key", "missing-key.pem"),
    ],
)
def test_serve_without_tls_material_exits_2_with_one_sentence(
    register: Register, certs: Certs, root: Path, extra: tuple[str, ...]
) -> None:
    substitutions = {"CERT": str(certs.server), "KEY": str(certs.server_key)}
    result = ndop(
        root,
        "serve",
        "--store",
        register.store_path,
        "--keys",
        register.keys_path,
        "--listen",
        "127.0.0.1:0",
        *(substitutions.get(part, part) for part in extra),
        timeout=30,
    )
    assert result.returncode == 2, (result.returncode, result.stderr)
    line = one_sentence(result.stderr)
    if not extra:
        assert "--insecure" in line and "--tls-cert" in line, line
