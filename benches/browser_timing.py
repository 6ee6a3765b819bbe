"""How long MLflow's UI takes to draw a page's charts in a real headless Chromium.

Drives Chromium through chromedriver's W3C WebDriver protocol (plain HTTP and JSON, so no
Selenium package), opens a page and reads the browser's own Resource Timing entries: when the
page started, when the UI asked for its first chart's data and when the last answer arrived.
The UI asks for a chart's data only when the chart is on screen, so this is what a user
looking at the page waits for, in a window of the size given.

    from browser_timing import Browser
    with Browser(width=1400, height=1000) as browser:
        timing = browser.chart_load(url)   # ChartLoad(seconds, requests, ...)
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass

import requests

CHART_REQUEST = "metrics/get-history-bulk-interval"  # one per chart on screen
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
# Every chart request the page made so far: start and end (ms from the page's start).
READ_TIMINGS = """
return performance.getEntriesByType('resource')
    .filter(e => e.name.includes(arguments[0]))
    .map(e => [e.startTime, e.responseEnd]);
"""


@dataclass
class ChartLoad:
    seconds: float  # from the page's start to the last chart's data
    first_request_s: float  # from the page's start to the first chart's request (the UI's start)
    requests: int  # charts whose data the page asked for


class Browser:
    """One headless Chromium (one profile, so its cache warms like a user's) under chromedriver."""

    def __init__(self, width: int = 1400, height: int = 1000, settle_s: float = 4.0):
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        driver = shutil.which("chromedriver")
        if not chromium or not driver:
            raise SystemExit("needs Debian's chromium and chromium-driver (apt-get install chromium "
                             "chromium-driver)")
        from tracking.server import free_port
        self.settle_s = settle_s
        self.profile = tempfile.mkdtemp(prefix="chromium-profile-")
        port = free_port()
        self.driver = subprocess.Popen([driver, f"--port={port}"], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
        self.base = f"http://127.0.0.1:{port}"
        self._wait_for_driver()
        options = {"binary": chromium, "args": FLAGS + [f"--user-data-dir={self.profile}",
                                                        f"--window-size={width},{height}"]}
        session = self._call("POST", "/session", {"capabilities": {"alwaysMatch": {
            "browserName": "chrome", "goog:chromeOptions": options}}})
        self.session = f"/session/{session['sessionId']}"

    def chart_load(self, url: str, timeout_s: float = 120.0) -> ChartLoad:
        """Open ``url`` and wait until no chart has asked for data for ``settle_s``."""
        self._call("POST", self.session + "/url", {"url": "about:blank"})
        self._call("POST", self.session + "/url", {"url": url})
        deadline, seen, quiet_since = time.monotonic() + timeout_s, -1, time.monotonic()
        while time.monotonic() < deadline:
            timings = self._call("POST", self.session + "/execute/sync",
                                 {"script": READ_TIMINGS, "args": [CHART_REQUEST]})
            if len(timings) != seen:
                seen, quiet_since = len(timings), time.monotonic()
            elif timings and time.monotonic() - quiet_since >= self.settle_s:
                return ChartLoad(max(end for _, end in timings) / 1e3,
                                 min(start for start, _ in timings) / 1e3, len(timings))
            time.sleep(0.25)
        raise TimeoutError(f"{url}: no chart data after {timeout_s:.0f} s ({seen} requests)")

    def close(self) -> None:
        try:
            self._call("DELETE", self.session)
        finally:
            self.driver.terminate()
            self.driver.wait(timeout=30)
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method: str, path: str, body=None):
        answer = requests.request(method, self.base + path, json=body, timeout=180)
        value = answer.json().get("value")
        if answer.status_code != 200:
            raise RuntimeError(f"chromedriver {method} {path}: {value}")
        return value

    def _wait_for_driver(self) -> None:
        for _ in range(100):
            try:
                if requests.get(self.base + "/status", timeout=2).ok:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        raise RuntimeError("chromedriver did not start")
