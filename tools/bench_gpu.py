"""GPU training benchmark: the classic MNIST CNN with ``device='cuda'`` beside PyTorch on
the same GPU, same data, batch and optimizer, in one run. Prints one JSON object.

    python tools/bench_gpu.py                   # one timed epoch each (after a warm-up)
    python tools/bench_gpu.py --epochs 10       # also train 10 epochs and report test accuracy

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


def nbnet_run(args):
    from nbnet.kernels.cuda import available
    from nbnet.zoo import mnist_cnn

    usable, reason = available()
    if not usable:
        return {"error": reason}
    (x, y), (x_test, y_test) = load_mnist()
    model = mnist_cnn.build(seed=0)
    model.to("cuda")
    started = time.perf_counter()
    model.fit(x[:BATCH * 20], y[:BATCH * 20], batch_size=BATCH, verbose=0)  # compiles every kernel
    result = {"device": reason, "warmup_s": time.perf_counter() - started}
    model = mnist_cnn.build(seed=0).to("cuda")
    epochs = []
    for _ in range(max(args.epochs, 1)):
        started = time.perf_counter()
        model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
        epochs.append(time.perf_counter() - started)
    result.update({"epoch_s": min(epochs), "epoch_s_all": epochs,
                   "ms_per_step": min(epochs) / -(-len(x) // BATCH) * 1e3})
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

    def epoch(model, optimizer, images, labels):
        loss_fn = nn.CrossEntropyLoss()
        order = torch.randperm(len(images), device=device)
        for start in range(0, len(images), BATCH):
            index = order[start:start + BATCH]
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(images[index]), labels[index]).backward()
            optimizer.step()
        torch.cuda.synchronize()

    warm = build()
    epoch(warm, torch.optim.Adam(warm.parameters(), lr=1e-3), x[:BATCH * 20], y[:BATCH * 20])
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
    parser.add_argument("--torch-python", default=sys.executable, help="python with PyTorch (CUDA build)")
    parser.add_argument("--no-torch", action="store_true", help="nbnet only")
    parser.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.torch_worker:
        return torch_worker(args)
    report = {"benchmark": "train_mnist_cnn_gpu", "batch_size": BATCH, "epochs": args.epochs,
              "nbnet": nbnet_run(args)}
    if "error" in report["nbnet"]:
        print(json.dumps(report, indent=2))
        sys.exit(2)
    if not args.no_torch:
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "mnist.npz"
            (x, y), (x_test, y_test) = load_mnist()
            np.savez(data, x=x, y=y, x_test=x_test, y_test=y_test)
            out = subprocess.run([args.torch_python, str(HERE), "--torch-worker", "--data", str(data),
                                  "--epochs", str(args.epochs)], capture_output=True, text=True)
        if out.returncode == 0:
            report["torch"] = json.loads(out.stdout.strip().splitlines()[-1])
            report["ratio_nbnet_over_torch"] = round(report["nbnet"]["epoch_s"] / report["torch"]["epoch_s"], 3)
        else:
            report["torch"] = {"error": out.stderr.strip()[-2000:]}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
