"""Rules about the shape of the code: layering, the public surface, the exception tree."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

import wirecat
import wirecat.protocols
from wirecat import errors
from wirecat.cli import exits
from wirecat.cli.exits import exit_code_for
from wirecat.errors import (
    AddressInUse,
    ConnectionRefused,
    ConnectTimeout,
    IdleTimeout,
    InvalidEndpoint,
    WirecatError,
)

SRC = Path(wirecat.__file__).parent
PROTOCOLS = Path(wirecat.protocols.__file__).parent
FORBIDDEN = {"asyncio", "socket", "ssl", "selectors"}


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports (absolute imports, any nesting)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "__import__"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            names.add(str(node.args[0].value).split(".")[0])
    return names


PROTOCOL_FILES = sorted(PROTOCOLS.rglob("*.py"))


def test_protocol_package_is_found() -> None:
    names = {p.name for p in PROTOCOL_FILES}
    assert {"__init__.py", "buffer.py", "lines.py"} <= names


@pytest.mark.parametrize("path", PROTOCOL_FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_protocols_are_sans_io(path: Path) -> None:
    bad = imported_modules(path) & FORBIDDEN
    assert not bad, f"{path.relative_to(SRC)} imports {sorted(bad)}: protocols/ must be sans-I/O"


def test_protocols_do_not_import_upper_layers() -> None:
    for path in PROTOCOL_FILES:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level >= 1 and node.module:
                top = node.module.split(".")[0]
                depth = len(path.relative_to(PROTOCOLS).parts)  # 1: protocols/x.py
                if node.level > depth:  # above protocols/: only errors and endpoints are below us
                    assert top in {"errors", "endpoints"}, f"{path.name} imports ..{node.module}"
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                assert not node.module.startswith(
                    ("wirecat.runtime", "wirecat.services", "wirecat.cli")
                ), f"{path.name} imports {node.module}"


def test_import_checker_sees_nested_and_aliased_imports(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import os\n"
        "def f():\n    import socket as s\n"
        "if True:\n    from asyncio.events import get_event_loop\n"
        "mod = __import__('ssl')\n"
        "from . import sibling\n"
    )
    assert imported_modules(probe) >= {"os", "socket", "asyncio", "ssl"}


def test_protocol_modules_import_without_asyncio_in_scope() -> None:
    # Every protocols module imports cleanly on its own (no hidden I/O dependencies at import).
    for info in pkgutil.walk_packages(wirecat.protocols.__path__, "wirecat.protocols."):
        importlib.import_module(info.name)


# -- layers -----------------------------------------------------------------------------------
#: Each part of the package and its layer: a module may import only from its own layer or
#: below (protocols -> runtime -> cores -> services -> app -> cli). Lazy imports count.
LAYERS: dict[str, int] = {
    "errors": 0,
    "endpoints": 0,
    "escape": 0,
    "protocols": 1,
    "runtime": 2,
    "auth": 3,
    "chat": 3,
    "files": 3,
    "web": 3,
    "services": 4,
    "bench": 4,
    "config": 5,
    "app": 5,
    "cli": 6,
    "__main__": 6,
}


def _part(module: str) -> str:
    """The top-level part of ``wirecat.x.y`` (``x``)."""
    return module.split(".")[1] if module.count(".") >= 1 else "__init__"


def _wirecat_imports(path: Path) -> set[str]:
    """Absolute names of every wirecat module ``path`` imports (relative ones resolved)."""
    rel = path.relative_to(SRC.parent).with_suffix("")
    package = list(rel.parts[:-1])  # a module's package; for __init__, the package itself
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            if name.startswith("wirecat"):
                found.add(name)
                if node.module is None or name.count(".") == 0:
                    found.update(f"{name}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("wirecat"))
    return found


SOURCE_FILES = sorted(p for p in SRC.rglob("*.py") if p.name != "__init__.py" or p.parent != SRC)


def test_every_part_has_a_layer() -> None:
    parts = {p.relative_to(SRC).parts[0].removesuffix(".py") for p in SOURCE_FILES}
    assert parts <= set(LAYERS), f"give these a layer: {sorted(parts - set(LAYERS))}"


@pytest.mark.parametrize("path", SOURCE_FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_nothing_imports_upward(path: Path) -> None:
    own = LAYERS[path.relative_to(SRC).parts[0].removesuffix(".py")]
    for name in _wirecat_imports(path):
        part = _part(name)
        if part == "__init__" or part not in LAYERS:
            continue
        assert LAYERS[part] <= own, (
            f"{path.relative_to(SRC)} (layer {own}) imports {name} (layer {LAYERS[part]})"
        )


def test_layer_checker_resolves_relative_imports(tmp_path: Path) -> None:
    probe = SRC / "runtime" / "server.py"
    names = _wirecat_imports(probe)
    assert "wirecat.runtime.handler" in names and "wirecat.endpoints" in names


# -- public surface ---------------------------------------------------------------------------


def test_all_exports_exist() -> None:
    assert len(wirecat.__all__) == len(set(wirecat.__all__))
    for name in wirecat.__all__:
        assert hasattr(wirecat, name), name
    assert {"Endpoint", "parse_endpoint", "WirecatError", "__version__"} <= set(wirecat.__all__)
    assert set(errors.__all__) <= set(wirecat.__all__)


@pytest.mark.parametrize(
    "module",
    [
        "wirecat.endpoints",
        "wirecat.errors",
        "wirecat.protocols.buffer",
        "wirecat.protocols.lines",
        "wirecat.runtime.limits",
        "wirecat.runtime.loop",
        "wirecat.runtime.logs",
        "wirecat.runtime.handler",
        "wirecat.runtime.listeners",
        "wirecat.runtime.server",
        "wirecat.runtime.connection",
        "wirecat.services.echo",
        "wirecat.services.greeting",
    ],
)
def test_module_all_exports_exist(module: str) -> None:
    mod = importlib.import_module(module)
    names = mod.__all__
    assert len(names) == len(set(names))
    for name in names:
        assert hasattr(mod, name), f"{module}.__all__ lists missing {name}"


# -- exception tree -----------------------------------------------------------------------------


def exception_classes() -> list[type[BaseException]]:
    return [
        obj
        for _, obj in inspect.getmembers(errors, inspect.isclass)
        if issubclass(obj, BaseException) and obj.__module__ == errors.__name__
    ]


def docstring_tree() -> dict[str, str | None]:
    """Parse the tree drawn in errors' docstring into {class: parent drawn above it}."""
    parents: dict[str, str | None] = {}
    stack: list[tuple[int, str]] = []
    for line in (errors.__doc__ or "").splitlines():
        match = re.match(r"^(\s*(?:[│ ]\s*)*(?:[├└]── )?)([A-Z]\w+)\b", line)
        if not match or not line.startswith("    "):
            continue
        depth = len(match.group(1))
        name = match.group(2)
        while stack and stack[-1][0] >= depth:
            stack.pop()
        parents[name] = stack[-1][1] if stack else None
        stack.append((depth, name))
    return parents


def test_every_exception_derives_from_wirecat_error() -> None:
    classes = exception_classes()
    assert len(classes) >= 20
    for cls in classes:
        assert issubclass(cls, WirecatError), cls


def test_every_exception_is_drawn_in_the_docstring_tree() -> None:
    tree = docstring_tree()
    assert tree["WirecatError"] is None
    for cls in exception_classes():
        assert cls.__name__ in tree, f"{cls.__name__} missing from the errors docstring tree"


def test_docstring_tree_matches_the_class_hierarchy() -> None:
    for name, parent in docstring_tree().items():
        cls = getattr(errors, name)
        if parent is None:
            assert cls is WirecatError
        else:
            wirecat_bases = [b for b in cls.__bases__ if issubclass(b, WirecatError)]
            assert [b.__name__ for b in wirecat_bases] == [parent], name


def test_exceptions_are_exported() -> None:
    for cls in exception_classes():
        assert cls.__name__ in errors.__all__
        assert getattr(wirecat, cls.__name__) is cls


def test_dual_inheritance_for_stdlib_catchers() -> None:
    assert issubclass(InvalidEndpoint, ValueError)
    assert issubclass(errors.WirecatTimeout, TimeoutError)


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (ConnectionRefused("x"), 69),
        (ConnectTimeout("x"), 75),
        (IdleTimeout("x"), 75),
        (AddressInUse("x"), 71),
        (InvalidEndpoint("x"), 64),
        (errors.NameResolutionError("x"), 68),
        (errors.PermissionDenied("x"), 77),
        (errors.LineTooLong("x"), 76),
        (errors.ConnectionClosedError("x"), 74),
        (WirecatError("x"), 1),
        (RuntimeError("x"), 1),
        (KeyboardInterrupt(), 1),
    ],
)
def test_exit_codes(exc: BaseException, code: int) -> None:
    assert exit_code_for(exc) == code


def test_exit_codes_distinct_for_common_failures() -> None:
    codes = [
        exit_code_for(cls("x"))
        for cls in (ConnectionRefused, ConnectTimeout, AddressInUse, InvalidEndpoint)
    ]
    assert len(set(codes)) == 4
    assert all(c not in (0, 1, 2) for c in codes)  # 2 is click's usage error


def test_exit_code_table_is_most_specific_first() -> None:
    # A class listed after one of its ancestors would never be reached.
    table = [cls for cls, _ in exits.EXIT_CODES]
    for i, cls in enumerate(table):
        for earlier in table[:i]:
            assert not issubclass(cls, earlier), f"{cls.__name__} shadowed by {earlier.__name__}"


def test_every_exception_has_an_exit_code_other_than_success() -> None:
    for cls in exception_classes():
        exc = cls("x")
        assert exit_code_for(exc) != 0
