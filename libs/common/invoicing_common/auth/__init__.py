"""Authentication and authorisation for the gRPC APIs.

Servers verify OIDC bearer tokens (``tokens``), gate every call by role and
quota (``interceptor``, ``quotas``) and speak TLS (``tls``); handlers read
the caller with ``current_principal()``. Clients get tokens by the OAuth2
client-credentials grant and send them on TLS channels (``client``).
"""

from invoicing_common.auth.client import (
    BearerAuth,
    ClientConfig,
    ConfigError,
    TokenError,
    TokenSource,
    secure_channel,
    secure_channel_sync,
)
from invoicing_common.auth.interceptor import AuthInterceptor
from invoicing_common.auth.principal import (
    ROLE_BUYER,
    ROLE_DIRECTORY_ADMIN,
    ROLE_OPERATOR,
    ROLE_SUPPLIER,
    ROLES,
    Principal,
    bind_principal,
    current_principal,
    optional_principal,
    reset_principal,
)
from invoicing_common.auth.quotas import RateLimiter, StreamLimiter, TokenBucket
from invoicing_common.auth.tls import channel_credentials, server_credentials
from invoicing_common.auth.tokens import InvalidToken, OidcConfig, TokenVerifier

__all__ = [
    "ROLES",
    "ROLE_BUYER",
    "ROLE_DIRECTORY_ADMIN",
    "ROLE_OPERATOR",
    "ROLE_SUPPLIER",
    "AuthInterceptor",
    "BearerAuth",
    "ClientConfig",
    "ConfigError",
    "InvalidToken",
    "OidcConfig",
    "Principal",
    "RateLimiter",
    "StreamLimiter",
    "TokenBucket",
    "TokenError",
    "TokenSource",
    "TokenVerifier",
    "bind_principal",
    "channel_credentials",
    "current_principal",
    "optional_principal",
    "reset_principal",
    "secure_channel",
    "secure_channel_sync",
    "server_credentials",
]
