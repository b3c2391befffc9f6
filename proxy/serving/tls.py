"""TLS on the data port (contract §5, `tls:` in the config): the server's credentials, with client
certificates required (mTLS) when `tls.client_ca_file` names the CA that signs them.

The files are read and checked at start, so that a bad one stops `turnout serve` with a message
naming the setting; gRPC itself would only log "Invalid private key" and fail to add the port.
"""

from __future__ import annotations

from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from proxy.config import TlsSpec
from proxy.errors import ConfigError


def server_credentials(tls: TlsSpec) -> grpc.ServerCredentials:
    """The data port's credentials; ConfigError naming the setting of a file that cannot be read, is
    not what it should hold, or (the key) does not belong to the certificate."""
    chain = _read(tls.cert_file, "tls.cert_file")
    key = _read(tls.key_file, "tls.key_file")
    try:
        certificate = x509.load_pem_x509_certificates(chain)[0]
    except ValueError:
        raise ConfigError(f"tls.cert_file: {tls.cert_file} holds no PEM certificate") from None
    try:
        private_key = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError):
        # TypeError: a key encrypted with a passphrase, which the proxy has no way to be given.
        raise ConfigError(f"tls.key_file: {tls.key_file} holds no unencrypted PEM private key") from None
    if _public(private_key.public_key()) != _public(certificate.public_key()):
        raise ConfigError(f"tls.key_file: {tls.key_file} is not the key of the certificate in tls.cert_file")
    if tls.client_ca_file is None:
        return grpc.ssl_server_credentials([(key, chain)])
    client_ca = _read(tls.client_ca_file, "tls.client_ca_file")
    try:
        x509.load_pem_x509_certificates(client_ca)
    except ValueError:
        raise ConfigError(f"tls.client_ca_file: {tls.client_ca_file} holds no PEM certificate") from None
    return grpc.ssl_server_credentials([(key, chain)], root_certificates=client_ca, require_client_auth=True)


def _read(path: Path, setting: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {path}: {exc.strerror or exc}") from None


def _public(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
