"""Cross-check: the rule of docs/engine.md §7 as tests/spec/check_engine.py implements it (its
full network, forward with per-step output neurons) gives the same R, served A and labels as
the numpy prototype (which uses score = R @ count)."""
import sys
from pathlib import Path
import numpy as np
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "spec"))
import check_engine as ce
import lr
from rules import Rule

P = dict(inputs=64, hidden=512, steps=16, labels=10, hidden_leak_shift=2, hidden_threshold=32768,
         output_leak_shift=2, output_threshold=1024)


def learn_v2(w, r, a, version, x, label):
    """docs/engine.md §7, as tests/spec/check_engine.py implements it. Returns the new version."""
    return ce.learn(P, w, r, a, version, x, label)


def serve(a):
    return ce.served(a)


y, pix = lr.load_digits()
scale = np.float32(np.float32(0.99) / np.float32(16.0))
X = (pix.astype(np.float32) * scale)
lab, _, held = lr.splits(len(y), 14, 300, 900)
w, r = ce.model(2, P)
a = [[v << 8 for v in row] for row in r]
proto = Rule(lr.model(2)[1], avg="ema", ema_k=8, warm=True, theta=16, theta_mode="tot")
_, counts, _ = lr.data()
N = int(sys.argv[1]) if len(sys.argv) > 1 else 150
v = 0
for i in lab[:N]:
    x = [float(t) for t in X[i]]
    v = learn_v2(w, r, a, v, x, int(y[i]))
    proto.learn(counts[2][i], y[i])
assert np.array_equal(np.array(r), proto.R), "R differs"
assert np.array_equal(np.array(a), proto.S), "A differs"
served = serve(a)
for i in held[:20]:
    x = [float(t) for t in X[i]]
    label, score, *_ = ce.forward(P, w, served, x)
    assert label == int(np.argmax(proto.scores(counts[2][i:i + 1])[0]))
    assert score == list(proto.scores(counts[2][i:i + 1])[0]), "score identity"
print(f"ok: {N} learn steps, R, A, and 20 held-out labels/scores identical; version {v}")
