from __future__ import annotations

from ndop_client import Client, Status
from tests.conftest import Register


def test_sdk_check_both_modes_agree(register: Register, address: str) -> None:
    numbers = [f"{v:010d}" for v in register.opted_out[:50].tolist()] + [
        f"{v:010d}" for v in register.not_opted_out[:50].tolist()
    ]
    with Client(address, insecure=True, purpose="research") as client:
        private = client.check(numbers, mode="private")
        hashed = client.check(numbers, mode="hashed")
    assert private.statuses == hashed.statuses
    assert private.statuses == [Status.OPTED_OUT] * 50 + [Status.CLEARED] * 50
    assert private.register_version == hashed.register_version == 1
