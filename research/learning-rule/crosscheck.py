"""Cross-check: the recommended rule written in plain Python on top of tests/spec/check_engine.py's
full network (forward with per-step output neurons) gives the same R, served A and labels as
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
MARGIN, SHIFT = 16, 8


def learn_v2(w, r, a, version, x, label):
    """The proposed §7, literally. r: i16 rows (lists), a: i32 rows (lists). Returns new version."""
    _, score, _, total, count = ce.forward(P, w, r, x)
    other = max((k for k in range(P["labels"]) if k != label), key=lambda k: (score[k], -k))
    if score[label] - score[other] < MARGIN * total:
        for j, c in enumerate(count):
            r[label][j] = max(-32767, min(32767, r[label][j] + c))
            r[other][j] = max(-32767, min(32767, r[other][j] - c))
    s = 8 if version >= 255 else (version + 1).bit_length() - 1
    for k in range(P["labels"]):
        for j in range(P["hidden"]):
            a[k][j] += ((r[k][j] << 8) - a[k][j]) >> s
    return version + 1


def serve(a):
    return [[v >> 8 for v in row] for row in a]


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
