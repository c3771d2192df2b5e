"""How the server may be reached: TLS for gRPC and HTTP from --tls-cert/--tls-key (and client
certificates required with --tls-client-ca), and the rule that keeps a server from being open
by accident: off loopback, auth must be on unless --insecure says otherwise."""

from __future__ import annotations

import ipaddress
import ssl

import grpc

from runstream.server.runtime.config import Settings


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: it may resolve to anything
        return False


def refusal(settings: Settings) -> str | None:
    """Why the server must not start with these settings, in one line; None when it may."""
    if bool(settings.tls_cert) != bool(settings.tls_key):
        return "runstream: give --tls-cert and --tls-key together"
    if settings.tls_client_ca and not settings.tls_cert:
        return "runstream: --tls-client-ca needs --tls-cert and --tls-key"
    for path in (settings.tls_cert, settings.tls_key, settings.tls_client_ca):
        if path is not None and not path.is_file():
            return f"runstream: {path} is not a readable file"
    if not settings.auth and not settings.insecure and not is_loopback(settings.host):
        return (
            f"runstream: refusing to serve {settings.host} without auth: anyone who reaches the port could "
            "read, write and delete everything. Add --auth (tokens; the first start writes an admin token) "
            "or --insecure if the network is trusted"
        )
    return None


def grpc_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials for the gRPC port; None for plaintext."""
    if not settings.tls_cert or not settings.tls_key:
        return None
    pair = (settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())
    ca = settings.tls_client_ca.read_bytes() if settings.tls_client_ca else None
    return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)


def http_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """TLS for the HTTP port (signed artifact URLs, /metrics); client certificates are not
    asked for there: a signed URL is its own short-lived capability."""
    if not settings.tls_cert or not settings.tls_key:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
    return context
