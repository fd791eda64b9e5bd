#!/usr/bin/env python3
"""The original demo, through the Python API: seven scenarios on a hub with real worker
processes (a Rust `qnllm worker` and a Python `python -m qnllm worker`), each checked.
Exits non-zero when any scenario fails.

    python examples/ipc_integration_demo.py [--port 9999] [--qnllm-bin target/debug/qnllm]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
import traceback
from typing import Callable, List

import numpy as np

import qnllm

ROOT = pathlib.Path(__file__).resolve().parents[1]
REFERENCE = qnllm.SpikingEngine("seed:1")


def find_qnllm(given: str | None) -> str:
    for candidate in (given, os.environ.get("QNLLM_BIN"), str(ROOT / "target" / "debug" / "qnllm"),
                      str(ROOT / "target" / "release" / "qnllm"), shutil.which("qnllm")):
        if candidate and pathlib.Path(candidate).exists():
            return candidate
    sys.exit("cannot find the qnllm binary: build it with `cargo build -p qnllm-cli` or pass --qnllm-bin")


def check(condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(what)


def wait_for_engines(engine: qnllm.UnifiedNeuralEngine, names: List[str], workers: List[subprocess.Popen]) -> None:
    deadline = time.monotonic() + 30
    while not set(names) <= {e["name"] for e in engine.get_metrics()["engines"]}:
        for w in workers:
            check(w.poll() is None, f"worker {w.args} exited with {w.returncode}")
        check(time.monotonic() < deadline, f"engines {names} did not join within 30 s")
        time.sleep(0.02)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=9999, help="hub port (0 picks a free one)")
    parser.add_argument("--qnllm-bin", default=None, help="the qnllm binary (for the Rust worker)")
    args = parser.parse_args()
    binary = find_qnllm(args.qnllm_bin)

    engine = qnllm.UnifiedNeuralEngine(port=args.port, teachers=["seed:2", "seed:3", "seed:4"], redundancy=3)
    workers: List[subprocess.Popen] = []
    results: List[tuple] = []
    try:
        engine.start()  # do this first: workers join the hub it opens
        addr = engine.address
        print(f"hub listening on {addr}")
        workers.append(subprocess.Popen([binary, "worker", "--connect", addr, "--name", "rust-worker"],
                                        stderr=subprocess.DEVNULL))
        workers.append(subprocess.Popen([sys.executable, "-m", "qnllm", "worker", "--engine",
                                         "qnllm.engines:ReferenceEngine", "--connect", addr,
                                         "--name", "python-worker"], stderr=subprocess.DEVNULL))
        wait_for_engines(engine, ["local-0", "rust-worker", "python-worker"], workers)
        rng = np.random.default_rng(7)

        def basic() -> str:
            x = rng.normal(0, 0.1, 768).astype(np.float32)
            seen = set()
            for _ in range(3):  # round-robin: the local engine and both workers
                r = engine.reason(x)
                check(r.get("success") is True, "success is not True")
                check(r.result_digest == REFERENCE.reason(x).result_digest, f"{r.engine} answered differently")
                seen.add(r.engine)
            check(seen == {"local-0", "rust-worker", "python-worker"}, f"round-robin reached {seen}")
            return f"label {r['label']}, confidence {r['confidence']:.3f}, same digest from {sorted(seen)}"

        def batch() -> str:
            xs = rng.normal(0, 0.1, (100, 768)).astype(np.float32)
            t = time.perf_counter()
            out = engine.reason_batch(xs)
            took = time.perf_counter() - t
            check(len(out) == 100, f"{len(out)} results for 100 encodings")
            check(all(o.result_digest == REFERENCE.reason(x).result_digest for o, x in zip(out, xs)),
                  "a batch result differs from the reference")
            return f"100 encodings in {took * 1e3:.1f} ms ({100 / took:,.0f}/s)"

        def redundant() -> str:
            engine.set_strategy("redundant")
            before = engine.get_metrics().disagreements
            for _ in range(10):
                x = rng.normal(0, 0.1, 768)
                check(engine.reason(x).result_digest == REFERENCE.reason(x).result_digest, "majority answer is wrong")
            after = engine.get_metrics().disagreements
            engine.set_strategy("round_robin")
            check(after == before, f"{after - before} disagreements among honest engines")
            return "10 requests each on 3 engines (Rust local, Rust worker, Python worker): all agreed"

        def teachers() -> str:
            x = rng.normal(0, 0.1, 768)
            outcome = engine.coordinate(x, learn=False)
            check(len(outcome["votes"]) == 3, "not every teacher voted")
            # Learning moves a lineage on: a student engine of its own learns the consensus.
            with qnllm.UnifiedNeuralEngine(port=0, teachers=["seed:2", "seed:3", "seed:4"]) as student:
                learned = 0
                for _ in range(20):
                    y = rng.normal(0, 0.1, 768)
                    step = student.coordinate(y, learn=True)
                    learned += bool(step.get("learned"))
                    if step.get("learned"):
                        check(student.reason(y).model_version == step["learned"]["version"],
                              "the student does not answer with the model it learned")
                m = student.get_metrics()["coordination"]
            return (f"consensus {outcome['consensus']} (agreement {outcome['agreement']:.2f}); "
                    f"student learned {learned}/20, disagreement rate {m['disagreement_rate']:.2f}")

        def performance() -> str:
            x = rng.normal(0, 0.1, 768).astype(np.float32)
            rows = []
            for name in ("python_first", "cpp_first", "performance"):
                engine.set_strategy(name)
                t = time.perf_counter()
                for _ in range(200):
                    engine.reason(x)
                rows.append(f"{name} {(time.perf_counter() - t) / 200 * 1e6:.0f} µs")
            engine.set_strategy("round_robin")
            per_engine = {e["name"]: e["p50_us"] for e in engine.get_metrics()["engines"]}
            check(all(v > 0 for v in per_engine.values()), f"an engine has no latency: {per_engine}")
            return ", ".join(rows) + f"; p50 per engine (µs) {per_engine}"

        def cache() -> str:
            engine.config.cache_results = True
            engine.clear_cache()
            hits0 = engine.get_metrics().cache_hits
            xs = rng.normal(0, 0.1, (10, 768)).astype(np.float32)
            cached = sum(engine.reason(xs[i % 10]).cached for i in range(100))
            hits = engine.get_metrics().cache_hits - hits0
            engine.config.cache_results = False
            check(cached == 90 and hits == 90, f"{cached} cached answers, {hits} hits; expected 90")
            return "100 requests over 10 encodings: 90 hits"

        def monitoring() -> str:
            m = engine.get_metrics()
            check(m.engine_count == 3 and m.remote_engines == 2, f"{m.engine_count} engines listed")
            with qnllm.connect(addr) as client:
                remote = client.metrics()
                check(client.reason(np.zeros(768, np.float32)).success, "client request failed")
            open_conns = remote["connections"]["open"]
            check(open_conns >= 3, f"{open_conns} connections open (2 workers + this client)")
            return f"{m.total_requests} requests, {m.engine_count} engines, {open_conns} connections"

        scenarios: List[tuple[str, Callable[[], str]]] = [
            ("basic reasoning", basic), ("batch processing", batch), ("redundant verification", redundant),
            ("multi-teacher coordination", teachers), ("performance comparison", performance),
            ("cache effectiveness", cache), ("server monitoring", monitoring),
        ]
        for i, (name, run) in enumerate(scenarios, 1):
            try:
                detail = run()
                results.append((name, True))
                print(f"[{i}/7] PASS {name}: {detail}")
            except Exception as e:  # a failed scenario is reported; the others still run
                results.append((name, False))
                print(f"[{i}/7] FAIL {name}: {e}")
                traceback.print_exc()
    finally:
        engine.stop()
        for w in workers:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
        for w in workers:
            try:
                w.wait(timeout=10)
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait()
    passed = sum(ok for _, ok in results)
    print(f"{passed}/7 scenarios passed")
    return 0 if passed == 7 else 1


if __name__ == "__main__":
    sys.exit(main())
