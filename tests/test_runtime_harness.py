"""The test harness itself (conftest + helpers) must be able to fail: checked here."""

from __future__ import annotations

import asyncio

import pytest

from helpers import SCALE, run_async, scaled, wait_for


def test_runs_on_the_requested_loop(loop_kind: str) -> None:
    async def loop_module() -> str:
        return type(asyncio.get_running_loop()).__module__

    module = run_async(loop_module, loop_kind=loop_kind)
    assert ("uvloop" in module) is (loop_kind == "uvloop")


def test_exception_in_callback_fails_the_test(loop_kind: str) -> None:
    async def body() -> None:
        asyncio.get_running_loop().call_soon(lambda: 1 / 0)
        await asyncio.sleep(0)

    with pytest.raises(AssertionError, match="exception handler was called"):
        run_async(body, loop_kind=loop_kind)


def test_unretrieved_task_exception_fails_the_test(loop_kind: str) -> None:
    async def body() -> None:
        async def boom() -> None:
            raise ValueError("never retrieved")

        task = asyncio.ensure_future(boom())
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        del task  # dropped without retrieving its exception

    with pytest.raises(AssertionError, match="never retrieved"):
        run_async(body, loop_kind=loop_kind)


def test_deadline_fails_the_test(loop_kind: str) -> None:
    async def body() -> None:
        await asyncio.Event().wait()

    with pytest.raises(AssertionError, match="did not finish within"):
        run_async(body, loop_kind=loop_kind, timeout=0.05)


def test_timeout_error_from_the_test_is_not_mistaken_for_the_deadline(loop_kind: str) -> None:
    async def body() -> None:
        raise TimeoutError("the test's own")

    with pytest.raises(TimeoutError, match="the test's own"):
        run_async(body, loop_kind=loop_kind)


def test_wait_for_fails_when_condition_never_holds(loop_kind: str) -> None:
    async def body() -> None:
        await wait_for(lambda: False, 0.05, what="never")

    with pytest.raises(AssertionError, match="never"):
        run_async(body, loop_kind=loop_kind)


async def test_async_tests_get_sync_fixtures(tmp_path: object, loop_kind: str) -> None:
    assert tmp_path is not None
    assert loop_kind in ("asyncio", "uvloop")


@pytest.mark.loops("asyncio")
async def test_loops_marker_restricts(loop_kind: str) -> None:
    assert loop_kind == "asyncio"


def test_scale() -> None:
    assert SCALE > 0
    assert scaled(2.0) == 2.0 * SCALE
