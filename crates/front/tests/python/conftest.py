"""Fixtures: a real `qnllm serve --http --grpc` and real `qnllm worker` processes on
127.0.0.1, started per test and always stopped, whatever the outcome."""

import os
import re
import signal
import subprocess
import time

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", ".."))
QNLLM = os.environ.get("QNLLM_BIN", os.path.join(ROOT, "target", "debug", "qnllm"))
START_TIMEOUT_S = 60


class Process:
    """A child process whose stdout lines can be awaited."""

    def __init__(self, args):
        self.proc = subprocess.Popen(
            [QNLLM, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )

    def wait_for_line(self, pattern):
        """Reads stdout until a line matches `pattern`; the process exiting first fails."""
        regex = re.compile(pattern)
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"qnllm exited ({self.proc.wait()}) before printing {pattern!r}")
            m = regex.search(line)
            if m:
                return m

    def signal(self, sig):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def freeze(self):
        """SIGSTOP, then waits until the kernel shows every thread stopped.

        `kill` returns before the stop takes hold: one thread is woken to take the signal,
        and until it runs, the others go on and can still answer a request sent meanwhile.
        """
        self.signal(signal.SIGSTOP)
        pid = self.proc.pid
        for _ in range(2_000):
            threads = os.listdir(f"/proc/{pid}/task")
            if all(thread_state(pid, tid) in ("T", "t", None) for tid in threads):
                return
            time.sleep(0.005)
        raise AssertionError(f"process {pid} did not stop")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()


class Server:
    def __init__(self, local, extra=()):
        self.process = Process(
            ["serve", "--listen", "127.0.0.1:0", "--local", str(local),
             "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0", *extra]
        )
        self.hub = self.process.wait_for_line(r"hub listening on tcp (\S+)").group(1)
        self.http = self.process.wait_for_line(r"http listening on (\S+)").group(1)
        self.grpc = self.process.wait_for_line(r"grpc listening on (\S+)").group(1)
        self.workers = []

    def worker(self, name):
        w = Process(["worker", "--connect", self.hub, "--name", name])
        self.workers.append(w)
        return w

    def stop(self):
        for w in self.workers:
            w.signal(signal.SIGCONT)
            w.stop()
        self.process.stop()


@pytest.fixture
def server():
    """A server with one in-process engine."""
    s = Server(local=1)
    yield s
    s.stop()


@pytest.fixture
def cached_server():
    """A server with one in-process engine and a result cache."""
    s = Server(local=1, extra=["--cache", "256"])
    yield s
    s.stop()


@pytest.fixture
def bare_server():
    """A server with no engine of its own: only workers answer."""
    s = Server(local=0)
    yield s
    s.stop()


def thread_state(pid, tid):
    """The state letter of one thread from /proc (`T`: stopped), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            # The name, in parentheses, may hold spaces; the state follows its last ")".
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None


def wait_until(predicate, what, attempts=600):
    """Polls `predicate` (each call a real request to the server) a bounded number of times."""
    for _ in range(attempts):
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
