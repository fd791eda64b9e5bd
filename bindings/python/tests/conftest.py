"""Fixtures: real hubs, real worker processes (Rust and Python), all stopped on every path."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

import qnllm

TESTS = pathlib.Path(__file__).resolve().parent
ROOT = TESTS.parents[2]
WAIT_S = 30.0


def qnllm_bin():
    path = pathlib.Path(os.environ.get("QNLLM_BIN", ROOT / "target" / "debug" / "qnllm"))
    if not path.exists():
        pytest.fail(f"{path} is missing: run `cargo build -p qnllm-cli` (or set QNLLM_BIN)")
    return str(path)


def wait_for(condition, what, timeout=WAIT_S):
    """Polls `condition` until it holds; fails the test naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def engine_names(engine):
    return [e["name"] for e in engine.get_metrics()["engines"]]


def wait_engines(engine, names):
    wait_for(lambda: set(names) <= set(engine_names(engine)), f"engines {names} to join")


class Processes:
    """Worker processes started by a test; every one is killed and reaped at teardown."""

    def __init__(self):
        self.procs = []

    def start(self, args, **kw):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        proc = subprocess.Popen(args, env=env, **kw)
        self.procs.append(proc)
        return proc

    def rust_worker(self, addr, name, model="seed:1"):
        return self.start([qnllm_bin(), "worker", "--connect", addr, "--name", name, "--model", model])

    def python_worker(self, addr, name, engine="engines:HonestEngine"):
        return self.start(
            [sys.executable, "-m", "qnllm", "worker", "--engine", engine, "--connect", addr, "--name", name]
        )

    def stop_all(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
        for proc in self.procs:
            proc.wait(timeout=WAIT_S)
            for stream in (proc.stdout, proc.stderr):
                if stream:
                    stream.close()


@pytest.fixture
def procs():
    p = Processes()
    try:
        yield p
    finally:
        p.stop_all()


@pytest.fixture
def make_engine():
    """Builds engines on a free port (unless told otherwise), started; stopped at teardown."""
    made = []

    def make(**kw):
        kw.setdefault("port", 0)
        engine = qnllm.UnifiedNeuralEngine(**kw)
        made.append(engine)
        engine.start()
        return engine

    try:
        yield make
    finally:
        for engine in made:
            engine.stop()
