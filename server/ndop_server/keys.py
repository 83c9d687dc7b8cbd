"""The register keys file: every secret the register needs, kept apart from the store.

A copy of the store without this file cannot be used to test whether a number opted out: the
store only holds values keyed with `store_key` or the OPRF key. The file is JSON, written with
mode 0600 and refused when other users can read it.

Format ndop-keys/2 says the store's tokens are ndop-token-v2 (ndop_server.tokens); a file in
ndop-keys/1 was made before, and its store key stays a LegacyStoreKey (ndop-token-v1 tokens)
until `ndop keys rotate --register` replaces it, so that a store keeps the tokens it holds.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import stat
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ndop_core.crypto import oprf
from ndop_core.hashing import SALT_SIZE
from ndop_server.audit_chain import audit_key
from ndop_server.errors import ConfigurationError
from ndop_server.tokens import LegacyStoreKey

FORMAT: Final = "ndop-keys/2"
LEGACY_FORMAT: Final = "ndop-keys/1"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass(frozen=True)
class RegisterKeys:
    register_id: str
    created_at: str
    salt: bytes
    store_key: bytes
    oprf_key: bytes
    signing_seed: bytes
    retired_signing_keys: tuple[bytes, ...] = ()
    """Public keys of earlier signing keys, so that receipts they signed still verify."""
    audit_secret: bytes | None = None
    """What the audit chain is keyed with once the store key has been rotated (the first
    store key); until then the store key itself, so the chain outlives every rotation."""

    @classmethod
    def generate(cls) -> RegisterKeys:
        return cls(
            register_id=f"reg-{secrets.token_hex(8)}",
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            salt=secrets.token_bytes(SALT_SIZE),
            store_key=secrets.token_bytes(32),
            oprf_key=oprf.generate_secret_key(),
            signing_seed=secrets.token_bytes(32),
        )

    @property
    def oprf_key_id(self) -> str:
        """Public identifier of the OPRF key: a hash of its public key."""
        return hashlib.sha256(oprf.public_key(self.oprf_key)).hexdigest()[:16]

    @property
    def audit_key(self) -> bytes:
        return audit_key(self.audit_secret or self.store_key)

    def with_new_signing_key(self) -> RegisterKeys:
        return replace(
            self,
            signing_seed=secrets.token_bytes(32),
            retired_signing_keys=(*self.retired_signing_keys, self.signing_public_key),
        )

    def with_new_register_secrets(self) -> RegisterKeys:
        """New salt, store key and OPRF key for the same register; the signing key and the
        audit chain's key stay."""
        return replace(
            self,
            salt=secrets.token_bytes(SALT_SIZE),
            store_key=secrets.token_bytes(32),
            oprf_key=oprf.generate_secret_key(),
            audit_secret=self.audit_secret or self.store_key,
        )

    @property
    def signing_key(self) -> Ed25519PrivateKey:
        return Ed25519PrivateKey.from_private_bytes(self.signing_seed)

    @property
    def signing_public_key(self) -> bytes:
        return self.signing_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": LEGACY_FORMAT if isinstance(self.store_key, LegacyStoreKey) else FORMAT,
            "register_id": self.register_id,
            "created_at": self.created_at,
            "salt": _b64(self.salt),
            "store_key": _b64(self.store_key),
            "oprf_key": _b64(self.oprf_key),
            "signing_key": _b64(self.signing_seed),
            "retired_signing_public_keys": [key.hex() for key in self.retired_signing_keys],
            **({"audit_secret": _b64(self.audit_secret)} if self.audit_secret else {}),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RegisterKeys:
        if data.get("format") not in (FORMAT, LEGACY_FORMAT):
            raise ConfigurationError(f"the keys file is not in format {FORMAT}")
        try:
            store_key = base64.b64decode(data["store_key"], validate=True)
            return cls(
                register_id=str(data["register_id"]),
                created_at=str(data["created_at"]),
                salt=base64.b64decode(data["salt"], validate=True),
                store_key=(
                    LegacyStoreKey(store_key) if data["format"] == LEGACY_FORMAT else store_key
                ),
                oprf_key=base64.b64decode(data["oprf_key"], validate=True),
                signing_seed=base64.b64decode(data["signing_key"], validate=True),
                retired_signing_keys=tuple(
                    bytes.fromhex(key) for key in data.get("retired_signing_public_keys", [])
                ),
                audit_secret=(
                    base64.b64decode(data["audit_secret"], validate=True)
                    if "audit_secret" in data
                    else None
                ),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise ConfigurationError("the keys file is missing a field or has a bad value") from exc


def save(path: Path, keys: RegisterKeys) -> None:
    """Replace the keys file with `keys`, atomically and owner-only; the file it replaces is
    kept beside it as PATH.previous (also owner-only) until the next rotation."""
    temporary = path.with_name(f".{path.name}.new")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(keys.to_json(), handle, indent=2)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        if path.exists():
            os.replace(path, path.with_name(f"{path.name}.previous"))
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise ConfigurationError(f"cannot write keys file {path}: {exc.strerror}") from exc


def restore_previous(path: Path) -> None:
    """Undo the last `save`: PATH.previous becomes PATH again."""
    os.replace(path.with_name(f"{path.name}.previous"), path)


def write_new(path: Path) -> RegisterKeys:
    """Create a keys file with fresh keys; never overwrites an existing file."""
    keys = RegisterKeys.generate()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise ConfigurationError(
            f"{path} already exists; refusing to overwrite register keys"
        ) from exc
    except OSError as exc:
        raise ConfigurationError(f"cannot create {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "w") as handle:
        json.dump(keys.to_json(), handle, indent=2)
        handle.write("\n")
    return keys


def load(path: Path) -> RegisterKeys:
    """Read a keys file, refusing one that other users could read."""
    try:
        mode = path.stat().st_mode
        text = path.read_text()
    except FileNotFoundError as exc:
        raise ConfigurationError(f"keys file {path} does not exist; run 'ndop keys init'") from exc
    except OSError as exc:
        raise ConfigurationError(f"cannot read keys file {path}: {exc.strerror}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigurationError(
            f"keys file {path} is accessible to other users; run 'chmod 600 {path}'"
        )
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"keys file {path} is not valid JSON") from exc
    if not isinstance(data, dict):
        raise ConfigurationError(f"keys file {path} is not a JSON object")
    return RegisterKeys.from_json(data)
