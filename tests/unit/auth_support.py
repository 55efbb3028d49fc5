"""Test helpers for auth: throwaway keys, JWKS, signed tokens and a private CA."""

from __future__ import annotations

import datetime
import http.server
import ipaddress
import json
import ssl
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ISSUER = "https://idp.test/realms/invoicing"
AUDIENCE = "invoicing-api"
NOW = 1_800_000_000.0
# Valid SIRENs (Luhn).
SIREN_A = "732829320"
SIREN_B = "552100554"

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def jwk(key: PrivateKey, kid: str | None, **extra: Any) -> dict[str, Any]:
    """The public half of ``key`` as a JWK; without a "kid" when ``kid`` is None."""
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        data = jwt.algorithms.RSAAlgorithm.to_jwk(public, as_dict=True)
    else:
        data = jwt.algorithms.ECAlgorithm.to_jwk(public, as_dict=True)
    named = {"kid": kid} if kid is not None else {}
    return {**data, **named, **extra}


def jwks(*keys: dict[str, Any]) -> dict[str, Any]:
    return {"keys": list(keys)}


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "account-1",
        "azp": "supplier-client",
        "iat": int(NOW),
        "exp": int(NOW) + 300,
        "roles": ["supplier"],
        "sirens": [SIREN_A],
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def mint(key: PrivateKey | bytes | str, kid: str | None, payload: dict[str, Any], alg: str = "RS256") -> str:
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode(payload, key, algorithm=alg, headers=headers)  # type: ignore[arg-type]


def public_pem(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True)
class Pki:
    ca_file: str
    cert_file: str
    key_file: str
    client_cert_file: str
    client_key_file: str


def make_pki(directory: Path) -> Pki:
    """A CA, a server certificate for 127.0.0.1/localhost and a client
    certificate, written as PEM files."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec_key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "invoicing test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(name: str, usage: x509.ObjectIdentifier, san: list[x509.GeneralName]) -> tuple[bytes, bytes]:
        key = ec_key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return cert.public_bytes(serialization.Encoding.PEM), key_pem

    server_cert, server_key = leaf(
        "localhost",
        ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    client_cert, client_key = leaf("test-client", ExtendedKeyUsageOID.CLIENT_AUTH, [])
    files = {
        "ca.pem": ca_cert.public_bytes(serialization.Encoding.PEM),
        "server.pem": server_cert,
        "server-key.pem": server_key,
        "client.pem": client_cert,
        "client-key.pem": client_key,
    }
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return Pki(
        ca_file=str(directory / "ca.pem"),
        cert_file=str(directory / "server.pem"),
        key_file=str(directory / "server-key.pem"),
        client_cert_file=str(directory / "client.pem"),
        client_key_file=str(directory / "client-key.pem"),
    )


Route = Callable[[str, str, Mapping[str, str], bytes], tuple[int, dict[str, Any]]]


class LocalHttpServer:
    """A JSON HTTP(S) server on 127.0.0.1 in a thread: ``route(method, path,
    headers, body)`` answers (status, JSON object). Use as a context manager."""

    def __init__(self, route: Route, pki: Pki | None = None) -> None:
        outer = self
        self.requests: list[tuple[str, str]] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.requests.append((self.command, self.path))
                status, document = route(self.command, self.path, dict(self.headers.items()), body)
                data = json.dumps(document).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer  # noqa: N815

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if pki is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(pki.cert_file, pki.key_file)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        scheme = "https" if pki is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self._server.server_address[1]}"
        # shutdown() waits for the serving loop's next poll: keep it short.
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def __enter__(self) -> LocalHttpServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
