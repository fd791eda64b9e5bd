"""Sweep candidate rules over the two settings; one JSON line per (candidate, setting)."""
import json
import sys
import time

from rules import Rule
from run import story, fmt

POL = ("majority", "margin:0.5", "margin:0.9", "reliable:0.8", "reliable:0.95")

CANDS = {
    "base": dict(),
    "shift1": dict(shift=1),
    "shift2": dict(shift=2),
    "shift3": dict(shift=3),
    "center": dict(center=True),
    "avg": dict(avg=True),
    "mtot1": dict(theta=1, theta_mode="tot"),
    "mtot4": dict(theta=4, theta_mode="tot"),
    "mtot16": dict(theta=16, theta_mode="tot"),
    "mtot64": dict(theta=64, theta_mode="tot"),
    "mtot16_all": dict(theta=16, theta_mode="tot", rows="all"),
    "all0": dict(theta=1, theta_mode="abs", rows="all"),
    "avg_mtot16": dict(theta=16, theta_mode="tot", avg=True),
    "avg_mtot4": dict(theta=4, theta_mode="tot", avg=True),
    "pa8": dict(pa=8),
    "ema8w_mtot16_all": dict(avg="ema", ema_k=8, warm=True, theta=16, theta_mode="tot", rows="all"),
    "ema8w_mtot4": dict(avg="ema", ema_k=8, warm=True, theta=4, theta_mode="tot"),
    "ema8w_mtot64": dict(avg="ema", ema_k=8, warm=True, theta=64, theta_mode="tot"),
    "ema8w_mtot16": dict(avg="ema", ema_k=8, warm=True, theta=16, theta_mode="tot"),
    "ema10w_mtot16": dict(avg="ema", ema_k=10, warm=True, theta=16, theta_mode="tot"),
    "ema6w_mtot16": dict(avg="ema", ema_k=6, warm=True, theta=16, theta_mode="tot"),
    "ema8w": dict(avg="ema", ema_k=8, warm=True),
    "ema8": dict(avg="ema", ema_k=8),
    "ema10": dict(avg="ema", ema_k=10),
    "ema8_mtot16": dict(avg="ema", ema_k=8, theta=16, theta_mode="tot"),
    "ema10_mtot16": dict(avg="ema", ema_k=10, theta=16, theta_mode="tot"),
    "div_mtot16": dict(avg="div", theta=16, theta_mode="tot"),
    "avg_mtot64": dict(avg=True, theta=64, theta_mode="tot"),
    "mabs32k": dict(theta=32768),
    "avg_mabs32k": dict(avg=True, theta=32768),
    "mtot16_sh1": dict(theta=16, theta_mode="tot", shift=1),
    "pa8_mtot16": dict(pa=8, theta=16, theta_mode="tot"),
}

if __name__ == "__main__":
    names = sys.argv[1:] or list(CANDS)
    import os
    seeds = [int(x) for x in os.environ.get("SEEDS", "14").split(",")]
    for name in names:
        kw = CANDS[name]
        make = lambda r, kw=kw: Rule(r, **kw)
        for (L, tp) in ((300, 10), (100, 3)):
            for seed in seeds:
                t0 = time.time()
                o = story(make, L, tp, split_seed=seed, policies=POL)
                o["cand"] = name
                print(f"## {name} ({time.time() - t0:.1f}s)\n" + fmt(o), flush=True)
                with open("results.jsonl", "a") as f:
                    f.write(json.dumps(o) + "\n")
