"""Client for a hub another process runs, and the asyncio twin."""

import asyncio

import numpy as np
import pytest

import qnllm
from conftest import qnllm_bin, wait_engines

REFERENCE = qnllm.SpikingEngine("seed:1")


def serve(procs, *args):
    """`qnllm serve` in its own process with one local engine and `args`; its address."""
    import subprocess

    hub = procs.start(
        [qnllm_bin(), "serve", "--listen", "127.0.0.1:0", "--local", "1", *args],
        stdout=subprocess.PIPE, text=True,
    )
    for line in hub.stdout:
        if "listening on tcp" in line:
            return line.rsplit(" ", 1)[1].strip()
    pytest.fail("qnllm serve did not say where it listens")


@pytest.fixture
def cli_hub(procs):
    return serve(procs)


def test_client_reasons_through_another_process_hub(cli_hub, procs):
    with qnllm.connect(cli_hub) as client:
        x = qnllm.normal_inputs(60, 3)
        for row in x:
            r = client.reason(row)
            assert r.result_digest == REFERENCE.reason(row).result_digest
            assert r["success"] and r.latency_ms >= 0
        batch = client.reason_batch(x)
        assert [b.result_digest for b in batch] == [REFERENCE.reason(row).result_digest for row in x]
        m = client.metrics()
        assert m["requests"] >= 3 or m.get("router", {}).get("requests", 0) >= 3
        with pytest.raises(qnllm.InvalidInput, match="767"):
            client.reason(np.zeros(767, np.float32))
        bad = np.zeros(768, np.float32)
        bad[3] = np.nan
        with pytest.raises(qnllm.InvalidInput) as e:
            client.reason(bad)
        assert e.value.index == 3
        assert client.reason(x[0]).result_digest == REFERENCE.reason(x[0]).result_digest
    with pytest.raises(qnllm.ConnectionLost):
        client.reason(x[0])


def test_client_learns_and_coordinates_through_another_process_hub(procs):
    # Two teachers with one model agree with each other, and on `taught` not with the student.
    address = serve(procs, "--teacher", "seed:2", "--teacher", "seed:2")
    reference, teacher = qnllm.SpikingEngine("seed:1"), qnllm.SpikingEngine("seed:2")
    x = qnllm.normal_inputs(80, 40)
    with qnllm.connect(address) as client:
        state = client.learn(x[0], 3, base_version=0)
        want = reference.learn(x[0], 3)
        assert state["version"] == want.model_version == 1
        assert state["digest"] == want.model_digest
        # An update for a version the student has left is refused, naming both.
        with pytest.raises(qnllm.VersionConflict, match=r"version 0.* 1"):
            client.learn(x[1], 3, base_version=0)
        with pytest.raises(qnllm.InvalidInput, match="label 10"):
            client.learn(x[1], 10, base_version=1)
        taught = next(r for r in x[3:] if teacher.reason(r).label != reference.reason(r).label)
        outcome = client.coordinate(taught)
        assert [t["engine"] for t in outcome["teachers"]] == ["teacher-0", "teacher-1"]
        assert outcome["consensus"] == teacher.reason(taught).label
        assert outcome["agreement"] == 1.0
        assert outcome["learned"] is True
        reference.learn(taught, outcome["consensus"])
        # The hub's student answers from the model the client taught, bit for bit.
        r = client.reason(x[2])
        assert r.result_digest == reference.reason(x[2]).result_digest
        assert r.model_version == reference.model_version == 2


def test_connect_to_nothing_is_connection_lost():
    with pytest.raises(qnllm.ConnectionLost, match="cannot connect"):
        qnllm.connect("127.0.0.1:1")


def test_client_sees_a_python_worker(make_engine, procs):
    engine = make_engine(num_local_engines=0)
    procs.python_worker(engine.address, "py-for-client")
    wait_engines(engine, ["py-for-client"])
    with qnllm.connect(engine.address) as client:
        r = client.reason(np.zeros(768, np.float32))
        assert r.engine == "py-for-client"
        assert r.result_digest == REFERENCE.reason(np.zeros(768, np.float32)).result_digest
    # A batch reaches the Python worker as one batch request, answered item by item.
    x = qnllm.normal_inputs(71, 5)
    batch = engine.reason_batch(x)
    assert [b.engine for b in batch] == ["py-for-client"] * 5
    assert [b.result_digest for b in batch] == [REFERENCE.reason(row).result_digest for row in x]


def test_asyncio_twin():
    async def main():
        async with qnllm.AsyncUnifiedNeuralEngine(port=0, num_local_engines=2) as engine:
            x = qnllm.normal_inputs(70, 16)
            results = await asyncio.gather(*(engine.reason(row) for row in x))
            assert [r.result_digest for r in results] == [REFERENCE.reason(row).result_digest for row in x]
            batch = await engine.reason_batch(x)
            assert [b.result_digest for b in batch] == [r.result_digest for r in results]
            with pytest.raises(qnllm.InvalidInput):
                await engine.reason(np.zeros(3))
            assert engine.get_metrics().total_requests == 16
        return engine

    engine = asyncio.run(main())
    assert not engine.engine.running
