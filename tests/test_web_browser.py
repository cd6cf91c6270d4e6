"""The chat page in a real browser: Debian's Chromium driven by Playwright (never
``playwright install``: the system browser is used). A missing browser FAILS these tests.

Two pages, an nc-style text user and a JSON-lines program share #lobby; a page whose socket
is cut reconnects by itself and shows what was said meanwhile exactly once; hostile text
renders as text; a page of another origin cannot open the chat socket. Screenshots go to
``tests/artifacts/`` (or ``$WIRECAT_TEST_ARTIFACTS``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import wirecat
from _chat import Peer
from helpers import scaled, wait_for
from wirecat import ServeConfig

pytestmark = [pytest.mark.loops("asyncio"), pytest.mark.async_timeout(90)]

T = scaled(10.0)
MS = int(T * 1000)
ARTIFACTS = Path(os.environ.get("WIRECAT_TEST_ARTIFACTS", Path(__file__).parent / "artifacts"))
CHROMIUM_ARGS = ["--disable-background-networking", "--disable-component-update", "--no-first-run"]
XSS = ["<img src=x onerror=alert(1)>", "</script><script>alert(2)</script>"]


def _chromium() -> str:
    path = shutil.which("chromium")
    assert path, "Debian's chromium is missing: scripts/test.sh installs it (apt chromium)"
    return path


@contextlib.asynccontextmanager
async def _setup(**kw: Any) -> AsyncIterator[tuple[wirecat.Server, Any]]:
    from playwright.async_api import async_playwright

    config = ServeConfig(
        greeting=[], echo=[], chat=["tcp://127.0.0.1:0"], web=["tcp://127.0.0.1:0"], **kw
    )
    server = wirecat.Server(config)
    await server.start()
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=_chromium(), args=CHROMIUM_ARGS)
            try:
                yield server, browser
            finally:
                await browser.close()
    finally:
        await server.shutdown(grace=scaled(2))


async def _page(browser: Any, server: wirecat.Server, nick: str) -> Any:
    page = await browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("dialog", lambda d: errors.append(f"dialog: {d.message}"))
    page.errors = errors
    await page.goto(f"http://127.0.0.1:{server.endpoint('web').port}/")
    await page.fill("#nick", nick)
    await page.click("#connect")
    await page.wait_for_selector("#status[data-state=online]", timeout=MS)
    await page.wait_for_selector("#rooms li.current", timeout=MS)
    return page


async def _say(page: Any, text: str) -> None:
    await page.fill("#text", text)
    await page.press("#text", "Enter")


async def _messages(page: Any) -> list[tuple[int, str]]:
    """(id, text) of the chat messages shown in the current room, in page order."""
    rows = await page.eval_on_selector_all(
        "#log .msg[data-id]:not(.notice)",
        "nodes => nodes.map(n => [Number(n.dataset.id), n.querySelector('.text').textContent])",
    )
    return [(int(i), str(t)) for i, t in rows]


def _shot(name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / name


async def test_two_pages_nc_and_json_lines_share_lobby_in_order_with_same_ids() -> None:
    async with _setup(chat_rate=None) as (server, browser):
        ann = await _page(browser, server, "ann")
        bob = await _page(browser, server, "bob")
        chat_ep = server.endpoint("chat")
        nc = await Peer.open(chat_ep)  # a person with nc: text mode
        await nc.send(b"carol\n")
        await nc.until(b"*** in #lobby")
        bot = await Peer.open(chat_ep)  # a program: JSON lines
        await bot.send_json(type="hello", nick="bot")
        await bot.send_json(type="join", room="#lobby")
        await bot.until(lambda line: b'"joined"' in line)

        await _say(ann, "one from ann")
        await wait_for(lambda: True)
        await bot.until(lambda line: b"one from ann" in line)
        await _say(bob, "two from bob")
        await bot.until(lambda line: b"two from bob" in line)
        await nc.send(b"three from carol\n")
        await bot.send_json(type="say", room="#lobby", text="four from bot")

        texts = ["one from ann", "two from bob", "three from carol", "four from bot"]
        seen_bot: list[tuple[int, str]] = []
        for line in bot.seen:
            obj = json.loads(line) if line.startswith(b"{") else {}
            if obj.get("type") == "message":
                seen_bot.append((obj["id"], obj["text"]))
        while len(seen_bot) < 4:
            obj = await bot.json()
            if obj["type"] == "message":
                seen_bot.append((obj["id"], obj["text"]))
        assert [t for _, t in seen_bot] == texts
        for page in (ann, bob):
            await page.wait_for_function(
                "n => document.querySelectorAll('#log .msg[data-id]:not(.notice)').length >= n",
                arg=4,
                timeout=MS,
            )
            assert await _messages(page) == seen_bot  # same order, same ids
        nc_lines = [await nc.until(lambda line: b"> " in line) for _ in range(4)]
        assert [line.split(b"> ", 1)[1].strip().decode() for line in nc_lines] == texts
        members = await ann.eval_on_selector_all("#members li", "ns => ns.map(n => n.textContent)")
        assert sorted(members) == ["ann", "bob", "bot", "carol"]
        await ann.screenshot(path=str(_shot("chat-four-clients.png")))
        await ann.set_viewport_size({"width": 390, "height": 760})  # a phone
        await ann.screenshot(path=str(_shot("chat-phone.png")))
        assert ann.errors == [] and bob.errors == []
        nc.writer.close()
        bot.writer.close()


async def test_page_reconnects_and_shows_what_it_missed_once() -> None:
    async with _setup(chat_rate=None) as (server, browser):
        page = await _page(browser, server, "dora")
        bot = await Peer.open(server.endpoint("chat"))
        await bot.send_json(type="hello", nick="bot")
        await bot.send_json(type="join", room="#lobby")
        await bot.until(lambda line: b'"joined"' in line)
        await bot.send_json(type="say", room="#lobby", text="before the cut")
        await page.wait_for_selector("#log .msg:has-text('before the cut')", timeout=MS)
        # Cut the page's connection from the server side, as a network failure would.
        web = [h for h in server.ctx.connections if getattr(h, "member", None) is not None]
        dora = [h for h in web if h.member.nick == "dora"]
        assert len(dora) == 1
        dora[0].abort("test: cut")
        await page.wait_for_selector("#status[data-state=reconnecting]", timeout=MS)
        await bot.send_json(type="say", room="#lobby", text="missed one")
        await bot.send_json(type="say", room="#lobby", text="missed two")
        await bot.until(lambda line: b"missed two" in line)
        await page.wait_for_selector("#status[data-state=online]", timeout=MS)
        await page.wait_for_selector("#log .msg:has-text('missed two')", timeout=MS)
        await bot.send_json(type="say", room="#lobby", text="after")
        await page.wait_for_selector("#log .msg:has-text('after')", timeout=MS)
        texts = [t for _, t in await _messages(page)]
        assert texts == ["before the cut", "missed one", "missed two", "after"]
        assert page.errors == []
        await page.screenshot(path=str(_shot("chat-reconnected.png")))
        bot.writer.close()


async def test_hostile_text_renders_as_text_and_runs_nothing() -> None:
    async with _setup(chat_rate=None) as (server, browser):
        page = await _page(browser, server, "eve")
        bot = await Peer.open(server.endpoint("chat"))
        await bot.send_json(type="hello", nick="bot")
        await bot.send_json(type="join", room="#lobby")
        await bot.until(lambda line: b'"joined"' in line)
        for text in XSS:
            await bot.send_json(type="say", room="#lobby", text=text)
            await _say(page, text)
        await page.wait_for_function(
            "n => document.querySelectorAll('#log .msg[data-id]:not(.notice)').length >= n",
            arg=4,
            timeout=MS,
        )
        shown = [t for _, t in await _messages(page)]
        assert shown == [XSS[0], XSS[0], XSS[1], XSS[1]]
        assert await page.locator("#log img, #log script").count() == 0
        # A hostile nick never gets in: it is refused, and the refusal is shown as text.
        other = await browser.new_page()
        await other.goto(f"http://127.0.0.1:{server.endpoint('web').port}/")
        await other.eval_on_selector("#nick", "n => n.removeAttribute('pattern')")
        await other.fill("#nick", XSS[0])
        await other.click("#connect")
        await other.wait_for_function(
            "() => document.getElementById('login-error').textContent.length > 0", timeout=MS
        )
        assert await other.locator("img").count() == 0
        assert page.errors == []
        await page.screenshot(path=str(_shot("chat-hostile-text.png")))
        bot.writer.close()


async def test_a_page_of_another_origin_cannot_open_the_chat_socket() -> None:
    async with _setup() as (server, browser):
        port = server.endpoint("web").port
        page = await browser.new_page()
        html = (
            "<!doctype html><title>evil</title><script>"
            f"const ws = new WebSocket('ws://127.0.0.1:{port}/chat');"
            "ws.onopen = () => { document.title = 'opened'; };"
            "ws.onerror = () => { document.title = 'refused'; };"
            "</script>"
        )

        body = html.encode()

        async def evil_site(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            head = f"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {len(body)}"
            writer.write(head.encode() + b"\r\nconnection: close\r\n\r\n" + body)
            await writer.drain()
            writer.close()

        # Another origin on loopback (another port), so that only the Origin check stands
        # between its page and the chat.
        evil = await asyncio.start_server(evil_site, "127.0.0.1", 0)
        evil_port = evil.sockets[0].getsockname()[1]
        await page.goto(f"http://127.0.0.1:{evil_port}/")
        await page.wait_for_function("() => document.title !== 'evil'", timeout=MS)
        assert await page.title() == "refused"
        assert server.ctx.metrics["ws_origin_refused"] == 1
        assert server.ctx.metrics["ws_opened"] == 0
        evil.close()
        await evil.wait_closed()


async def test_page_headers_forbid_inline_script() -> None:
    async with _setup() as (server, browser):
        page = await browser.new_page()
        response = await page.goto(f"http://127.0.0.1:{server.endpoint('web').port}/")
        assert response is not None
        headers = await response.all_headers()
        assert "default-src 'self'" in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"
        # The browser enforces it: an injected inline script does not run.
        ran = await page.evaluate(
            """() => new Promise(done => {
                 const s = document.createElement('script');
                 s.textContent = 'window.__inline = true';
                 document.body.append(s);
                 setTimeout(() => done(window.__inline === true), 100);
               })"""
        )
        assert ran is False
        await asyncio.sleep(0)
