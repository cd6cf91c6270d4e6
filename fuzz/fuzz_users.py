"""atheris target: the users-file parser raises only ``UsersFileError`` (with a reason), and
what parses answers its queries.

Run: ``fuzz/run.sh users``.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from wirecat.auth import Users, UsersFileError


def test_one_input(data: bytes) -> None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return
    try:
        users = Users.parse(text)
    except UsersFileError as exc:
        assert str(exc), "an error without a reason"
        return
    for user in users.users():
        assert user.name in users and users.get(user.name) == user
    for room in users.rooms:
        users.may_join(None, room)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
