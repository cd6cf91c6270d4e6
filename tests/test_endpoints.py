"""The one endpoint model: a table of valid and invalid strings, round trips, and properties."""

from __future__ import annotations

import ipaddress
import string

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from wirecat.endpoints import SCHEMES, Endpoint, parse_endpoint
from wirecat.errors import InvalidEndpoint

E = Endpoint

VALID: list[tuple[str, dict[str, object], Endpoint]] = [
    ("tcp://127.0.0.1:7000", {}, E("tcp", "127.0.0.1", 7000)),
    ("TCP://LocalHost:7000", {}, E("tcp", "localhost", 7000)),
    ("localhost:7007", {}, E("tcp", "localhost", 7007)),
    ("example.com:80", {}, E("tcp", "example.com", 80)),
    ("example.com.:80", {}, E("tcp", "example.com.", 80)),
    ("udp://127.0.0.1:53", {}, E("udp", "127.0.0.1", 53)),
    ("tls://example.com:443", {}, E("tls", "example.com", 443)),
    ("tcp://0.0.0.0:0", {}, E("tcp", "0.0.0.0", 0)),
    ("tcp://h:65535", {}, E("tcp", "h", 65535)),
    ("tcp://h:00080", {}, E("tcp", "h", 80)),
    ("  tcp://h:1  ", {}, E("tcp", "h", 1)),
    # IPv6 in brackets (RFC 3986 3.2.2), zone ids, the wildcard
    ("tcp://[::1]:7000", {}, E("tcp", "::1", 7000)),
    ("[::1]:7000", {}, E("tcp", "::1", 7000)),
    ("udp://[::1]:7007", {}, E("udp", "::1", 7007)),
    ("tcp://[::]:7000", {}, E("tcp", "::", 7000)),
    ("tcp://[fe80::1%eth0]:22", {}, E("tcp", "fe80::1%eth0", 22)),
    ("tcp://[fe80::1%25]:22", {}, E("tcp", "fe80::1%25", 22)),
    ("tcp://[2001:db8::1]:443", {}, E("tcp", "2001:db8::1", 443)),
    ("tcp://[::ffff:127.0.0.1]:1", {}, E("tcp", "::ffff:127.0.0.1", 1)),
    # wildcards
    ("tcp://*:7000", {}, E("tcp", "0.0.0.0", 7000)),
    ("*:7000", {}, E("tcp", "0.0.0.0", 7000)),
    # bare port / missing host with default_host, missing port with default_port
    ("7000", {"default_host": "127.0.0.1"}, E("tcp", "127.0.0.1", 7000)),
    (":7000", {"default_host": "127.0.0.1"}, E("tcp", "127.0.0.1", 7000)),
    ("7000", {"default_host": "[::1]"}, E("tcp", "::1", 7000)),
    ("tcp://:7000", {"default_host": "::"}, E("tcp", "::", 7000)),
    ("localhost", {"default_port": 7007}, E("tcp", "localhost", 7007)),
    ("udp://[::1]", {"default_port": 9}, E("udp", "::1", 9)),
    # unix family: paths, abstract names
    ("unix:/tmp/chat.sock", {}, E("unix", path="/tmp/chat.sock")),
    ("unix:///tmp/chat.sock", {}, E("unix", path="/tmp/chat.sock")),
    ("unix:relative.sock", {}, E("unix", path="relative.sock")),
    ("unix:7000", {}, E("unix", path="7000")),
    ("unix://run/x.sock", {}, E("unix", path="run/x.sock")),
    ("unix:@wirecat", {}, E("unix", path="@wirecat")),
    ("unix+dgram:/tmp/d.sock", {}, E("unix+dgram", path="/tmp/d.sock")),
    ("unix+dgram:@abstract", {}, E("unix+dgram", path="@abstract")),
    ("unix+seqpacket:/tmp/s.sock", {}, E("unix+seqpacket", path="/tmp/s.sock")),
    ("unix:/" + "p" * 106, {}, E("unix", path="/" + "p" * 106)),
    # websockets: path kept, "/" by default
    ("ws://127.0.0.1:8080", {}, E("ws", "127.0.0.1", 8080, "/")),
    ("ws://127.0.0.1:8080/", {}, E("ws", "127.0.0.1", 8080, "/")),
    ("ws://127.0.0.1:8080/chat", {}, E("ws", "127.0.0.1", 8080, "/chat")),
    ("wss://[::1]:443/a/b?room=x", {}, E("wss", "::1", 443, "/a/b?room=x")),
    ("tcp://h:1/", {}, E("tcp", "h", 1)),
    # stdio
    ("-", {}, E("stdio")),
    ("stdio:", {}, E("stdio")),
    ("stdio://", {}, E("stdio")),
]


@pytest.mark.parametrize(("text", "kwargs", "expected"), VALID, ids=[v[0] for v in VALID])
def test_valid(text: str, kwargs: dict[str, object], expected: Endpoint) -> None:
    ep = parse_endpoint(text, **kwargs)  # type: ignore[arg-type]
    assert ep == expected
    # str() gives a canonical form that parses back to the same endpoint.
    assert parse_endpoint(str(ep)) == ep


@pytest.mark.parametrize(
    ("ep", "text"),
    [
        (E("tcp", "127.0.0.1", 7000), "tcp://127.0.0.1:7000"),
        (E("tcp", "::", 7000), "tcp://[::]:7000"),
        (E("udp", "fe80::1%eth0", 1), "udp://[fe80::1%eth0]:1"),
        (E("ws", "h", 80, "/"), "ws://h:80"),
        (E("wss", "h", 443, "/x"), "wss://h:443/x"),
        (E("unix", path="/tmp/a"), "unix:/tmp/a"),
        (E("unix+dgram", path="@n"), "unix+dgram:@n"),
        (E("stdio"), "-"),
    ],
)
def test_str(ep: Endpoint, text: str) -> None:
    assert str(ep) == text


# (input, kwargs, a fragment the message must contain)
INVALID: list[tuple[object, dict[str, object], str]] = [
    ("", {}, "empty endpoint"),
    ("   ", {}, "empty endpoint"),
    ("x" * 4097, {}, "longer than 4096"),
    ("tcp://h:1\n", {}, "tcp://h:1"),  # trailing whitespace is stripped: this one is valid...
    ("tcp://h\n:1", {}, "control character"),
    ("tcp://h:1\x00", {}, "control character"),
    ("gopher://h:70", {}, "unknown scheme 'gopher'"),
    ("http://h:80", {}, "unknown scheme 'http'"),
    ("stdio://h:1", {}, "unknown scheme 'stdio'"),
    ("tcp:h:1", {}, "needs '//'"),
    ("udp:127.0.0.1:5", {}, "needs '//'"),
    ("tcp://h", {}, "missing port"),
    ("tcp://h:", {"default_port": 7}, "missing port"),
    ("tcp://:7000", {}, "missing host"),
    ("7000", {}, "missing host"),
    ("tcp://h:65536", {}, "out of range"),
    ("tcp://h:123456", {}, "invalid port '123456'"),
    ("tcp://h:-1", {}, "invalid port '-1'"),
    ("tcp://h:http", {}, "invalid port 'http'"),
    ("tcp://h:1x", {}, "invalid port '1x'"),
    ("tcp://h:\u00b2", {}, "invalid port"),  # a Unicode digit int() refuses
    ("tcp://h:\uff11\uff12", {}, "invalid port"),  # fullwidth digits
    ("\uff17\uff10", {"default_host": "h"}, "invalid"),
    ("tcp://::1:7000", {}, "must be in brackets"),
    ("::1:7000", {}, "must be in brackets"),
    ("tcp://[::1:7000", {}, "unclosed '['"),
    ("tcp://[::1]x:7000", {}, "after IPv6 address"),
    ("tcp://[::g]:1", {}, "invalid IPv6 address '::g'"),
    ("tcp://[1.2.3.4]:1", {}, "invalid IPv6 address '1.2.3.4'"),
    ("tcp://[fe80::1%bad zone]:1", {}, "invalid IPv6 zone"),
    ("tcp://bad_host!:1", {}, "invalid host 'bad_host!'"),
    ("tcp://-h:1", {}, "invalid host '-h'"),
    ("tcp://a..b:1", {}, "invalid host 'a..b'"),
    ("tcp://" + "a" * 64 + ":1", {}, "invalid host"),
    ("tcp://1.2.3.256:1", {}, "invalid host '1.2.3.256'"),
    ("tcp://01.2.3.4:1", {}, "invalid host '01.2.3.4'"),
    ("tcp://user@h:1", {}, "user info"),
    ("tcp://h:1/path", {}, "unexpected path '/path'"),
    ("udp://h:1/x", {}, "unexpected path"),
    ("unix:", {}, "missing path"),
    ("unix://", {}, "missing path"),
    ("unix+dgram:", {}, "missing path"),
    ("unix:/" + "p" * 107, {}, "longer than 107 bytes"),
    ("unix:/é" + "p" * 105, {}, "longer than 107 bytes"),  # bytes, not characters
    (b"tcp://h:1", {}, "must be a string"),
    (None, {}, "must be a string"),
]
INVALID = [case for case in INVALID if case[0] != "tcp://h:1\n"]


@pytest.mark.parametrize(
    ("text", "kwargs", "fragment"), INVALID, ids=[repr(c[0])[:40] for c in INVALID]
)
def test_invalid(text: object, kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(InvalidEndpoint) as info:
        parse_endpoint(text, **kwargs)  # type: ignore[arg-type]
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError)  # also a ValueError, for argparse/click users
    assert "\n" not in str(info.value)  # one line, for the CLI


def test_nul_in_unix_path_rejected() -> None:
    # NUL is a control character: rejected before the path check.
    with pytest.raises(InvalidEndpoint, match="control character"):
        parse_endpoint("unix:/tmp/a\x00b")


def test_unknown_scheme_message_lists_known_schemes() -> None:
    with pytest.raises(InvalidEndpoint) as info:
        parse_endpoint("sctp://h:1")
    for scheme in SCHEMES - {"stdio"}:
        assert scheme in str(info.value)


@pytest.mark.parametrize(
    ("text", "loopback"),
    [
        ("tcp://127.0.0.1:1", True),
        ("tcp://127.1.2.3:1", True),
        ("tcp://[::1]:1", True),
        ("tcp://localhost:1", True),
        ("tcp://0.0.0.0:1", False),
        ("tcp://[::]:1", False),
        ("tcp://10.0.0.1:1", False),
        ("tcp://example.com:1", False),
        ("tcp://[::ffff:127.0.0.1]:1", False),  # mapped addresses are not ::1 (ipaddress)
        ("unix:/tmp/x", True),
        ("unix+dgram:@x", True),
        ("-", True),
    ],
)
def test_is_loopback(text: str, loopback: bool) -> None:
    assert parse_endpoint(text).is_loopback is loopback


@pytest.mark.parametrize(
    ("text", "inet", "unix", "datagram", "stream", "wildcard"),
    [
        ("tcp://h:1", True, False, False, True, False),
        ("tls://h:1", True, False, False, True, False),
        ("udp://h:1", True, False, True, False, False),
        ("ws://h:1", True, False, False, True, False),
        ("wss://h:1", True, False, False, True, False),
        ("unix:/p", False, True, False, True, False),
        ("unix+dgram:/p", False, True, True, False, False),
        ("unix+seqpacket:/p", False, True, False, False, False),
        ("-", False, False, False, True, False),
        ("tcp://*:1", True, False, False, True, True),
        ("udp://[::]:1", True, False, True, False, True),
    ],
)
def test_kind_properties(
    text: str, inet: bool, unix: bool, datagram: bool, stream: bool, wildcard: bool
) -> None:
    ep = parse_endpoint(text)
    assert (ep.is_inet, ep.is_unix, ep.is_datagram, ep.is_stream, ep.is_wildcard) == (
        inet,
        unix,
        datagram,
        stream,
        wildcard,
    )


def test_with_port_and_frozen() -> None:
    ep = parse_endpoint("ws://[::1]:0/chat")
    assert ep.with_port(8080) == Endpoint("ws", "::1", 8080, "/chat")
    assert ep.port == 0
    with pytest.raises(AttributeError):
        ep.port = 1  # type: ignore[misc]
    assert hash(ep) == hash(parse_endpoint("ws://[::1]:0/chat"))


# -- Hypothesis ---------------------------------------------------------------------------------

_label = st.from_regex(r"\A[a-z0-9](?:[a-z0-9-]{0,20}[a-z0-9])?\Z")
hostnames = (
    st.lists(_label, min_size=1, max_size=4)
    .map(".".join)
    .filter(lambda h: not h.replace(".", "").isdigit())
)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
ipv6_zoned = st.tuples(ipv6, st.from_regex(r"\A[A-Za-z0-9_.-]{1,15}\Z")).map("%".join)
hosts = st.one_of(hostnames, ipv4, ipv6, ipv6_zoned, st.sampled_from(["0.0.0.0", "::"]))
ports = st.integers(0, 65535)
ws_paths = st.one_of(
    st.just("/"),
    st.text(string.ascii_letters + string.digits + "/-._~?=&%", max_size=30).map(lambda p: "/" + p),
)
# Paths as parse_endpoint can produce them: absolute, or @abstract names.
unix_paths = st.one_of(
    st.text(string.ascii_letters + string.digits + "/-._ ", min_size=1, max_size=60)
    .map(lambda p: "/" + p.strip())
    .map(lambda p: p.replace("/", "//", 1) if len(p) % 2 else p),  # some start with "//"
    st.text(string.ascii_letters + string.digits + "-._", min_size=1, max_size=60).map(
        lambda p: "@" + p
    ),
)

inet_endpoints = st.builds(
    Endpoint, st.sampled_from(["tcp", "udp", "tls"]), hosts, ports, st.none()
)
ws_endpoints = st.builds(Endpoint, st.sampled_from(["ws", "wss"]), hosts, ports, ws_paths)
unix_endpoints = st.builds(
    Endpoint,
    st.sampled_from(["unix", "unix+dgram", "unix+seqpacket"]),
    st.none(),
    st.none(),
    unix_paths,
)
endpoints = st.one_of(inet_endpoints, ws_endpoints, unix_endpoints, st.just(Endpoint("stdio")))


@given(endpoints)
def test_str_round_trips(ep: Endpoint) -> None:
    assert parse_endpoint(str(ep)) == ep


@given(st.text(max_size=200))
@example("unix://123")
@example("tcp://[fe80::1%]:1")
@example("tcp://h:\uff11")
def test_arbitrary_text_only_raises_invalid_endpoint(text: str) -> None:
    try:
        ep = parse_endpoint(text)
    except InvalidEndpoint:
        return
    assert ep.scheme in SCHEMES


@given(st.text(max_size=20), st.sampled_from(["tcp://h:", "udp://[::1]:", "ws://h:"]))
@example("\u00b2", "tcp://h:")
def test_arbitrary_port_text_only_raises_invalid_endpoint(port: str, prefix: str) -> None:
    try:
        ep = parse_endpoint(prefix + port)
    except InvalidEndpoint:
        return
    assert ep.port is not None and 0 <= ep.port <= 65535


def test_unicode_digit_port_is_invalid_endpoint() -> None:
    with pytest.raises(InvalidEndpoint, match="invalid port"):
        parse_endpoint("tcp://h:\u00b2")


def test_non_ascii_digit_port_rejected() -> None:
    with pytest.raises(InvalidEndpoint):
        parse_endpoint("tcp://h:\uff11\uff12")


@given(st.text(max_size=200))
def test_whatever_parses_round_trips(text: str) -> None:
    try:
        ep = parse_endpoint(text)
    except InvalidEndpoint:
        return
    assert parse_endpoint(str(ep)) == ep


@pytest.mark.parametrize("text", ["unix://123", "unix:123", "unix://////x", "unix+dgram:7"])
def test_unusual_unix_paths_round_trip(text: str) -> None:
    ep = parse_endpoint(text)
    assert ep.is_unix  # "unix:123" is a path, never tcp host "unix" port 123
    assert parse_endpoint(str(ep)) == ep


def test_unix_url_form_keeps_absolute_path() -> None:
    assert parse_endpoint("unix:////tmp/x").path in ("//tmp/x", "/tmp/x")


@given(hosts, ports)
def test_properties_match_ipaddress(host: str, port: int) -> None:
    ep = Endpoint("tcp", host, port)
    try:
        expected = ipaddress.ip_address(host).is_loopback
    except ValueError:
        expected = host == "localhost"
    assert ep.is_loopback is expected
    assert ep.is_datagram is False
    assert Endpoint("udp", host, port).is_datagram is True


@pytest.mark.parametrize(
    "typo",
    [
        "tcp:/127.0.0.1:7007",
        "udp:/127.0.0.1:7007",
        "tcp:127.0.0.1:7007",
        "tcp//127.0.0.1:7007",
        "tcp/127.0.0.1:7007",
        "tcp:///127.0.0.1:7007",
        "tls:/[::1]:7443",
    ],
)
def test_every_suggested_fix_parses(typo: str) -> None:
    with pytest.raises(InvalidEndpoint) as info:
        parse_endpoint(typo)
    suggestion = str(info.value).rsplit("write ", 1)[1]
    ep = parse_endpoint(suggestion)  # what we suggest must parse, to the address meant
    assert ep.port in (7007, 7443) and ep.scheme in ("tcp", "udp", "tls")
