"""Throw-away TLS material for the devstack's Redis: a CA, a server certificate for
127.0.0.1/localhost and a client certificate (CN = the ACL user), made with openssl."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

ACL_USER = "wa-worker"
# EC keys: RSA key generation took seconds per key on a busy 2-core machine.
_NEW_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1")


@dataclass(frozen=True)
class Certificates:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def server_args(self) -> list[str]:
        return [
            *("--tls-cert-file", str(self.server_cert), "--tls-key-file", str(self.server_key)),
            *("--tls-ca-cert-file", str(self.ca), "--tls-auth-clients", "yes"),
        ]

    def env(self) -> dict[str, str]:
        return {
            "REDIS_TLS_CA_FILE": str(self.ca),
            "REDIS_TLS_CERT_FILE": str(self.client_cert),
            "REDIS_TLS_KEY_FILE": str(self.client_key),
        }

    def client_kwargs(self) -> dict[str, str]:
        return {
            "ssl_ca_certs": str(self.ca),
            "ssl_certfile": str(self.client_cert),
            "ssl_keyfile": str(self.client_key),
        }


def make_certificates(folder: Path) -> Certificates:
    """A throw-away CA, a server certificate for 127.0.0.1/localhost and a client one."""
    folder = folder.resolve()  # redis-server reads them from its own folder
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("openssl is needed for --redis-tls (apt-get install openssl)")
    folder.mkdir(parents=True, exist_ok=True)
    certs = Certificates(
        *(folder / n for n in ("ca.crt", "server.crt", "server.key", "client.crt", "client.key"))
    )
    if all(p.exists() for p in (certs.ca, certs.server_cert, certs.client_cert)):
        return certs
    ca_key = folder / "ca.key"
    run(
        openssl,
        *("req", "-x509", *_NEW_KEY, "-nodes", "-days", "30", "-subj", "/CN=wa-dev-ca"),
        *("-keyout", str(ca_key), "-out", str(certs.ca)),
    )
    extensions = folder / "server.ext"
    extensions.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for cert, key, name, ext in (
        (certs.server_cert, certs.server_key, "127.0.0.1", extensions),
        (certs.client_cert, certs.client_key, ACL_USER, None),
    ):
        csr = folder / f"{cert.stem}.csr"
        run(openssl, "req", *_NEW_KEY, "-nodes", "-subj", f"/CN={name}",
             "-keyout", str(key), "-out", str(csr))  # fmt: skip
        run(
            openssl,
            *("x509", "-req", "-in", str(csr), "-CA", str(certs.ca), "-CAkey", str(ca_key)),
            *("-CAcreateserial", "-days", "30", "-out", str(cert)),
            *(("-extfile", str(ext)) if ext else ()),
        )
        key.chmod(0o600)
    return certs


def run(*argv: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode:
        said = (result.stderr.strip() or result.stdout.strip())[-500:]
        raise RuntimeError(f"{' '.join(argv[:3])} failed: {said}")
