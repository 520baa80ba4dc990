"""The management endpoint's TLS: a small local CA nsp-proxy makes once, and a server certificate it signs.

The Azure SDK sends bearer tokens only over HTTPS, so the endpoint needs a certificate a client can be told to
trust. A CA (not a lone self-signed leaf) because Python 3.13's default verification (``VERIFY_X509_STRICT``)
wants a proper chain: a CA with basic constraints and key identifiers, and a server certificate with the
endpoint's names and addresses. The CA certificate is written where the operator asked (``certFile``), its key
beside it (mode 0600); both are reused on the next start, so a client's trust survives restarts. The server
certificate is made at every start for the names of ``listen`` plus localhost, 127.0.0.1 and ::1.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_DAYS = 825  # what browsers and strict clients accept for a server certificate


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` atomically, readable by the owner only."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(tmp, path)


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _ca(ca_file: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA at ``ca_file`` (key in ``<ca_file>.key``), made if either is missing or unreadable."""
    key_file = ca_file.with_name(ca_file.name + ".key")
    try:
        cert = x509.load_pem_x509_certificate(ca_file.read_bytes())
        key = serialization.load_pem_private_key(key_file.read_bytes(), None)
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return cert, key
    except (OSError, ValueError):
        pass
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    public = key.public_key()
    cert = (x509.CertificateBuilder().subject_name(_name("nsp-proxy management CA")).issuer_name(
        _name("nsp-proxy management CA")).public_key(public).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256()))
    ca_file.parent.mkdir(parents=True, exist_ok=True)
    _write_private(key_file, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    tmp = ca_file.with_name(ca_file.name + ".tmp")
    tmp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    os.replace(tmp, ca_file)
    return cert, key


def server_context(ca_file: Path, host: str) -> ssl.SSLContext:
    """A TLS server context for the endpoint on ``host``, its certificate signed by the CA at ``ca_file``."""
    ca_cert, ca_key = _ca(ca_file)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    names: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                     x509.IPAddress(ipaddress.ip_address("::1"))]
    try:
        address = ipaddress.ip_address(host)
        if not address.is_unspecified and x509.IPAddress(address) not in names:
            names.append(x509.IPAddress(address))
    except ValueError:
        if host and host != "localhost":
            names.append(x509.DNSName(host))
    cert = (x509.CertificateBuilder().subject_name(_name("nsp-proxy management")).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    chain = ca_file.with_name(ca_file.name + ".server.pem")  # key + certificate, for load_cert_chain (a file)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    _write_private(chain, pem + cert.public_bytes(serialization.Encoding.PEM))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(chain)
    return context
