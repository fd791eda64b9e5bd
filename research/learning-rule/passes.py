"""More student passes (the CLI's --passes) for a few rules: does the student reach the vote?"""
import json, os, sys, time
from rules import Rule
from run import story, fmt
from sweep import CANDS
P = int(os.environ.get("P", "10"))
seeds = [int(x) for x in os.environ.get("SEEDS", "14").split(",")]
settings = [(300, 10)] if os.environ.get("ONLY300") else [(300, 10), (100, 3)]
for name in sys.argv[1:]:
    kw = CANDS[name]
    for L, tp in settings:
        for seed in seeds:
            o = story(lambda r: Rule(r, **kw), L, tp, passes=P, split_seed=seed,
                      policies=("majority", "margin:0.5", "margin:0.9", "reliable:0.8", "reliable:0.95"))
            o["cand"] = name
            print(f"## {name}\n" + fmt(o), flush=True)
            with open(f"results_p{P}.jsonl", "a") as f:
                f.write(json.dumps(o) + "\n")
