"""Cold start: seconds from a fresh process's first fit call to its end, with Numba's disk
cache empty (the first run after an install) and then filled (every later run), for the
architectures of tools/bench_zoo.py. Prints one JSON object.

    python tools/cold_start.py                          # the zoo's architectures, helper process on
    python tools/cold_start.py --only kaggle_bn,strided --rounds 2
    python tools/cold_start.py --no-helper              # one process compiles everything

Each measurement is a new interpreter with its own NUMBA_CACHE_DIR, fitting 256 images at
--batch (one epoch): the compile of every kernel of a training step, plus two steps. The
VM this was written on moved 0.5-1 s between runs: compare rounds taken in one run.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve()

_CHILD = """
import sys, time
sys.path.insert(0, {tools!r})
import bench_zoo
model = bench_zoo.nbnet_model({name!r})
x, y = bench_zoo.data({name!r}, 256)
started = time.perf_counter()
model.fit(x, y, batch_size={batch}, epochs=1, verbose=0)
print(time.perf_counter() - started)
"""


def first_fit_seconds(name, batch, cache_dir, helper):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir), "NBNET_WARMUP_HELPER": "1" if helper else "0"}
    code = _CHILD.format(tools=str(HERE.parent), name=name, batch=batch)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return float(done.stdout.split()[-1])


def main():
    sys.path.insert(0, str(HERE.parent))
    from bench_zoo import ARCHITECTURES, ZOO

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(ZOO),
                        help="comma-separated architecture names (default: the zoo; its holdout set by name)")
    parser.add_argument("--batch", type=int, default=128, help="the fit's batch size")
    parser.add_argument("--rounds", type=int, default=1, help="cold runs of each architecture (medians reported)")
    parser.add_argument("--no-helper", action="store_true", help="NBNET_WARMUP_HELPER=0: no second process")
    args = parser.parse_args()
    names = args.only.split(",")
    unknown = [name for name in names if name not in ARCHITECTURES]
    if unknown:
        raise SystemExit(f"unknown architectures {unknown}; known: {', '.join(ARCHITECTURES)}")
    report = {"benchmark": "cold_start", "batch_size": args.batch, "helper": not args.no_helper,
              "cpus": os.cpu_count(), "architectures": {}}
    for name in names:
        cold, cached = [], []
        for _ in range(args.rounds):
            with tempfile.TemporaryDirectory() as cache_dir:
                cold.append(first_fit_seconds(name, args.batch, cache_dir, not args.no_helper))
                cached.append(first_fit_seconds(name, args.batch, cache_dir, not args.no_helper))
        report["architectures"][name] = {"cold_first_fit_s": [round(s, 2) for s in cold],
                                         "cached_first_fit_s": [round(s, 2) for s in cached],
                                         "cold_median_s": round(statistics.median(cold), 2)}
    colds = [entry["cold_median_s"] for entry in report["architectures"].values()]
    report["cold_worst_s"], report["cold_median_s"] = max(colds), round(statistics.median(colds), 2)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
