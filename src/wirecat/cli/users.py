"""``wirecat users``: make and check the TOML users file of ``serve --users``."""

from __future__ import annotations

import contextlib
import os
import stat
import sys
from collections.abc import Iterator

import click

from ..auth import ROLES, Users, UsersFileError, add_user, remove_user, reset_user
from ..protocols import MAX_TOKEN
from .common import die
from .exits import message_for


@contextlib.contextmanager
def _users_file(path: str) -> Iterator[None]:
    """A bad users file exits 78 (EX_CONFIG), a write failure 73 (EX_CANTCREAT)."""
    try:
        yield
    except UsersFileError as exc:
        die(message_for(exc).replace("--users-insecure-ok", "--insecure-ok"), 78)
    except OSError as exc:
        die(f"cannot write {path}: {exc.strerror}", 73)


def _tightened(path: str, before: int | None) -> None:
    """Say so when an edit (written back 0600) tightened a file others could read or write."""
    if before is not None and before & 0o077:
        click.echo(f"{path} was mode {before:04o}; it is now 0600", err=True)


def _mode(path: str) -> int | None:
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return None


@click.group("users")
def users_command() -> None:
    """Manage a users file: user names, scrypt-hashed tokens, roles, restricted rooms.

    \b
    Examples:
      wirecat users add users.toml ann --role admin    # prints ann's new token once
      echo "$TOKEN" | wirecat users add users.toml bob --token-stdin
      wirecat users check users.toml
      wirecat users reset users.toml bob        # a new token (the old one stops working)
      wirecat users remove users.toml bob
      wirecat serve --chat tls://[::]:7443 --self-signed --users users.toml

    Restrict a room by adding to the file, by hand:

    \b
      [rooms."#ops"]
      members = ["ann", "bob"]
    """


@users_command.command("add")
@click.argument("path", metavar="FILE", type=click.Path(dir_okay=False))
@click.argument("name")
@click.option(
    "--role", "roles", multiple=True, type=click.Choice(sorted(ROLES)), help="Give a role."
)
@click.option(
    "--token-stdin",
    is_flag=True,
    help="Read the token from the first line of stdin instead of making a random one.",
)
def add_command(path: str, name: str, roles: tuple[str, ...], token_stdin: bool) -> None:
    """Add user NAME to FILE (created with mode 0600) and print its token on stdout.

    \b
    Examples:
      wirecat users add users.toml ann --role admin
      echo "$TOKEN" | wirecat users add users.toml bob --token-stdin

    Only a salted scrypt hash of the token is stored: the token cannot be shown again.
    Give it to the user; clients send it with WIRECAT_TOKEN or --token-file, never on the
    command line.
    """
    token = None
    if token_stdin:
        token = sys.stdin.readline().rstrip("\r\n")
        if not 0 < len(token.encode()) <= MAX_TOKEN:
            die(f"the token must be 1-{MAX_TOKEN} bytes on the first line of stdin", 64)
    before = _mode(path)
    with _users_file(path):
        made = add_user(path, name, token=token, roles=roles)
    _tightened(path, before)
    click.echo(
        f"added {name} to {path}" + (f" (roles: {', '.join(roles)})" if roles else ""), err=True
    )
    if token is None:
        click.echo(made)


@users_command.command("check")
@click.argument("path", metavar="FILE", type=click.Path(dir_okay=False))
@click.option(
    "--insecure-ok",
    is_flag=True,
    help="Accept a file others may read or write (as serve --users-insecure-ok).",
)
def check_command(path: str, insecure_ok: bool) -> None:
    """Check FILE as serve would and list its users, their roles and the restricted rooms.

    Exit 78 if the file is malformed, not a regular file, or others may read or write it
    (fix: chmod 600 FILE).

    \b
    Example:
      wirecat users check users.toml
    """
    with _users_file(path):
        users = Users.load(path, insecure_ok=insecure_ok)
    if not len(users):
        click.echo(f"warning: {path} has no users: nobody could log in", err=True)
    for user in users.users():
        roles = f" ({', '.join(sorted(user.roles))})" if user.roles else ""
        click.echo(f"user {user.name}{roles}")
    for room, members in sorted(users.rooms.items()):
        click.echo(f"room {room}: {', '.join(sorted(members))}")
    click.echo(f"{path}: {len(users)} users, {len(users.rooms)} restricted rooms: OK", err=True)


@users_command.command("remove")
@click.argument("path", metavar="FILE", type=click.Path(dir_okay=False, exists=True))
@click.argument("name")
def remove_command(path: str, name: str) -> None:
    """Remove user NAME from FILE (a running server re-reads it on SIGHUP).

    \b
    Example:
      wirecat users remove users.toml bob
    """
    before = _mode(path)
    with _users_file(path):
        user = remove_user(path, name)
    _tightened(path, before)
    click.echo(f"removed {user.name} from {path}", err=True)


@users_command.command("reset")
@click.argument("path", metavar="FILE", type=click.Path(dir_okay=False, exists=True))
@click.argument("name")
def reset_command(path: str, name: str) -> None:
    """Give user NAME a new random token (roles kept) and print it on stdout.

    \b
    Example:
      wirecat users reset users.toml bob     # the old token stops working
    """
    before = _mode(path)
    with _users_file(path):
        user, token = reset_user(path, name)
    _tightened(path, before)
    click.echo(f"new token for {user.name} in {path}", err=True)
    click.echo(token)
