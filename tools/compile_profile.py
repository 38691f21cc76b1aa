"""Where a cold first fit's compile time goes, kernel by kernel.

    python tools/compile_profile.py lenet5              # one of tools/bench_zoo.py's nets
    python tools/compile_profile.py kaggle_bn --top 40 --batch 32

Runs in a fresh interpreter with an empty Numba cache of its own and the warm-up helper
off (one process compiles everything), fits 256 images for one epoch, and prints one JSON
object: the wall time, the number of compiles, and the largest compiles, each with its
function (module:name:line), the function whose compile triggered it, its seconds
exclusive of the compiles it triggered in turn, and inclusive. Numba's own overloads show
up too: session 27 found 1.5 s of a cold start in Numba's array slice-assignment error
message (`numba.np.arrayobj` compiling unicode code), triggered by one `a[:] = b`.
"""

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve()

_CHILD = """
import json, sys, time
sys.path.insert(0, {tools!r})
import numba.core.dispatcher as dispatcher

records, stack = [], []
compile_once = dispatcher.Dispatcher.compile


def timed(self, signature):
    code = self.py_func.__code__
    name = f"{{self.py_func.__module__}}:{{self.py_func.__name__}}:{{code.co_firstlineno}}"
    started = time.perf_counter()
    stack.append([name, 0.0])
    try:
        return compile_once(self, signature)
    finally:
        total = time.perf_counter() - started
        _, inner = stack.pop()
        if stack:
            stack[-1][1] += total
        records.append({{"function": name, "called_from": stack[-1][0] if stack else None,
                         "exclusive_s": round(total - inner, 3), "inclusive_s": round(total, 3)}})


dispatcher.Dispatcher.compile = timed
import bench_zoo

model = bench_zoo.nbnet_model({name!r})
x, y = bench_zoo.data({name!r}, 256)
started = time.perf_counter()
model.fit(x, y, batch_size={batch}, epochs=1, verbose=0)
wall = time.perf_counter() - started
records.sort(key=lambda record: -record["exclusive_s"])
print(json.dumps({{"architecture": {name!r}, "batch_size": {batch}, "wall_s": round(wall, 2),
                  "compiles": len(records), "exclusive_sum_s": round(sum(r["exclusive_s"] for r in records), 2),
                  "largest": records[:{top}]}}, indent=1))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("architecture", help="a net of tools/bench_zoo.py")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--top", type=int, default=25, help="how many of the largest compiles to list")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache, "NBNET_WARMUP_HELPER": "0"}
        code = _CHILD.format(tools=str(HERE.parent), name=args.architecture, batch=args.batch, top=args.top)
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(done.stderr)
    print(done.stdout.strip())


if __name__ == "__main__":
    main()
