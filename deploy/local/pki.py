"""The local stack's certificates: a CA of its own, one server certificate
for every TLS endpoint (the gRPC services, the identity provider and
Kafka's TLS listener), valid for the loopback names the stack writes to
`.run/env`, and client certificates for mTLS callers (Kafka's `operator`).

Created once under `.run/tls/`; kept while valid for at least a week, so
a client that trusted the CA keeps working across `make up`. Production
supplies its own certificates through the same settings.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from credentials import write_private
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# The names written to .run/env: clients connect to exactly these.
SERVER_NAMES = ("localhost",)
SERVER_ADDRESSES = ("127.0.0.1",)
VALIDITY = dt.timedelta(days=365)
RENEW_BEFORE = dt.timedelta(days=7)
# A CA that signs certificates and nothing else.
_CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=False, content_commitment=False, key_encipherment=False, data_encipherment=False,
    key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
)  # fmt: skip


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    # The server certificate followed by the CA (for servers such as
    # Keycloak that expect the chain in one file).
    server_chain: Path
    # Key, certificate and CA in one PEM file (Kafka's PEM key store).
    server_bundle: Path


@dataclass(frozen=True)
class ClientFiles:
    cert: Path
    key: Path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, common_name),
         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "invoicing local stack")]
    )  # fmt: skip


def _still_valid(path: Path, now: dt.datetime) -> bool:
    if not path.exists():
        return False
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return cert.not_valid_after_utc - now > RENEW_BEFORE


def _ca(folder: Path, now: dt.datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, bool]:
    """The CA's key and certificate, and whether they were just made."""
    cert_path, key_path = folder / "ca.pem", folder / "ca.key"
    if _still_valid(cert_path, now) and key_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return key, x509.load_pem_x509_certificate(cert_path.read_bytes()), False
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name("invoicing local CA")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_CA_KEY_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_private(key_path, _key_pem(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert, True


def _issue(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, common_name: str, server: bool, now: dt.datetime
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if server:
        alt_names: list[x509.GeneralName] = [x509.DNSName(n) for n in SERVER_NAMES]
        alt_names += [x509.IPAddress(ipaddress.ip_address(a)) for a in SERVER_ADDRESSES]
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        usage = ExtendedKeyUsageOID.SERVER_AUTH
    else:
        usage = ExtendedKeyUsageOID.CLIENT_AUTH
    builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def ensure(folder: Path, clients: tuple[str, ...] = ()) -> TlsFiles:
    """The CA, the server certificate and one client certificate per name
    in ``clients`` (its common name: the principal it authenticates as),
    under ``folder``; each created or renewed when missing or close to
    expiry. Keys are readable by their owner only."""
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key, ca_cert, renewed = _ca(folder, now)
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM).decode()
    files = TlsFiles(
        ca_cert=folder / "ca.pem",
        server_cert=folder / "server.pem",
        server_key=folder / "server.key",
        server_chain=folder / "server-chain.pem",
        server_bundle=folder / "server-bundle.pem",
    )
    if renewed or not (_still_valid(files.server_cert, now) and files.server_bundle.exists()):
        key, cert = _issue(ca_key, ca_cert, "localhost", server=True, now=now)
        pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        write_private(files.server_key, _key_pem(key))
        files.server_cert.write_text(pem)
        files.server_chain.write_text(pem + ca_pem)
        write_private(files.server_bundle, _key_pem(key) + pem + ca_pem)
    for name in clients:
        client = client_files(folder, name)
        if renewed or not (_still_valid(client.cert, now) and client.key.exists()):
            key, cert = _issue(ca_key, ca_cert, name, server=False, now=now)
            write_private(client.key, _key_pem(key))
            client.cert.write_text(cert.public_bytes(serialization.Encoding.PEM).decode() + ca_pem)
    return files


def client_files(folder: Path, name: str) -> ClientFiles:
    return ClientFiles(cert=folder / f"client-{name}.pem", key=folder / f"client-{name}.key")
