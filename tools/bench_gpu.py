"""GPU training benchmark: the classic MNIST CNN with ``device='cuda'`` beside PyTorch on
the same GPU, same data, batch and optimizer, in one run. Prints one JSON object.

    python tools/bench_gpu.py                   # one timed epoch each (after a warm-up)
    python tools/bench_gpu.py --batches 128,1024
    python tools/bench_gpu.py --epochs 10       # also train 10 epochs and report test accuracy

Per batch size it also reports nbnet's kernel launches per training step, the cost of one
launch (an empty kernel, launched 1000 times) and so the share of a step that launching
alone takes: where that share is high the step is bound by launch overhead, not by the
kernels.

nbnet's epoch time includes its once-per-fit copy of the training set to the GPU;
PyTorch's data is put on the GPU once, outside the timing (the fastest usual PyTorch
loop). Needs a CUDA GPU, numba-cuda (``pip install 'nbnet[cuda]'``) and, for the
comparison, PyTorch with CUDA in the interpreter given by --torch-python (default: this
one); without PyTorch the report has nbnet's figures alone.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
BATCH = 128


def load_mnist():
    from nbnet.datasets import mnist

    (x, y), (x_test, y_test) = mnist.load_data(verbose=False)
    scale = np.float32(1 / 255)
    return (x[..., None] * scale, y.astype(np.int64)), (x_test[..., None] * scale, y_test.astype(np.int64))


_launches = []


def launch_counter():
    """A list whose one item counts the CUDA kernel launches since the first call (each
    ``kernel[grid, block]`` configures a launch), or None where the dispatcher is not
    numba-cuda's (the simulator)."""
    if _launches:
        return _launches[0]
    try:
        from numba.cuda.dispatcher import CUDADispatcher
        CUDADispatcher.configure
    except (ImportError, AttributeError):
        return None
    count, configure = [0], CUDADispatcher.configure

    def counted(self, *args, **kwargs):
        count[0] += 1
        return configure(self, *args, **kwargs)

    CUDADispatcher.configure = counted
    _launches.append(count)
    return count


def launch_microseconds():
    """The host time of one launch of an empty kernel."""
    from numba import cuda

    @cuda.jit
    def empty(a):
        pass

    a = cuda.device_array(1)
    empty[1, 1](a)
    cuda.synchronize()
    started = time.perf_counter()
    for _ in range(1000):
        empty[1, 1](a)
    cuda.synchronize()
    return (time.perf_counter() - started) * 1e3


def nbnet_run(args, batch):
    from numba import cuda

    from nbnet.kernels.cuda import available
    from nbnet.zoo import mnist_cnn

    usable, reason = available()
    if not usable:
        return {"error": reason}
    (x, y), (x_test, y_test) = load_mnist()
    model = mnist_cnn.build(seed=0)
    model.to("cuda")
    started = time.perf_counter()
    model.fit(x[:batch * 20], y[:batch * 20], batch_size=batch, verbose=0)  # compiles every kernel
    result = {"device": reason, "warmup_s": time.perf_counter() - started}
    # Launches and synchronised time of single training steps.
    counter, steps = launch_counter(), 20
    before = counter[0] if counter else 0
    cuda.synchronize()
    started = time.perf_counter()
    for start in range(0, steps * batch, batch):
        model.train_on_batch(x[start:start + batch], y[start:start + batch])
    cuda.synchronize()
    step_ms = (time.perf_counter() - started) / steps * 1e3
    result["step_ms"] = step_ms
    if counter:
        launches = (counter[0] - before) / steps
        try:
            launch_us = launch_microseconds()
        except Exception as error:  # never lose the timings for want of this figure
            result["launch_us_error"] = repr(error)
        else:
            result.update({"launch_us": launch_us,
                           "launch_share_of_step": round(launches * launch_us / 1e3 / step_ms, 3)})
        result["launches_per_step"] = launches
    model = mnist_cnn.build(seed=0).to("cuda")
    epochs = []
    for _ in range(max(args.epochs, 1)):
        started = time.perf_counter()
        model.fit(x, y, batch_size=batch, epochs=1, verbose=0)
        epochs.append(time.perf_counter() - started)
    result.update({"epoch_s": min(epochs), "epoch_s_all": epochs,
                   "ms_per_step": min(epochs) / -(-len(x) // batch) * 1e3})
    if args.epochs > 1:
        result["test_accuracy"] = float(model.evaluate(x_test, y_test, batch_size=1000, verbose=0)[1])
    return result


def torch_worker(args):
    import torch
    from torch import nn

    device = torch.device("cuda")
    torch.manual_seed(0)
    data = np.load(args.data)
    x = torch.from_numpy(data["x"]).permute(0, 3, 1, 2).contiguous().to(device)
    y = torch.from_numpy(data["y"]).to(device)
    x_test = torch.from_numpy(data["x_test"]).permute(0, 3, 1, 2).contiguous().to(device)
    y_test = torch.from_numpy(data["y_test"]).to(device)

    def build():
        return nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3), nn.ReLU(),
                             nn.MaxPool2d(2), nn.Flatten(), nn.Linear(1600, 64), nn.ReLU(),
                             nn.Linear(64, 10)).to(device)

    batch = args.batch

    def epoch(model, optimizer, images, labels):
        loss_fn = nn.CrossEntropyLoss()
        order = torch.randperm(len(images), device=device)
        for start in range(0, len(images), batch):
            index = order[start:start + batch]
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(images[index]), labels[index]).backward()
            optimizer.step()
        torch.cuda.synchronize()

    warm = build()
    epoch(warm, torch.optim.Adam(warm.parameters(), lr=1e-3), x[:batch * 20], y[:batch * 20])
    model = build()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    times = []
    for _ in range(max(args.epochs, 1)):
        started = time.perf_counter()
        epoch(model, optimizer, x, y)
        times.append(time.perf_counter() - started)
    result = {"version": torch.__version__, "epoch_s": min(times), "epoch_s_all": times}
    if args.epochs > 1:
        with torch.no_grad():
            predicted = torch.cat([model(x_test[i:i + 1000]).argmax(1) for i in range(0, len(x_test), 1000)])
        result["test_accuracy"] = float((predicted == y_test).float().mean())
    print(json.dumps(result))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs (the best is reported); more than "
                        "one also reports test accuracy")
    parser.add_argument("--batches", default=str(BATCH), help="comma-separated batch sizes (default 128)")
    parser.add_argument("--torch-python", default=sys.executable, help="python with PyTorch (CUDA build)")
    parser.add_argument("--no-torch", action="store_true", help="nbnet only")
    parser.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=BATCH, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.torch_worker:
        return torch_worker(args)
    report = {"benchmark": "train_mnist_cnn_gpu", "epochs": args.epochs, "batches": {}}
    for batch in [int(b) for b in args.batches.split(",")]:
        entry = report["batches"][str(batch)] = {"nbnet": nbnet_run(args, batch)}
        if "error" in entry["nbnet"]:
            print(json.dumps(report, indent=2))
            sys.exit(2)
        if not args.no_torch:
            with tempfile.TemporaryDirectory() as tmp:
                data = Path(tmp) / "mnist.npz"
                (x, y), (x_test, y_test) = load_mnist()
                np.savez(data, x=x, y=y, x_test=x_test, y_test=y_test)
                out = subprocess.run([args.torch_python, str(HERE), "--torch-worker", "--data", str(data),
                                      "--epochs", str(args.epochs), "--batch", str(batch)],
                                     capture_output=True, text=True)
            if out.returncode == 0:
                entry["torch"] = json.loads(out.stdout.strip().splitlines()[-1])
                entry["ratio_nbnet_over_torch"] = round(entry["nbnet"]["epoch_s"] / entry["torch"]["epoch_s"], 3)
            else:
                entry["torch"] = {"error": out.stderr.strip()[-2000:]}
        print(json.dumps({batch: entry}), file=sys.stderr, flush=True)  # kept should a later batch hang
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
