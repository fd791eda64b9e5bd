"""The live dashboard in headless Chromium, driven over the DevTools protocol: it receives
live data, its numbers match /metrics after a known load, and a screenshot is saved."""

import base64
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request

import numpy as np
import pytest
import tritonclient.http as httpclient
import websocket

from conftest import ROOT, wait_until
from test_metrics import sample, scrape

SCREENSHOT = os.path.join(ROOT, "target", "front-dashboard.png")


class Browser:
    """Headless Chromium on a page, with a DevTools connection to evaluate and capture."""

    def __init__(self, url):
        exe = shutil.which("chromium") or shutil.which("chromium-browser")
        assert exe, "chromium (Debian package chromium) is not installed"
        self.profile = tempfile.mkdtemp(prefix="qnllm-chromium-")
        self.proc = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={self.profile}", "--remote-debugging-port=0",
             "--window-size=1440,1000", "--hide-scrollbars", url],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            start_new_session=True,
        )
        ws_url = None
        for line in self.proc.stderr:  # Chromium announces its DevTools endpoint on stderr
            if "DevTools listening on " in line:
                ws_url = line.strip().split("DevTools listening on ", 1)[1]
                break
        assert ws_url, "chromium exited before opening DevTools"
        port = ws_url.split(":")[2].split("/")[0]
        page = None
        for _ in range(200):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                pages = [t for t in json.load(r) if t.get("type") == "page"]
            if pages:
                page = pages[0]
                break
            time.sleep(0.05)
        assert page, "no page target"
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=10,
                                              suppress_origin=True)
        self.ids = itertools.count(1)

    def call(self, method, **params):
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == msg_id:
                assert "error" not in reply, reply
                return reply["result"]

    def eval(self, expression):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def screenshot(self, path):
        size = self.call("Page.getLayoutMetrics")["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        data = self.call("Page.captureScreenshot", format="png", clip=clip,
                         captureBeyondViewport=True)["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def close(self):
        try:
            self.ws.close()
        finally:
            self.proc.kill()
            self.proc.wait()
            self.proc.stderr.close()
            shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture
def browser_on(cached_server):
    b = Browser(f"http://{cached_server.http}/")
    yield b
    b.close()


def updates(b):
    return int(b.eval("Number(document.body.dataset.updates)") or 0)


def test_dashboard_shows_live_numbers_that_match_metrics(cached_server, browser_on):
    b = browser_on
    wait_until(lambda: b.eval("document.body.dataset.live") == "1", "the first live snapshot")
    assert b.eval("document.getElementById('ready').textContent") == "READY"
    worker = cached_server.worker("w-dash")
    wait_until(lambda: b.eval("document.querySelectorAll('#engines tr[data-engine]').length") == 2,
               "the worker to show on the page")
    client = httpclient.InferenceServerClient(url=cached_server.http)
    rng = np.random.default_rng(9)
    pool = rng.normal(0, 0.1, size=(40, 768)).astype(np.float32)
    sent = 0
    # Steady load across many snapshots (so the chart and throughput have history); repeats
    # of a small pool make cache hits. Bounded by the request count, paced by the page.
    start = updates(b)
    while updates(b) < start + 16:
        assert sent < 20_000, "the page stopped updating"
        x = pool[(sent * 7) % len(pool)][None, :]
        inp = httpclient.InferInput("ENCODING", [1, 768], "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        client.infer("qnllm", [inp])
        sent += 1
    b.screenshot(SCREENSHOT)  # under load, with both engines
    worker.signal(9)  # an engine lost: it shows among the events

    def page_caught_up():
        return int(b.eval("document.getElementById('requests').dataset.value")) == sent and \
            "left" in (b.eval("document.getElementById('events').textContent") or "")
    wait_until(page_caught_up, "the page to show every request and the lost worker")

    text = scrape(cached_server)
    total = sum(sample(text, "qnllm_front_requests_total", engine=e, outcome="ok") or 0
                for e in ("local-0", "w-dash"))
    assert total == sent
    page_local = int(b.eval(
        "document.querySelector('tr[data-engine=\"local-0\"] .requests').dataset.value"))
    assert page_local == sample(text, "qnllm_engine_requests_total", engine="local-0", kind="local")
    hits = sample(text, "qnllm_cache_hits_total")
    misses = sample(text, "qnllm_cache_misses_total")
    assert hits > 0
    page_ratio = float(b.eval("document.getElementById('hit-ratio').dataset.value"))
    assert abs(page_ratio - hits / (hits + misses)) < 1e-4
    events = b.eval("document.getElementById('events').textContent")
    assert "w-dash joined" in events and "w-dash left" in events
    with open(SCREENSHOT, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
