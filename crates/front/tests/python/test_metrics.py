"""`GET /metrics` after a known load: promtool accepts it, and the counters read back what
was sent (HTTP and gRPC requests by engine and outcome, cache hits and misses, batch sizes)."""

import re
import shutil
import subprocess
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def scrape(server):
    with urllib.request.urlopen(f"http://{server.http}/metrics", timeout=10) as r:
        return r.read().decode()


def sample(text, name, **labels):
    """The value of one sample (labels must match exactly those given)."""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if got == labels:
            return float(m.group(3))
    return None


def test_promtool_accepts_the_metrics(cached_server):
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian package prometheus) is not installed"
    c = httpclient.InferenceServerClient(url=cached_server.http)
    inp = httpclient.InferInput("ENCODING", [1, 768], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 768), np.float32), binary_data=True)
    c.infer("qnllm", [inp])
    text = scrape(cached_server)
    check = subprocess.run([promtool, "check", "metrics"], input=text,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert (check.stdout + check.stderr).strip() == "", check.stdout + check.stderr


def test_counters_read_back_a_known_load(cached_server):
    h = httpclient.InferenceServerClient(url=cached_server.http)
    g = grpcclient.InferenceServerClient(url=cached_server.grpc)
    rng = np.random.default_rng(5)
    distinct = rng.normal(0, 0.1, size=(7, 768)).astype(np.float32)
    for row in distinct:  # 7 misses
        inp = httpclient.InferInput("ENCODING", [1, 768], "FP32")
        inp.set_data_from_numpy(row[None, :], binary_data=True)
        h.infer("qnllm", [inp])
    for _ in range(3):  # 3 hits, over gRPC
        inp = grpcclient.InferInput("ENCODING", [1, 768], "FP32")
        inp.set_data_from_numpy(distinct[:1])
        g.infer("qnllm", [inp])
    batch = httpclient.InferInput("ENCODING", [4, 768], "FP32")  # one batch of 4, not cached
    batch.set_data_from_numpy(distinct[:4], binary_data=True)
    h.infer("qnllm", [batch])
    bad = httpclient.InferInput("ENCODING", [1, 768], "FP64")
    bad.set_data_from_numpy(np.zeros((1, 768), np.float64), binary_data=True)
    with pytest.raises(InferenceServerException):
        h.infer("qnllm", [bad])

    text = scrape(cached_server)
    assert sample(text, "qnllm_front_requests_total", engine="local-0", outcome="ok") == 11
    assert sample(text, "qnllm_front_requests_total", engine="none", outcome="bad_request") == 1
    assert sample(text, "qnllm_cache_hits_total") == 3
    assert sample(text, "qnllm_cache_misses_total") == 7
    assert sample(text, "qnllm_cache_entries") == 7
    assert sample(text, "qnllm_router_batches_total") == 1
    assert sample(text, "qnllm_router_batch_items_total") == 4
    assert sample(text, "qnllm_front_batch_size_count") == 11  # the bad request never had a shape
    assert sample(text, "qnllm_front_batch_size_sum") == 7 + 3 + 4
    assert sample(text, "qnllm_front_request_duration_seconds_count", protocol="http") == 9
    assert sample(text, "qnllm_front_request_duration_seconds_count", protocol="grpc") == 3
    assert sample(text, "qnllm_engine_requests_total", engine="local-0", kind="local") == 8
    # As Triton counts: the batch of 4 is one request, 4 inferences and one execution; the
    # 3 cache hits are requests but neither inferences nor executions.
    assert sample(text, "qnllm_front_inferences_total", engine="local-0") == 7 + 4
    assert sample(text, "qnllm_front_executions_total", engine="local-0") == 7 + 1


def test_the_statistics_extension_counts_a_batch_as_b_inferences_and_one_execution(cached_server):
    h = httpclient.InferenceServerClient(url=cached_server.http)
    g = grpcclient.InferenceServerClient(url=cached_server.grpc)
    batch = httpclient.InferInput("ENCODING", [6, 768], "FP32")
    batch.set_data_from_numpy(np.random.default_rng(8).normal(0, 0.1, (6, 768)).astype(np.float32),
                              binary_data=True)
    h.infer("qnllm", [batch])
    one = grpcclient.InferInput("ENCODING", [1, 768], "FP32")
    one.set_data_from_numpy(np.zeros((1, 768), np.float32))
    g.infer("qnllm", [one])
    g.infer("qnllm", [one])  # a cache hit
    bad = httpclient.InferInput("ENCODING", [1, 768], "FP64")
    bad.set_data_from_numpy(np.zeros((1, 768), np.float64), binary_data=True)
    with pytest.raises(InferenceServerException):
        h.infer("qnllm", [bad])

    stats = h.get_inference_statistics("qnllm")
    [model] = stats["model_stats"]
    assert model["name"] == "qnllm"
    assert model["inference_count"] == 6 + 1
    assert model["execution_count"] == 1 + 1
    assert model["inference_stats"]["success"]["count"] == 3
    assert model["inference_stats"]["fail"]["count"] == 1
    assert model["inference_stats"]["cache_hit"]["count"] == 1
    assert model["last_inference"] > 0
    assert h.get_inference_statistics()["model_stats"] == stats["model_stats"]
    with pytest.raises(InferenceServerException):
        h.get_inference_statistics("other")

    [over_grpc] = g.get_inference_statistics("qnllm").model_stats
    assert over_grpc.name == "qnllm" and over_grpc.version == model["version"]
    assert over_grpc.inference_count == 6 + 1
    assert over_grpc.execution_count == 1 + 1
    assert over_grpc.inference_stats.success.count == 3
    assert over_grpc.inference_stats.success.ns == model["inference_stats"]["success"]["ns"]
    assert over_grpc.inference_stats.cache_hit.count == 1
    with pytest.raises(InferenceServerException):
        g.get_inference_statistics("other")
