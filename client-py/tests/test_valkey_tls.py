"""The Valkey backend over TLS (``valkeys://``): a real TLS handshake with a certificate of a test
CA (made with openssl), the host name checked by default, clear errors when the certificate is not
trusted. The bundled valkey-server is built without TLS, so a TLS terminator in this process (the
standard library's ssl, i.e. OpenSSL) fronts the session's real Valkey, as stunnel or a cloud
provider's TLS endpoint would."""

import asyncio
import os
import ssl
import subprocess
import threading
import uuid
from urllib.parse import urlparse

import pytest

from django_vtasks.backends.valkey import ValkeyTaskBackend
from django_vtasks.broker import BrokerError, EnqueueRequest
from django_vtasks.envelope import encode_envelope

pytestmark = pytest.mark.skipif(
    not os.environ.get("VTASKS_TEST_VALKEY_URL"), reason="Valkey module not built"
)


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_ca(d, name, cn):
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-out", f"{name}.key", cwd=d)  # fmt: skip
    _openssl("req", "-x509", "-new", "-key", f"{name}.key", "-days", "2", "-subj", f"/CN={cn}",
             "-addext", "basicConstraints=critical,CA:TRUE", "-out", f"{name}.crt",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)  # fmt: skip


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """ca.crt signs server.crt (names only DNS:localhost); other-ca.crt signs nothing used."""
    d = tmp_path_factory.mktemp("tls")
    _make_ca(d, "ca", "vtasks test CA")
    _make_ca(d, "other-ca", "vtasks untrusted CA")
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-out", "server.key", cwd=d)  # fmt: skip
    _openssl("req", "-new", "-key", "server.key", "-subj", "/CN=localhost", "-out", "server.csr",
             cwd=d)  # fmt: skip
    (d / "server.ext").write_text(
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
    )
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-extfile", "server.ext", "-out", "server.crt",
             cwd=d)  # fmt: skip
    return d


@pytest.fixture(scope="module")
def tls_port(certs):
    """A TLS terminator on 127.0.0.1 forwarding to the session's Valkey; yields its port."""
    target = urlparse(os.environ["VTASKS_TEST_VALKEY_URL"])
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certs / "server.crt", certs / "server.key")
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    state = {}

    async def pipe(reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def handle(client_r, client_w):
        try:
            server_r, server_w = await asyncio.open_connection(target.hostname, target.port)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(pipe(client_r, server_w), pipe(server_r, client_w))

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
        state["port"] = server.sockets[0].getsockname()[1]
        state["server"] = server
        ready.set()
        async with server:
            await server.serve_forever()

    thread = threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True)
    thread.start()
    assert ready.wait(10)
    yield state["port"]
    loop.call_soon_threadsafe(state["server"].close)


def _backend(url, **options):
    return ValkeyTaskBackend(
        f"tls-{uuid.uuid4().hex[:6]}", {"QUEUES": [], "OPTIONS": {"BROKER_URL": url, **options}}
    )


def _roundtrip(backend):
    """Enqueue, fetch under a lease and ack one task through the TLS connection."""
    broker = backend.broker
    queue = f"tls{uuid.uuid4().hex[:8]}"
    payload = encode_envelope({"func": "tests.testapp.tasks.add", "args": [1, 2], "kwargs": {}})
    rid = uuid.uuid4().hex
    assert broker.enqueue([EnqueueRequest(queue=queue, id=rid, payload=payload)]) == [rid]
    (d,) = broker.fetch([queue], "tls-worker", 1)
    assert d.id == rid
    assert broker.ack(queue, [(d.id, d.token)]) == 1
    assert broker.info(queue)["acked_total"] == 1


def test_valkeys_with_the_host_name_in_the_certificate(certs, tls_port):
    backend = _backend(f"valkeys://localhost:{tls_port}/0?ssl_ca_certs={certs / 'ca.crt'}")
    try:
        _roundtrip(backend)
        assert not [e for e in backend.check() if e.id == "django_vtasks.W002"]
    finally:
        backend.broker.close()


def test_host_name_not_in_the_certificate_is_refused_by_default(certs, tls_port):
    # the certificate names localhost only; 127.0.0.1 is another name for the same server
    backend = _backend(f"valkeys://127.0.0.1:{tls_port}/0?ssl_ca_certs={certs / 'ca.crt'}")
    try:
        with pytest.raises(BrokerError) as e:
            backend.broker.ping()
        text = str(e.value)
        assert "TLS" in text and "certificate" in text and "SSL_CHECK_HOSTNAME" in text
        assert "is valkey-server running" not in text  # not an unreachable server
    finally:
        backend.broker.close()
    # the operator's choice, for a server reached by IP: the chain is still checked
    unchecked = _backend(
        f"valkeys://127.0.0.1:{tls_port}/0?ssl_ca_certs={certs / 'ca.crt'}",
        SSL_CHECK_HOSTNAME=False,
    )
    try:
        _roundtrip(unchecked)
    finally:
        unchecked.broker.close()


def test_untrusted_certificate_is_refused(certs, tls_port):
    for url in (
        f"valkeys://localhost:{tls_port}/0?ssl_ca_certs={certs / 'other-ca.crt'}",
        f"rediss://localhost:{tls_port}/0?ssl_ca_certs={certs / 'other-ca.crt'}",
    ):
        backend = _backend(url, SSL_CHECK_HOSTNAME=False)
        try:
            with pytest.raises(BrokerError) as e:
                backend.broker.ping()
            text = str(e.value)
            assert "TLS handshake" in text and "certificate" in text  # not "unreachable"
            assert "add ?ssl_ca_certs=" in text  # what to do next
        finally:
            backend.broker.close()


def test_plaintext_client_against_tls_port_says_so(tls_port):
    backend = _backend(f"valkey://localhost:{tls_port}/0")
    try:
        with pytest.raises(BrokerError):
            backend.broker.ping()
    finally:
        backend.broker.close()
