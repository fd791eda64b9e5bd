"""The unchanged Triton clients (`tritonclient[http]`, `tritonclient[grpc]`) against a real
`qnllm serve --http --grpc`: health, metadata, JSON and binary infer, a batch, results
bit-identical to `qnllm reason --json`, every error status, and readiness following the
workers as they die and return."""

import json
import signal
import subprocess
import tempfile

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import QNLLM, wait_until

OUTPUTS = [
    "label", "confidence", "scores", "total_spikes", "label_spikes",
    "model_version", "model_digest", "result_digest", "engine", "cached",
]


def encodings(n, seed):
    return np.random.default_rng(seed).normal(0.0, 0.1, size=(n, 768)).astype(np.float32)


def reference(x):
    """`qnllm reason --json` over the same float32 values, through a .npy file."""
    with tempfile.NamedTemporaryFile(suffix=".npy") as f:
        np.save(f.name, x)
        out = subprocess.run(
            [QNLLM, "reason", "--npy", f.name, "--json"],
            check=True, capture_output=True, text=True,
        ).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def check_bit_identical(result, x):
    want = reference(x)
    label = result.as_numpy("label")
    confidence = result.as_numpy("confidence")
    scores = result.as_numpy("scores")
    spikes = result.as_numpy("total_spikes")
    label_spikes = result.as_numpy("label_spikes")
    digests = [d.decode() if isinstance(d, bytes) else d for d in result.as_numpy("result_digest")]
    models = [d.decode() if isinstance(d, bytes) else d for d in result.as_numpy("model_digest")]
    assert len(label) == len(want) == len(x)
    for i, w in enumerate(want):
        assert int(label[i]) == w["label"]
        assert np.float32(confidence[i]) == np.float32(w["confidence"])
        assert scores[i].tolist() == w["scores"]
        assert int(spikes[i]) == w["total_spikes"]
        assert label_spikes[i].tolist() == w["label_spikes"]
        assert digests[i] == w["result_digest"]
        assert models[i] == w["model_digest"]


def http_client(server):
    return httpclient.InferenceServerClient(url=server.http)


def grpc_client(server):
    return grpcclient.InferenceServerClient(url=server.grpc)


# ---- HTTP ----

def test_http_live_ready_and_metadata(server):
    c = http_client(server)
    assert c.is_server_live()
    assert c.is_server_ready()
    assert c.is_model_ready("qnllm")
    meta = c.get_server_metadata()
    assert "binary_tensor_data" in meta["extensions"]
    model = c.get_model_metadata("qnllm")
    assert model["inputs"] == [{"name": "ENCODING", "datatype": "FP32", "shape": [-1, 768]}]
    assert [o["name"] for o in model["outputs"]] == OUTPUTS
    want = reference(encodings(1, 0))[0]
    assert model["parameters"]["model_digest"] == want["model_digest"]
    assert model["versions"] == [str(want["model_version"])]


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("rows", [1, 5])
def test_http_infer_is_bit_identical_to_reason_json(server, binary, rows):
    c = http_client(server)
    x = encodings(rows, 10 + rows)
    inp = httpclient.InferInput("ENCODING", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in OUTPUTS]
    result = c.infer("qnllm", [inp], outputs=outputs, request_id=f"r-{rows}-{binary}",
                     parameters={"strategy": "round-robin", "no_cache": True})
    assert result.get_response()["id"] == f"r-{rows}-{binary}"
    check_bit_identical(result, x)


def test_http_infer_without_named_outputs_returns_them_all_in_binary(server):
    c = http_client(server)
    x = encodings(2, 3)
    inp = httpclient.InferInput("ENCODING", [2, 768], "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    result = c.infer("qnllm", [inp])
    assert [o["name"] for o in result.get_response()["outputs"]] == OUTPUTS
    check_bit_identical(result, x)


def engines(result):
    """The name of the engine that answered each row."""
    return [e.decode() for e in result.as_numpy("engine")]


def expect_http_error(status, fragment, call):
    with pytest.raises(InferenceServerException) as err:
        call()
    assert str(err.value.status()) == str(status), err.value
    assert fragment in err.value.message(), err.value


def test_http_errors_have_their_status_and_name_the_fault(server):
    c = http_client(server)
    good = encodings(1, 1)

    def infer(x, dtype="FP32", model="qnllm", shape=None, **kw):
        inp = httpclient.InferInput("ENCODING", shape or list(x.shape), dtype)
        inp.set_data_from_numpy(x, binary_data=True)
        return c.infer(model, [inp], **kw)

    expect_http_error(400, "[N, 768]", lambda: infer(encodings(1, 1)[:, :700]))
    expect_http_error(400, "FP64", lambda: infer(good.astype(np.float64), dtype="FP64"))
    nan = good.copy()
    nan[0, 17] = np.nan
    expect_http_error(400, "index [0, 17] is NaN", lambda: infer(nan))
    expect_http_error(404, "unknown model", lambda: infer(good, model="other"))
    expect_http_error(400, "strategy", lambda: infer(good, parameters={"strategy": "fastest"}))
    big = encodings(5_600, 2)  # 17 MB of FP32, over the 16 MiB body limit
    expect_http_error(413, "limit", lambda: infer(big))
    # Everyone else is still served.
    check_bit_identical(infer(good), good)


def test_http_no_engine_is_503_and_a_stuck_engine_is_504(bare_server):
    c = http_client(bare_server)
    x = encodings(1, 4)
    inp = httpclient.InferInput("ENCODING", [1, 768], "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    assert not c.is_server_ready()
    expect_http_error(503, "no engine", lambda: c.infer("qnllm", [inp]))
    worker = bare_server.worker("w-stuck")
    wait_until(c.is_server_ready, "the worker to join")
    worker.freeze()  # still registered, but answers nothing
    expect_http_error(
        504,
        "deadline",
        lambda: pytest.fail(f"answered by {engines(c.infer('qnllm', [inp], timeout=200_000))}"),
    )
    worker.signal(signal.SIGCONT)


def test_readiness_follows_the_workers(bare_server):
    h = http_client(bare_server)
    g = grpc_client(bare_server)
    assert not h.is_server_ready() and not g.is_server_ready()
    first = bare_server.worker("w-1")
    wait_until(h.is_server_ready, "ready once a worker joins")
    assert g.is_server_ready() and h.is_model_ready("qnllm")
    first.signal(signal.SIGKILL)
    wait_until(lambda: not h.is_server_ready(), "not ready once the last worker dies")
    assert not g.is_server_ready() and not h.is_model_ready("qnllm")
    bare_server.worker("w-2")
    wait_until(h.is_server_ready, "ready again when a worker returns")
    x = encodings(2, 8)
    inp = httpclient.InferInput("ENCODING", [2, 768], "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    result = h.infer("qnllm", [inp])
    check_bit_identical(result, x)
    assert engines(result) == ["w-2", "w-2"]


# ---- gRPC ----

def test_grpc_live_ready_and_metadata(server):
    c = grpc_client(server)
    assert c.is_server_live()
    assert c.is_server_ready()
    assert c.is_model_ready("qnllm")
    assert "binary_tensor_data" in c.get_server_metadata().extensions
    model = c.get_model_metadata("qnllm", as_json=True)
    assert model["inputs"] == [{"name": "ENCODING", "datatype": "FP32", "shape": ["-1", "768"]}]
    assert [o["name"] for o in model["outputs"]] == OUTPUTS


@pytest.mark.parametrize("rows", [1, 4])
def test_grpc_infer_is_bit_identical_to_reason_json(server, rows):
    c = grpc_client(server)
    x = encodings(rows, 20 + rows)
    inp = grpcclient.InferInput("ENCODING", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    outputs = [grpcclient.InferRequestedOutput(n) for n in OUTPUTS]
    result = c.infer("qnllm", [inp], outputs=outputs, request_id=f"g-{rows}",
                     parameters={"strategy": "local-first", "no_cache": True})
    assert result.get_response().id == f"g-{rows}"
    check_bit_identical(result, x)


def expect_grpc_error(code, fragment, call):
    with pytest.raises(InferenceServerException) as err:
        call()
    assert code in str(err.value.status()), err.value
    assert fragment in err.value.message(), err.value


def test_grpc_errors_have_their_status_and_name_the_fault(server):
    c = grpc_client(server)

    def infer(x, dtype="FP32", model="qnllm"):
        inp = grpcclient.InferInput("ENCODING", list(x.shape), dtype)
        inp.set_data_from_numpy(x)
        return c.infer(model, [inp])

    good = encodings(1, 2)
    expect_grpc_error("INVALID_ARGUMENT", "[N, 768]", lambda: infer(good[:, :10]))
    expect_grpc_error("INVALID_ARGUMENT", "FP64", lambda: infer(good.astype(np.float64), "FP64"))
    nan = good.copy()
    nan[0, 3] = np.inf
    expect_grpc_error("INVALID_ARGUMENT", "index [0, 3] is inf", lambda: infer(nan))
    expect_grpc_error("NOT_FOUND", "unknown model", lambda: infer(good, model="other"))
    check_bit_identical(infer(good), good)
