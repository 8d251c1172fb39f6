"""The browser check of the built book: every chapter page in headless Chromium.

    python scripts/check_html.py book/_build/html            # every page that has a notebook
    python scripts/check_html.py book/_build/html --pages structure/pointer-networks

For each executable page (the pages with a generated ``_notebooks/<page>.ipynb``) it checks:

* the page loads from ``file://`` with **no network request** (every request Chromium makes for
  the page is recorded through the DevTools protocol; only ``file:``, ``data:``, ``blob:`` and
  ``about:`` URLs are allowed);
* **math is typeset**: a page with TeX in its HTML has MathJax output (``mjx-container``) and no
  MathJax error (``merror``);
* **every figure is present**: every ``<img>`` has loaded (``naturalWidth > 0``);
* **every widget view renders**: each ``application/vnd.jupyter.widget-view+json`` script has a
  rendered widget next to it;
* **no Python traceback** is shown (``Traceback (most recent call last)`` or a traceback output).

Exit status 1 on any failure; 0 with a warning, without checking, where no Chromium is installed
(``--require`` makes that an error too, as in CI). Uses tornado's websocket client (installed with
Jupyter) to speak the DevTools protocol.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--mute-audio", "--window-size=1280,900",
         "--allow-file-access-from-files", "--remote-debugging-port=0", "--remote-allow-origins=*"]
LOCAL = ("file:", "data:", "blob:", "about:", "chrome:", "devtools:")

# evaluated in the page once it has loaded; MathJax typesets asynchronously, so wait for it
PROBE = r"""
(async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    try { await MathJax.startup.promise; } catch (e) {}
  }
  const html = document.documentElement.innerHTML;
  const views = [...document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]')];
  const imgs = [...document.querySelectorAll('main img, article img, .bd-article img')];
  const text = document.body ? document.body.innerText : "";
  return JSON.stringify({
    tex: /\\\(|\\\[|\$\$|class="math/.test(html) && document.querySelectorAll('.math, .amsmath, span.math, div.math').length,
    mjx: document.querySelectorAll('mjx-container').length,
    merror: document.querySelectorAll('mjx-merror, merror').length,
    views: views.length,
    rendered: views.filter(s => {
      const p = s.parentElement;
      return p && p.querySelector('.jupyter-widgets, .widget-container, .jupyter-widget, .lm-Widget, .widget-inline-hbox, .widget-box');
    }).length,
    imgs: imgs.length,
    broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute('src')).slice(0, 5),
    traceback: /Traceback \(most recent call last\)/.test(text) || document.querySelectorAll('.output.traceback, .output_error').length,
  });
})()
"""


def find_browser() -> str | None:
    env = os.environ.get("CHROMIUM")
    if env:
        return env
    return next((p for b in BROWSERS if (p := shutil.which(b))), None)


def pages_with_notebooks(html: Path) -> list[str]:
    """``part/slug`` of every page the build wrote a notebook for."""
    nb_dir = html / "_notebooks"
    return sorted(p.relative_to(nb_dir).with_suffix("").as_posix() for p in nb_dir.rglob("*.ipynb")
                  if "student" not in p.parts)


class DevTools:
    """The smallest DevTools-protocol client: one page target, commands and recorded events."""

    def __init__(self, ws):
        self.ws, self.next_id, self.events = ws, 0, []

    async def call(self, method: str, timeout: float = 60.0, **params):
        self.next_id += 1
        my_id = self.next_id
        await self.ws.write_message(json.dumps({"id": my_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{method}: no answer in {timeout:.0f} s")
            msg = await asyncio.wait_for(self.ws.read_message(), left)
            if msg is None:
                raise ConnectionError("the browser closed the DevTools connection")
            data = json.loads(msg)
            if data.get("id") == my_id:
                if "error" in data:
                    raise RuntimeError(f"{method}: {data['error']}")
                return data.get("result", {})
            self.events.append(data)

    async def wait_event(self, method: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                msg = await asyncio.wait_for(self.ws.read_message(), left)
            except asyncio.TimeoutError:
                return False
            if msg is None:
                return False
            self.events.append(json.loads(msg))
        return True


async def check_page(port: int, url: str, timeout: float) -> list[str]:
    """Problems found on the page at ``url`` (empty: the page passes)."""
    from tornado.httpclient import AsyncHTTPClient, HTTPRequest
    from tornado.websocket import websocket_connect

    client = AsyncHTTPClient()
    resp = await client.fetch(HTTPRequest(f"http://127.0.0.1:{port}/json/new?about:blank", method="PUT", body=""))
    target = json.loads(resp.body)
    ws = await websocket_connect(target["webSocketDebuggerUrl"], max_message_size=1 << 28)
    dt = DevTools(ws)
    problems = []
    try:
        await dt.call("Network.enable")
        await dt.call("Page.enable")
        dt.events.clear()
        await dt.call("Page.navigate", url=url)
        if not await dt.wait_event("Page.loadEventFired", timeout):
            problems.append(f"did not finish loading in {timeout:.0f} s")
        # MathJax and the widget manager render asynchronously after the load event: probe until
        # the page is complete or the time is up, then judge the last probe
        deadline = time.monotonic() + timeout
        while True:
            res = await dt.call("Runtime.evaluate", expression=PROBE, awaitPromise=True, returnByValue=True,
                                timeout=timeout)
            value = res.get("result", {}).get("value")
            if value is None or time.monotonic() > deadline:
                break
            r = json.loads(value)
            if (not r["tex"] or r["mjx"]) and r["rendered"] >= r["views"] and not r["broken"]:
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(0.5)  # requests started late (fonts) are recorded too
        await dt.call("Runtime.evaluate", expression="1", timeout=5)
        requests = sorted({e["params"]["request"]["url"] for e in dt.events
                           if e.get("method") == "Network.requestWillBeSent"})
        remote = [u for u in requests if not u.startswith(LOCAL)]
        if remote:
            problems.append(f"{len(remote)} network request(s): {remote[:5]}")
        if value is None:
            problems.append(f"the page probe failed: {res.get('exceptionDetails', res)}")
            return problems
        r = json.loads(value)
        if os.environ.get("CHECK_HTML_VERBOSE"):
            print(f"    {url}: {r}; requests: {requests}", flush=True)
        if r["tex"] and not r["mjx"]:
            problems.append(f"math not typeset ({r['tex']} math elements, no MathJax output)")
        if r["merror"]:
            problems.append(f"{r['merror']} MathJax error(s)")
        if r["broken"]:
            problems.append(f"figures missing: {r['broken']}")
        if r["rendered"] < r["views"]:
            problems.append(f"widget views: {r['rendered']} of {r['views']} rendered")
        if r["traceback"]:
            problems.append("a Python traceback is shown")
    finally:
        ws.close()
        try:
            await client.fetch(f"http://127.0.0.1:{port}/json/close/{target['id']}")
        except Exception:  # noqa: BLE001
            pass
    return problems


def start_browser(browser: str, profile: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([browser, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            break
        m = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
        if m:
            return proc, int(m.group(1))
    proc.kill()
    raise RuntimeError(f"{browser} did not start its DevTools server")


async def check_all(browser: str, html: Path, pages: list[str], timeout: float) -> dict[str, list[str]]:
    with tempfile.TemporaryDirectory() as profile:
        proc, port = start_browser(browser, profile)
        try:
            results = {}
            for page in pages:
                t0 = time.perf_counter()
                f = html / f"{page}.html"
                if not f.is_file():
                    results[page] = [f"{f} does not exist"]
                else:
                    try:
                        results[page] = await check_page(port, f.resolve().as_uri(), timeout)
                    except Exception as err:  # noqa: BLE001 -- report, go on with the next page
                        results[page] = [f"check failed: {type(err).__name__}: {err}"]
                status = "ok" if not results[page] else "FAILED: " + "; ".join(results[page])
                print(f"{page:50s} {time.perf_counter() - t0:5.1f} s  {status}", flush=True)
            return results
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check the built book's chapter pages in headless Chromium.")
    parser.add_argument("html", help="the built site, e.g. book/_build/html")
    parser.add_argument("--pages", nargs="*", help="only these pages (part/slug); default: every chapter page")
    parser.add_argument("--require", action="store_true", default=os.environ.get("BROWSER_CHECK") == "required",
                        help="fail where no Chromium is installed (default: warn and skip; "
                             "BROWSER_CHECK=required sets this)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per page")
    args = parser.parse_args(argv)
    html = Path(args.html)
    browser = find_browser()
    if browser is None:
        msg = "no Chromium found (apt-get install chromium; or set CHROMIUM=/path/to/chrome)"
        print(("ERROR: " if args.require else "WARNING: browser check skipped: ") + msg, file=sys.stderr)
        return 1 if args.require else 0
    pages = args.pages or pages_with_notebooks(html)
    if not pages:
        print(f"ERROR: no chapter pages found under {html} (no _notebooks/*.ipynb)", file=sys.stderr)
        return 1
    print(f"browser check: {len(pages)} pages with {browser}", flush=True)
    results = asyncio.run(check_all(browser, html, pages, args.timeout))
    failed = {p: r for p, r in results.items() if r}
    print(f"browser check: {len(pages) - len(failed)} of {len(pages)} pages ok", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
