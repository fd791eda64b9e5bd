"""Failures and lifetimes with real processes: SIGKILL under load, SIGTERM drain, no leaks."""

import concurrent.futures
import os
import signal
import subprocess
import sys
import threading

import numpy as np

import qnllm
from conftest import WAIT_S, qnllm_bin, wait_engines

REFERENCE = qnllm.SpikingEngine("seed:1")


def native_threads():
    return len(os.listdir("/proc/self/task"))


def test_sigkill_of_a_worker_under_load_gives_every_request_one_outcome(make_engine, procs):
    engine = make_engine(num_local_engines=0, timeout=10.0)
    addr = engine.address
    victim = procs.rust_worker(addr, "rust-victim")
    procs.rust_worker(addr, "rust-survivor")
    py_victim = procs.python_worker(addr, "py-victim")
    wait_engines(engine, ["rust-victim", "rust-survivor", "py-victim"])
    x = qnllm.normal_inputs(50, 32)
    want = [REFERENCE.reason(row).result_digest for row in x]
    per_thread = 150
    done = threading.Semaphore(0)
    outcomes = [[] for _ in range(4)]

    def load(t):
        for i in range(per_thread):
            k = (i + t) % len(x)
            try:
                r = engine.reason(x[k])
                outcomes[t].append(("ok", r.result_digest == want[k]))
            except qnllm.QnllmError as e:
                outcomes[t].append(("error", type(e).__name__))
            done.release()

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(load, t) for t in range(4)]
        for _ in range(100):  # a quarter of the load has been answered: kill two workers
            assert done.acquire(timeout=WAIT_S)
        victim.send_signal(signal.SIGKILL)
        py_victim.send_signal(signal.SIGKILL)
        for f in futures:
            f.result(timeout=120)
    assert victim.wait(timeout=WAIT_S) == -signal.SIGKILL
    flat = [o for t in outcomes for o in t]
    assert len(flat) == 4 * per_thread  # every request: exactly one result or one exception
    assert all(correct for kind, correct in flat if kind == "ok")
    oks = sum(1 for kind, _ in flat if kind == "ok")
    assert oks >= 100
    # The survivor serves on after the kill.
    assert engine.reason(x[0]).result_digest == want[0]


def test_python_worker_drains_and_exits_on_sigterm(make_engine, procs):
    engine = make_engine(num_local_engines=0)
    worker = procs.python_worker(engine.address, "py-term")
    wait_engines(engine, ["py-term"])
    assert engine.reason(np.zeros(768, np.float32)).engine == "py-term"
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=WAIT_S) == 0
    # Goodbye was said: the hub no longer lists it.
    from conftest import engine_names, wait_for

    wait_for(lambda: "py-term" not in engine_names(engine), "the worker to leave")


def test_python_worker_gives_up_without_a_hub():
    out = subprocess.run(
        [sys.executable, "-m", "qnllm", "worker", "--engine", "engines:HonestEngine",
         "--connect", "127.0.0.1:1", "--max-retries", "1"],
        capture_output=True, text=True, timeout=WAIT_S,
        env=dict(os.environ, PYTHONPATH=os.path.dirname(__file__)),
    )
    assert out.returncode == 1 and "gave up" in out.stderr


def test_stop_leaves_no_thread_behind(procs):
    before = native_threads()
    engine = qnllm.UnifiedNeuralEngine(port=0, num_local_engines=2)
    engine.start()
    procs.rust_worker(engine.address, "rust-stop")
    wait_engines(engine, ["rust-stop"])
    engine.reason_batch(qnllm.normal_inputs(1, 200))
    for _ in range(20):
        engine.reason(np.zeros(768, np.float32))
    assert native_threads() > before
    engine.stop()
    assert native_threads() == before
    assert threading.active_count() == 1
    client_before = native_threads()
    with qnllm.UnifiedNeuralEngine(port=0) as hub:
        with qnllm.connect(hub.address) as client:
            client.reason(np.zeros(768, np.float32))
    assert native_threads() == client_before
