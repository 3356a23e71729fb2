"""Open a local HTML file in headless Chromium over the DevTools protocol and report what the page did.

:func:`open_page` starts ``chromium --headless=new`` in its own process group with a throwaway profile, waits
for ``Page.loadEventFired`` after navigating to the file, then reads every image's load state, the title and the
visible text length, and collects console errors and warnings, uncaught exceptions and browser log errors. The
browser is asked to close and its whole process group is killed afterwards, whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

DEFAULT_TIMEOUT_S = 60.0
_LISTENING = re.compile(r"DevTools listening on (ws://[^\s]+)")
_PAGE_STATE = """(() => {
  const images = Array.from(document.images);
  return {
    loaded: images.map((image) => image.complete && image.naturalWidth > 0),
    count: images.length,
    title: document.title,
    textLength: document.body ? document.body.innerText.trim().length : 0,
  };
})()"""


class BrowserError(RuntimeError):
    """Chromium did not start, did not answer, or could not load the page in time."""


@dataclass(frozen=True)
class PageReport:
    """What one page did in the browser."""

    title: str
    image_count: int
    images_loaded: tuple[bool, ...]
    text_length: int
    console_errors: tuple[str, ...]  # console.error, and console.assert failures
    console_warnings: tuple[str, ...]
    exceptions: tuple[str, ...]  # uncaught exceptions
    log_errors: tuple[str, ...]  # the browser's own log: failed loads, security policy violations, ...

    @property
    def unloaded_images(self) -> int:
        """Images that are not complete with a positive natural width."""
        return self.images_loaded.count(False)


def chromium_binary() -> str | None:
    """The Chromium on PATH (Debian's ``chromium`` or Ubuntu's ``chromium-browser``), or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def open_page(page: Path, timeout_s: float = DEFAULT_TIMEOUT_S, binary: str | None = None) -> PageReport:
    """Load ``page`` (a local file) in a fresh headless Chromium and report on it; raise BrowserError on failure."""
    binary = binary or chromium_binary()
    if binary is None:
        raise BrowserError("no chromium or chromium-browser on PATH")
    deadline = time.monotonic() + timeout_s
    with tempfile.TemporaryDirectory(prefix="visinspect-chromium-", ignore_cleanup_errors=True) as profile:
        stderr_path = Path(profile) / "stderr.log"
        user_data = Path(profile) / "user-data"
        with stderr_path.open("wb") as stderr:
            process = subprocess.Popen(
                [
                    binary,
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--no-first-run",
                    "--no-default-browser-check",
                    "--remote-debugging-port=0",
                    f"--user-data-dir={user_data}",
                    "about:blank",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,  # its own process group, killed as a whole below
            )
        try:
            browser_url = _wait_for_devtools(process, user_data, stderr_path, deadline)
            return asyncio.run(asyncio.wait_for(_inspect(browser_url, page), max(deadline - time.monotonic(), 1.0)))
        except TimeoutError as exc:
            raise BrowserError(f"the page did not load within {timeout_s:g} s{_tail(stderr_path)}") from exc
        finally:
            _stop(process)


def _wait_for_devtools(process: subprocess.Popen[bytes], user_data: Path, stderr_path: Path, deadline: float) -> str:
    """The browser's DevTools websocket URL, from ``DevToolsActivePort`` or the ``DevTools listening`` line."""
    active_port = user_data / "DevToolsActivePort"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BrowserError(f"chromium exited with status {process.returncode}{_tail(stderr_path)}")
        with contextlib.suppress(OSError, ValueError):
            lines = active_port.read_text().splitlines()
            if len(lines) >= 2:
                return f"ws://127.0.0.1:{int(lines[0])}{lines[1]}"
        with contextlib.suppress(OSError):
            match = _LISTENING.search(stderr_path.read_text(errors="replace"))
            if match:
                return match.group(1)
        time.sleep(0.05)
    raise BrowserError(f"chromium did not open its DevTools port in time{_tail(stderr_path)}")


async def _inspect(browser_url: str, page: Path) -> PageReport:
    port = re.match(r"ws://[^:/]+:(\d+)/", browser_url)
    if port is None:
        raise BrowserError(f"unexpected DevTools URL {browser_url}")
    async with aiohttp.ClientSession() as session:
        try:
            target_url = await _page_target(session, int(port.group(1)))
            async with session.ws_connect(target_url, max_msg_size=0) as socket:
                cdp = _Connection(socket)
                reader = asyncio.create_task(cdp.read())
                try:
                    return await _load_and_read(cdp, page)
                finally:
                    reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await reader
        finally:
            await _close_browser(session, browser_url)


async def _close_browser(session: aiohttp.ClientSession, browser_url: str) -> None:
    """Ask the browser to quit (best effort: the process group is killed afterwards anyway)."""
    with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
        async with asyncio.timeout(2), session.ws_connect(browser_url) as socket:
            await socket.send_json({"id": 1, "method": "Browser.close"})
            await socket.receive()


async def _page_target(session: aiohttp.ClientSession, port: int) -> str:
    """The websocket URL of the page target (the ``about:blank`` tab), once it is listed."""
    while True:
        async with session.get(f"http://127.0.0.1:{port}/json/list") as response:
            targets = await response.json(content_type=None)
        for target in targets:
            if target.get("type") == "page" and "webSocketDebuggerUrl" in target:
                return str(target["webSocketDebuggerUrl"])
        await asyncio.sleep(0.05)


async def _load_and_read(cdp: _Connection, page: Path) -> PageReport:
    for domain in ("Runtime", "Log", "Page"):
        await cdp.call(f"{domain}.enable")
    start = len(cdp.events)
    navigation = await cdp.call("Page.navigate", url=page.resolve().as_uri())
    if navigation.get("errorText"):
        raise BrowserError(f"navigation to {page} failed: {navigation['errorText']}")
    await cdp.wait_for("Page.loadEventFired", start)
    evaluated = await cdp.call("Runtime.evaluate", expression=_PAGE_STATE, returnByValue=True)
    if "exceptionDetails" in evaluated:
        raise BrowserError(f"the page inspection script failed: {evaluated['exceptionDetails']}")
    state = evaluated["result"]["value"]
    console: dict[str, list[str]] = {"error": [], "assert": [], "warning": []}
    exceptions: list[str] = []
    log_errors: list[str] = []
    for event in cdp.events:
        params = event.get("params", {})
        if event["method"] == "Runtime.consoleAPICalled" and params.get("type") in console:
            console[params["type"]].append(" ".join(_describe(arg) for arg in params.get("args", [])))
        elif event["method"] == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            exceptions.append(str(details.get("exception", {}).get("description") or details.get("text", "")))
        elif event["method"] == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            log_errors.append(f"{entry.get('source', '')}: {entry.get('text', '')} {entry.get('url', '')}".strip())
    return PageReport(
        title=str(state["title"]),
        image_count=int(state["count"]),
        images_loaded=tuple(bool(loaded) for loaded in state["loaded"]),
        text_length=int(state["textLength"]),
        console_errors=tuple(console["error"] + console["assert"]),
        console_warnings=tuple(console["warning"]),
        exceptions=tuple(exceptions),
        log_errors=tuple(log_errors),
    )


def _describe(remote_object: dict[str, Any]) -> str:
    if "value" in remote_object:
        return str(remote_object["value"])
    return str(remote_object.get("description", remote_object.get("type", "")))


class _Connection:
    """Commands and events over one DevTools websocket: replies matched by id, events kept in arrival order."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self._socket = socket
        self._ids = itertools.count(1)
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._arrived = asyncio.Event()
        self._closed = False
        self.events: list[dict[str, Any]] = []

    async def read(self) -> None:
        async for message in self._socket:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            data = message.json()
            if "id" in data:
                reply = self._replies.pop(data["id"], None)
                if reply is not None and not reply.done():
                    reply.set_result(data)
            elif "method" in data:
                self.events.append(data)
                self._arrived.set()
        self._closed = True
        self._arrived.set()
        closed = BrowserError("the DevTools connection closed")
        for reply in self._replies.values():
            if not reply.done():
                reply.set_exception(closed)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        if self._closed:
            raise BrowserError(f"the DevTools connection closed before {method}")
        command_id = next(self._ids)
        reply = asyncio.get_running_loop().create_future()
        self._replies[command_id] = reply
        await self._socket.send_json({"id": command_id, "method": method, "params": params})
        data = await reply
        if "error" in data:
            raise BrowserError(f"{method} failed: {data['error']}")
        result: dict[str, Any] = data.get("result", {})
        return result

    async def wait_for(self, method: str, start: int) -> dict[str, Any]:
        """The first ``method`` event at or after index ``start`` of :attr:`events`."""
        seen = start
        while True:
            for event in self.events[seen:]:
                if event["method"] == method:
                    return event
            seen = len(self.events)
            if self._closed:
                raise BrowserError(f"the DevTools connection closed before {method}")
            self._arrived.clear()
            await self._arrived.wait()


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Give the browser a moment to act on ``Browser.close`` (it then reaps its helpers), then kill its group."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=3)
    with contextlib.suppress(ProcessLookupError):
        process.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


def _tail(stderr_path: Path, lines: int = 15) -> str:
    with contextlib.suppress(OSError):
        text = stderr_path.read_text(errors="replace").strip()
        if text:
            return ":\n" + "\n".join(text.splitlines()[-lines:])
    return ""
