"""A small per-site certificate authority: one CA, a broker (server) certificate, optional client certificates.

Theory of operation:
- all keys are ECDSA P-256 (secp256r1): small enough for a node's mbedTLS (MicroPython's ``ssl`` on ESP32) and
  supported by every MQTT broker; signatures are ECDSA-SHA256;
- the CA is a self-signed root with ``BasicConstraints(ca=True, path_length=0)`` so it can sign leaf certificates
  only; leaves carry the matching ``ExtendedKeyUsage`` (serverAuth for the broker, clientAuth for nodes/gateway)
  and, for the broker, subjectAltNames (DNS names and IP addresses) that clients check;
- nodes pin the site CA: the provisioning tool copies ``ca.crt`` (PEM) and ``ca.der`` (DER, what MicroPython's
  ``SSLContext.load_verify_locations(cadata=...)`` takes) next to ``config.json``; a node trusts this CA only,
  never a system store. ``ca_fingerprint`` gives the SHA-256 of the CA certificate for out-of-band checks;
- layout of the PKI directory: ``ca.crt ca.der ca.key server.crt server.key`` and ``clients/<name>.crt|key``;
  private keys are written with mode 0600, unencrypted (the directory lives on the gateway server next to the
  keystore; see docs/SECURITY.md for what that means).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650  # site CA: 10 years; rotating it means re-flashing every node's pinned CA
LEAF_DAYS = 825  # leaf certificates: the CA/Browser Forum's former 825-day ceiling, a common private-PKI default
CLOCK_SKEW = _dt.timedelta(hours=1)  # not-before backdated: nodes' clocks come from NTP/GNSS and may lag


class PKIError(Exception):
    """Missing CA, bad name, or an existing file that would be overwritten."""


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def _write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, 0o644)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC)


class SiteCA:
    """The CA of one site, backed by a directory."""

    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(directory)

    # -- paths -----------------------------------------------------------------------------------------------
    @property
    def ca_crt(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def ca_der(self) -> Path:
        return self.dir / "ca.der"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def server_crt(self) -> Path:
        return self.dir / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.dir / "server.key"

    def client_paths(self, name: str) -> tuple[Path, Path]:
        return self.dir / "clients" / f"{name}.crt", self.dir / "clients" / f"{name}.key"

    def exists(self) -> bool:
        return self.ca_crt.exists() and self.ca_key.exists()

    def has_server(self) -> bool:
        return self.exists() and self.server_crt.exists() and self.server_key.exists()

    # -- operations ------------------------------------------------------------------------------------------
    def init(self, site: str, days: int = CA_DAYS, force: bool = False) -> Path:
        """Create the CA key and self-signed certificate; refuses to overwrite unless ``force``."""
        if self.exists() and not force:
            raise PKIError(f"a CA already exists in {self.dir} (use --force to replace it and re-flash all nodes)")
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Lookout"),
                          x509.NameAttribute(NameOID.COMMON_NAME, f"Lookout {site} CA")])
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        now = _now()
        cert = (x509.CertificateBuilder()
                .subject_name(name).issuer_name(name)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - CLOCK_SKEW)
                .not_valid_after(now + _dt.timedelta(days=days))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                             key_encipherment=False, data_encipherment=False, key_agreement=False,
                                             key_cert_sign=True, crl_sign=True, encipher_only=False,
                                             decipher_only=False), critical=True)
                .add_extension(ski, critical=False)
                .sign(key, hashes.SHA256()))
        _write_private(self.ca_key, _key_pem(key))
        _write_public(self.ca_crt, cert.public_bytes(serialization.Encoding.PEM))
        _write_public(self.ca_der, cert.public_bytes(serialization.Encoding.DER))
        return self.ca_crt

    def _load_ca(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        if not self.exists():
            raise PKIError(f"no CA in {self.dir}: run `lookout pki init` first")
        cert = x509.load_pem_x509_certificate(self.ca_crt.read_bytes())
        key = serialization.load_pem_private_key(self.ca_key.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PKIError("CA key is not an EC key")
        return cert, key

    def _issue(self, cn: str, server: bool, hosts: list[str], days: int) -> tuple[bytes, bytes]:
        ca_cert, ca_key = self._load_ca()
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        b = (x509.CertificateBuilder()
             .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Lookout"),
                                      x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
             .issuer_name(ca_cert.subject)
             .public_key(key.public_key())
             .serial_number(x509.random_serial_number())
             .not_valid_before(now - CLOCK_SKEW)
             .not_valid_after(min(now + _dt.timedelta(days=days), ca_cert.not_valid_after_utc))
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                          data_encipherment=False, key_agreement=True, key_cert_sign=False,
                                          crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
             .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                   else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
             .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                            critical=False))
        if server:
            sans: list[x509.GeneralName] = []
            for h in hosts or ["localhost", "127.0.0.1"]:
                try:
                    sans.append(x509.IPAddress(ipaddress.ip_address(h)))
                except ValueError:
                    sans.append(x509.DNSName(h))
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = b.sign(ca_key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)

    def issue_server(self, hosts: list[str], days: int = LEAF_DAYS) -> tuple[Path, Path]:
        """Broker certificate for ``hosts`` (DNS names and/or IP addresses, the first is the CN)."""
        hosts = list(hosts) or ["localhost", "127.0.0.1"]
        crt, key = self._issue(hosts[0], True, hosts, days)
        _write_private(self.server_key, key)
        _write_public(self.server_crt, crt)
        return self.server_crt, self.server_key

    def issue_client(self, name: str, days: int = LEAF_DAYS) -> tuple[Path, Path]:
        """Client certificate with CN = ``name`` (a device, gateway or operator id)."""
        from lookout.protocols.topics import is_valid_id

        if not is_valid_id(name):
            raise PKIError(f"invalid client name {name!r}: expected a device/operator id")
        crt, key = self._issue(name, False, [], days)
        crt_p, key_p = self.client_paths(name)
        _write_private(key_p, key)
        _write_public(crt_p, crt)
        return crt_p, key_p

    def fingerprint(self) -> str:
        return ca_fingerprint(self.ca_crt)


def ca_fingerprint(ca_crt: str | os.PathLike) -> str:
    """SHA-256 of the CA certificate's DER encoding, lower-case hex (what nodes may pin besides the CA file)."""
    cert = x509.load_pem_x509_certificate(Path(ca_crt).read_bytes())
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def describe(path: str | os.PathLike) -> dict:
    """Subject, issuer, validity and SANs of a PEM certificate (for `lookout pki show`)."""
    cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(v) for v in san.get_values_for_type(x509.DNSName)] + \
                [str(v) for v in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        names = []
    return {"subject": cert.subject.rfc4514_string(), "issuer": cert.issuer.rfc4514_string(),
            "not_before": cert.not_valid_before_utc.isoformat(), "not_after": cert.not_valid_after_utc.isoformat(),
            "san": names, "sha256": hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()}
