"""Training benchmark: the classic MNIST CNN in nbnet beside PyTorch (CPU), same data,
batch and thread count, in one run. Prints one JSON object.

    python tools/bench_train.py --steps 100                      # nbnet only
    python tools/bench_train.py --steps 100 --epoch --torch-python /path/to/venv-with-torch/bin/python

PyTorch is never a dependency: it runs in the interpreter given by --torch-python (a
separate virtualenv with `pip install torch==2.13.0`), fed the same MNIST arrays.
Figures: ms/step, s/epoch, images/s, effective GFLOP/s (3x the forward FLOPs per image),
the nbnet/PyTorch ratio, peak RSS, the compute floor (epoch FLOPs / NumPy's sgemm rate
measured in this run), and compile time to the first step, cold and with Numba's cache.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
BATCH = 128
EPOCH_IMAGES = 60000


def forward_flops_per_image():
    """Multiply-adds x2 of the classic CNN: conv 3x3x1->32 at 26x26, conv 3x3x32->64 at
    11x11, dense 1600->64, dense 64->10 (about 5.06 MFLOP)."""
    return 2 * (26 * 26 * 9 * 32 + 11 * 11 * 288 * 64 + 1600 * 64 + 64 * 10)


def sgemm_gflops(threads, size=2048, repeats=10):
    from threadpoolctl import threadpool_limits

    a = np.random.default_rng(0).random((size, size), dtype=np.float32)
    b = a.copy()
    with threadpool_limits(threads, user_api="blas"):
        a @ b
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            seconds.append(time.perf_counter() - start)
    # The best repeat: the rate BLAS can reach here (the mean swung 240-400 GFLOP/s run to run).
    return 2 * size ** 3 / min(seconds) / 1e9


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_mnist(scaled=True):
    """MNIST's training set: float32 in [0, 1] (PyTorch's input), or with ``scaled=False``
    the uint8 pixels the nbnet CNN takes (its first layer is Rescaling(1/255))."""
    from nbnet.datasets import mnist

    (x, y), _ = mnist.load_data(verbose=False)
    return (x[..., None] * np.float32(1 / 255) if scaled else x[..., None]), y.astype(np.int64)


def nbnet_worker(args):
    """Runs in its own process so its peak RSS is nbnet's alone."""
    start = time.perf_counter()
    from nbnet.zoo import mnist_cnn

    x, y = load_mnist(scaled=False)
    model = mnist_cnn.build(seed=0)
    model.fit(x[:BATCH], y[:BATCH], epochs=1, batch_size=BATCH, verbose=0)  # compiles every kernel
    first_step_s = time.perf_counter() - start
    n = args.steps * BATCH
    model.fit(x[:n], y[:n], epochs=1, batch_size=BATCH, verbose=0)  # warm caches and buffers
    started = time.perf_counter()
    model.fit(x[:n], y[:n], epochs=1, batch_size=BATCH, verbose=0)
    result = {"ms_per_step": (time.perf_counter() - started) / args.steps * 1e3, "first_step_s": first_step_s}
    if args.epoch:
        started = time.perf_counter()
        model.fit(x, y, epochs=1, batch_size=BATCH, verbose=0)
        result["epoch_s"] = time.perf_counter() - started
    result["peak_rss_mib"] = peak_rss_mib()
    print(json.dumps(result))


def torch_worker(args):
    import torch
    from torch import nn

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = np.load(args.data)
    x = torch.from_numpy(data["x"]).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(data["y"])
    model = nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(0.25), nn.Linear(1600, 64), nn.ReLU(),
                          nn.Linear(64, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()

    def run(images, labels):
        order = torch.randperm(len(images))
        for start in range(0, len(images), BATCH):
            index = order[start:start + BATCH]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(images[index]), labels[index])
            loss.backward()
            optimizer.step()

    n = args.steps * BATCH
    run(x[:n], y[:n])
    started = time.perf_counter()
    run(x[:n], y[:n])
    result = {"ms_per_step": (time.perf_counter() - started) / args.steps * 1e3, "version": torch.__version__}
    if args.epoch:
        started = time.perf_counter()
        run(x, y)
        result["epoch_s"] = time.perf_counter() - started
    result["peak_rss_mib"] = peak_rss_mib()
    print(json.dumps(result))


def child(flag, args, env=None, extra=()):
    python = args.torch_python if flag == "--torch-worker" else sys.executable
    command = [python, str(HERE), flag, "--steps", str(args.steps), "--threads", str(args.threads), *extra]
    if args.epoch:
        command.append("--epoch")
    out = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if out.returncode != 0:
        raise SystemExit(f"{flag} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def time_to_first_step(args, cache_dir):
    """Seconds from a new process's start to the end of its first training step."""
    started = time.perf_counter()
    code = ("import time, numpy as np; from nbnet.zoo import mnist_cnn; m = mnist_cnn.build(seed=0); "
            "x = np.zeros((128, 28, 28, 1), np.uint8); m.fit(x, np.zeros(128, np.int64), verbose=0)")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "NUMBA_CACHE_DIR": cache_dir})
    return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--epoch", action="store_true", help="also time one full epoch (60000 images)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--torch-python", help="python of a virtualenv with torch installed")
    parser.add_argument("--no-compile", action="store_true", help="skip the cold/cached compile timings")
    parser.add_argument("--nbnet-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.nbnet_worker:
        return nbnet_worker(args)
    if args.torch_worker:
        return torch_worker(args)

    flops_per_image = 3 * forward_flops_per_image()
    gemm = sgemm_gflops(args.threads)
    env = {"NUMBA_NUM_THREADS": str(args.threads)}
    nb = child("--nbnet-worker", args, env)
    report = {"benchmark": "train_mnist_cnn", "batch_size": BATCH, "threads": args.threads, "steps": args.steps,
              "train_flops_per_image": flops_per_image, "sgemm_gflops": round(gemm, 1),
              "floor_epoch_s": round(flops_per_image * EPOCH_IMAGES / gemm / 1e9, 2)}

    def describe(result):
        ms = result["ms_per_step"]
        entry = {"ms_per_step": round(ms, 2), "images_per_s": round(BATCH / ms * 1e3, 1),
                 "effective_gflops": round(flops_per_image * BATCH / ms / 1e6, 1),
                 "projected_epoch_s": round(ms * EPOCH_IMAGES / BATCH / 1e3, 2),
                 "peak_rss_mib": round(result["peak_rss_mib"], 1)}
        if "epoch_s" in result:
            entry["epoch_s"] = round(result["epoch_s"], 2)
        return entry

    report["nbnet"] = describe(nb)
    report["nbnet"]["first_step_in_process_s"] = round(nb["first_step_s"], 2)
    epoch_key = "epoch_s" if args.epoch else "projected_epoch_s"
    report["nbnet"]["epoch_vs_floor"] = round(report["nbnet"][epoch_key] / report["floor_epoch_s"], 2)
    if not args.no_compile:
        with tempfile.TemporaryDirectory() as cache:
            report["nbnet"]["first_step_cold_s"] = round(time_to_first_step(args, cache), 2)
            report["nbnet"]["first_step_cached_s"] = round(time_to_first_step(args, cache), 2)
    if args.torch_python:
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "mnist.npz"
            x, y = load_mnist()
            np.savez(data, x=x, y=y)
            del x, y
            torch_result = child("--torch-worker", args, {}, ["--data", str(data)])
        report["torch"] = describe(torch_result)
        report["torch"]["version"] = torch_result["version"]
        report["ratio_nbnet_over_torch"] = round(report["nbnet"][epoch_key] / report["torch"][epoch_key], 3)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
