"""The report opened in a real headless browser (Debian's chromium): images load, no errors.

The browser is driven over the Chrome DevTools Protocol on a pipe (``--remote-debugging-pipe``:
JSON messages separated by NUL bytes on file descriptors 3 and 4), so the test needs no Python
package and no TCP port, only the ``chromium`` binary.  It checks that every ``<img>`` decoded
(``naturalWidth > 0``), that the page logged no console error, exception or failed resource,
and that it requested nothing but itself and ``data:`` URIs (it must open offline); a
full-page screenshot is saved to ``artifacts/report-screenshot.png`` at the repository root.

Without chromium the test fails in CI (``CI`` set) and is skipped elsewhere.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import importlib.util
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=1400,1000",
)


def _chromium() -> str:
    for name in (os.environ.get("HARKEN_CHROMIUM", ""), "chromium", "chromium-browser"):
        found = shutil.which(name) if name else None
        if found:
            return found
    message = (
        "Debian's chromium is not installed, so the report cannot be checked in a browser; "
        "install it with `apt-get install -y chromium` (or point HARKEN_CHROMIUM at a chromium binary)"
    )
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        pytest.fail(message)
    pytest.skip(message)


def _report_module() -> Any:
    """test_report.py, for its cached tiny run (loaded by path: works in any pytest import mode)."""
    spec = importlib.util.spec_from_file_location(
        "_harken_test_report", Path(__file__).with_name("test_report.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class DevTools:
    """A minimal CDP client over chromium's debugging pipe."""

    def __init__(self, binary: str, profile: Path) -> None:
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        # chromium reads commands on fd 3 and writes replies on fd 4.  The child's ends are
        # moved out of the way (>= 10) and bash puts them on 3 and 4 just before exec, so no
        # Python code runs between fork and exec (preexec_fn is unsafe in a threaded process).
        r = fcntl.fcntl(to_child_r, fcntl.F_DUPFD_CLOEXEC, 10)
        w = fcntl.fcntl(from_child_w, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(to_child_r)
        os.close(from_child_w)
        args = [
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the browser
        self.proc = subprocess.Popen(
            ["bash", "-c", f'exec "$0" "$@" 3<&{r} 4>&{w} {r}<&- {w}>&-', binary, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.stderr,
            pass_fds=(r, w),
        )
        os.close(r)
        os.close(w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._from_child], [], [], max(0.0, left))
            if not ready:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self._from_child, 1 << 20)
            if not chunk:
                self.stderr.seek(0)
                tail = self.stderr.read()[-2000:].decode(errors="replace")
                raise RuntimeError(
                    f"chromium closed the debugging pipe; its stderr ends with:\n{tail}"
                )
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        session: str | None = None,
        timeout: float = 60.0,
    ) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_child, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        for event in self.events:
            if event.get("method") == method:
                return event
        while True:
            event = self._read(deadline)
            self.events.append(event)
            if event.get("method") == method:
                return event

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, TimeoutError, OSError):
            self.call("Browser.close", timeout=10)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for fd in (self._to_child, self._from_child):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.stderr.close()


def _errors(events: list[dict[str, Any]]) -> list[str]:
    """Console errors, uncaught exceptions and error log entries (e.g. a resource that failed)."""
    found = []
    for e in events:
        method, params = e.get("method"), e.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            found.append(
                "console."
                + params["type"]
                + ": "
                + " ".join(
                    str(a.get("value", a.get("description", ""))) for a in params.get("args", [])
                )
            )
        elif method == "Runtime.exceptionThrown":
            found.append("exception: " + json.dumps(params.get("exceptionDetails", {}))[:500])
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            found.append(f"log: {entry.get('text')} {entry.get('url', '')}")
        elif method == "Network.loadingFailed":
            found.append(f"failed request: {params.get('errorText')}")
    return found


def test_report_renders_in_chromium(tmp_path_factory: pytest.TempPathFactory) -> None:
    binary = _chromium()
    _, html = _report_module().report_run(tmp_path_factory)
    page_url = html.resolve().as_uri()
    profile = Path(tempfile.mkdtemp(prefix="harken-chromium-"))
    browser = DevTools(binary, profile)
    try:
        target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.call(f"{domain}.enable", session=session)
        browser.call("Page.navigate", {"url": page_url}, session=session)
        browser.wait_for("Page.loadEventFired")
        state = browser.call(
            "Runtime.evaluate",
            {
                "expression": """JSON.stringify({
                    images: Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete, w: i.naturalWidth, h: i.naturalHeight})),
                    sections: Array.from(document.querySelectorAll('section[id]')).map(s => s.id),
                    height: document.documentElement.scrollHeight,
                })""",
                "returnByValue": True,
            },
            session=session,
        )
        page = json.loads(state["result"]["value"])
        metrics = browser.call("Page.getLayoutMetrics", session=session)
        size = metrics["cssContentSize"]
        shot = browser.call(
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": True,
                "clip": {
                    "x": 0,
                    "y": 0,
                    "width": size["width"],
                    "height": size["height"],
                    "scale": 0.75,
                },
            },
            session=session,
        )
        ARTIFACTS.mkdir(exist_ok=True)
        screenshot = ARTIFACTS / "report-screenshot.png"
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        print(f"report screenshot: {screenshot}")
        # let late console messages arrive before judging
        browser.call("Runtime.evaluate", {"expression": "1"}, session=session)
        events = list(browser.events)
    finally:
        browser.close()
        shutil.rmtree(profile, ignore_errors=True)

    assert page["images"], "the report has no images"
    broken = [i for i in page["images"] if not (i["complete"] and i["w"] > 0 and i["h"] > 0)]
    assert not broken, f"images that did not load: {broken}"
    for sid in ("results", "roc", "scores", "latents", "reconstructions", "training"):
        assert sid in page["sections"]
    assert not _errors(events), _errors(events)
    requested = [
        e["params"]["request"]["url"]
        for e in events
        if e.get("method") == "Network.requestWillBeSent"
    ]
    foreign = [u for u in requested if not (u.startswith("data:") or u == page_url)]
    assert not foreign, f"the page asked for more than itself: {foreign}"
    assert (
        screenshot.stat().st_size > 10_000 and screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    )
