"""Shared test infrastructure for wirecat. No pytest-asyncio: this file runs async tests.

Async tests
    Write ``async def test_...``: it runs once on the asyncio loop and once on uvloop
    (test ids ``[asyncio]`` / ``[uvloop]``), each on a fresh loop made by
    ``wirecat.runtime.loop.run(..., loop=kind)``, bounded by ``scaled(20)`` seconds.
    Ask for the ``loop_kind`` fixture to know which loop you are on.

    The test FAILS if anything reaches the loop's exception handler (an exception in a
    callback or protocol method, "Task exception was never retrieved", a task that raised
    while being cancelled at the end), even if the test body passed.

    Markers:
        ``@pytest.mark.loops("asyncio")``   run an async test on these loops only.
        ``@pytest.mark.async_timeout(60)``  bound this test to ``scaled(60)`` seconds.

    Fixtures are resolved by pytest before the loop starts, so async tests take only
    synchronous fixtures (``tmp_path``, ``unix_dir``, ``caplog``...). Build servers inside
    the test body, e.g. with ``helpers.serving(...)``.

Fixtures
    ``loop_kind``   ``"asyncio"`` or ``"uvloop"``. Sync tests that ask for it are also run
                    on both loops (use it with ``run``).
    ``run``         ``run(coro_fn, *args, timeout=None, **kwargs)`` for sync tests: runs
                    ``await coro_fn(*args, **kwargs)`` on ``loop_kind`` with the same checks.
                    ``timeout`` is in seconds, already scaled.
    ``scale``       the time unit: ``float(WIRECAT_TEST_TIMEOUT_SCALE)``, default 1.
    ``unix_dir``    a short, fresh directory for Unix socket paths (``tmp_path`` may exceed
                    the 107-byte ``sun_path`` limit); removed after the test.

Helpers (``from helpers import ...``, see ``tests/helpers.py``)
    ``scaled(s)``, ``wait_for(predicate, timeout=None, what="")``, ``serving(*services,
    limits=None)``, ``run_async(...)``, ``short_unix_dir()``.

Rules for every test: loopback only, port 0 read back from the listener (never pre-picked),
no ``sleep`` as synchronisation (wait on an event, a read with a timeout, or ``wait_for``),
every timeout through ``scaled()``. Warnings are errors (pyproject), so close what you open.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from helpers import DEFAULT_TEST_TIMEOUT, LOOP_KINDS, SCALE, run_async, scaled, short_unix_dir


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "loops(*kinds): run this async test only on these loops (asyncio, uvloop)"
    )
    config.addinivalue_line(
        "markers", "async_timeout(seconds): bound this async test (unscaled seconds)"
    )


def _kinds_for(node_marker: Any) -> tuple[str, ...]:
    kinds = tuple(node_marker.args) if node_marker is not None else LOOP_KINDS
    unknown = set(kinds) - set(LOOP_KINDS)
    if unknown:
        raise pytest.UsageError(f"unknown loop kinds {sorted(unknown)}; use {LOOP_KINDS}")
    return kinds


def _loop_params(kinds: tuple[str, ...]) -> list[Any]:
    return [
        # No skip when uvloop is missing: it is a dependency on Linux, so its absence must
        # fail the uvloop half of the suite (the loop factory raises), not hide it.
        pytest.param(k, id=k)
        for k in kinds
    ]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrise async tests (and any test asking for ``loop_kind``) over the loops."""
    is_async = inspect.iscoroutinefunction(metafunc.function)
    if not is_async and "loop_kind" not in metafunc.fixturenames:
        return
    if "loop_kind" not in metafunc.fixturenames:
        metafunc.fixturenames.append("loop_kind")
    kinds = _kinds_for(metafunc.definition.get_closest_marker("loops"))
    metafunc.parametrize("loop_kind", _loop_params(kinds))


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run ``async def`` tests on their loop with a deadline and the exception-handler check."""
    fn = pyfuncitem.obj
    if not inspect.iscoroutinefunction(fn):
        return None
    funcargs = pyfuncitem.funcargs
    kwargs = {name: funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    kind = pyfuncitem.callspec.params["loop_kind"]
    marker = pyfuncitem.get_closest_marker("async_timeout")
    seconds = float(marker.args[0]) if marker is not None else DEFAULT_TEST_TIMEOUT
    run_async(functools.partial(fn, **kwargs), loop_kind=kind, timeout=scaled(seconds))
    return True


@pytest.fixture
def scale() -> float:
    """The time unit (``WIRECAT_TEST_TIMEOUT_SCALE``, default 1)."""
    return SCALE


@pytest.fixture
def run(loop_kind: str) -> Callable[..., Any]:
    """``run(coro_fn, *args, timeout=None, **kwargs)``: run a coroutine on ``loop_kind``."""

    def _run(fn: Callable[..., Any], /, *args: Any, timeout: float | None = None, **kw: Any) -> Any:
        return run_async(fn, *args, loop_kind=loop_kind, timeout=timeout, **kw)

    return _run


@pytest.fixture
def unix_dir() -> Iterator[str]:
    """A short, fresh directory for Unix socket paths."""
    with short_unix_dir() as path:
        yield path


@pytest.fixture
def wirecat_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Capture the ``wirecat`` logger (DEBUG and up) even if something set
    ``propagate = False`` on it."""
    log = logging.getLogger("wirecat")
    old_propagate = log.propagate
    log.propagate = True
    caplog.set_level(logging.DEBUG, logger="wirecat")
    try:
        yield caplog
    finally:
        log.propagate = old_propagate
