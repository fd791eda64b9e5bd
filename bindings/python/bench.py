#!/usr/bin/env python3
"""qnllm from Python, measured against its baselines in one run; prints a markdown table.

    python bindings/python/bench.py [--requests 20000] [--seconds 2] [--qnllm-bin PATH]

Rows (p50 latency one request at a time; throughput over --seconds):
  * in process: ``engine.reason(x)`` from Python against the Rust call on the same engine
    (timed in Rust): the binding's overhead per call;
  * through a hub (``qnllm serve`` + a ``qnllm worker``, separate processes): the Python
    Client against the Rust client on the same connection;
  * the seed-style baseline: a pure-Python client and a threaded Python server exchanging
    length-prefixed JSON over TCP, as the original design did;
  * throughput of the in-process call from 1, 2 and 4 Python threads (the GIL is released
    while Rust works, so threads add throughput when cores are free).
Figures depend on the machine and its load; ratios come from the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import socket
import socketserver
import statistics
import struct
import subprocess
import sys
import threading
import time
from typing import Callable, List, Optional

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- the JSON baseline

def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("peer closed")
        buf += chunk
    return bytes(buf)


def send_json(sock: socket.socket, obj: dict) -> None:
    body = json.dumps(obj).encode()
    sock.sendall(struct.pack(">I", len(body)) + body)


def recv_json(sock: socket.socket) -> dict:
    (n,) = struct.unpack(">I", _recv_exact(sock, 4))
    return json.loads(_recv_exact(sock, n))


class _Handler(socketserver.BaseRequestHandler):
    """One connection: read a request, answer it, until the client leaves."""

    def handle(self) -> None:
        sock = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            try:
                msg = recv_json(sock)
            except (ConnectionError, OSError):
                return
            started = time.perf_counter()
            x = msg["encoding"]
            # A stand-in engine in pure Python: ten class sums and their argmax.
            step = len(x) // 10
            scores = [sum(x[i * step:(i + 1) * step]) for i in range(10)]
            label = max(range(10), key=scores.__getitem__)
            send_json(sock, {"type": "result", "id": msg["id"], "success": True, "label": label,
                             "confidence": 0.5, "latency_ms": (time.perf_counter() - started) * 1e3})


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def baseline_server() -> None:
    """Runs the baseline server on a free port; prints the port, serves until stdin closes."""
    server = _Server(("127.0.0.1", 0), _Handler)
    print(server.server_address[1], flush=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sys.stdin.read()
    server.shutdown()


class JsonClient:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.next_id = 0

    def reason(self, x: List[float]) -> dict:
        self.next_id += 1
        send_json(self.sock, {"type": "reason", "id": self.next_id, "encoding": x})
        return recv_json(self.sock)

    def close(self) -> None:
        self.sock.close()


# ---------------------------------------------------------------- measuring

def p50_us(samples_ns: List[int]) -> float:
    return statistics.median(samples_ns) / 1e3


def timed(call: Callable[[], object], n: int) -> List[int]:
    out = []
    clock = time.perf_counter_ns
    for _ in range(n):
        t = clock()
        call()
        out.append(clock() - t)
    return out


def throughput(make_call: Callable[[], Callable[[], object]], threads: int, seconds: float) -> float:
    """Requests per second from `threads` Python threads, each with its own call."""
    calls = [make_call() for _ in range(threads)]
    counts = [0] * threads
    start = threading.Barrier(threads + 1)
    stop_at = [0.0]

    def run(i: int) -> None:
        call = calls[i]
        start.wait()
        n = 0
        while time.perf_counter() < stop_at[0]:
            for _ in range(16):
                call()
            n += 16
        counts[i] = n

    pool = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    stop_at[0] = time.perf_counter() + seconds
    began = time.perf_counter()
    start.wait()
    for t in pool:
        t.join()
    return sum(counts) / (time.perf_counter() - began)


def find_qnllm(given: Optional[str]) -> str:
    for c in (given, os.environ.get("QNLLM_BIN"), str(ROOT / "target" / "release" / "qnllm"),
              str(ROOT / "target" / "debug" / "qnllm"), shutil.which("qnllm")):
        if c and pathlib.Path(c).exists():
            return c
    sys.exit("cannot find the qnllm binary: `cargo build --release -p qnllm-cli` or pass --qnllm-bin")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20000, help="requests per latency row")
    parser.add_argument("--seconds", type=float, default=2.0, help="duration of each throughput row")
    parser.add_argument("--qnllm-bin", default=None)
    parser.add_argument("--baseline-server", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_server:
        baseline_server()
        return 0

    import qnllm

    n, secs = args.requests, args.seconds
    x = qnllm.normal_inputs(1, 1)[0]
    rows = []

    # In process: the Python call against the Rust call on one engine.
    engine = qnllm.UnifiedNeuralEngine(port=0)
    engine.start()
    engine._bench_reason(x, 2000)
    timed(lambda: engine.reason(x), 2000)
    # Call by call, alternately: the Rust call is timed inside Rust but made from the same
    # Python loop, so both see the same caches and load; the difference is the boundary.
    py_ns, rust_ns, clock = [], [], time.perf_counter_ns
    empty = []
    for _ in range(n):
        t = clock()
        empty.append(clock() - t)
    harness_ns = statistics.median(empty)
    for _ in range(n):
        t = clock()
        engine.reason(x)
        py_ns.append(clock() - t - harness_ns)
        rust_ns += engine._bench_reason(x, 1)
    py_in, rust_in = p50_us(py_ns), p50_us(rust_ns)
    rust_loop = p50_us(engine._bench_reason(x, n))
    tput = {k: throughput(lambda: (lambda: engine.reason(x)), k, secs) for k in (1, 2, 4)}

    # Through a hub: qnllm serve + qnllm worker, the Python client against the Rust client.
    binary = find_qnllm(args.qnllm_bin)
    serve = subprocess.Popen([binary, "serve", "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
    worker = None
    try:
        addr = None
        for line in serve.stdout:  # type: ignore[union-attr]
            if "listening on tcp" in line:
                addr = line.rsplit(" ", 1)[1].strip()
                break
        assert addr, "qnllm serve did not say where it listens"
        worker = subprocess.Popen([binary, "worker", "--connect", addr], stderr=subprocess.DEVNULL)
        client = qnllm.connect(addr)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.reason(x)
                break
            except qnllm.NoEngineAvailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        hub_n = max(n // 4, 1000)
        client._bench_reason(x, 500)
        timed(lambda: client.reason(x), 500)
        py_hub_ns, rust_hub_ns = [], []
        for _ in range(5):
            py_hub_ns += timed(lambda: client.reason(x), hub_n // 5)
            rust_hub_ns += client._bench_reason(x, hub_n // 5)
        py_hub, rust_hub = p50_us(py_hub_ns), p50_us(rust_hub_ns)
        hub_clients = [qnllm.connect(addr) for _ in range(4)]
        it = iter(hub_clients)
        hub_tput = throughput(lambda: (lambda c=next(it): c.reason(x)), 4, secs)
        for c in hub_clients:
            c.close()
        client.close()
    finally:
        for p in (worker, serve):
            if p is not None:
                p.kill()
                p.wait()
    engine.stop()

    # The seed-style baseline: pure-Python client, threaded Python server, JSON over TCP.
    server = subprocess.Popen([sys.executable, __file__, "--baseline-server"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())  # type: ignore[union-attr]
        xl = [float(v) for v in x]
        jc = JsonClient(port)
        timed(lambda: jc.reason(xl), 200)
        base_ns = timed(lambda: jc.reason(xl), max(n // 10, 1000))
        jc.close()
        base = p50_us(base_ns)
        base_clients: List[JsonClient] = []

        def make_json_call() -> Callable[[], object]:
            c = JsonClient(port)
            base_clients.append(c)
            return lambda: c.reason(xl)

        base_tput = throughput(make_json_call, 4, secs)
        for c in base_clients:
            c.close()
    finally:
        server.stdin.close()  # type: ignore[union-attr]
        server.wait(timeout=10)

    best_tput = max(tput.values())
    rows = [
        ("in process: Python `engine.reason(x)`", f"{py_in:.2f}", f"{tput[1]:,.0f}", ""),
        ("in process: Rust `engine.reason(&x)` (same engine)", f"{rust_in:.2f}", "", ""),
        ("in process: Rust, {n} calls in a Rust loop (warm caches)".format(n=n), f"{rust_loop:.2f}", "", ""),
        ("binding overhead per call (goal ≤ 1 µs)", f"{py_in - rust_in:+.2f}", "", ""),
        ("hub → worker: Python `Client.reason`", f"{py_hub:.2f}", f"{hub_tput:,.0f} (4 threads)", ""),
        ("hub → worker: Rust client, same connection", f"{rust_hub:.2f}", "", ""),
        ("Python / Rust through the hub (goal ≤ 1.15×)", f"{py_hub / rust_hub:.2f}×", "", ""),
        ("baseline: pure-Python JSON over TCP, threaded server", f"{base:.2f}", f"{base_tput:,.0f} (4 threads)", ""),
        ("qnllm in process vs baseline (goal ≥ 20×)", f"{base / py_in:.0f}× lower", f"{best_tput / base_tput:.0f}× more", ""),
        ("qnllm through the hub vs baseline (goal ≥ 20×)", f"{base / py_hub:.1f}× lower", f"{hub_tput / base_tput:.1f}× more", ""),
        ("in-process throughput, 1 / 2 / 4 Python threads", "",
         " / ".join(f"{tput[k]:,.0f}" for k in (1, 2, 4)),
         f"{tput[2] / tput[1]:.2f}× / {tput[4] / tput[1]:.2f}×"),
    ]
    print(f"qnllm {qnllm.__version__} from Python {sys.version.split()[0]}, {os.cpu_count()} cores; "
          f"{n} requests per latency row, {secs:g} s per throughput row; "
          f"the timer's own {harness_ns / 1e3:.2f} µs is subtracted from the in-process Python row")
    print()
    print("| path | p50 µs | req/s | scaling vs 1 thread |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
