"""Python engines that learn: student replicas beside Rust ones, through a real hub."""

import pytest

import qnllm
from conftest import wait_engines

TEACHERS = ["seed:2", "seed:3", "seed:4"]


def engine_entry(engine, name):
    return next(e for e in engine.get_metrics()["engines"] if e["name"] == name)


@pytest.mark.parametrize("student", ["engines:LearningEngine", "engines:AttributeLearningEngine"])
def test_python_worker_is_a_student_replica_beside_a_rust_one(make_engine, procs, student):
    engine = make_engine(num_local_engines=0, teachers=TEACHERS)
    procs.rust_worker(engine.address, "rust-student")
    procs.python_worker(engine.address, "py-student", engine=student)
    wait_engines(engine, ["rust-student", "py-student"])
    reference = qnllm.SpikingEngine("seed:1")
    x = qnllm.normal_inputs(70, 8)
    for row in x[:4]:
        outcome = engine.coordinate(row, learn=True)
        if outcome["learned"] is not None:
            reference.learn(row, outcome["consensus"])
            assert outcome["learned"]["version"] == reference.model_version
    for row in x[4:]:
        label = (reference.reason(row).label + 1) % 10
        state = engine.learn(row, label)
        want = reference.learn(row, label)
        assert (state["version"], state["digest"]) == (want.model_version, want.model_digest)
    assert reference.model_version >= 4
    py, rust = engine_entry(engine, "py-student"), engine_entry(engine, "rust-student")
    assert py["model_version"] == rust["model_version"] == reference.model_version
    assert py["model_digest"] == rust["model_digest"] == reference.model_digest
    # Both replicas answer from the learned model, bit for bit.
    answered = set()
    for row in x:
        r = engine.reason(row)
        answered.add(r.engine)
        assert r.model_version == reference.model_version
        assert r.result_digest == reference.reason(row).result_digest
    assert answered == {"py-student", "rust-student"}


def test_in_process_python_engine_learns_with_the_local_rust_engine(make_engine):
    from engines import LearningEngine

    engine = make_engine(engines=[LearningEngine()])
    reference = qnllm.SpikingEngine("seed:1")
    x = qnllm.normal_inputs(71, 3)
    for row in x:
        label = (reference.reason(row).label + 1) % 10
        state = engine.learn(row, label)
        want = reference.learn(row, label)
        assert (state["version"], state["digest"]) == (want.model_version, want.model_digest)
    assert engine_entry(engine, "python-0")["model_digest"] == reference.model_digest
    assert engine_entry(engine, "local-0")["model_digest"] == reference.model_digest
    answers = [engine.reason(x[0]) for _ in range(2)]
    assert {a.engine for a in answers} == {"local-0", "python-0"}
    assert {a.result_digest for a in answers} == {reference.reason(x[0]).result_digest}


def test_a_python_worker_that_cannot_learn_is_a_clear_error(make_engine, procs):
    engine = make_engine(num_local_engines=0)
    procs.python_worker(engine.address, "py-no-learn", engine="engines:HonestEngine")
    wait_engines(engine, ["py-no-learn"])
    x = qnllm.normal_inputs(72, 1)[0]
    with pytest.raises(qnllm.QnllmError, match="does not learn: give it a learn"):
        engine.learn(x, 3)
    # It keeps serving, at the model it had.
    r = engine.reason(x)
    assert r.engine == "py-no-learn" and r.model_version == 0


def test_a_python_engine_that_does_not_bump_its_version_is_refused(make_engine, procs):
    engine = make_engine(num_local_engines=0)
    procs.python_worker(engine.address, "py-stuck", engine="engines:StuckLearningEngine")
    wait_engines(engine, ["py-stuck"])
    x = qnllm.normal_inputs(73, 1)[0]
    with pytest.raises(qnllm.QnllmError, match="every update must bump the version"):
        engine.learn(x, 3)
    assert engine.reason(x).model_version == 0
