#!/usr/bin/env python3
"""An independent, pure-Python implementation of docs/engine.md, checked against the golden
vectors in testdata/engine/golden.json. It shows the spec is complete enough to match the Rust
engine bit for bit. Standard library only; run: python3 tests/spec/check_engine.py"""

import hashlib
import json
import math
import struct
import sys
from pathlib import Path

M64 = (1 << 64) - 1


class SplitMix64:
    def __init__(self, seed):
        self.s = seed & M64

    def next(self):
        self.s = (self.s + 0x9E3779B97F4A7C15) & M64
        z = self.s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return z ^ (z >> 31)

    def next_i8(self):
        b = self.next() >> 56
        return b - 256 if b >= 128 else b


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def f32_bits(x):
    return struct.unpack("<I", struct.pack("<f", x))[0]


def inputs(seed, dim):
    rng = SplitMix64(seed)
    while True:
        out = []
        for _ in range(dim):
            s = sum((rng.next() >> 40) / float(1 << 24) for _ in range(12))
            out.append(f32((s - 6.0) * 0.1))
        yield out


def model(seed, p):
    rng = SplitMix64(seed)
    w = [[rng.next_i8() for _ in range(p["inputs"])] for _ in range(p["hidden"])]
    r = []
    for _ in range(p["labels"]):
        row = []
        for _ in range(p["hidden"] // 2):
            v = rng.next_i8()
            row += [v, -v]
        r.append(row)
    return w, r


def quantise(x):
    return max(-127, min(127, round(f32(x * 128.0))))  # Python's round() is half-to-even


def forward(p, w, r, x):
    q = [quantise(v) for v in x]
    current = [sum(a * b for a, b in zip(row, q)) for row in w]
    hidden, labels = p["hidden"], p["labels"]
    v, u = [0] * hidden, [0] * labels
    count, score, label_spikes, total = [0] * hidden, [0] * labels, [0] * labels, 0
    for _ in range(p["steps"]):
        s = [0] * hidden
        for j in range(hidden):
            v[j] = v[j] - (v[j] >> p["hidden_leak_shift"]) + current[j]
            if v[j] >= p["hidden_threshold"]:
                s[j], v[j] = 1, 0
                count[j] += 1
                total += 1
        for k in range(labels):
            o = sum(r[k][j] for j in range(hidden) if s[j])
            score[k] += o
            u[k] = u[k] - (u[k] >> p["output_leak_shift"]) + o
            if u[k] >= p["output_threshold"]:
                u[k] = 0
                label_spikes[k] += 1
    label = max(range(labels), key=lambda k: (score[k], -k))
    return label, score, label_spikes, total, count


def confidence(score, label):
    top, low = score[label], min(score)
    if top == low:
        return f32(1.0 / len(score))
    total = sum(1 << (8 - (8 * (top - s)) // (top - low)) for s in score)
    return f32(256 / total)


def result_digest(label, score, label_spikes, total):
    h = hashlib.sha256(b"qnllm-result-v1\0")
    h.update(struct.pack("<III", label, total, len(score)))
    h.update(struct.pack(f"<{len(score)}i", *score))
    h.update(struct.pack(f"<{len(label_spikes)}I", *label_spikes))
    return h.hexdigest()


def served(a):
    """S[k][j] = A[k][j] >> 8: the readout reasoning uses (docs/engine.md §2)."""
    return [[v >> 8 for v in row] for row in a]


def model_digest(p, w, r, a, version):
    h = hashlib.sha256(b"qnllm-model-v2\0")
    h.update(struct.pack("<5I", p["inputs"], p["hidden"], p["steps"], p["labels"], p["hidden_leak_shift"]))
    h.update(struct.pack("<iIiQ", p["hidden_threshold"], p["output_leak_shift"], p["output_threshold"], version))
    h.update(hashlib.sha256(bytes(b & 0xFF for row in w for b in row)).digest())
    h.update(b"".join(struct.pack("<h", v) for row in r for v in row))
    h.update(b"".join(struct.pack("<i", v) for row in a for v in row))
    return h.hexdigest()


MARGIN = 16  # per hidden spike


def learn(p, w, r, a, version, x, label):
    """One step of docs/engine.md §7, in place on R and A; returns the new version."""
    _, _, _, total, count = forward(p, w, r, x)  # the hidden layer does not depend on the readout
    g = [sum(rk * c for rk, c in zip(row, count)) for row in r]
    rival = max((k for k in range(p["labels"]) if k != label), key=lambda k: (g[k], -k))
    if g[label] - g[rival] < MARGIN * total:
        for j, c in enumerate(count):
            r[label][j] = max(-32767, min(32767, r[label][j] + c))
            r[rival][j] = max(-32767, min(32767, r[rival][j] - c))
    shift = 8 if version >= 255 else (version + 1).bit_length() - 1
    for k in range(p["labels"]):
        for j in range(p["hidden"]):
            a[k][j] += ((r[k][j] << 8) - a[k][j]) >> shift
    return version + 1


def main():
    golden = json.loads((Path(__file__).resolve().parents[2] / "testdata/engine/golden.json").read_text())
    failures = 0
    for case in golden["cases"]:
        p = golden["small_params" if case["params"] == "small" else "default_params"]
        w, r = model(case["model_seed"], p)
        a = [[v << 8 for v in row] for row in r]  # A = R · 256 at version 0
        version = 0
        for step, x in zip(range(case["learn_steps"]), inputs(case["input_seed"] + 1000, p["inputs"])):
            version = learn(p, w, r, a, version, x, step % p["labels"])
        gen = inputs(case["input_seed"], p["inputs"])
        for _ in range(case["input_index"]):
            next(gen)
        x = next(gen)
        label, score, label_spikes, total, _ = forward(p, w, served(a), x)
        got = {
            "first_inputs": [f32_bits(v) for v in x[:4]],
            "label": label,
            "scores": score,
            "label_spikes": label_spikes,
            "total_spikes": total,
            "confidence_bits": f32_bits(confidence(score, label)),
            "model_version": version,
            "model_digest": model_digest(p, w, r, a, version),
            "result_digest": result_digest(label, score, label_spikes, total),
        }
        bad = [k for k, v in got.items() if case[k] != v]
        name = f"model seed {case['model_seed']} ({case['params']}), input {case['input_seed']}#{case['input_index']}, {case['learn_steps']} learn steps"
        if bad:
            failures += 1
            print(f"FAIL {name}: {', '.join(bad)} differ")
        else:
            print(f"ok   {name}")
    passed = len(golden["cases"]) - failures
    print(f"{passed} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
