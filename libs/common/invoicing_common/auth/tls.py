"""gRPC TLS credentials from PEM files.

gRPC reports a bad certificate file late and vaguely (a server that will not
bind, a channel that stays UNAVAILABLE), so the files are read and checked
here, and an error names the setting and the file.
"""

from __future__ import annotations

import grpc


def server_credentials(cert_file: str, key_file: str, client_ca_file: str | None = None) -> grpc.ServerCredentials:
    """The server's certificate chain and key. With ``client_ca_file``, clients
    must present a certificate that CA signed (mutual TLS)."""
    cert = _read_pem("grpc_tls_cert_file", cert_file)
    key = _read_pem("grpc_tls_key_file", key_file)
    client_ca = _read_pem("grpc_tls_client_ca_file", client_ca_file) if client_ca_file else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def channel_credentials(ca_file: str | None, setting: str = "grpc_tls_ca_file") -> grpc.ChannelCredentials:
    """Trust the servers ``ca_file`` signed, or the system's roots when None.
    ``setting`` names where the path came from, for the error message."""
    return grpc.ssl_channel_credentials(root_certificates=_read_pem(setting, ca_file) if ca_file else None)


def _read_pem(setting: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ValueError(f"{setting}: cannot read {path}: {exc.strerror or exc}") from exc
    if b"-----BEGIN " not in data:
        raise ValueError(f"{setting}: {path} holds no PEM block")
    return data
