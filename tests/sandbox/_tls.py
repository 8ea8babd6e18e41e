"""A throwaway certificate authority and server certificate for the sandboxes' HTTPS.

Both sandboxes serve TLS on loopback so that ``validate_certs`` and ``ca_path`` can be
tested for real: clients must trust ``ca.pem`` or fail verification. The files are kept
in the state directory and reused on restart, so a client that already holds the CA
keeps working.

The ``cryptography`` package (in the project's .venv) does the work; when it is not
importable the ``openssl`` command line is used instead, so the sandboxes still need
nothing beyond the standard library and a stock system.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import ssl
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOSTS: tuple[str, ...] = ("127.0.0.1", "localhost", "::1")
VALID_DAYS = 825


@dataclass(frozen=True)
class TLSFiles:
    ca_file: Path
    cert_file: Path
    key_file: Path


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _generate_with_cryptography(files: TLSFiles, hosts: tuple[str, ...], common_name: str) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    # The clock may be a little behind on a freshly booted machine: start validity a day early.
    not_before = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
    not_after = not_before + datetime.timedelta(days=VALID_DAYS)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{common_name} CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    server_key = ec.generate_private_key(ec.SECP256R1())
    alt_names: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address(h)) if _is_ip(h) else x509.DNSName(h) for h in hosts
    ]
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    pem = serialization.Encoding.PEM
    files.ca_file.write_bytes(ca_cert.public_bytes(pem))
    files.cert_file.write_bytes(server_cert.public_bytes(pem) + ca_cert.public_bytes(pem))
    _write_private(
        files.key_file,
        server_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )


def _generate_with_openssl(files: TLSFiles, hosts: tuple[str, ...], common_name: str) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError(
            "--tls needs the 'cryptography' Python package or the openssl command; install one of them."
        )
    san = ",".join(f"IP:{h}" if _is_ip(h) else f"DNS:{h}" for h in hosts)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ca_key, server_csr, ext = work / "ca.key", work / "server.csr", work / "ext.cnf"
        ext.write_text(
            f"basicConstraints=critical,CA:FALSE\nsubjectAltName={san}\nextendedKeyUsage=serverAuth\n"
        )

        def run(*args: str) -> None:
            subprocess.run([openssl, *args], check=True, capture_output=True)

        run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(ca_key), "-out", str(files.ca_file), "-days", str(VALID_DAYS),
            "-subj", f"/CN={common_name} CA",
            "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature")
        run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(files.key_file), "-out", str(server_csr), "-subj", f"/CN={common_name}")
        run("x509", "-req", "-in", str(server_csr), "-CA", str(files.ca_file), "-CAkey", str(ca_key),
            "-CAcreateserial", "-out", str(files.cert_file), "-days", str(VALID_DAYS),
            "-extfile", str(ext))
        os.chmod(files.key_file, 0o600)
        files.cert_file.write_bytes(files.cert_file.read_bytes() + files.ca_file.read_bytes())


def ensure_certificates(
    directory: Path, hosts: tuple[str, ...] = DEFAULT_HOSTS, common_name: str = "xapi sandbox"
) -> TLSFiles:
    """Return the CA and server certificate in ``directory``, creating them on first use.

    Writes ``ca.pem`` (what clients trust), ``server.pem`` (leaf + CA) and ``server-key.pem`` (0600).
    """
    directory.mkdir(parents=True, exist_ok=True)
    files = TLSFiles(directory / "ca.pem", directory / "server.pem", directory / "server-key.pem")
    if all(path.is_file() and path.stat().st_size > 0 for path in (files.ca_file, files.cert_file, files.key_file)):
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(files.cert_file, files.key_file)
            return files
        except (ssl.SSLError, OSError):
            pass  # unreadable leftovers from an interrupted run: make new ones
    try:
        import cryptography  # noqa: F401
    except ImportError:
        _generate_with_openssl(files, hosts, common_name)
    else:
        _generate_with_cryptography(files, hosts, common_name)
    return files


def server_context(files: TLSFiles) -> ssl.SSLContext:
    """A server-side TLS context (TLS 1.2+) presenting the sandbox certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(files.cert_file, files.key_file)
    return context
