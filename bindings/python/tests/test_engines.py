"""Python engines in process and as worker processes, mixed with Rust workers."""

import numpy as np
import pytest

import qnllm
from conftest import wait_engines

REFERENCE = qnllm.SpikingEngine("seed:1")


def test_in_process_python_engine_is_one_more_backend(make_engine):
    from engines import HonestEngine

    engine = make_engine(engines=[HonestEngine()])
    x = qnllm.normal_inputs(21, 4)
    answers = [engine.reason(row) for row in x]
    assert [a.engine for a in answers] == ["local-0", "python-0", "local-0", "python-0"]
    assert [a.result_digest for a in answers] == [REFERENCE.reason(row).result_digest for row in x]
    m = engine.get_metrics()
    py = next(e for e in m["engines"] if e["name"] == "python-0")
    assert py["kind"] == "local" and py["requests"] == 2 and py["p50_us"] > 0


def test_tuple_engine_gets_its_digest_computed_by_the_library(make_engine):
    from engines import TupleEngine

    engine = make_engine(num_local_engines=0, engines=[TupleEngine()])
    x = np.zeros(768, np.float32)
    x[:4] = [0.001, 0.004, -0.002, 0.003]
    r = engine.reason(x)
    assert (r.label, r.scores, r.engine) == (1, [1, 4, -2, 3], "python-0")
    assert r.result_digest == qnllm.result_digest(1, [1, 4, -2, 3])
    assert r.result_digest != qnllm.result_digest(2, [1, 4, -2, 3])


def test_exception_in_a_python_engine_is_that_requests_error(make_engine):
    from engines import FlakyEngine

    engine = make_engine(num_local_engines=0, engines=[FlakyEngine()])
    bad = np.full(768, -0.01, np.float32)
    with pytest.raises(qnllm.EngineFailed, match="ValueError: refusing a negative first value"):
        engine.reason(bad)
    good = np.full(768, 0.01, np.float32)
    assert engine.reason(good).result_digest == REFERENCE.reason(good).result_digest


def test_exception_in_a_python_engine_fails_over_to_another(make_engine):
    from engines import FlakyEngine

    engine = make_engine(engines=[FlakyEngine()], strategy="python_first")
    bad = np.full(768, -0.01, np.float32)
    for _ in range(4):
        assert engine.reason(bad).engine == "local-0"


def test_a_python_engine_without_reason_is_refused():
    class NotAnEngine:
        pass

    with pytest.raises(qnllm.ConfigError, match="no reason"):
        qnllm.UnifiedNeuralEngine(port=0, engines=[NotAnEngine()])


def test_python_worker_process_serves_and_survives_its_exceptions(make_engine, procs):
    engine = make_engine(num_local_engines=0)
    procs.python_worker(engine.address, "py-flaky", engine="engines:FlakyEngine")
    wait_engines(engine, ["py-flaky"])
    good = qnllm.normal_inputs(30, 1)[0]
    good[0] = abs(good[0])
    r = engine.reason(good)
    assert r.engine == "py-flaky" and r.result_digest == REFERENCE.reason(good).result_digest
    bad = good.copy()
    bad[0] = -0.5
    # The engine failed, the input is fine: EngineFailed with the exception's own words,
    # never InvalidInput (which says "fix your input").
    with pytest.raises(qnllm.EngineFailed, match="ValueError: refusing a negative first value") as e:
        engine.reason(bad)
    assert not isinstance(e.value, qnllm.InvalidInput)
    assert engine.reason(good).result_digest == r.result_digest
    # A client of the same hub sees the same kind, through the hub's error frame.
    with qnllm.connect(engine.address) as client:
        with pytest.raises(qnllm.EngineFailed, match="ValueError: refusing a negative first value"):
            client.reason(bad)
        assert client.reason(good).result_digest == r.result_digest
    assert engine.get_metrics().remote_engines == 1


@pytest.mark.parametrize("liar", ["in-process", "worker"])
def test_redundant_mode_catches_a_lying_python_engine(make_engine, procs, liar):
    from engines import HonestEngine, LyingEngine

    inproc = LyingEngine() if liar == "in-process" else HonestEngine()
    engine = make_engine(num_local_engines=0, engines=[inproc], strategy="redundant", redundancy=3)
    addr = engine.address
    procs.rust_worker(addr, "rust-a")
    procs.rust_worker(addr, "rust-b")
    worker_engine = "engines:LyingEngine" if liar == "worker" else "engines:HonestEngine"
    procs.python_worker(addr, "py-worker", engine=worker_engine)
    wait_engines(engine, ["rust-a", "rust-b", "py-worker", "python-0"])
    liar_name = "python-0" if liar == "in-process" else "py-worker"
    x = qnllm.normal_inputs(40, 8)
    for row in x:
        r = engine.reason(row)
        assert r.result_digest == REFERENCE.reason(row).result_digest
        assert r.engine != liar_name
    m = engine.get_metrics()
    assert m.disagreements >= 1
    lying = next(e for e in m["engines"] if e["name"] == liar_name)
    assert lying["ejected"] or lying["ejections"] >= 1
