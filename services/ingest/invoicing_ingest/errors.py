"""The one refusal ingest's API gives: a gRPC status and the field at fault."""

from __future__ import annotations

import grpc


class RequestError(Exception):
    def __init__(self, code: grpc.StatusCode, field: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.field = field
        self.message = message

    @property
    def details(self) -> str:
        """The status details callers read: "field: message"."""
        return f"{self.field}: {self.message}" if self.field else self.message


def invalid(field: str, message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, field, message)
