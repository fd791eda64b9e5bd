"""Prototype of docs/engine.md (inputs=64) on the digits, for comparing §7 learning rules.

Key fact used: the hidden layer does not depend on R, so score[k] = sum_j R[k][j]*count[j]
exactly (the per-step readout currents sum to it); the label is argmax(R @ count), lowest index
on ties. Hidden counts are precomputed once per model seed. Everything is integer except the
confidence (f32, as the spec) and the coordinator's f64 vote weights (as crates/router).
"""
import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]  # the repository
sys.path.insert(0, str(ROOT / "tests" / "spec"))
from check_engine import SplitMix64  # noqa: E402  (the spec's own generator)

HIDDEN, INPUTS, STEPS, LABELS = 512, 64, 16, 10
CLAMP = 32767


def model(seed):
    rng = SplitMix64(seed)
    w = np.array([[rng.next_i8() for _ in range(INPUTS)] for _ in range(HIDDEN)], dtype=np.int64)
    r = np.zeros((LABELS, HIDDEN), dtype=np.int64)
    for k in range(LABELS):
        for m in range(HIDDEN // 2):
            v = rng.next_i8()
            r[k, 2 * m], r[k, 2 * m + 1] = v, -v
    return w, r


def load_digits():
    alphabet = "0123456789abcdefg"
    labels, pix = [], []
    for line in (ROOT / "testdata/digits/digits.txt").read_text().splitlines():
        lab, p = line.split(" ")
        labels.append(int(lab))
        pix.append([alphabet.index(c) for c in p])
    return np.array(labels), np.array(pix, dtype=np.uint8)


def encode(pix):
    scale = np.float32(np.float32(0.99) / np.float32(16.0))
    x = pix.astype(np.float32) * scale
    return np.clip(np.rint(x * np.float32(128)), -127, 127).astype(np.int64)


def hidden_counts(w, q):
    cur = q @ w.T  # (n, hidden)
    v = np.zeros_like(cur)
    count = np.zeros_like(cur)
    for _ in range(STEPS):
        v = v - (v >> 2) + cur
        s = v >= 32768
        v[s] = 0
        count += s
    return count


def splits(n, seed, labelled, unlabelled):
    order = list(range(n))
    rng = SplitMix64(seed)
    for i in range(n - 1, 0, -1):
        j = rng.next() % (i + 1)
        order[i], order[j] = order[j], order[i]
    labelled = min(labelled, n)
    unlabelled = min(unlabelled, n - labelled)
    return order[:labelled], order[labelled:labelled + unlabelled], order[labelled + unlabelled:]


def confidence(score):
    label = int(np.argmax(score))
    top, low = int(score[label]), int(score.min())
    if top == low:
        return float(np.float32(1.0 / len(score)))
    tot = sum(1 << (8 - (8 * (top - int(s))) // (top - low)) for s in score)
    return float(np.float32(256 / tot))


# ---------------------------------------------------------------- coordinator (crates/router)
def decide(policy, ballots):
    """ballots: list of (label, confidence, reliability). Returns (consensus, teach)."""
    kind, arg = policy
    first = ballots[0][0]
    unanimous = all(b[0] == first for b in ballots)

    def weight(b):
        if kind in ("majority", "unanimous"):
            return b[1] * b[2]
        r = min(max(b[2], 1e-6), 1.0 - 1e-6)
        return b[1] * max(math.log(r / (1.0 - r)), 0.0)

    def weighted(wf):
        totals = []
        for b in ballots:
            w = wf(b)
            for t in totals:
                if t[0] == b[0]:
                    t[1] += w
                    break
            else:
                totals.append([b[0], w])
        totals.sort(key=lambda t: (-t[1], t[0]))
        total = 0.0
        for t in totals:
            total += t[1]
        if total <= 0.0:
            return None
        top = totals[0][1]
        second = totals[1][1] if len(totals) > 1 else 0.0
        return totals[0][0], top / total, (top - second) / total

    if unanimous:
        tally = (first, 1.0, 1.0)
    else:
        tally = weighted(weight)
        if tally is None:
            tally = weighted(lambda b: b[1]) or (first, 0.0, 0.0)
    consensus, share, margin = tally
    if kind == "majority":
        teach = True
    elif kind == "unanimous":
        teach = unanimous
    elif kind in ("reliable", "peer"):
        teach = share >= arg
    elif kind == "margin":
        teach = margin > arg
    else:
        raise ValueError(kind)
    return consensus, teach


def plurality(labels):
    counts = {}
    for l in labels:
        counts[l] = counts.get(l, 0) + 1
    if not counts:
        return None
    best = max(counts.values())
    tops = [l for l, c in counts.items() if c == best]
    return tops[0] if len(tops) == 1 else None


class Coordinator:
    def __init__(self, n, policy):
        self.asked = [0] * n
        self.agreed = [0] * n
        self.pasked = [0] * n
        self.pagreed = [0] * n
        self.policy = policy

    def step(self, votes):
        """votes: list of (label, confidence) per teacher in order."""
        peers = self.policy[0] == "peer"
        ballots = []
        for i, (l, c) in enumerate(votes):
            a, g = (self.pasked[i], self.pagreed[i]) if peers else (self.asked[i], self.agreed[i])
            ballots.append((l, c, (g + 1.0) / (a + 2.0)))
        consensus, teach = decide(self.policy, ballots)
        for i, (l, _) in enumerate(votes):
            self.asked[i] += 1
            self.agreed[i] += int(l == consensus)
            p = plurality([v[0] for j, v in enumerate(votes) if j != i])
            if p is not None:
                self.pasked[i] += 1
                self.pagreed[i] += int(l == p)
        return consensus, teach


def parse_policy(text):
    if text in ("majority", "unanimous"):
        return (text, None)
    k, v = text.split(":")
    return (k, float(v))


# ---------------------------------------------------------------- data set, cached
_CACHE = {}


def data():
    if "d" not in _CACHE:
        y, pix = load_digits()
        q = encode(pix)
        z = np.load(Path(__file__).with_name("counts.npz")) if Path(__file__).with_name("counts.npz").exists() else None
        counts = {s: (z[str(s)] if z is not None else hidden_counts(model(s)[0], q)) for s in (1, 2, 3, 4)}
        r0 = {s: model(s)[1] for s in (1, 2, 3, 4)}
        _CACHE["d"] = (y, counts, r0)
    return _CACHE["d"]
