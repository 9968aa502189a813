"""Does the search help? The study behind the README's section of that name, on real handwritten digits.

    pip install scikit-learn                            # for this tool only (load_digits); never a runtime need
    python3 tools/digits_study.py --out study          # the data, the pipeline, fidelity, search comparison
    python3 tools/digits_study.py --out study --npz-only    # only write study/digits.npz

1. scikit-learn's `load_digits` (1,797 real 8 x 8 handwritten digits, 16 grey levels, from the UCI
   optical-recognition set) becomes study/digits.npz for `--dataset npz:PATH`: pixels 0..16 scaled to
   0..255, each pixel repeated 4 x 4 (nearest-neighbour upscaling: no pixel is invented) to the 32 x 32
   input of the network's static stem, and the grey channel repeated 3 times, since the stem takes 3 x 32
   x 32 images (autosnn.STEMS). Test set: 20% of each class (359 images, seeded); the other 1,438 train,
   in a seeded random order, so D_val (the last 20% of them, 288) holds every class. hflip = 0: a mirrored
   digit is not the same digit, so the training flip is off (the 4-pixel random crop stays: one source pixel).
2. The pipeline's super-network (`train.py --stage supernet`), its fixed paths watched on D_val every epoch.
3. `bench.py --fidelity`: N architectures retrained stand-alone, the super-network's ranking against theirs.
4. `bench.py --search-quality`: evolution, random and pareto search on that super-network over 3 seeds.
5. `bench.py --fidelity --seeds 2 --same-archs`: a second stand-alone seed of the same architectures (the
   first seed's units are reused), for the agreement of two stand-alone rankings.

Every step is the command a user would type (printed, run as a subprocess, resumable: rerun this tool to
continue), and each one's wall time and CPU time (user + sys of the child processes) plus the load
average are written to study/cost.json. The options below change the budget; the defaults are the
README's study.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
UPSCALE = 4              # 8 x 8 -> 32 x 32
TEST_FRACTION = 0.2


def make_npz(path: Path, seed: int = 0) -> dict:
    """Write the digits as an npz for --dataset npz:PATH (see the module docstring). Returns counts."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SystemExit("this tool needs scikit-learn for load_digits: pip install scikit-learn") from None
    d = load_digits()
    grey = np.round(d.images * (255 / 16)).astype(np.uint8)                       # [1797, 8, 8]
    big = grey.repeat(UPSCALE, axis=1).repeat(UPSCALE, axis=2)                     # [1797, 32, 32]
    x = np.repeat(big[:, :, :, None], 3, axis=3)                                   # [1797, 32, 32, 3]
    y = d.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), bool)
    for k in range(10):                                  # 20% of every class
        idx = np.flatnonzero(y == k)
        test[rng.choice(idx, int(round(len(idx) * TEST_FRACTION)), replace=False)] = True
    train_idx = rng.permutation(np.flatnonzero(~test))
    test_idx = np.flatnonzero(test)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, x=x[train_idx], y=y[train_idx], x_test=x[test_idx], y_test=y[test_idx],
                        hflip=np.uint8(0))
    os.replace(tmp, path)
    return {"train": len(train_idx), "test": len(test_idx)}


# ---------------------------------------------------------------------------------------------
# The steps
# ---------------------------------------------------------------------------------------------

def steps(out: Path, a) -> list[tuple[str, list[str], Path]]:
    """(name, command, the folder whose existence means 'resume it') of each step, in order."""
    py, data = sys.executable, f"npz:{out / 'digits.npz'}"
    net = ["--backbone", a.backbone, "--T", str(a.T), "--batch-size", str(a.batch_size), "--threads", str(a.threads),
           "--log-every", "0", "--device", "cpu"]
    watch = ["--watch-archs", "8", "--watch-images", "288"]
    main = out / "supernet"
    fid = ["--archs", str(a.archs), "--epochs", str(a.epochs), "--threads", str(a.threads)]
    same = ["--same-archs", str(main / "fidelity")]
    todo = [("supernet", [py, "train.py", "--dataset", data, "--stage", "supernet", "--supernet-epochs",
                          str(a.supernet_epochs), *net, *watch, "--out", str(out), "--name", "supernet"], main),
            ("fidelity", [py, "bench.py", "--fidelity", str(main), *fid], None),
            ("search-quality", [py, "bench.py", "--search-quality", str(main), "--pool", str(a.pool), "--iterations",
                                str(a.iterations), "--seeds", str(a.seeds), "--retrain-picks", str(a.epochs),
                                "--threads", str(a.threads)], None),
            # a second training seed of the same architectures: how far two stand-alone rankings agree
            ("fidelity, 2 seeds", [py, "bench.py", "--fidelity", str(main), *fid, "--seeds", "2", *same, "--out",
                                   str(main / "fidelity-2seeds")], None)]
    if not a.remedies:
        return todo
    # remedies from the one-shot NAS literature, each measured on the same architectures (their
    # stand-alone units are reused: only the super-network's evaluation is new)
    for n in (4, 16):
        todo.append((f"fidelity, {n} BN re-estimation batches", [py, "bench.py", "--fidelity", str(main), *fid, *same,
                     "--bn-recalib", str(n), "--out", str(main / f"fidelity-bn{n}")], None))
    longer = out / f"supernet-{2 * a.supernet_epochs}"
    todo += [(f"super-network extended to {2 * a.supernet_epochs} epochs",
              [py, "train.py", "--resume", str(longer), "--supernet-epochs", str(2 * a.supernet_epochs),
               "--threads", str(a.threads)], "copy"),
             (f"fidelity, {2 * a.supernet_epochs} epochs", [py, "bench.py", "--fidelity", str(longer), *fid, *same],
              None)]
    for name, extra in (("train-portion-0.6", ["--train-portion", "0.6"]), ("cosine", ["--supernet-schedule", "cosine"]),
                        ("fair", ["--path-sampling", "fair"])):
        run = out / f"supernet-{name}"
        todo += [(f"super-network, {name}", [py, "train.py", "--dataset", data, "--stage", "supernet",
                                            "--supernet-epochs", str(a.supernet_epochs), *net, *watch, *extra,
                                            "--out", str(out), "--name", run.name], run),
                 (f"fidelity, {name}", [py, "bench.py", "--fidelity", str(run), *fid, *same], None)]
    return todo


def run_step(name: str, cmd: list[str], resume: Path | None, out: Path, cost: dict, workers: int = 1) -> None:
    """Run one step (resumed when its run folder exists), recording wall and CPU time (all processes)."""
    if cost.get(name, {}).get("done"):
        print(f"== {name}: done before (see cost.json)")
        return
    if resume is not None and resume.is_dir() and (resume / "config.json").is_file():
        cmd = [sys.executable, "train.py", "--resume", str(resume), "--threads", cmd[cmd.index("--threads") + 1]]
    print(f"== {name}: {' '.join(shlex.quote(c) for c in cmd)}", flush=True)
    before, load0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), os.getloadavg(), time.time()
    # a fidelity study or retrained picks take several processes at once (each claims the next unit)
    parallel = "--fidelity" in cmd or "--retrain-picks" in cmd
    procs = [subprocess.Popen(cmd, cwd=ROOT) for _ in range(workers if parallel else 1)]
    code = max(p.wait() for p in procs)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if (out / "cost.json").is_file():           # another instance may have recorded its steps meanwhile
        cost.update({k: v for k, v in json.loads((out / "cost.json").read_text()).items() if k != name})
    prev = cost.get(name, {})
    cost[name] = {"command": " ".join(shlex.quote(c) for c in cmd), "processes": len(procs), "exit_code": code,
                  "done": code == 0,
                  "wall_s": prev.get("wall_s", 0) + time.time() - t0,
                  "cpu_s": prev.get("cpu_s", 0) + (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
                  "load_before": load0, "load_after": os.getloadavg()}
    (out / "cost.json").write_text(json.dumps(cost, indent=1))
    if code != 0:
        raise SystemExit(f"step {name!r} failed (exit code {code}); rerun this tool to continue")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="study", help="study folder (default study)")
    p.add_argument("--npz-only", action="store_true", help="only write OUT/digits.npz")
    p.add_argument("--backbone", default="AutoSNN_8")
    p.add_argument("--T", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--supernet-epochs", type=int, default=40)
    p.add_argument("--archs", type=int, default=12, help="architectures of the fidelity study")
    p.add_argument("--epochs", type=int, default=10, help="stand-alone epochs (fidelity and retrained picks)")
    p.add_argument("--pool", type=int, default=10)
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--seeds", type=int, default=3, help="search seeds of the comparison")
    p.add_argument("--threads", type=int, default=1, help="torch threads per step (1: best on a loaded machine)")
    p.add_argument("--workers", type=int, default=2, help="processes per fidelity study (default 2: one per core)")
    p.add_argument("--remedies", action="store_true", help="also measure the remedies (README)")
    a = p.parse_args(argv)
    out = Path(a.out).resolve()
    if not (out / "digits.npz").is_file():
        print(f"wrote {out / 'digits.npz'}: {make_npz(out / 'digits.npz')}")
    if a.npz_only:
        return 0
    cost = json.loads((out / "cost.json").read_text()) if (out / "cost.json").is_file() else {}
    for name, cmd, resume in steps(out, a):
        if resume == "copy":          # the extension works on a copy: the main run stays as measured
            src, dst = out / "supernet", Path(cmd[cmd.index("--resume") + 1])
            if not dst.exists():
                import shutil
                shutil.copytree(src, dst, ignore=shutil.ignore_patterns("fidelity*", "quality*", ".lock"))
            resume = None
        run_step(name, cmd, resume, out, cost, a.workers)
    total_wall = sum(c["wall_s"] for c in cost.values())
    total_cpu = sum(c["cpu_s"] for c in cost.values())
    print(f"study done in {out}: wall {total_wall / 60:.1f} min, CPU (user + sys) {total_cpu / 60:.1f} min; "
          f"per step in {out / 'cost.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
