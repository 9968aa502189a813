"""Measure OpenMP's wait policy side by side: training and evaluation steps of a child network with
OMP_WAIT_POLICY unset (threads spin while waiting) and =PASSIVE (they sleep), each in a fresh process
(the policy is read when torch loads), alternately, on a quiet machine and beside a competing job.

    python3 tools/thread_policy.py                 # quiet: nothing else should run
    python3 tools/thread_policy.py --load 1        # beside one other training process (2 threads, spinning)

Prints img/s per policy (median of --reps alternating processes) and the ratio PASSIVE / default.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

WORK = r"""
import json, sys, time, torch
sys.path.insert(0, sys.argv[1])
from autosnn import SpikingNetwork, rate_loss
from search_space import AUTOSNN
torch.set_num_threads(2)
torch.manual_seed(0)
net = SpikingNetwork("AutoSNN_16", 10, AUTOSNN, T=8)
opt = torch.optim.Adam(net.parameters(), lr=1e-3)
x, y = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
def train():
    opt.zero_grad(set_to_none=True)
    rate_loss(net(x)[0], y, net.T).backward()
    opt.step()
def evaluate():
    with torch.inference_mode():
        net(x)
out = {}
for name, step, n in (("train", train, int(sys.argv[2])), ("eval", evaluate, 3 * int(sys.argv[2]))):
    net.train(name == "train")
    step()
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    out[name] = 32 * n / (time.perf_counter() - t0)
print(json.dumps(out))
"""


def run(policy: str, steps: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy == "PASSIVE":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    res = subprocess.run([sys.executable, "-c", WORK, str(ROOT), str(steps)], env=env, capture_output=True,
                         text=True, check=True)
    return json.loads(res.stdout)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=5, help="processes per policy (default 5)")
    p.add_argument("--steps", type=int, default=6, help="timed training steps per process (default 6)")
    p.add_argument("--load", type=int, default=0, help="competing training processes (default 0)")
    args = p.parse_args()
    load = [subprocess.Popen([sys.executable, "-c", WORK.replace("for name, step, n", "while True:\n    train()\nfor name, step, n"), str(ROOT), "1"],
                             stdout=subprocess.DEVNULL) for _ in range(args.load)]
    try:
        time.sleep(3 if load else 0)
        got = {"default": [], "PASSIVE": []}
        for _ in range(args.reps):
            for policy in got:
                got[policy].append(run(policy, args.steps))
    finally:
        for q in load:
            q.kill()
    med = {pol: {k: statistics.median(r[k] for r in rs) for k in ("train", "eval")} for pol, rs in got.items()}
    print(f"{args.load} competing process(es), {args.reps} alternating processes per policy, median img/s:")
    for k in ("train", "eval"):
        print(f"  {k:5s}  default {med['default'][k]:7.1f}   PASSIVE {med['PASSIVE'][k]:7.1f}   "
              f"PASSIVE/default {med['PASSIVE'][k] / med['default'][k]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
