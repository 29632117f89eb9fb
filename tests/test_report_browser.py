"""The html report in a real browser: it loads from disk with no console error, sorts on a header click, and
shows a plot. Headless Chromium is driven over the DevTools protocol on a pipe (--remote-debugging-pipe), so
nothing beyond the standard library and Debian's chromium package is needed.

Skipped, with the reason, only where no Chromium is installed and it cannot be installed (not root, no apt).
"""

from __future__ import annotations

import base64
import fcntl
import io
import json
import os
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import matplotlib.image
import pytest

from compress.report import write_report
from compress.schema import ReportSpec

FIXTURE = Path(__file__).parent / "fixtures" / "results_quickstart.json"
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-pipe",
)
TIMEOUT = 30.0


def find_or_install_chromium() -> str:
    """The Chromium binary; installed with apt-get when missing and we are root (as .ci/run does)."""
    found = next((path for name in BROWSERS if (path := shutil.which(name))), None)
    if found:
        return found
    if not shutil.which("apt-get") or os.geteuid() != 0:
        pytest.skip("no Chromium installed, and not root with apt-get to install it (apt-get install chromium)")
    install = ["apt-get", "install", "-y", "-qq", "-o", "DPkg::Lock::Timeout=300", "chromium"]
    if subprocess.run(install, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
        subprocess.run(install, capture_output=True)
    found = shutil.which("chromium")
    if not found:
        pytest.skip("Chromium could not be installed with apt-get (offline, or no chromium package)")
    return found


class Browser:
    """One headless Chromium; DevTools messages are JSON, each ended by a NUL byte, on fds 3 (in) and 4 (out)."""

    def __init__(self, binary: str, profile: Path) -> None:
        to_browser, self._write = os.pipe()
        self._read, from_browser = os.pipe()

        def on_fds_3_and_4() -> None:  # in the child: where --remote-debugging-pipe expects them
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser, from_browser)]
            for fd, wanted in zip(high, (3, 4), strict=True):
                os.dup2(fd, wanted)  # inheritable, unlike the pipes themselves (PEP 446)

        self.process = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={profile}"],
            preexec_fn=on_fds_3_and_4,
            close_fds=False,  # or 3 and 4 would be closed again; every other fd is non-inheritable anyway
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, so closing it ends every helper it started
        )
        os.close(to_browser)
        os.close(from_browser)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        self.session: str | None = None

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command (to the attached page, once there is one) and wait for its answer."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if self.session:
            message["sessionId"] = self.session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        reply = self._wait(lambda m: m.get("id") == self._next_id)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def wait_event(self, method: str) -> dict[str, Any]:
        return self._wait(lambda m: m.get("method") == method)

    def _wait(self, wanted) -> dict[str, Any]:
        deadline = time.monotonic() + TIMEOUT
        while True:
            for i, event in enumerate(self.events):
                if wanted(event):
                    return self.events.pop(i)
            ready, _, _ = select.select([self._read], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(self._read, 1 << 20) if ready else b""
            if not chunk:
                raise TimeoutError("Chromium did not answer (it exited, or took over 30 s)")
            self._buffer += chunk
            *messages, self._buffer = self._buffer.split(b"\0")
            self.events += [json.loads(m) for m in messages]

    def open(self, url: str) -> None:
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=1280, height=900, deviceScaleFactor=1, mobile=False)
        self.call("Page.navigate", url=url)
        self.wait_event("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        reply = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in reply:
            raise RuntimeError(f"{expression}: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    def click(self, selector: str) -> None:
        """A real mouse click at the element's centre, as a user's."""
        self.evaluate(f"document.querySelector({json.dumps(selector)}).scrollIntoView({{block: 'center'}})")
        box = self.evaluate(f"JSON.stringify(document.querySelector({json.dumps(selector)}).getBoundingClientRect())")
        rect = json.loads(box)
        x, y = rect["x"] + rect["width"] / 2, rect["y"] + rect["height"] / 2
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and browser log errors (a CSP refusal lands there) so far."""
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append(" ".join(str(arg.get("value", arg.get("description"))) for arg in params["args"]))
            elif method == "Runtime.exceptionThrown":
                found.append(params["exceptionDetails"].get("text", "exception"))
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                found.append(params["entry"].get("text", "log error"))
        return found

    def close(self) -> None:
        os.close(self._write)
        os.close(self._read)
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.process.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    """The quickstart fixture's report, with a recommendation, open in headless Chromium."""
    binary = find_or_install_chromium()
    folder = tmp_path_factory.mktemp("report")
    results = json.loads(FIXTURE.read_text())
    html = write_report(results, folder, ReportSpec(latency_budget_ms=0.1))["html"]
    browser = Browser(binary, tmp_path_factory.mktemp("profile"))
    try:
        browser.open(html.resolve().as_uri())
        yield browser
    finally:
        browser.close()


def column(page: Browser, header: str) -> list[str]:
    """The sort values (data-v) of one column, top to bottom."""
    script = f"""(() => {{
      const table = document.querySelector("table.sortable");
      const heads = Array.from(table.tHead.rows[0].cells);
      const col = heads.findIndex(th => th.textContent === {json.dumps(header)});
      return Array.from(table.tBodies[0].rows).map(tr => tr.cells[col].dataset.v);
    }})()"""
    return page.evaluate(script)


def header_selector(page: Browser, header: str) -> str:
    headers = page.evaluate('Array.from(document.querySelectorAll("table.sortable th")).map(th => th.textContent)')
    return f"table.sortable th:nth-child({headers.index(header) + 1})"


def test_loads_from_disk_without_console_errors(page: Browser) -> None:
    assert page.errors() == []
    assert page.evaluate("document.title") == "edgecomp report: quickstart"
    assert page.evaluate("document.querySelectorAll('table.sortable tbody tr').length") == 47
    assert page.evaluate("document.querySelectorAll('tr.pick').length") == 2


def test_table_sorts_on_a_header_click(page: Browser) -> None:
    page.click(header_selector(page, "p50 ms"))
    ascending = [float(v) for v in column(page, "p50 ms")]
    assert ascending == sorted(ascending) and len(ascending) == 47
    page.click(header_selector(page, "p50 ms"))
    assert [float(v) for v in column(page, "p50 ms")] == sorted(ascending, reverse=True)
    page.click(header_selector(page, "candidate"))
    names = column(page, "candidate")
    assert names == sorted(names) and names != column(page, "p50 ms")
    page.click(header_selector(page, "size (KB)"))  # the PyTorch rows have no file: empty cells sort last
    sizes = column(page, "size (KB)")
    filled = [float(v) for v in sizes if v]
    assert filled == sorted(filled) and sizes[len(filled) :] == [""] * (len(sizes) - len(filled))
    assert page.errors() == []


def test_plot_is_drawn(page: Browser) -> None:
    assert page.evaluate("document.querySelector('#plot img').naturalWidth") > 1000
    page.evaluate("document.querySelector('#plot').scrollIntoView()")
    rect = json.loads(page.evaluate("JSON.stringify(document.querySelector('#plot img').getBoundingClientRect())"))
    scroll = page.evaluate("window.scrollY")
    clip = {"x": rect["x"], "y": rect["y"] + scroll, "width": rect["width"], "height": rect["height"], "scale": 1}
    shot = page.call("Page.captureScreenshot", format="png", clip=clip, captureBeyondViewport=True)
    pixels = matplotlib.image.imread(io.BytesIO(base64.b64decode(shot["data"])))[..., :3]
    assert pixels.shape[0] > 400 and pixels.shape[1] > 800
    assert pixels.std() > 0.05  # not one flat colour
    assert (pixels.min(axis=2) < 0.9).mean() > 0.02  # and some ink: axes, points, text
