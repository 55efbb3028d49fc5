"""Who is calling: the account a verified token speaks for.

The interceptor binds the Principal in a ContextVar for the duration of one
RPC, so handlers and the use cases they call read it without threading it
through every signature.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

ROLE_SUPPLIER = "supplier"
ROLE_BUYER = "buyer"
ROLE_DIRECTORY_ADMIN = "directory-admin"
ROLE_OPERATOR = "operator"
# Another approved platform (its OAuth2 client): delivers invoices of its
# sellers and sends CDAR lifecycle messages; PLATFORMS_FILE says which.
ROLE_PLATFORM = "platform"
ROLES = frozenset({ROLE_SUPPLIER, ROLE_BUYER, ROLE_DIRECTORY_ADMIN, ROLE_OPERATOR, ROLE_PLATFORM})


@dataclass(frozen=True)
class Principal:
    subject: str
    # The OAuth client the token was issued to; empty when the issuer does not say.
    client_id: str
    roles: frozenset[str]
    # The companies (SIRENs) this account may act for.
    sirens: frozenset[str]
    # Epoch seconds.
    expires_at: float

    def has_role(self, role: str) -> bool:
        return role in self.roles

    def acts_for(self, siren: str) -> bool:
        return siren in self.sirens


_current: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("invoicing_principal", default=None)


def current_principal() -> Principal:
    """The caller of the RPC being handled. Raises when there is none: code
    that needs a caller but runs outside an authenticated call is a bug."""
    principal = _current.get()
    if principal is None:
        raise RuntimeError("no authenticated principal")
    return principal


def optional_principal() -> Principal | None:
    return _current.get()


def bind_principal(principal: Principal) -> contextvars.Token[Principal | None]:
    return _current.set(principal)


def reset_principal(token: contextvars.Token[Principal | None]) -> None:
    _current.reset(token)
