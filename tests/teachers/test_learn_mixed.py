"""`qnllm learn` with teachers of three kinds, on real processes: one Rust teacher in the hub's
process, one Python (`python -m qnllm worker --teacher`, the Rust engine through PyO3) and one
C++ (`qnllm-cpp-worker --teacher`, an independent engine), each loading its own trained model
file; a student replicated on the hub's engine and two `qnllm worker`s learns from their
consensus. Asserted: the teachers ran as the interpreter and binary given (each logs its own
command line through a wrapper, with the pid `learn` reports), the student gains 40 points,
the replicas stay identical, two runs give the same figures and digests, and every teacher's
held-out answers are bit-identical to a Rust engine loading the same model file in this
process. Also: a teacher that dies before joining fails the run and leaves no process behind,
and the Python worker's `--model` refuses a missing file in one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np
import qnllm

from conftest import WAIT

# A small run: enough for the 40-point gain, a few seconds on the debug build.
SMALL = ["--labels", "300", "--unlabelled", "300", "--passes", "2",
         "--workers", "2"]
RUN_TIMEOUT = 300.0  # seconds a whole `qnllm learn` may take before the test kills it


def wrapper(path: Path, real: str, log: Path) -> Path:
    """A script that logs its pid and arguments to `log`, then becomes `real` (same pid)."""
    path.write_text(f'#!/bin/sh\necho "$$ $*" >> "{log}"\nexec "{real}" "$@"\n')
    path.chmod(0o755)
    return path


def run_learn(qnllm_bin: Path, args: Sequence[str]) -> Tuple[int, str, str]:
    """Runs `qnllm learn` in its own process group, killed as a group if it outlives
    RUN_TIMEOUT or the test fails meanwhile."""
    env = {k: v for k, v in os.environ.items() if k not in ("QNLLM_PYTHON", "QNLLM_CPP_WORKER")}
    proc = subprocess.Popen([str(qnllm_bin), "learn", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, out.decode(), err.decode()


def running_qnllm(pid: int) -> bool:
    """Whether `pid` is a live process running qnllm (not a reused pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"qnllm" in cmdline


def logged(log: Path) -> List[Tuple[int, List[str]]]:
    lines = log.read_text().splitlines() if log.exists() else []
    return [(int(line.split()[0]), line.split()[1:]) for line in lines]


def mixed_run(qnllm_bin: Path, cpp_worker_bin: Path, dir: Path) -> Tuple[dict, Path, Path]:
    dir.mkdir()
    py_log, cpp_log = dir / "python.log", dir / "cpp.log"
    python = wrapper(dir / "python", sys.executable, py_log)
    cpp = wrapper(dir / "cpp-worker", str(cpp_worker_bin), cpp_log)
    code, out, err = run_learn(qnllm_bin, [
        *SMALL, "--json", "--teacher-kinds", "rust,python,cpp", "--python", str(python),
        "--cpp-worker", str(cpp), "--keep", str(dir / "run")])
    assert code == 0, err
    return json.loads(out), py_log, cpp_log


def figures(story: dict) -> dict:
    """What must repeat exactly between runs: not the seconds, pids or paths."""
    story = dict(story)
    story.pop("seconds")
    story["teachers"] = [{k: v for k, v in t.items() if k not in ("pid", "model")} for t in story["teachers"]]
    return story


def test_rust_python_and_cpp_teachers_teach_one_student_bit_identically_every_run(
        tmp_path: Path, qnllm_bin, cpp_worker_bin) -> None:
    first, py_log, cpp_log = mixed_run(qnllm_bin, cpp_worker_bin, tmp_path / "first")
    teachers = first["teachers"]
    assert [(t["name"], t["kind"], t["language"]) for t in teachers] == [
        ("teacher-0", "rust", "Rust"), ("teacher-1", "python", "Python"), ("teacher-2", "cpp", "C++")]
    assert teachers[0]["pid"] is None

    # Each worker teacher is the process the given program became, serving its own model file.
    for teacher, log, command in [(teachers[1], py_log, ["-m", "qnllm", "worker", "--teacher"]),
                                  (teachers[2], cpp_log, ["--teacher"])]:
        runs = [(pid, argv) for pid, argv in logged(log) if "--connect" in argv]
        assert len(runs) == 1, f"{teacher['name']}: {logged(log)}"
        pid, argv = runs[0]
        assert pid == teacher["pid"], (teacher, runs)
        assert argv[:len(command)] == command, argv
        assert argv[argv.index("--name") + 1] == teacher["name"], argv
        assert argv[argv.index("--model") + 1] == teacher["model"], argv
        assert not running_qnllm(pid), f"{teacher['name']} (pid {pid}) outlived the run"

    # The student learned from the teachers alone; its replicas never diverged.
    assert first["student_after"] >= first["student_before"] + 0.40, first
    assert len(first["passes"]) == 2
    for p in first["passes"]:
        digests = [d for _, d in p["digests"]]
        assert len(digests) == 3 and len(set(digests)) == 1, p
        assert p["identical"] is True, p

    # Every teacher's own held-out answers are a Rust engine's on its model file, bit for bit.
    answers = json.loads((tmp_path / "first/run/answers.json").read_text())
    images = answers["held_out"]
    assert len(images) == first["held_out"] > 0
    xs = [np.asarray(im["encoding"], dtype=np.float32) for im in images]
    for teacher, got in zip(teachers, answers["teachers"]):
        assert got["name"] == teacher["name"] and got["model"] == teacher["model"]
        rust = qnllm.SpikingEngine(got["model"])
        assert rust.model_digest == teacher["model_digest"]
        want = [rust.reason(x) for x in xs]
        assert got["labels"] == [r.label for r in want], f"{teacher['name']} answered unlike its model"
        assert got["confidences"] == [r.confidence for r in want], f"{teacher['name']}'s confidences differ"
        right = sum(label == im["label"] for label, im in zip(got["labels"], images))
        assert teacher["accuracy"] == right / len(images)
        assert teacher["same_as_rust"] == len(images)

    second, _, _ = mixed_run(qnllm_bin, cpp_worker_bin, tmp_path / "second")
    assert figures(second) == figures(first)


def test_a_teacher_that_dies_before_joining_fails_the_run_and_leaves_no_process(
        tmp_path: Path, qnllm_bin) -> None:
    py_log = tmp_path / "python.log"
    python = wrapper(tmp_path / "python", sys.executable, py_log)
    dead = tmp_path / "dead-cpp-worker"
    dead.write_text("#!/bin/sh\nexit 3\n")
    dead.chmod(0o755)
    code, _, err = run_learn(qnllm_bin, [
        *SMALL, "--teacher-kinds", "rust,python,cpp", "--python", str(python), "--cpp-worker", str(dead)])
    assert code != 0
    assert "teacher-2 exited (exit status: 3) before teacher-2 (cpp) joined the hub" in err, err
    # The Python teacher had joined; it is gone with the run.
    runs = [pid for pid, argv in logged(py_log) if "--connect" in argv]
    assert len(runs) == 1, logged(py_log)
    assert not running_qnllm(runs[0]), f"the Python teacher (pid {runs[0]}) outlived the failed run"


def test_the_python_worker_refuses_a_missing_model_file_in_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nothing.safetensors"
    out = subprocess.run([sys.executable, "-m", "qnllm", "worker", "--teacher", "--engine",
                          "qnllm.engines:ReferenceEngine", "--model", str(missing), "--connect",
                          "127.0.0.1:1"], capture_output=True, text=True, timeout=WAIT)
    assert out.returncode == 1, out
    assert out.stderr.strip() == f"error: model `{missing}` is neither seed:N nor an existing file", out.stderr


def test_demo_scenario_4_runs_the_python_and_cpp_teachers_it_finds(qnllm_bin, cpp_worker_bin) -> None:
    env = {**os.environ, "QNLLM_PYTHON": sys.executable, "QNLLM_CPP_WORKER": str(cpp_worker_bin)}
    proc = subprocess.Popen([str(qnllm_bin), "demo", "--requests", "50", "--steps", "200", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, err.decode()
    scenario = json.loads(out)[3]
    assert scenario["name"] == "multi-teacher coordination" and scenario["passed"] is True, scenario
    assert scenario["lines"][0] == ("teachers: teacher-0 Rust (the hub's process), "
                                    "teacher-1 Python (python -m qnllm worker --teacher), "
                                    "teacher-2 C++ (qnllm-cpp-worker --teacher)"), scenario
    assert not any(line.startswith("no ") for line in scenario["lines"]), scenario
