"""Where a training step (or predict) spends its time, per kernel: the classic MNIST CNN's,
or any architecture of tools/bench_zoo.py.

    python tools/profile_step.py --steps 50          # training steps at batch 128
    python tools/profile_step.py --predict 10000     # predict on that many test images
    python tools/profile_step.py --zoo lenet5 --batch 32

Every function of the CPU device (``nbnet.devices.cpu``) is wrapped with a timer; the
layers launch kernels only through that module, so the table covers every kernel and
matmul. "outside kernels" is the rest of the wall time: Python in the layers, the model's
loop, the optimizer's bookkeeping, batching. Prints one JSON object: milliseconds per
step (or in total for predict) per function, largest first, and calls per step.
"""

import argparse
import json
import time
from collections import defaultdict

import numpy as np

BATCH = 128


def instrument(module):
    """Wraps every public function of ``module``; returns the (seconds, calls) tallies."""
    seconds, calls = defaultdict(float), defaultdict(int)
    for name in dir(module):
        function = getattr(module, name)
        if name.startswith("_") or not callable(function) or isinstance(function, type):
            continue

        def timed(*args, __function=function, __name=name, **kwargs):
            started = time.perf_counter()
            try:
                return __function(*args, **kwargs)
            finally:
                seconds[__name] += time.perf_counter() - started
                calls[__name] += 1

        setattr(module, name, timed)
    return seconds, calls


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=50, help="training steps to time (after a warm-up pass)")
    parser.add_argument("--predict", type=int, default=0, help="profile predict on this many test images instead")
    parser.add_argument("--batch-size", type=int, default=None, help="predict's batch size (default 1000)")
    parser.add_argument("--batch", type=int, default=BATCH, help="training batch size")
    parser.add_argument("--zoo", help="an architecture of tools/bench_zoo.py instead of the MNIST CNN")
    args = parser.parse_args()

    from nbnet.datasets import mnist
    from nbnet.devices import cpu
    from nbnet.zoo import mnist_cnn

    (x, y), (x_test, _) = mnist.load_data(verbose=False)
    x, x_test, y = x[..., None], x_test[..., None], y.astype(np.int64)
    if args.zoo:
        import sys
        from pathlib import Path

        sys.path.insert(0, str(Path(__file__).parent))
        import bench_zoo

        model = bench_zoo.nbnet_model(args.zoo)
        x, y = bench_zoo.data(args.zoo, 60000)
        x_test = x[:10000]
    else:
        model = mnist_cnn.build(seed=0)
    if args.predict:
        images = x_test[:args.predict]
        batch = args.batch_size or 1000
        model.predict(images, batch_size=batch, verbose=0)  # compiles, fills the buffers
        seconds, calls = instrument(cpu)
        started = time.perf_counter()
        model.predict(images, batch_size=batch, verbose=0)
        wall, per = time.perf_counter() - started, 1
        report = {"profile": "predict", "images": len(images), "batch_size": batch}
    else:
        n = args.steps * args.batch
        model.fit(x[:n], y[:n], epochs=1, batch_size=args.batch, verbose=0)  # compiles, fills the buffers
        seconds, calls = instrument(cpu)
        started = time.perf_counter()
        model.fit(x[:n], y[:n], epochs=1, batch_size=args.batch, verbose=0)
        wall, per = time.perf_counter() - started, args.steps
        report = {"profile": "train_step", "model": args.zoo or "mnist_cnn", "steps": args.steps,
                  "batch_size": args.batch}
    inside = sum(seconds.values())
    rows = sorted((name for name in seconds if calls[name]), key=seconds.get, reverse=True)
    report["wall_ms"] = round(wall / per * 1e3, 3)
    report["ms"] = {name: round(seconds[name] / per * 1e3, 3) for name in rows}
    report["ms"]["outside kernels"] = round((wall - inside) / per * 1e3, 3)
    report["calls"] = {name: calls[name] / per for name in rows}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
