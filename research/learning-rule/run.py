"""The `qnllm learn` story (crates/cli/src/learn.rs) with a pluggable §7 rule.

python run.py            -> reproduce today's figures (base rule, split seed 14)
"""
import json
import sys

import numpy as np

import lr
from rules import Rule

STUDENT, TEACHERS = 1, (2, 3, 4)


def acc(rule, C, y):
    return float((rule.predict(C) == y).mean())


def story(make, labels=300, teacher_passes=10, passes=3, split_seed=14,
          policies=("majority", "margin:0.9"), unlabelled=900):
    y, counts, r0 = lr.data()
    lab, unl, held = lr.splits(len(y), split_seed, labels, unlabelled)
    out = {"labels": labels, "teacher_passes": teacher_passes, "split_seed": split_seed}
    teach_models = []
    for s in TEACHERS:
        t = make(r0[s])
        C = counts[s]
        for _ in range(teacher_passes):
            for i in lab:
                t.learn(C[i], y[i])
        teach_models.append(t)
    out["teachers"] = [acc(t, counts[s][held], y[held]) for t, s in zip(teach_models, TEACHERS)]

    def votes_on(idx):
        per = []
        for t, s in zip(teach_models, TEACHERS):
            sc = t.scores(counts[s][idx])
            per.append([(int(np.argmax(row)), lr.confidence(row)) for row in sc])
        return [list(v) for v in zip(*per)]

    hv = votes_on(held)
    co = lr.Coordinator(len(TEACHERS), ("majority", None))
    right = 0
    for i, v in zip(held, hv):
        c, _ = co.step(v)
        right += int(c == y[i])
    out["vote"] = right / len(held)

    uv = votes_on(unl)
    Cs = counts[STUDENT]
    out["before"] = acc(make(r0[STUDENT]), Cs[held], y[held])
    out["policies"] = {}
    for p in policies:
        co = lr.Coordinator(len(TEACHERS), lr.parse_policy(p))
        st = make(r0[STUDENT])
        per, taught = [], []
        for _ in range(passes):
            n = nr = 0
            for i, v in zip(unl, uv):
                c, teach = co.step(v)
                if teach:
                    st.learn(Cs[i], c)
                    n += 1
                    nr += int(c == y[i])
            per.append(acc(st, Cs[held], y[held]))
            taught.append((n, nr))
        out["policies"][p] = {"per_pass": per, "taught": taught}
    st = make(r0[STUDENT])
    per = []
    for _ in range(passes):
        for i in unl:
            st.learn(Cs[i], y[i])
        per.append(acc(st, Cs[held], y[held]))
    out["true"] = per
    return out


def fmt(o, policies=None):
    f = lambda x: f"{100 * x:.1f}"
    lines = [f"L={o['labels']} tp={o['teacher_passes']} seed={o['split_seed']}: teachers "
             + "/".join(f(t) for t in o["teachers"]) + f" vote {f(o['vote'])} before {f(o['before'])}"
             + "  true " + "→".join(f(x) for x in o["true"])]
    for p, r in o["policies"].items():
        lines.append(f"   {p:<14} " + "→".join(f(x) for x in r["per_pass"])
                     + f"  taught {r['taught'][-1][0]} ({r['taught'][-1][1]})")
    return "\n".join(lines)


if __name__ == "__main__":
    base = lambda r: Rule(r)
    o = story(base, 300, 10, policies=("majority", "reliable:0.8", "margin:0.5", "margin:0.9"))
    print(fmt(o))
    o = story(base, 100, 3, policies=("majority", "margin:0.5", "margin:0.9", "reliable:0.95"))
    print(fmt(o))
