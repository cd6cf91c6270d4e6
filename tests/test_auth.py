"""Token authentication and roles without sockets: the users file, hashing, the chat core's
rules (owned nicks, restricted and closed rooms, kick) and the wire formats that carry them."""

from __future__ import annotations

import contextlib
import hmac
import os
import stat
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wirecat import auth
from wirecat.auth import AuthFailures, User, Users, UsersFileError, add_user, hash_token
from wirecat.chat.core import ChatCore
from wirecat.errors import InvalidMessage
from wirecat.protocols import MAX_TOKEN
from wirecat.protocols.chat import (
    JSON_CODEC,
    TEXT_CODEC,
    ChatServerProtocol,
    CloseRoom,
    Done,
    ErrorEvent,
    Hello,
    Join,
    Kick,
    Kicked,
    Nick,
    NickSet,
    RoomClosed,
    RoomJoined,
    Say,
    Welcome,
    decode_json_event,
    encode_json_command,
    parse_json_line,
    parse_text_line,
)
from wirecat.protocols.files import (
    AuthRequest,
    AuthResult,
    FilesClientProtocol,
    FilesServerProtocol,
    State,
)

FAST = 10  # log2 N for tests: ~1 ms per check instead of ~50 ms


def users_file(**extra_rooms: list[str]) -> str:
    text = (
        "# test users\n"
        f'[users.ann]\ntoken = "{hash_token("ann-secret", log_n=FAST)}"\nroles = ["admin"]\n\n'
        f'[users.bob]\ntoken = "{hash_token("bob-secret", log_n=FAST)}"\n'
    )
    for room, members in extra_rooms.items():
        text += f'\n[rooms."#{room}"]\nmembers = {members!r}\n'.replace("'", '"')
    return text


# -- hashing -------------------------------------------------------------------------------
def test_hash_is_phc_scrypt_with_random_salt_and_verifies() -> None:
    a, b = hash_token("s3cret", log_n=FAST), hash_token("s3cret", log_n=FAST)
    assert a.startswith("$scrypt$ln=10,r=8,p=1$") and a != b  # salted
    assert "s3cret" not in a
    assert auth.verify_token("s3cret", a) and auth.verify_token("s3cret", b)
    assert not auth.verify_token("s3creT", a)
    assert not auth.verify_token("", a)
    assert not auth.verify_token("x" * (MAX_TOKEN + 1), a)


def test_verification_compares_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    users = Users.parse(users_file())
    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    assert users.verify("ann", "wrong") is None
    assert users.verify("ANN", "ann-secret") == User("ann", frozenset({"admin"}))
    assert len(calls) == 2 and all(len(a) == len(b) == 32 for a, b in calls)


def test_unknown_user_costs_a_hash_too(monkeypatch: pytest.MonkeyPatch) -> None:
    costs: list[int] = []
    real = auth._scrypt

    def spy(token: bytes, salt: bytes, log_n: int, r: int, p: int) -> bytes:
        costs.append(log_n)
        return real(token, salt, log_n, r, p)

    users = Users.parse(users_file())
    monkeypatch.setattr(auth, "_scrypt", spy)
    assert users.verify("nobody", "whatever") is None
    assert costs == [FAST]  # same cost as a real user's hash: no timing oracle on names


@pytest.mark.parametrize(
    ("kwargs", "token"),
    [({"log_n": 9}, "t"), ({"log_n": 21}, "t"), ({"r": 0}, "t"), ({"p": 5}, "t"), ({}, ""),
     ({}, "x" * (MAX_TOKEN + 1))],
)  # fmt: skip
def test_hash_token_refuses_bad_costs_and_tokens(kwargs: dict[str, int], token: str) -> None:
    with pytest.raises(ValueError):
        hash_token(token, **kwargs)


# -- the users file ------------------------------------------------------------------------
def test_users_file_parses_users_roles_and_rooms() -> None:
    users = Users.parse(users_file(ops=["ann", "bob"], admins=["ann"]))
    assert len(users) == 2 and "ANN" in users and "carol" not in users
    assert [u.name for u in users.users()] == ["ann", "bob"]
    ann, bob = (User("ann", frozenset({"admin"})), User("bob"))
    assert users.may_join(bob, "#ops") and users.may_join(None, "#lobby")
    assert not users.may_join(None, "#admins") and not users.may_join(bob, "#admins")
    assert users.may_join(ann, "#admins")
    assert ann.is_admin and not bob.is_admin


_GOOD_HASH = hash_token("t", log_n=FAST)


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("[users.ann", "Expected"),  # TOML syntax, with the position
        ("[groups]\n", "unknown keys ['groups']"),
        ('[users."a b"]\ntoken = "x"\n', "a name is"),
        ("[users.ann]\nroles = []\n", "token = "),
        ('[users.ann]\ntoken = "plain-text-token"\n', "not a '$scrypt$"),
        ('[users.ann]\ntoken = "$scrypt$ln=30,r=8,p=1$' + "A" * 22 + "$" + "A" * 22 + '"\n',
         "out of bounds"),
        (f'[users.ann]\ntoken = "{_GOOD_HASH}"\nroles = ["root"]\n', "unknown roles ['root']"),
        (f'[users.ann]\ntoken = "{_GOOD_HASH}"\npassword = "x"\n', "unknown keys ['password']"),
        (f'[users.ann]\ntoken = "{_GOOD_HASH}"\n[users.ANN]\ntoken = "{_GOOD_HASH}"\n', "twice"),
        (f'[users.ann]\ntoken = "{_GOOD_HASH}"\n[rooms.ops]\nmembers = ["ann"]\n', "a room is"),
        (f'[users.ann]\ntoken = "{_GOOD_HASH}"\n[rooms."#ops"]\nmembers = ["zed"]\n',
         "not in [users]: ['zed']"),
        ("users = 3\n", "[users] must be a table"),
    ],
)  # fmt: skip
def test_bad_users_files_are_refused_with_a_reason(text: str, complaint: str) -> None:
    with pytest.raises(UsersFileError) as info:
        Users.parse(text, source="u.toml")
    assert complaint in str(info.value) and str(info.value).startswith("u.toml")


def test_users_file_size_is_checked_before_parsing(tmp_path: Any) -> None:
    path = tmp_path / "big.toml"
    path.write_bytes(b"#" * (auth.MAX_FILE + 1))
    path.chmod(0o600)
    with pytest.raises(UsersFileError, match="larger than"):
        Users.load(path)
    with pytest.raises(UsersFileError, match="cannot read"):
        Users.load(tmp_path / "missing.toml")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_users_parser_never_crashes(text: str) -> None:
    with contextlib.suppress(UsersFileError):
        Users.parse(text)


def test_add_user_appends_a_hash_with_mode_0600_and_refuses_a_taken_name(tmp_path: Any) -> None:
    path = tmp_path / "users.toml"
    token = add_user(path, "ann", roles=["admin"], log_n=FAST)
    assert len(token) >= 43
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert token not in path.read_text()
    add_user(path, "bob", token="given-token", log_n=FAST)
    users = Users.load(path)
    assert users.verify("ann", token) == User("ann", frozenset({"admin"}))
    assert users.verify("bob", "given-token") == User("bob")
    before = path.read_text()
    with pytest.raises(UsersFileError, match="exists"):
        add_user(path, "BOB", log_n=FAST)
    with pytest.raises(UsersFileError, match="invalid user name"):
        add_user(path, "no good", log_n=FAST)
    assert path.read_text() == before  # nothing written on refusal


def test_auth_failures_block_a_source_then_forgive_it() -> None:
    failures = AuthFailures(rate=0.1, burst=5)
    for i in range(5):
        assert not failures.blocked("10.0.0.1", float(i))
        failures.failed("10.0.0.1", float(i))
    assert failures.blocked("10.0.0.1", 5.0)
    assert not failures.blocked("10.0.0.2", 5.0)  # per source
    assert not failures.blocked("10.0.0.1", 15.0)  # one failure earned back after 10 s


# -- wire formats ----------------------------------------------------------------------------
def test_tokens_never_show_in_reprs() -> None:
    assert "tok" not in repr(Hello("ann", None, "tok"))
    assert "tok" not in repr(AuthRequest("ann", "tok"))


def test_json_hello_carries_the_token_and_round_trips() -> None:
    hello = Hello("ann", 7, "s3cret")
    assert parse_json_line(encode_json_command(hello).rstrip(b"\n")) == hello
    too_long = b'{"type":"hello","nick":"ann","token":"' + b"x" * (MAX_TOKEN + 1) + b'"}'
    err = parse_json_line(too_long)
    assert isinstance(err, ErrorEvent) and err.code == "bad_shape"
    err = parse_json_line(b'{"type":"hello","nick":"ann","token":5}')
    assert isinstance(err, ErrorEvent) and err.code == "bad_shape"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"/kick bob", Kick("bob")),
        (b"/kick bob #ops", Kick("bob", "#ops")),
        (b"/kick bob #ops spamming links", Kick("bob", "#ops", "spamming links")),
        (b"/kick bob spamming", Kick("bob", None, "spamming")),
        (b"/close", CloseRoom()),
        (b"/close ops", CloseRoom("#ops")),
    ],
)
def test_admin_text_commands_parse(line: bytes, expected: object) -> None:
    assert parse_text_line(line) == expected
    cmd = parse_text_line(line)
    assert isinstance(cmd, Kick | CloseRoom)
    assert parse_json_line(encode_json_command(cmd).rstrip(b"\n")) == cmd


@pytest.mark.parametrize("line", [b"/kick", b"/kick b@d", b"/kick bob #b@d", b"/close a b"])
def test_bad_admin_commands_are_errors(line: bytes) -> None:
    assert isinstance(parse_text_line(line), ErrorEvent)


def test_admin_events_encode_and_decode() -> None:
    kicked = Kicked(5, 1_700_000_000.0, "#ops", "bob", "ann", "spam")
    closed = RoomClosed(6, 1_700_000_000.0, "#ops", "ann")
    assert TEXT_CODEC.encode(kicked) == b"*** bob was kicked from #ops by ann (spam)\n"
    assert TEXT_CODEC.encode(closed) == b"*** #ops was closed by ann\n"
    for ev in (kicked, closed, Done("kicked bob from #ops", 3)):
        assert decode_json_event(JSON_CODEC.encode(ev)) == ev
    welcome = Welcome("ann", "", "#lobby", "wirecat", 1, "ann", ("admin",))
    assert decode_json_event(JSON_CODEC.encode(welcome)) == welcome
    assert TEXT_CODEC.encode(welcome).startswith(b"*** you are ann (authenticated; roles: admin)")


@pytest.mark.parametrize("split", [False, True], ids=["whole", "byte-by-byte"])
def test_text_mode_takes_the_line_after_the_prompt_as_the_token(split: bool) -> None:
    proto = ChatServerProtocol()
    data = b"ann\n /join  s3cret \n/join #x\n"

    def feed(chunk: bytes) -> None:
        for b in [chunk[i : i + 1] for i in range(len(chunk))] if split else [chunk]:
            proto.receive_data(b)

    feed(data)
    assert proto.next_event() == Hello("ann")
    proto.expect_token("ann")
    ev = proto.next_event()
    assert ev == Hello("ann", None, "/join  s3cret") and isinstance(ev, Hello)
    assert ev.token == "/join  s3cret"  # taken as it is: never parsed as a command
    proto.registered = True
    assert proto.next_event() == Join("#x")
    proto = ChatServerProtocol()  # an empty token line (a new connection: one login each)
    feed(b"ann\n")
    assert proto.next_event() == Hello("ann")
    proto.expect_token("ann")
    feed(b"\n")
    err = proto.next_event()
    assert isinstance(err, ErrorEvent) and err.code == "auth_failed"


def test_files_auth_request_and_result() -> None:
    client, server = FilesClientProtocol(), FilesServerProtocol()
    client.send_auth("ann", "s3cret")
    server.receive_data(b"".join(client.data_to_send()))
    assert server.events_received() == [AuthRequest("ann", "s3cret")]
    assert server.state is State.AWAIT_AUTH
    server.send_auth_result("ann", ["admin"])
    client.receive_data(b"".join(server.data_to_send()))
    assert client.events_received() == [AuthResult("ann", ("admin",))]
    assert client.state is State.IDLE


@pytest.mark.parametrize(
    "header",
    [b'{"op":"auth","user":"ann"}\n', b'{"op":"auth","user":"","token":"t"}\n',
     b'{"op":"auth","user":"ann","token":""}\n',
     b'{"op":"auth","user":"ann","token":"' + b"x" * (MAX_TOKEN + 1) + b'"}\n'],
)  # fmt: skip
def test_files_bad_auth_requests_are_fatal(header: bytes) -> None:
    server = FilesServerProtocol()
    with pytest.raises(InvalidMessage, match=r"token|user"):
        server.receive_data(header)
    assert server.state is State.ERROR


# -- the chat core -----------------------------------------------------------------------------
class _Sink:
    codec = JSON_CODEC

    def __init__(self) -> None:
        self.out: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.out.append(data)


def _core(guests: bool = True) -> ChatCore:
    return ChatCore(users=Users.parse(users_file(ops=["bob"])), guests=guests)


def _member(core: ChatCore, nick: str | None, user: User | None = None) -> Any:
    m = core.connect(_Sink())
    m.user = user
    reply = core.handle(m, Hello(nick))
    assert isinstance(reply, Welcome), reply
    return m


ANN = User("ann", frozenset({"admin"}))
BOB = User("bob")


def _code(reply: object) -> str:
    assert isinstance(reply, ErrorEvent), reply
    return reply.code


def test_user_names_are_owned_nicks() -> None:
    core = _core()
    m = core.connect(_Sink())
    assert _code(core.handle(m, Hello("ann"))) == "auth_required"
    assert _code(core.handle(m, Hello("ANN"))) == "auth_required"
    guest = _member(core, "carol")
    assert _code(core.handle(guest, Nick("bob"))) == "nick_reserved"
    ann = _member(core, None, ANN)  # authenticated: the nick is the user name
    assert ann.nick == "ann"
    m2 = core.connect(_Sink())
    m2.user = ANN
    assert _code(core.handle(m2, Hello("ann"))) == "nick_taken"  # already connected
    m3 = core.connect(_Sink())
    m3.user = BOB
    assert _code(core.handle(m3, Hello("ann"))) == "auth_required"  # bob's token is not ann's
    assert core.handle(ann, Nick("boss")) == NickSet("boss", "ann")  # may rename ...
    assert ann.nick == "boss" and ann.user == ANN  # ... keeping its identity and roles
    assert _code(core.handle(guest, Nick("ann"))) == "nick_reserved"  # still owned
    assert core.handle(ann, Nick("ann")) == NickSet("ann", "boss")  # ... and take it back


def test_without_guests_only_users_get_in() -> None:
    core = _core(guests=False)
    m = core.connect(_Sink())
    assert _code(core.handle(m, Hello("carol"))) == "auth_required"
    assert _code(core.handle(m, Hello(None))) == "auth_required"
    assert _member(core, "bob", BOB).nick == "bob"


def test_guest_names_skip_user_names() -> None:
    core = ChatCore(users=Users.parse(users_file().replace("[users.bob]", "[users.guest-1]")))
    assert _member(core, None).nick == "guest-2"


def test_restricted_rooms_admit_listed_users_and_admins() -> None:
    core = _core()
    guest, bob, ann = _member(core, "carol"), _member(core, "bob", BOB), _member(core, "ann", ANN)
    assert _code(core.handle(guest, Join("#ops"))) == "forbidden"
    assert isinstance(core.handle(bob, Join("#ops")), RoomJoined)
    assert isinstance(core.handle(ann, Join("#ops")), RoomJoined)  # admin
    assert core.rooms["#ops"].nicks() == ("ann", "bob")


def test_admins_kick_and_others_may_not() -> None:
    core = _core()
    ann, bob, carol = _member(core, "ann", ANN), _member(core, "bob", BOB), _member(core, "carol")
    for m in (ann, bob, carol):
        core.handle(m, Join("#lobby"))
    assert _code(core.handle(bob, Kick("carol"))) == "forbidden"
    assert _code(core.handle(ann, Kick("zed"))) == "no_such_nick"
    assert _code(core.handle(ann, Kick("carol", "#elsewhere"))) == "not_in_room"
    n = len(carol.sink.out)
    assert core.handle(ann, Kick("carol", None, "spam", ref=4)) == Done(
        "kicked carol from #lobby", 4
    )
    assert b'"type":"kick"' in carol.sink.out[n]  # the kicked member hears it ...
    assert any(b'"by":"ann"' in line for line in bob.sink.out)  # ... and so does the room
    assert "#lobby" not in carol.rooms and core.rooms["#lobby"].nicks() == ("ann", "bob")
    assert _code(core.handle(carol, Say("still here?"))) == "not_in_room"
    assert isinstance(core.handle(carol, Join("#lobby")), RoomJoined)  # may come back
    assert core.counters["kicks"] == 1


def test_admins_close_rooms_until_an_admin_reopens_them() -> None:
    core = _core()
    ann, bob = _member(core, "ann", ANN), _member(core, "bob", BOB)
    core.handle(bob, Join("#chat"))
    core.handle(ann, Join("#chat"))
    assert _code(core.handle(bob, CloseRoom())) == "forbidden"
    assert isinstance(core.handle(ann, CloseRoom("#chat")), Done)
    assert "#chat" not in core.rooms and not bob.rooms and not ann.rooms
    assert any(b'"type":"close"' in line for line in bob.sink.out)
    assert _code(core.handle(bob, Join("#chat"))) == "room_closed"
    assert isinstance(core.handle(ann, Join("#chat")), RoomJoined)  # reopens
    assert isinstance(core.handle(bob, Join("#chat")), RoomJoined)


def test_without_a_users_file_admin_commands_are_forbidden() -> None:
    core = ChatCore()
    m = core.connect(_Sink())
    core.handle(m, Hello("ann"))
    core.handle(m, Join("#lobby"))
    assert _code(core.handle(m, Kick("ann"))) == "forbidden"
    assert _code(core.handle(m, CloseRoom())) == "forbidden"


def test_remove_user_keeps_the_rest_of_the_file(tmp_path: Any) -> None:
    path = tmp_path / "users.toml"
    path.write_text(
        "# team\n" + users_file(ops=["bob"]).replace("[users.bob]", "# bob is new\n[users.bob]")
    )
    add_user(path, "carol", log_n=FAST)
    with pytest.raises(UsersFileError, match="listed in #ops"):
        auth.remove_user(path, "bob")
    with pytest.raises(UsersFileError, match="no user"):
        auth.remove_user(path, "zed")
    assert auth.remove_user(path, "ANN") == User("ann", frozenset({"admin"}))
    text = path.read_text()
    assert text.startswith("# team\n") and "# bob is new" in text and "[users.ann]" not in text
    users = Users.load(path)
    assert [u.name for u in users.users()] == ["bob", "carol"] and "#ops" in users.rooms


def test_add_and_reset_keep_comments_and_order(tmp_path: Any) -> None:
    path = tmp_path / "users.toml"
    path.write_text("# who may chat\n" + users_file(ops=["bob"]) + "# end of file\n")
    add_user(path, "carol", log_n=FAST, roles=["admin"])
    user, token = auth.reset_user(path, "BOB", log_n=FAST)
    text = path.read_text()
    assert text.startswith("# who may chat\n") and "# end of file" in text
    assert text.index("[users.ann]") < text.index("[users.bob]") < text.index("[users.carol]")
    users = Users.load(path)
    assert user.name == "bob" and users.verify("bob", token) is not None
    assert users.get("carol") == User("carol", frozenset({"admin"}))
    assert "#ops" in users.rooms


def test_edits_are_atomic_and_leave_no_temporary_file(tmp_path: Any, monkeypatch: Any) -> None:
    path = tmp_path / "users.toml"
    add_user(path, "ann", log_n=FAST)
    before = path.read_text()

    def crash(*_: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(auth.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        add_user(path, "bob", log_n=FAST)
    assert path.read_text() == before  # the old file, whole
    assert [p.name for p in tmp_path.iterdir()] == ["users.toml"]
    assert oct(path.stat().st_mode & 0o777) == "0o600"
