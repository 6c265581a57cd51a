"""The agent's TLS identity: a P-256 key and a self-signed certificate, made on first start.

There is no CA: the engine pins the SHA-256 fingerprint of this certificate (read over SSH at
install, or from the first heartbeat), so the certificate only has to stay the same. It is made
with the openssl command line tool (a fixed argument list, no shell), which keeps a crypto
library out of the agent's memory. The key never leaves the server and is kept mode 0600.

The server speaks TLS 1.3, or TLS 1.2 with an ephemeral key exchange and an AEAD cipher
(`CIPHERS`); nothing older than 1.2 (Python's floor for a server context), no CBC suite.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import ssl
import subprocess
import tempfile
from pathlib import Path

VALID_DAYS = 3650
# The TLS 1.2 suites the server accepts (OpenSSL's syntax; TLS 1.3 suites are all AEAD and
# not chosen by this string). Uvicorn's default would take any TLS 1.0 suite, CBC included.
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


class TlsError(Exception):
    """The key and certificate could not be made or read."""


def fingerprint(cert_pem: str) -> str:
    """The SHA-256 of the certificate's DER encoding, as 64 lowercase hex digits."""
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert_pem)).hexdigest()


def ensure_certificate(cert: Path, key: Path, *, common_name: str) -> str:
    """Make the key and certificate unless both exist; return the certificate's fingerprint."""
    if not (cert.is_file() and key.is_file()):
        _generate(cert, key, common_name)
    key.chmod(0o600)
    try:
        return fingerprint(cert.read_text(encoding="ascii"))
    except (OSError, ValueError) as exc:
        raise TlsError(f"{cert}: not a PEM certificate ({exc}); delete it and restart") from None


def _generate(cert: Path, key: Path, common_name: str) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise TlsError("the openssl command is not installed; it makes the agent's certificate")
    for folder in {cert.parent, key.parent}:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Both files are written in a private temporary directory and moved in place, key first:
    # a crash in between leaves no certificate, so the next start makes a new pair.
    old_umask = os.umask(0o077)
    try:
        with tempfile.TemporaryDirectory(dir=key.parent, prefix=".tls-") as tmp:
            new_key, new_cert = Path(tmp) / "key.pem", Path(tmp) / "cert.pem"
            result = subprocess.run(
                [
                    openssl,
                    "req",
                    "-x509",
                    "-new",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                    "-keyout",
                    str(new_key),
                    "-out",
                    str(new_cert),
                    "-days",
                    str(VALID_DAYS),
                    "-subj",
                    f"/CN={common_name}",
                    "-addext",
                    f"subjectAltName=DNS:{common_name}",
                    "-addext",
                    "basicConstraints=critical,CA:FALSE",
                    "-addext",
                    "extendedKeyUsage=serverAuth",
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode != 0:
                raise TlsError(f"openssl could not make a certificate: {result.stderr.strip()}")
            new_key.replace(key)
            new_cert.replace(cert)
    finally:
        os.umask(old_umask)
