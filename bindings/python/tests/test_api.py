"""The original API: quick start, result access, config, strategies, batch, errors."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import qnllm
from conftest import ROOT, qnllm_bin

QUICK_START = textwrap.dedent(
    """
    import numpy as np
    from qnllm import UnifiedNeuralEngine

    engine = UnifiedNeuralEngine()            # one local engine, hub on 127.0.0.1:9999, round-robin
    engine.start()
    result = engine.reason(np.random.normal(0, 0.1, 768))
    print(f"Confidence: {result['confidence']:.3f}")
    print(f"Latency: {result['latency_ms']:.2f}ms")
    metrics = engine.get_metrics()
    engine.stop()
    """
)


def test_quick_start_runs_as_written():
    out = subprocess.run([sys.executable, "-c", QUICK_START], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("Confidence: 0.") or lines[0] == "Confidence: 1.000"
    assert lines[1].startswith("Latency: ") and lines[1].endswith("ms")


def test_result_reads_as_object_and_as_mapping(make_engine):
    engine = make_engine()
    r = engine.reason(np.random.default_rng(1).normal(0, 0.1, 768))
    assert r.success is True and r.get("success") is True
    assert r["confidence"] == r.confidence and 0.1 <= r.confidence < 1.0
    assert r["label"] == r.label == int(np.argmax(r.scores))
    assert r["spikes"] == r.total_spikes
    assert r.get("no such key", "d") == "d" and r.get("no such key") is None
    with pytest.raises(KeyError):
        r["no such key"]
    d = r.to_dict()
    assert d["result_digest"] == r.result_digest and len(r.result_digest) == 64
    assert set(d) == set(r.keys()) and "latency_ms" in r
    assert d["engine"] == "local-0" and d["cached"] is False


def test_digests_equal_the_cli(make_engine):
    out = subprocess.run(
        [qnllm_bin(), "reason", "--random", "5", "--seed", "3", "--json"],
        capture_output=True, text=True, timeout=60, check=True,
    )
    expected = [json.loads(line) for line in out.stdout.splitlines()]
    x = qnllm.normal_inputs(3, 5)
    assert x.dtype == np.float32 and x.shape == (5, 768)
    engine = make_engine()
    for row, want in zip(x, expected):
        got = engine.reason(row)
        assert got.result_digest == want["result_digest"]
        assert got.model_digest == want["model_digest"]
        assert got.label == want["label"] and got.scores == want["scores"]
    batch = engine.reason_batch(x)
    assert [b.result_digest for b in batch] == [w["result_digest"] for w in expected]
    # float64 and lists are converted, with the same answers.
    assert engine.reason(x[0].astype(np.float64)).result_digest == expected[0]["result_digest"]
    assert engine.reason(x[0].tolist()).result_digest == expected[0]["result_digest"]
    assert engine.reason(np.asfortranarray(x)[:, 0:768][0]).result_digest == expected[0]["result_digest"]
    assert qnllm.SpikingEngine("seed:1").reason(x[1]).result_digest == expected[1]["result_digest"]


def test_config_object_with_original_names_and_kwargs(make_engine):
    config = qnllm.EngineConfig(port=0)
    config.cache_results = True
    engine = qnllm.UnifiedNeuralEngine(config)
    try:
        x = np.random.default_rng(2).normal(0, 0.1, 768).astype(np.float32)
        first, second = engine.reason(x), engine.reason(x)
        assert (first.cached, second.cached) == (False, True)
        assert second.result_digest == first.result_digest
        m = engine.get_metrics()
        assert m.cache_hits == 1 and m["cache_hits"] == 1
        # Turned off at run time through the engine's own config object.
        engine.config.cache_results = False
        assert engine.reason(x).cached is False
        engine.cache_results = True
        assert engine.reason(x).cached is True
        with pytest.raises(qnllm.ConfigError, match="cannot change"):
            engine.config.port = 1234
    finally:
        engine.stop()
    with pytest.raises(qnllm.ConfigError, match="unknown setting"):
        qnllm.EngineConfig(cache_reslts=True)
    with pytest.raises(qnllm.ConfigError, match="unknown strategy"):
        qnllm.UnifiedNeuralEngine(port=0, strategy="fastest-please")


def test_context_manager_starts_and_stops():
    with qnllm.UnifiedNeuralEngine(port=0) as engine:
        assert engine.running and engine.address.startswith("127.0.0.1:")
        assert engine.reason(np.zeros(768, np.float32)).success
    assert not engine.running
    with pytest.raises(qnllm.EngineStopped):
        engine.reason(np.zeros(768, np.float32))


def test_bad_input_raises_the_right_exception_and_the_engine_keeps_serving(make_engine):
    engine = make_engine()
    x = np.zeros(768, np.float32)
    x[17] = np.nan
    with pytest.raises(qnllm.InvalidInput, match="index 17") as e:
        engine.reason(x)
    assert e.value.index == 17 and e.value.item is None
    assert isinstance(e.value, qnllm.QnllmError)
    x[17] = np.inf
    with pytest.raises(qnllm.InvalidInput) as e:
        engine.reason(x.astype(np.float64))
    assert e.value.index == 17
    with pytest.raises(qnllm.InvalidInput, match="767 values, the model takes 768") as e:
        engine.reason(np.zeros(767))
    assert e.value.index is None
    with pytest.raises(qnllm.InvalidInput, match="1-D"):
        engine.reason(np.zeros((2, 768)))
    with pytest.raises(qnllm.InvalidInput, match="not an array of numbers"):
        engine.reason(["a"] * 768)
    batch = np.zeros((4, 768), np.float32)
    batch[2, 5] = np.nan
    with pytest.raises(qnllm.InvalidInput, match="encoding 2 of the batch") as e:
        engine.reason_batch(batch)
    assert (e.value.item, e.value.index) == (2, 5)
    with pytest.raises(qnllm.InvalidInput, match="2-D"):
        engine.reason_batch(np.zeros(768))
    assert engine.reason(np.zeros(768)).success
    assert engine.get_metrics()["engines"][0]["errors"] == 0


def test_no_engine_and_deadline_errors():
    with qnllm.UnifiedNeuralEngine(port=0, num_local_engines=0) as engine:
        with pytest.raises(qnllm.NoEngineAvailable, match="qnllm worker --connect"):
            engine.reason(np.zeros(768))
    assert issubclass(qnllm.DeadlineExceeded, qnllm.QnllmError)
    assert issubclass(qnllm.Disagreement, qnllm.QnllmError)


def test_address_in_use_is_a_hub_error(make_engine):
    engine = make_engine()
    port = int(engine.address.rsplit(":", 1)[1])
    other = qnllm.UnifiedNeuralEngine(port=port)
    try:
        with pytest.raises(qnllm.HubError):
            other.start()
    finally:
        other.stop()


def test_every_strategy_by_every_name(make_engine):
    engine = make_engine(num_local_engines=3)
    x = np.random.default_rng(4).normal(0, 0.1, 768)
    want = engine.reason(x).result_digest
    expected = {
        "round_robin": ("round-robin", "single"),
        "python_first": ("local-first", "single"),
        "local_first": ("local-first", "single"),
        "cpp_first": ("remote-first", "single"),
        "remote_first": ("remote-first", "single"),
        "performance": ("performance", "single"),
        "redundant": ("performance", "redundant"),
        "hedged": ("performance", "hedged"),
    }
    for name, (strategy, mode) in expected.items():
        engine.set_strategy(name)
        m = engine.get_metrics()
        assert (m.strategy, m.mode) == (strategy, mode), name
        for _ in range(3):
            assert engine.reason(x).result_digest == want, name
    engine.strategy = qnllm.Strategy.ROUND_ROBIN
    seen = [engine.reason(x).engine for _ in range(6)]
    assert sorted(seen) == sorted(["local-0", "local-1", "local-2"] * 2)


def test_redundant_mode_asks_several_engines(make_engine):
    engine = make_engine(num_local_engines=3, strategy="redundant")
    x = np.random.default_rng(5).normal(0, 0.1, 768)
    engine.reason(x)
    per_engine = [e["requests"] for e in engine.get_metrics()["engines"]]
    assert per_engine == [1, 1, 1]


def test_four_threads_at_once_get_correct_answers(make_engine):
    import concurrent.futures

    engine = make_engine(num_local_engines=2)
    x = qnllm.normal_inputs(9, 64)
    reference = qnllm.SpikingEngine("seed:1")
    want = [reference.reason(row).result_digest for row in x]

    def work(offset):
        return [engine.reason(x[(i + offset) % 64]).result_digest for i in range(64)]

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(work, range(4)))
    for offset, got in enumerate(results):
        assert got == [want[(i + offset) % 64] for i in range(64)]


def test_coordinate_and_learn(make_engine):
    engine = make_engine(teachers=["seed:2", "seed:3", "seed:4"])
    x = qnllm.normal_inputs(11, 1)[0]
    before = engine.reason(x)
    outcome = engine.coordinate(x, learn=True)
    assert len(outcome["votes"]) == 3 and 0 <= outcome["consensus"] < 10
    label = (before.label + 1) % 10
    state = engine.learn(x, label)
    assert state is None or state["version"] >= 1
    after = engine.reason(x)
    assert after.model_version >= before.model_version
    assert engine.get_metrics()["coordination"]["steps"] >= 1


def test_help_is_there():
    for obj in (qnllm.UnifiedNeuralEngine, qnllm.UnifiedNeuralEngine.reason, qnllm.Reasoning,
                qnllm.connect, qnllm.serve_worker, qnllm.InvalidInput, qnllm.EngineConfig):
        assert obj.__doc__ and len(obj.__doc__) > 20, obj


def test_bad_input_is_invalid_input_even_without_engines():
    with qnllm.UnifiedNeuralEngine(port=0, num_local_engines=0) as engine:
        with pytest.raises(qnllm.InvalidInput) as e:
            engine.reason(np.full(768, np.nan))
        assert e.value.index == 0
        assert engine.get_metrics().total_requests == 0


def test_strategy_enum_and_kwargs_override_the_config():
    config = qnllm.EngineConfig(port=0, strategy=qnllm.Strategy.CPP_FIRST, num_local_engines=2)
    engine = qnllm.UnifiedNeuralEngine(config, strategy=qnllm.Strategy.PYTHON_FIRST)
    try:
        assert engine.policy == ("local-first", "single")
        assert engine.strategy == "local-first"
        assert engine.get_metrics().engine_count == 2
        engine.strategy = "hedged"
        assert engine.policy == ("local-first", "hedged") and engine.config.strategy == "hedged"
    finally:
        engine.stop()
    assert config.strategy == "cpp_first"  # the caller's config is not changed by the engine
