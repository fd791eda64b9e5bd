"""Candidate §7 learning rules. All integer; R clamped to ±32767 after every update.

A rule object holds R (int64 array, labels x hidden; values always within ±32767 so it is
the i16 of the spec) and, for averaged rules, the running sum. `learn(c, label)` applies one
step from the hidden counts `c` (int64, 0..16); `infer_weights()` gives the matrix inference
uses (scores = W @ c, label = argmax, lowest index on ties).
"""
import numpy as np

CLAMP = 32767


def runner_up(s, label):
    """Highest score among k != label, lowest index on ties."""
    t = s.copy()
    t[label] = np.iinfo(np.int64).min
    return int(np.argmax(t))


class Rule:
    name = "base"

    def __init__(self, r0, shift=0, theta=0, theta_mode="abs", rows="one", avg=False, pa=None,
                 center=False, ema_k=8, warm=False):
        self.warm = warm
        self.R0 = r0.copy()
        self.ema_k = ema_k
        self.R = r0.copy()
        self.shift = shift            # update amount c << shift
        self.theta = theta            # margin (0: update only when wrong)
        self.theta_mode = theta_mode  # "abs": theta score units; "tot": theta * total spikes
        self.rows = rows              # "one": runner-up only; "all": every row violating the margin
        self.avg = avg                # averaged readout for inference
        self.pa = pa                  # passive-aggressive cap (None = fixed step)
        self.center = center          # update by c - mean(c) (rounded down), integer
        self.S = np.zeros_like(self.R)  # running sum of R after each step (averaged rule)
        self.n = 0

    def _clamp(self):
        np.clip(self.R, -CLAMP, CLAMP, out=self.R)

    def learn(self, c, label):
        s = self.R @ c
        tot = int(c.sum())
        theta = self.theta * tot if self.theta_mode == "tot" else self.theta
        ru = runner_up(s, label)
        pred = int(np.argmax(s))
        if self.theta == 0:
            bad = [pred] if pred != label else []
        elif self.rows == "one":
            bad = [ru] if s[label] - s[ru] < theta or pred != label else []
        else:  # all rows within the margin of the label (or above it)
            bad = [k for k in range(len(s)) if k != label and s[label] - s[k] < theta]
        if bad:
            d = c
            if self.center:
                d = (c * len(c) - tot) >> 0  # c*hidden - total: centred, scaled by hidden
                d = d >> 9  # back to count scale (floor); hidden = 512
            step = d << self.shift
            if self.pa is not None:
                # smallest integer multiple of c that would fix the worst violation, capped
                gap = int(s[bad[0]] - s[label]) + theta if self.rows == "one" else \
                    int(max(s[k] for k in bad) - s[label]) + theta
                nrm = 2 * int(c @ c)
                tau = 1 if nrm == 0 else min(self.pa, max(1, gap // nrm + 1))
                step = c * tau
            if self.rows == "all":
                self.R[label] += step * len(bad)
                for k in bad:
                    self.R[k] -= step
            else:
                self.R[label] += step
                self.R[bad[0]] -= step
            self._clamp()
        if self.avg == "ema":
            if self.n == 0:
                self.S = self.R0 << 8
            k = self.ema_k
            if self.warm:  # shift min(k, floor(log2(n))) with n = steps so far, this one included
                k = min(k, (self.n + 1).bit_length() - 1)
            self.S += ((self.R << 8) - self.S) >> k
            self.n += 1
        elif self.avg:
            self.S += self.R
            self.n += 1

    def infer_weights(self):
        if self.avg == "ema" and self.n > 0:
            return self.S >> 8
        if self.avg == "div" and self.n > 0:
            return self.S // self.n
        if self.avg and self.n > 0:
            return self.S
        return self.R

    def predict(self, C):
        return np.argmax(C @ self.infer_weights().T, axis=1)

    def scores(self, C):
        return C @ self.infer_weights().T
