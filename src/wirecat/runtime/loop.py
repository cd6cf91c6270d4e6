"""Choosing and running the event loop: a factory, never a global policy.

Model: uvicorn ``loops/auto.py``; ``asyncio.Runner(loop_factory=...)`` (Python 3.11+).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

__all__ = ["LoopKind", "loop_factory", "resolve_loop", "run"]

LoopKind = Literal["auto", "asyncio", "uvloop"]
T = TypeVar("T")


def resolve_loop(kind: LoopKind = "auto") -> Literal["asyncio", "uvloop"]:
    """Return the concrete loop ``kind`` stands for: ``auto`` is uvloop when importable.

    Raises:
        ValueError: ``kind`` is ``uvloop`` and uvloop is not installed, or ``kind`` is unknown.
    """
    if kind not in ("auto", "asyncio", "uvloop"):
        raise ValueError(f"unknown loop {kind!r}: expected auto, asyncio or uvloop")
    if kind == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        if kind == "uvloop":
            raise ValueError("uvloop is not installed (pip install uvloop)") from None
        return "asyncio"
    return "uvloop"


def loop_factory(kind: LoopKind = "auto") -> Callable[[], asyncio.AbstractEventLoop]:
    """Return a zero-argument callable that creates a new event loop of ``kind``."""
    if resolve_loop(kind) == "uvloop":
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
        return factory
    return asyncio.new_event_loop


def run(main: Coroutine[Any, Any, T], *, loop: LoopKind = "auto", debug: bool | None = None) -> T:
    """Run ``main`` to completion on a fresh loop of kind ``loop`` and return its result."""
    with asyncio.Runner(loop_factory=loop_factory(loop), debug=debug) as runner:
        return runner.run(main)
