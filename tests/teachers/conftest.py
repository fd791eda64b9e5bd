"""Fixtures of the cross-language teacher tests: the binaries they run, and a process group
that kills every process it started when the test ends, on every path."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator, List, Optional

import pytest

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
WAIT = 60.0  # the longest any single event may take (a join, a line, an exit)


def binary(env: str, default: Path) -> Path:
    path = Path(os.environ.get(env, str(default)))
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is not an executable (set {env}, or run .ci/suite/55-teachers, which builds it)")
    return path


@pytest.fixture(scope="session")
def qnllm_bin() -> Path:
    return binary("QNLLM_BIN", ROOT / "target/debug/qnllm")


@pytest.fixture(scope="session")
def cpp_worker_bin() -> Path:
    return binary("QNLLM_CPP_WORKER", ROOT / "target/cpp/build/qnllm-cpp-worker")


class Proc:
    """A child process whose stdout is read line by line on a thread (so a test can wait for
    a line without blocking on the pipe) and whose stderr goes to a log file."""

    def __init__(self, name: str, argv: List[str], log_dir: Path, *, cwd: Optional[Path] = None,
                 env: Optional[dict] = None) -> None:
        self.name = name
        self.log = log_dir / f"{name}.err"
        self.lines: "queue.Queue[Optional[str]]" = queue.Queue()
        with open(self.log, "wb") as err:
            self.popen = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL,
                cwd=cwd, env={**os.environ, **(env or {})},
            )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for raw in self.popen.stdout:
            self.lines.put(raw.decode("utf-8", "replace"))
        self.lines.put(None)

    def wait_line(self, prefix: str) -> str:
        """The rest of the first stdout line that starts with `prefix`."""
        while True:
            try:
                line = self.lines.get(timeout=WAIT)
            except queue.Empty:
                raise AssertionError(f"{self.name}: no line {prefix!r} in {WAIT}s; stderr: {self.stderr()}")
            if line is None:
                raise AssertionError(f"{self.name} exited ({self.popen.wait()}) before {prefix!r}: {self.stderr()}")
            if line.startswith(prefix):
                return line[len(prefix):].strip()

    def stderr(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> int:
        """SIGKILL, then the exit status (negative: the signal)."""
        if self.alive():
            self.popen.send_signal(signal.SIGKILL)
        return self.popen.wait(timeout=WAIT)


class Procs:
    """Every process a test starts; all are killed and reaped when the test ends."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.all: List[Proc] = []

    def spawn(self, name: str, argv: List[str], **kw: object) -> Proc:
        proc = Proc(name, [str(a) for a in argv], self.log_dir, **kw)  # type: ignore[arg-type]
        self.all.append(proc)
        return proc

    def python_worker(self, name: str, *args: str, env: Optional[dict] = None) -> Proc:
        return self.spawn(name, [sys.executable, "-m", "qnllm", "worker", *args], cwd=HERE, env=env)

    def close(self) -> None:
        for proc in reversed(self.all):
            try:
                proc.kill()
            except subprocess.TimeoutExpired:
                pass


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    group = Procs(tmp_path)
    try:
        yield group
    finally:
        group.close()
