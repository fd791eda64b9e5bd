"""Python engines the tests serve, in process and as worker processes."""

import os

import numpy as np

import qnllm


class HonestEngine:
    """The reference model computed through qnllm.SpikingEngine: same outputs, same digest."""

    model = "seed:1"

    def __init__(self):
        self.inner = qnllm.SpikingEngine("seed:1")

    def reason(self, encoding):
        return self.inner.reason(encoding)


class LyingEngine(HonestEngine):
    """Claims the reference model but moves every answer to the next label, consistently
    (scores and label spikes swapped with it), so only a vote can catch it."""

    def reason(self, encoding):
        r = self.inner.reason(encoding)
        other = (r.label + 1) % 10
        scores, spikes = list(r.scores), list(r.label_spikes)
        scores[r.label], scores[other] = scores[other], scores[r.label]
        spikes[r.label], spikes[other] = spikes[other], spikes[r.label]
        return (other, scores, r.total_spikes, spikes)


class TupleEngine:
    """The plain form: ``(label, scores)`` from its own arithmetic."""

    labels = 4

    def reason(self, encoding):
        x = np.asarray(encoding)
        scores = [int(v) for v in np.round(x[:4] * 1000)]
        return int(np.argmax(scores)), scores


class FlakyEngine(HonestEngine):
    """Raises on encodings whose first value is negative; answers the rest."""

    def reason(self, encoding):
        if encoding[0] < 0:
            raise ValueError("refusing a negative first value")
        return super().reason(encoding)


class PidEngine(HonestEngine):
    """Honest, named after its process so tests can tell workers apart."""

    @property
    def name(self):
        return f"py-worker-{os.getpid()}"


class LearningEngine(HonestEngine):
    """A student replica: learns through the reference engine and returns its report
    (a ``qnllm.Learned``, with the new model version and digest)."""

    def learn(self, encoding, label):
        return self.inner.learn(encoding, label)


class AttributeLearningEngine(HonestEngine):
    """Learns and returns nothing: its own ``model_version`` and ``model_digest`` say
    where its model is."""

    def learn(self, encoding, label):
        self.inner.learn(encoding, label)

    @property
    def model_version(self):
        return self.inner.model_version

    @property
    def model_digest(self):
        return self.inner.model_digest


class StuckLearningEngine(HonestEngine):
    """Claims to learn but reports the version it had: a replica that would drift."""

    def learn(self, encoding, label):
        return (0, self.inner.model_digest)
