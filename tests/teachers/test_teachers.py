"""Teachers in three languages in one `coordinate`: a real `qnllm serve` hub whose students are
its local engine and a `qnllm worker` process, and three teacher worker processes, one Rust
(`qnllm worker --teacher`), one Python (`python -m qnllm worker --teacher`, computing the
engine in pure Python) and one C++ (`qnllm-cpp-worker --teacher`). A client coordinates K
encodings with learning on; every step's votes, consensus and agreement must be what a
reference computes from each teacher model's own answer, the teachers are asked exactly once
per step and never routed a `reason`, the students end bit-identical to an engine taught the
same labels in process, and killing the C++ teacher half-way leaves the other two voting."""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import pytest
import qnllm

from conftest import WAIT, Proc, Procs
from spec_teacher import spec_digest
from wire import INVALID_INPUT, NO_ENGINE_AVAILABLE, RemoteError, Wire

STEPS = 30  # K coordinations in all
KILL_AT = 18  # the C++ teacher is killed after this many
REASONS = 12  # plain `reason`s sent before and after coordinating


def engine(listing: List[dict], name: str) -> dict:
    for e in listing:
        if e["name"] == name:
            return e
    raise AssertionError(f"no engine {name!r} in {listing}")


def wait_for(client: Wire, events: Wire, done, what: str, watch: Sequence[Proc] = ()) -> List[dict]:
    """Re-reads the engine listing after every `engines` event until `done(listing)`; fails
    if a process in `watch` exits meanwhile or no event comes for WAIT seconds."""
    while True:
        listing = client.engines()
        if done(listing):
            return listing
        for proc in watch:
            if not proc.alive():
                raise AssertionError(f"{proc.name} exited ({proc.popen.returncode}) waiting for {what}: {proc.stderr()}")
        try:
            events.next_event()
        except OSError as e:
            raise AssertionError(f"no engines event in {WAIT}s waiting for {what}: {listing}") from e


def majority(votes: Sequence[Tuple[int, float, float]]) -> Tuple[int, float]:
    """The hub's default policy (`majority`, docs/learning.md), from (label, confidence,
    reliability) votes: unanimous → (label, 1.0); else each label weighs the sum of its
    votes' confidence × reliability (in vote order), the heaviest wins, ties to the lowest
    label, and the agreement is its share of the total (summed heaviest first)."""
    first = votes[0][0]
    if all(label == first for label, _, _ in votes):
        return first, 1.0

    def tally(weigh) -> Tuple[int, float]:
        totals: Dict[int, float] = {}
        for vote in votes:
            totals[vote[0]] = totals.get(vote[0], 0.0) + weigh(vote)
        ranked = sorted(totals.items(), key=lambda lw: (-lw[1], lw[0]))
        total = 0.0
        for _, w in ranked:
            total += w
        if total <= 0.0:
            return -1, 0.0
        return ranked[0][0], ranked[0][1] / total

    label, share = tally(lambda v: v[1] * v[2])
    if label < 0:
        label, share = tally(lambda v: v[1])
    return (first, 0.0) if label < 0 else (label, share)


class Reference:
    """What the hub should answer, computed in process: each teacher's model answers the
    encoding itself (Rust engine of the same seed), reliabilities count agreement with the
    consensus, and a student engine learns every taught consensus."""

    def __init__(self, teachers: Dict[str, str]) -> None:
        self.models = {name: qnllm.SpikingEngine(model) for name, model in teachers.items()}
        self.asked = {name: 0 for name in teachers}
        self.agreed = {name: 0 for name in teachers}
        self.student = qnllm.SpikingEngine("seed:1")
        self.taught: List[int] = []

    def step(self, teachers: Sequence[str], x) -> dict:
        votes = []
        for name in teachers:
            answer = self.models[name].reason(x)
            reliability = (self.agreed[name] + 1) / (self.asked[name] + 2)
            votes.append({"engine": name, "label": answer.label, "confidence": answer.confidence,
                          "reliability": reliability})
        consensus, agreement = majority([(v["label"], v["confidence"], v["reliability"]) for v in votes])
        for v in votes:
            self.asked[v["engine"]] += 1
            self.agreed[v["engine"]] += int(v["label"] == consensus)
        return {"consensus": consensus, "agreement": agreement, "learned": True, "teachers": votes}

    def learn(self, x, label: int) -> None:
        self.student.learn(x, label)
        self.taught.append(label)


def check_students(listing: List[dict], ref: Reference, names: Sequence[str]) -> None:
    students = [e for e in listing if e["pool"] == "serving"]
    assert sorted(e["name"] for e in students) == sorted(names), listing
    for e in students:
        assert (e["model_version"], e["model_digest"]) == (ref.student.model_version, ref.student.model_digest), (
            f"student {e['name']} is not the reference taught {len(ref.taught)} labels: {e}")


@pytest.mark.parametrize("seeds", [(2, 3, 4), (5, 5, 5)], ids=["three-models", "one-model"])
def test_rust_python_and_cpp_teachers_vote_in_one_coordinate(procs: Procs, qnllm_bin, cpp_worker_bin, seeds) -> None:
    rust_seed, python_seed, cpp_seed = seeds
    hub = procs.spawn("hub", [qnllm_bin, "serve", "--listen", "127.0.0.1:0", "--local", "1", "--model", "seed:1"])
    addr = hub.wait_line("qnllm hub listening on tcp ")
    client = Wire(addr, name="teachers-test", timeout=WAIT)
    events = Wire(addr, name="teachers-events", timeout=WAIT)
    events.subscribe(["engines"])
    xs = qnllm.normal_inputs(31, STEPS, 768)

    # No teacher yet: nothing to coordinate, and the caller is told so.
    with pytest.raises(RemoteError) as none:
        client.coordinate(xs[0].tolist())
    assert none.value.code == NO_ENGINE_AVAILABLE, none.value

    student = procs.spawn("s-rust", [qnllm_bin, "worker", "--connect", addr, "--name", "s-rust", "--model", "seed:1"])
    wait_for(client, events, lambda l: any(e["name"] == "s-rust" for e in l), "the student worker", [student])

    # The teachers join one at a time, so the coordinator asks them in this order.
    order = ["t-rust", "t-python", "t-cpp"]
    t_rust = procs.spawn("t-rust", [qnllm_bin, "worker", "--teacher", "--connect", addr, "--name", "t-rust",
                                    "--model", f"seed:{rust_seed}"])
    wait_for(client, events, lambda l: any(e["name"] == "t-rust" for e in l), "t-rust", [t_rust])
    t_python = procs.python_worker("t-python", "--teacher", "--engine", "spec_teacher:SpecTeacher",
                                   "--connect", addr, "--name", "t-python",
                                   env={"QNLLM_SPEC_SEED": str(python_seed)})
    wait_for(client, events, lambda l: any(e["name"] == "t-python" for e in l), "t-python", [t_python])
    t_cpp = procs.spawn("t-cpp", [cpp_worker_bin, "--teacher", "--connect", addr, "--name", "t-cpp",
                                  "--model", f"seed:{cpp_seed}", "--quiet"],
                        env={"ASAN_OPTIONS": "detect_leaks=0"})
    listing = wait_for(client, events, lambda l: any(e["name"] == "t-cpp" for e in l), "t-cpp", [t_cpp])
    seed_of = {"t-rust": rust_seed, "t-python": python_seed, "t-cpp": cpp_seed}
    for name in order:
        e = engine(listing, name)
        assert e["pool"] == "teacher", f"{name} did not register as a teacher: {listing}"
        assert e["served"] == 0, listing
        assert e["model_digest"] == qnllm.SpikingEngine(f"seed:{seed_of[name]}").model_digest, listing
    # The pure-Python teacher's model is the Rust engine's, by its own digest.
    assert spec_digest(python_seed) == engine(listing, "t-python")["model_digest"]
    students = sorted(e["name"] for e in listing if e["pool"] == "serving")
    assert len(students) == 2 and "s-rust" in students, listing
    check_students(listing, Reference({}), students)

    # A plain `reason` reaches the students only.
    for i in range(REASONS):
        client.reason(xs[i].tolist())
    listing = client.engines()
    assert [engine(listing, n)["served"] for n in order] == [0, 0, 0], listing

    ref = Reference({name: f"seed:{seed_of[name]}" for name in order})
    disagreements = 0

    def coordinate_step(i: int, asked: List[str]) -> None:
        nonlocal disagreements
        x = xs[i]
        got = client.coordinate(x.tolist())
        want = ref.step(asked, x)
        assert [t["engine"] for t in got["teachers"]] == asked, f"step {i}: {got}"
        for g, w in zip(got["teachers"], want["teachers"]):
            assert (g["label"], g["confidence"]) == (w["label"], w["confidence"]), (
                f"step {i}: {g['engine']} answered unlike its model seed:{seed_of[g['engine']]}: {g} != {w}")
            assert g["reliability"] == w["reliability"], f"step {i}: {g} != {w}"
        assert (got["consensus"], got["agreement"], got["learned"]) == (
            want["consensus"], want["agreement"], want["learned"]), f"step {i}: {got} != {want}"
        disagreements += len({t["label"] for t in got["teachers"]}) > 1
        ref.learn(x, got["consensus"])

    for i in range(KILL_AT):
        coordinate_step(i, order)
    listing = client.engines()
    assert [engine(listing, n)["served"] for n in order] == [KILL_AT] * 3, f"one answer per coordinate: {listing}"
    assert [engine(listing, n)["model_version"] for n in order] == [0, 0, 0], "a teacher does not learn"
    check_students(listing, ref, students)
    if len(set(seeds)) == 1:
        assert disagreements == 0, "three implementations of one model disagreed"
    assert ref.student.model_version == KILL_AT

    # The C++ teacher dies mid-way: the hub notices, and the other two go on voting.
    assert t_cpp.kill() == -9
    wait_for(client, events, lambda l: all(e["name"] != "t-cpp" for e in l), "t-cpp to leave")
    for i in range(KILL_AT, STEPS):
        coordinate_step(i, order[:2])
    if len(set(seeds)) > 1:
        assert disagreements > 0, "the teachers never disagreed: the vote was not tested"

    for i in range(REASONS):
        client.reason(xs[i].tolist())
    listing = client.engines()
    assert [engine(listing, n)["served"] for n in order[:2]] == [STEPS] * 2, listing
    check_students(listing, ref, students)
    assert ref.student.model_version == STEPS
    # The students answer as the reference does.
    for x in xs[:4]:
        assert client.reason(x.tolist()) == ref.student.reason(x).label

    # A bad encoding is the caller's error; the teachers and the hub keep serving.
    with pytest.raises(RemoteError) as bad:
        client.coordinate(xs[0][:767].tolist())
    assert bad.value.code == INVALID_INPUT, bad.value
    coordinate_step(0, order[:2])

    # With every teacher gone there is nothing to coordinate, and `reason` still works.
    t_rust.kill()
    t_python.kill()
    wait_for(client, events, lambda l: not any(e["pool"] == "teacher" for e in l), "the teachers to leave")
    with pytest.raises(RemoteError) as gone:
        client.coordinate(xs[1].tolist())
    assert gone.value.code == NO_ENGINE_AVAILABLE, gone.value
    client.reason(xs[1].tolist())
    client.close()
    events.close()
