"""Who is calling: an organisation, from its bearer token or its client certificate.

A call with neither, or with an unknown or revoked credential, is UNAUTHENTICATED. A call
presenting both a token and a certificate of different organisations is PERMISSION_DENIED.
Error details never echo what was presented.
"""

from __future__ import annotations

from typing import Final

import grpc

from ndop_server.accounts import Accounts, Organisation

_BEARER: Final = "bearer "


class AccessDenied(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class Gatekeeper:
    def __init__(self, accounts: Accounts) -> None:
        self._accounts = accounts

    def organisation(self, context: grpc.ServicerContext) -> Organisation:
        by_token = self._from_token(context)
        by_certificate = self._from_certificate(context)
        if by_token and by_certificate and by_token.name != by_certificate.name:
            raise AccessDenied(
                grpc.StatusCode.PERMISSION_DENIED,
                "the token and the client certificate belong to different organisations",
            )
        found = by_token or by_certificate
        if found is None:
            raise AccessDenied(
                grpc.StatusCode.UNAUTHENTICATED,
                "an organisation token (authorization: Bearer ...) or client certificate is "
                "required",
            )
        return found

    def _from_token(self, context: grpc.ServicerContext) -> Organisation | None:
        values = [v for k, v in context.invocation_metadata() if k == "authorization"]
        if not values:
            return None
        if len(values) > 1:
            raise AccessDenied(
                grpc.StatusCode.UNAUTHENTICATED, "send one authorization header, not several"
            )
        value = values[0] if isinstance(values[0], str) else ""
        if not value.lower().startswith(_BEARER):
            raise AccessDenied(
                grpc.StatusCode.UNAUTHENTICATED, "the authorization header must be 'Bearer TOKEN'"
            )
        organisation = self._accounts.authenticate(value[len(_BEARER) :].strip())
        if organisation is None:
            raise AccessDenied(
                grpc.StatusCode.UNAUTHENTICATED, "the token is not valid or has been revoked"
            )
        return organisation

    def _from_certificate(self, context: grpc.ServicerContext) -> Organisation | None:
        names = context.auth_context().get("x509_common_name")
        if not names or not isinstance(names, list):
            return None
        name = bytes(names[0]).decode("utf-8", errors="replace")
        organisation = self._accounts.get(name)
        if organisation is None or organisation.revoked_at:
            raise AccessDenied(
                grpc.StatusCode.UNAUTHENTICATED,
                "the client certificate names no active organisation",
            )
        return organisation
