"""TLS under attack, on loopback: profiles, client verification, pinning, mTLS, garbage,
the handshake deadline, and the ``wirecat serve`` TLS flags.

Scanners and foreign clients (sslyze, ``openssl s_client``, ``ncat --ssl``) run in a thread or
a subprocess, never blocking the loop that runs the server. Certificates come from
``self_signed()`` (in memory) or ``trustme``. Synchronisation is by reads with bounded
timeouts; every timeout goes through ``scaled()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import shutil
import signal
import ssl
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme

from helpers import scaled, wait_for
from wirecat.endpoints import Endpoint, parse_endpoint
from wirecat.errors import ConnectError, ConnectionClosed, HandshakeError
from wirecat.runtime.connection import Connection, connect
from wirecat.runtime.handler import ServerContext, StreamHandler
from wirecat.runtime.limits import AccessList, Limits
from wirecat.runtime.server import Server, Service
from wirecat.runtime.tls import (
    INTERMEDIATE_CIPHERS,
    TLSProfile,
    client_context,
    self_signed,
    server_context,
)
from wirecat.services.echo import EchoService

SELF_SIGNED = self_signed()  # ECDSA P-256 for localhost, 127.0.0.1, ::1 (in memory)
WRONG_PIN = "sha256:" + "00" * 32
CBC_SUITES = ":".join(
    [
        "ECDHE-ECDSA-AES128-SHA",
        "ECDHE-ECDSA-AES256-SHA",
        "ECDHE-ECDSA-AES128-SHA256",
        "ECDHE-ECDSA-AES256-SHA384",
        "ECDHE-RSA-AES128-SHA",
        "ECDHE-RSA-AES128-SHA256",
        "AES128-SHA",
        "AES256-SHA256",
    ]
)


# -- certificates ---------------------------------------------------------------------------
@dataclass
class PKI:
    """A trustme server CA with a localhost certificate, and a separate client CA."""

    server_ca: trustme.CA
    ca_file: str  # trusts the server certificate
    server_cert: bytes  # PEM chain
    server_key: bytes
    client_ca_file: str  # for --client-ca
    client_pem: str  # key + chain of a client certificate with CN "alice"
    stranger_pem: str  # a client certificate from a CA the server does not trust


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    client_ca = trustme.CA()
    alice = client_ca.issue_cert("alice.example", common_name="alice")
    stranger = trustme.CA().issue_cert("mallory.example", common_name="mallory")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    client_ca.cert_pem.write_to_path(str(tmp_path / "client-ca.pem"))
    alice.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "alice.pem"))
    stranger.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "mallory.pem"))
    return PKI(
        server_ca=ca,
        ca_file=str(tmp_path / "ca.pem"),
        server_cert=b"".join(blob.bytes() for blob in leaf.cert_chain_pems),
        server_key=leaf.private_key_pem.bytes(),
        client_ca_file=str(tmp_path / "client-ca.pem"),
        client_pem=str(tmp_path / "alice.pem"),
        stranger_pem=str(tmp_path / "mallory.pem"),
    )


def self_signed_context(profile: TLSProfile = "intermediate") -> ssl.SSLContext:
    return server_context(SELF_SIGNED.cert_pem, SELF_SIGNED.key_pem, profile=profile)


# -- servers and clients --------------------------------------------------------------------
class _RecordingHandler(StreamHandler):
    """Echo that records what reached the service (subjects at connect, data received)."""

    service: RecordingService

    def on_connect(self) -> None:
        self.service.subjects.append(self.peer_subject)

    def on_data(self, data: bytes) -> None:
        self.service.received.append(data)
        self.write(data)


class RecordingService(Service):
    name = "rec"

    def __init__(self, endpoints: Sequence[Endpoint]) -> None:
        super().__init__(endpoints)
        self.subjects: list[str | None] = []
        self.received: list[bytes] = []

    def stream_handler(self, ctx: ServerContext) -> StreamHandler:
        return _RecordingHandler(ctx, self)


def tls_endpoint() -> list[Endpoint]:
    return [parse_endpoint("tls://127.0.0.1:0")]


@contextlib.asynccontextmanager
async def tls_serving(
    service: Service,
    tls: ssl.SSLContext,
    *,
    limits: Limits | None = None,
    access: AccessList | None = None,
) -> AsyncIterator[Server]:
    server = Server([service], ctx=ServerContext(limits, access=access), tls=tls)
    await server.start()
    try:
        yield server
    finally:
        for probe in _OPEN_PROBES:
            if probe.transport is not None:
                probe.transport.abort()
        _OPEN_PROBES.clear()
        await server.shutdown(grace=scaled(2))


def url_of(server: Server) -> str:
    (_, ep), *_ = server.bound
    return f"tls://127.0.0.1:{ep.port}"


def port_of(server: Server) -> int:
    (_, ep), *_ = server.bound
    assert ep.port is not None
    return ep.port


async def tls_connect(url: str, **kwargs: Any) -> Connection:
    conn = await connect(url, timeout=scaled(5), handshake_timeout=scaled(5), **kwargs)
    assert isinstance(conn, Connection)
    return conn


async def roundtrip(url: str, payload: bytes = b"ping\n", **kwargs: Any) -> Connection:
    """Connect, send one line, expect it echoed; return the open connection (caller closes)."""
    conn = await tls_connect(url, **kwargs)
    await conn.send(payload)
    assert await conn.recv_line(timeout=scaled(5)) == payload
    return conn


async def echo_once(url: str, payload: bytes = b"ping\n", **kwargs: Any) -> None:
    conn = await roundtrip(url, payload, **kwargs)
    await conn.aclose()


#: Probes of the running test; ``tls_serving`` aborts them on exit, even when the test failed
#: (an unclosed transport makes uvloop's ``loop.close()`` spin under ``-W error``).
_OPEN_PROBES: list[Probe] = []


class Probe(asyncio.Protocol):
    """A raw TCP peer: records what it receives and when the connection ends."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.data = bytearray()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.exc: Exception | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        _OPEN_PROBES.append(self)

    def data_received(self, data: bytes) -> None:
        self.data += data

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.exc = exc
        if not self.closed.done():
            self.closed.set_result(None)


async def raw_probe(port: int, local: str = "127.0.0.1") -> Probe:
    loop = asyncio.get_running_loop()
    _, probe = await asyncio.wait_for(
        loop.create_connection(Probe, "127.0.0.1", port, local_addr=(local, 0)), scaled(5)
    )
    return probe


async def run_tool(*argv: str, stdin: bytes = b"", timeout: float = 15.0) -> tuple[int, str]:
    """Run a program without blocking the loop; return (exit code, stdout+stderr)."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(stdin), scaled(timeout))
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"{argv[0]} did not finish within {scaled(timeout):.0f} s") from None
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


async def s_client(port: int, *args: str) -> tuple[int, str]:
    return await run_tool(
        "openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost", *args
    )


@pytest.fixture
def _openssl_binary() -> None:
    """Real peers are required: a missing one fails the test (scripts/test.sh installs it)."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl not installed: scripts/test.sh installs the real peers")


@pytest.fixture
def _ncat_binary() -> None:
    if shutil.which("ncat") is None:
        pytest.fail("ncat not installed: scripts/test.sh installs the real peers")


needs_openssl = pytest.mark.usefixtures("_openssl_binary")
needs_ncat = pytest.mark.usefixtures("_ncat_binary")


# -- the profiles, scanned by sslyze --------------------------------------------------------
def _sslyze_scan(port: int, commands: set[Any]) -> Any:
    from sslyze import (
        Scanner,
        ServerNetworkLocation,
        ServerScanRequest,
        ServerScanStatusEnum,
    )

    request = ServerScanRequest(
        server_location=ServerNetworkLocation("localhost", port, ip_address="127.0.0.1"),
        scan_commands=commands,
    )
    scanner = Scanner()
    scanner.queue_scans([request])
    (result,) = list(scanner.get_results())
    assert result.scan_status == ServerScanStatusEnum.COMPLETED, result.connectivity_error_trace
    return result


def _mozilla_issues(result: Any) -> dict[str, str]:
    from sslyze.mozilla_tls_profile.tls_config_checker import (
        MozillaTlsConfiguration,
        ServerNotCompliantWithTlsConfiguration,
        TlsConfigurationEnum,
        check_server_against_tls_configuration,
    )

    intermediate = MozillaTlsConfiguration.get(TlsConfigurationEnum.MOZILLA_INTERMEDIATE)
    try:
        check_server_against_tls_configuration(result, intermediate)
    except ServerNotCompliantWithTlsConfiguration as exc:
        return dict(exc.issues)
    return {}


async def _scan_intermediate() -> Any:
    pytest.importorskip("sslyze")
    from sslyze.mozilla_tls_profile.tls_config_checker import (
        SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER,
    )

    async with tls_serving(EchoService(tls_endpoint()), self_signed_context()) as server:
        result = await asyncio.to_thread(
            _sslyze_scan, port_of(server), set(SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER)
        )
        await echo_once(url_of(server), pin=SELF_SIGNED.fingerprint)  # still serving
    return result


# sslyze's bundled CA store holds a certificate newer cryptography warns about.
_SSLYZE_WARNINGS = pytest.mark.filterwarnings(
    "ignore::cryptography.utils.CryptographyDeprecationWarning"
)


@_SSLYZE_WARNINGS
@pytest.mark.loops("asyncio")  # sslyze is slow-ish; the TLS stack is the same on uvloop
@pytest.mark.async_timeout(50)
async def test_sslyze_intermediate_profile_protocols_ciphers_and_vulnerabilities() -> None:
    result = await _scan_intermediate()
    scan = result.scan_result
    for name in ("ssl_2_0", "ssl_3_0", "tls_1_0", "tls_1_1"):
        attempt = getattr(scan, f"{name}_cipher_suites").result
        assert not attempt.is_tls_version_supported, f"{name} accepted"
        assert not attempt.accepted_cipher_suites
    tls12 = scan.tls_1_2_cipher_suites.result
    assert tls12.is_tls_version_supported
    suites = {s.cipher_suite.openssl_name for s in tls12.accepted_cipher_suites}
    assert suites, "no TLS 1.2 suite accepted"
    assert suites <= set(INTERMEDIATE_CIPHERS.split(":"))
    for suite in suites:
        assert suite.startswith("ECDHE-"), suite
        assert "GCM" in suite or "CHACHA20-POLY1305" in suite, suite
    tls13 = scan.tls_1_3_cipher_suites.result
    assert tls13.is_tls_version_supported
    assert {s.cipher_suite.name for s in tls13.accepted_cipher_suites} <= {
        "TLS_AES_128_GCM_SHA256",
        "TLS_AES_256_GCM_SHA384",
        "TLS_CHACHA20_POLY1305_SHA256",
    }
    assert not scan.tls_compression.result.supports_compression
    reneg = scan.session_renegotiation.result
    assert not reneg.is_vulnerable_to_client_renegotiation_dos
    assert reneg.supports_secure_renegotiation  # RFC 5746 signalling; renegotiation refused
    assert scan.tls_fallback_scsv.result.supports_fallback_scsv
    assert not scan.heartbleed.result.is_vulnerable_to_heartbleed
    assert not scan.openssl_ccs_injection.result.is_vulnerable_to_ccs_injection
    # sslyze's own Mozilla checker: nothing but the (expected) untrusted self-signed chain.
    issues = _mozilla_issues(result)
    assert set(issues) <= {"certificate_path_validation"}, issues


@_SSLYZE_WARNINGS
@pytest.mark.loops("asyncio")
@pytest.mark.async_timeout(50)
async def test_sslyze_mozilla_intermediate_checker_is_satisfied() -> None:
    issues = _mozilla_issues(await _scan_intermediate())
    issues.pop("certificate_path_validation", None)  # self-signed: untrusted by design
    assert issues == {}


@_SSLYZE_WARNINGS
@pytest.mark.loops("asyncio")
@pytest.mark.async_timeout(40)
async def test_sslyze_modern_profile_accepts_only_tls13() -> None:
    pytest.importorskip("sslyze")
    from sslyze import ScanCommand

    commands = {
        ScanCommand.SSL_3_0_CIPHER_SUITES,
        ScanCommand.TLS_1_0_CIPHER_SUITES,
        ScanCommand.TLS_1_1_CIPHER_SUITES,
        ScanCommand.TLS_1_2_CIPHER_SUITES,
        ScanCommand.TLS_1_3_CIPHER_SUITES,
    }
    async with tls_serving(EchoService(tls_endpoint()), self_signed_context("modern")) as server:
        result = await asyncio.to_thread(_sslyze_scan, port_of(server), commands)
        await echo_once(url_of(server), pin=SELF_SIGNED.fingerprint)
    scan = result.scan_result
    for name in ("ssl_3_0", "tls_1_0", "tls_1_1", "tls_1_2"):
        assert not getattr(scan, f"{name}_cipher_suites").result.is_tls_version_supported, name
    assert scan.tls_1_3_cipher_suites.result.is_tls_version_supported


# -- the profiles, probed by openssl s_client -----------------------------------------------
@needs_openssl
async def test_openssl_refuses_tls11_and_cbc_and_accepts_tls12_aead() -> None:
    async with tls_serving(EchoService(tls_endpoint()), self_signed_context()) as server:
        port = port_of(server)
        # SECLEVEL=0: make sure our client really offers TLS 1.1 (OpenSSL 3 would not).
        code, out = await s_client(port, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
        assert code != 0 and "Cipher is (NONE)" in out, out
        code, out = await s_client(port, "-tls1_2", "-cipher", CBC_SUITES)
        assert code != 0 and "Cipher is (NONE)" in out, out
        code, out = await s_client(port, "-tls1_2", "-brief")
        assert code == 0, out
        match = re.search(r"Ciphersuite: (\S+)", out)
        assert match, out
        suite = match.group(1)
        assert suite.startswith("ECDHE-") and ("GCM" in suite or "CHACHA20" in suite), suite
        assert "Protocol version: TLSv1.2" in out, out
        # The refusals cost nothing: a client is served right after.
        await echo_once(url_of(server), pin=SELF_SIGNED.fingerprint)
        assert server.ctx.metrics["accepted"] == 2  # s_client -tls1_2, then ours


@needs_openssl
async def test_openssl_modern_profile_refuses_tls12() -> None:
    async with tls_serving(EchoService(tls_endpoint()), self_signed_context("modern")) as server:
        code, out = await s_client(port_of(server), "-tls1_2")
        assert code != 0 and "Cipher is (NONE)" in out, out
        code, out = await s_client(port_of(server), "-tls1_3", "-brief")
        assert code == 0 and "Protocol version: TLSv1.3" in out, out


# -- the client verifies by default ---------------------------------------------------------
async def test_client_refuses_self_signed_server_by_default() -> None:
    service = RecordingService(tls_endpoint())
    async with tls_serving(service, self_signed_context()) as server:
        with pytest.raises(HandshakeError, match="certificate"):
            await tls_connect(url_of(server))
        assert service.received == []


async def test_client_pin_accepts_self_signed_and_wrong_pin_is_refused() -> None:
    service = RecordingService(tls_endpoint())
    async with tls_serving(service, self_signed_context()) as server:
        url = url_of(server)
        await echo_once(url, pin=SELF_SIGNED.fingerprint)
        upper = "SHA256:" + SELF_SIGNED.fingerprint.split(":", 1)[1].upper()
        await echo_once(url, pin=upper)  # any case
        with pytest.raises(HandshakeError, match="pinned"):
            await tls_connect(url, pin=WRONG_PIN)
        other = self_signed().fingerprint  # a real certificate, just not this server's
        with pytest.raises(HandshakeError, match="pinned"):
            await tls_connect(url, pin=other)
        assert service.received == [b"ping\n", b"ping\n"]  # nothing from refused clients
        await wait_for(lambda: not server.ctx.connections, what="pin-refused peers gone")


async def test_client_with_trusted_ca_checks_the_name(pki: PKI) -> None:
    ctx = server_context(pki.server_cert, pki.server_key)
    async with tls_serving(EchoService(tls_endpoint()), ctx) as server:
        url = url_of(server)
        trusting = client_context(cafile=pki.ca_file)
        await echo_once(url, ssl=trusting)  # the IP SAN 127.0.0.1
        await echo_once(url, ssl=trusting, server_hostname="localhost")
        with pytest.raises(HandshakeError, match=r"(?i)hostname|match"):
            await tls_connect(url, ssl=trusting, server_hostname="example.org")
        with pytest.raises(HandshakeError):  # the CA is not in the system store
            await tls_connect(url, server_hostname="localhost")


# -- mTLS -----------------------------------------------------------------------------------
def _mtls_context(pki: PKI) -> ssl.SSLContext:
    return server_context(pki.server_cert, pki.server_key, client_ca=pki.client_ca_file)


async def _assert_refused(url: str, ctx: ssl.SSLContext) -> None:
    """The server must refuse: the handshake fails, or (TLS 1.3, where the client finishes
    first) the connection ends before any application byte comes back."""
    try:
        conn = await tls_connect(url, ssl=ctx)
    except ConnectError:  # HandshakeError, or a reset during the handshake (see below)
        return
    got = b""
    async with conn:
        with contextlib.suppress(ConnectionClosed):
            await conn.send(b"let me in\n")
            got = await conn.recv(timeout=scaled(5))
    assert got == b""


@pytest.mark.parametrize("tls12", [False, True], ids=["tls13", "tls12"])
async def test_mtls_refuses_clients_without_a_trusted_certificate(pki: PKI, tls12: bool) -> None:
    service = RecordingService(tls_endpoint())
    async with tls_serving(service, _mtls_context(pki)) as server:
        url = url_of(server)
        for cert in (None, pki.stranger_pem):
            ctx = client_context(cafile=pki.ca_file, cert=cert)
            if tls12:
                ctx.maximum_version = ssl.TLSVersion.TLSv1_2
            await _assert_refused(url, ctx)
        assert service.received == [] and service.subjects == []
        assert server.ctx.metrics["accepted"] == 0
        # ... and it keeps serving a client with a good certificate.
        good = client_context(cafile=pki.ca_file, cert=pki.client_pem)
        if tls12:
            good.maximum_version = ssl.TLSVersion.TLSv1_2
        await echo_once(url, ssl=good)
        assert service.subjects == ["alice"]


async def test_mtls_peer_subject_is_the_client_cn(pki: PKI) -> None:
    service = RecordingService(tls_endpoint())
    async with tls_serving(service, _mtls_context(pki)) as server:
        conn = await roundtrip(
            url_of(server), ssl=client_context(cafile=pki.ca_file, cert=pki.client_pem)
        )
        (handler,) = server.ctx.connections
        assert handler.peer_subject == "alice"
        await conn.aclose()
    assert service.subjects == ["alice"]


async def test_peer_subject_is_none_without_mtls() -> None:
    service = RecordingService(tls_endpoint())
    async with tls_serving(service, self_signed_context()) as server:
        await echo_once(url_of(server), pin=SELF_SIGNED.fingerprint)
    assert service.subjects == [None]


# -- garbage on the TLS port ----------------------------------------------------------------
def _garbage(kind: str) -> bytes:
    rng = random.Random(f"wirecat-{kind}")
    if kind == "plaintext":
        return b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"
    if kind == "random":
        return rng.randbytes(4096)
    if kind == "bad-record":  # a handshake record header, then nonsense
        return b"\x16\x03\x01\x00\x80" + rng.randbytes(0x80)
    if kind == "huge-record":  # a record length over the 16 KiB + 2048 limit
        return b"\x16\x03\x03\xff\xff" + rng.randbytes(64)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["plaintext", "random", "bad-record", "huge-record"])
async def test_garbage_on_tls_port_is_dropped_and_the_next_client_served(kind: str) -> None:
    service = RecordingService(tls_endpoint())
    limits = Limits(handshake_timeout=scaled(3))
    async with tls_serving(service, self_signed_context(), limits=limits) as server:
        probe = await raw_probe(port_of(server))
        assert probe.transport is not None
        probe.transport.write(_garbage(kind))
        with contextlib.suppress(OSError, RuntimeError):
            probe.transport.write_eof()
        # Dropped well before the handshake deadline: the bytes are invalid.
        await asyncio.wait_for(asyncio.shield(probe.closed), scaled(2.5))
        assert b"HTTP" not in probe.data and b"ping" not in probe.data
        await echo_once(url_of(server), pin=SELF_SIGNED.fingerprint)
        assert service.received == [b"ping\n"]
        assert server.ctx.metrics["accepted"] == 1
        assert server.ctx.metrics["handler_errors"] == 0
    # The conftest guard fails the test if anything reached the loop's exception handler.


async def test_many_garbage_peers_at_once_do_not_stop_service() -> None:
    service = RecordingService(tls_endpoint())
    async with tls_serving(service, self_signed_context()) as server:
        probes = [await raw_probe(port_of(server)) for _ in range(20)]
        for i, probe in enumerate(probes):
            assert probe.transport is not None
            probe.transport.write(random.Random(i).randbytes(1 + i * 97))
            probe.transport.write_eof()
        await echo_once(url_of(server), pin=SELF_SIGNED.fingerprint)
        await asyncio.wait_for(asyncio.gather(*(p.closed for p in probes)), scaled(5))
        assert service.received == [b"ping\n"]


# -- the handshake deadline -----------------------------------------------------------------
async def test_silent_tls_peer_is_cut_at_the_handshake_deadline() -> None:
    deadline = scaled(0.3)
    service = RecordingService(tls_endpoint())
    limits = Limits(handshake_timeout=deadline)
    loop = asyncio.get_running_loop()
    async with tls_serving(service, self_signed_context(), limits=limits) as server:
        started = loop.time()
        silent = await raw_probe(port_of(server))
        await echo_once(url_of(server), pin=SELF_SIGNED.fingerprint)  # served meanwhile
        assert not silent.closed.done()
        await asyncio.wait_for(asyncio.shield(silent.closed), deadline + scaled(3))
        elapsed = loop.time() - started
        assert elapsed >= deadline * 0.5, elapsed
        assert silent.data == b""
        assert service.received == [b"ping\n"]


async def test_handshake_deadline_is_absolute_against_a_dribbling_peer() -> None:
    """A peer sending a ClientHello one byte at a time is cut at the deadline all the same."""
    deadline = scaled(0.4)
    limits = Limits(handshake_timeout=deadline)
    loop = asyncio.get_running_loop()
    async with tls_serving(
        EchoService(tls_endpoint()), self_signed_context(), limits=limits
    ) as srv:
        probe = await raw_probe(port_of(srv))
        assert probe.transport is not None
        started = loop.time()
        hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(500)
        for byte in hello:  # pacing, not synchronisation: one byte every 20 ms
            if probe.closed.done():
                break
            probe.transport.write(bytes([byte]))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(probe.closed), scaled(0.02))
        assert probe.closed.done(), "a dribbling peer outlived the handshake deadline"
        assert loop.time() - started < deadline + scaled(3)
        await echo_once(url_of(srv), pin=SELF_SIGNED.fingerprint)


# -- access rules on a TLS port -------------------------------------------------------------
def _client_hello() -> bytes:
    """A real ClientHello, made with a memory BIO (no socket)."""
    ctx = client_context(pinned=True)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


async def test_denied_source_on_tls_port_never_reaches_the_service() -> None:
    service = RecordingService(tls_endpoint())
    access = AccessList(deny=["127.0.0.2/32"])
    loop = asyncio.get_running_loop()
    async with tls_serving(service, self_signed_context(), access=access) as server:
        # The denied source is reset before any TLS byte: its handshake cannot complete.
        with pytest.raises(OSError):  # ConnectionResetError or ssl.SSLError
            await asyncio.wait_for(
                loop.create_connection(
                    Probe,
                    "127.0.0.1",
                    port_of(server),
                    ssl=client_context(pinned=True),
                    server_hostname="localhost",
                    local_addr=("127.0.0.2", 0),
                ),
                scaled(5),
            )
        await echo_once(url_of(server), pin=SELF_SIGNED.fingerprint)  # 127.0.0.1 is fine
        assert service.received == [b"ping\n"]
        assert server.ctx.metrics["refused_acl"] == 1
        assert server.ctx.metrics["accepted"] == 1


async def test_denied_source_on_tls_port_gets_no_byte() -> None:
    access = AccessList(deny=["127.0.0.2/32"])
    async with tls_serving(
        RecordingService(tls_endpoint()), self_signed_context(), access=access
    ) as server:
        probe = await raw_probe(port_of(server), local="127.0.0.2")
        assert probe.transport is not None
        with contextlib.suppress(OSError, RuntimeError):  # may be reset already
            probe.transport.write(_client_hello())
        await wait_for(lambda: probe.closed.done() or probe.data, what="a refusal or a reply")
        assert bytes(probe.data) == b"", f"denied peer received {len(probe.data)} bytes"
        await asyncio.wait_for(asyncio.shield(probe.closed), scaled(5))


# -- wirecat serve ----------------------------------------------------------------------------
def _wirecat_argv() -> list[str]:
    script = Path(sys.executable).with_name("wirecat")
    if script.exists():
        return [str(script)]
    found = shutil.which("wirecat")
    assert found, "the wirecat command is not installed"
    return [found]


@needs_ncat
@pytest.mark.loops("asyncio")  # the server is a subprocess; its loop is its own
@pytest.mark.async_timeout(40)
async def test_serve_self_signed_prints_fingerprint_and_ncat_talks_to_it() -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", "NO_COLOR": "1"}
    proc = await asyncio.create_subprocess_exec(
        *_wirecat_argv(),
        "serve",
        "--no-greeting",
        "--no-chat",
        "--echo",
        "tls://127.0.0.1:0",
        "--self-signed",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stdout is not None
        port = fingerprint = None
        while fingerprint is None:
            line = (await asyncio.wait_for(proc.stdout.readline(), scaled(15))).decode()
            assert line, "wirecat serve exited before printing its fingerprint"
            if m := re.search(r"tls://127\.0\.0\.1:(\d+)", line):
                port = int(m.group(1))
            if m := re.search(r"self-signed certificate (sha256:[0-9a-f]{64})\b", line):
                fingerprint = m.group(1)
        assert port is not None
        # The printed fingerprint is the server's: a pinned client gets through.
        await echo_once(f"tls://127.0.0.1:{port}", pin=fingerprint)
        ncat = await asyncio.create_subprocess_exec(
            "ncat",
            "--ssl",
            "127.0.0.1",
            str(port),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            assert ncat.stdin is not None and ncat.stdout is not None
            ncat.stdin.write(b"hello over ncat --ssl\n")
            await ncat.stdin.drain()
            echoed = await asyncio.wait_for(ncat.stdout.readline(), scaled(10))
            assert echoed == b"hello over ncat --ssl\n"
            ncat.stdin.close()
            await asyncio.wait_for(ncat.wait(), scaled(10))
        finally:
            if ncat.returncode is None:
                ncat.kill()
                await ncat.wait()
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), scaled(15)) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.loops("asyncio")
async def test_serve_tls_without_certificate_exits_64_with_one_line() -> None:
    code, out = await run_tool(
        *_wirecat_argv(), "serve", "--no-greeting", "--no-chat", "--echo", "tls://127.0.0.1:0"
    )
    assert code == 64, out
    lines = out.strip().splitlines()
    assert len(lines) == 1, out
    assert lines[0].startswith("wirecat: ") and "--self-signed" in lines[0]
    assert "Traceback" not in out


@pytest.mark.loops("asyncio")
async def test_serve_bad_pem_exits_78_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    code, out = await run_tool(
        *_wirecat_argv(),
        "serve",
        "--no-greeting",
        "--no-chat",
        "--echo",
        "tls://127.0.0.1:0",
        "--cert",
        str(bad),
    )
    assert code == 78, out
    assert len(out.strip().splitlines()) == 1 and "Traceback" not in out, out


def test_client_hello_helper_makes_a_tls_record() -> None:
    hello = _client_hello()
    assert hello[:1] == b"\x16" and hello[5:6] == b"\x01"  # handshake record, ClientHello
    assert int.from_bytes(hello[3:5], "big") == len(hello) - 5


async def test_client_reports_a_handshake_aborted_by_the_server_as_handshake_error(
    pki: PKI,
) -> None:
    async with tls_serving(RecordingService(tls_endpoint()), _mtls_context(pki)) as server:
        ctx = client_context(cafile=pki.ca_file)  # no client certificate
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2  # the server decides inside the handshake
        with pytest.raises(ConnectError) as caught:
            await tls_connect(url_of(server), ssl=ctx)
        assert isinstance(caught.value, HandshakeError), repr(caught.value)
        assert not str(caught.value).rstrip().endswith(":"), str(caught.value)


async def test_per_source_cap_bounds_connections_in_the_tls_handshake() -> None:
    limits = Limits(max_conns_per_source=2, handshake_timeout=scaled(10))
    async with tls_serving(
        EchoService(tls_endpoint()), self_signed_context(), limits=limits
    ) as srv:
        silent = [await raw_probe(port_of(srv), local="127.0.0.2") for _ in range(3)]
        # The third one is over the cap: it must be refused now, not at the deadline.
        await asyncio.wait_for(asyncio.shield(silent[2].closed), scaled(2))
