"""Several addresses for one service: `--server a:443,b:443,c:443`.

Each address gets its own channel; checks take turns across them, and a check whose replica
cannot be reached, or dies mid-way, is run again from the start on the next one (a new
request: what the lost replica answered stays charged and audited there as interrupted). A
single name with several DNS records is balanced by gRPC itself (round_robin).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import grpc

from ndop_client.transport import TlsSettings, open_channel
from ndop_core.errors import UsageError
from ndop_core.proto import ndop_pb2_grpc

ROUND_ROBIN: Final = '{"loadBalancingConfig": [{"round_robin": {}}]}'


@dataclass(frozen=True)
class Replica:
    address: str
    channel: grpc.Channel
    stub: ndop_pb2_grpc.OptOutRegisterStub


def addresses_of(servers: str) -> list[str]:
    listed = [part.strip() for part in servers.split(",")]
    if not all(listed):
        raise UsageError(f"server addresses {servers!r} are not HOST:PORT[,HOST:PORT...]")
    return listed


class ReplicaSet:
    def __init__(self, servers: str, tls: TlsSettings) -> None:
        self._replicas: list[Replica] = []
        try:
            for address in addresses_of(servers):
                channel = open_channel(address, tls, (("grpc.service_config", ROUND_ROBIN),))
                self._replicas.append(
                    Replica(address, channel, ndop_pb2_grpc.OptOutRegisterStub(channel))
                )
        except BaseException:
            self.close()
            raise
        self._next = 0

    def __len__(self) -> int:
        return len(self._replicas)

    @property
    def current(self) -> Replica:
        return self._replicas[self._next % len(self._replicas)]

    def advance(self) -> Replica:
        """The next replica in turn."""
        self._next += 1
        return self.current

    def close(self) -> None:
        for replica in self._replicas:
            replica.channel.close()
