"""Inference benchmark: nbnet's predict beside onnxruntime running nbnet's own ONNX export
of the same model, in one run. Prints one JSON object.

    python tools/bench_infer.py [--model models/mnist_cnn.nbnet] [--threads 2]

Figures: images/s at batch 1000 over the 10k MNIST test images, and the median latency
of one image (batch 1), for both, and their ratios.
"""

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def median_seconds(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="an .nbnet file [default: the reference model]")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--latency-repeats", type=int, default=300)
    args = parser.parse_args()
    os.environ.setdefault("NUMBA_NUM_THREADS", str(args.threads))

    import onnxruntime

    from nbnet import onnx as nbnet_onnx
    from nbnet.datasets import mnist
    from nbnet.models import load_model
    from nbnet.zoo import REFERENCE_MODEL

    model = load_model(args.model or REFERENCE_MODEL)
    _, (x_test, _) = mnist.load_data(verbose=False)
    # As the model takes them (the reference CNN rescales its input itself), as float32:
    # the type of the ONNX graph's input, so both runtimes get the same array.
    x = mnist.model_input(x_test, model).astype(np.float32)
    one = x[:1]

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        nbnet_onnx.export(model, path, verify=False)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = args.threads
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def ort_predict(batch):
        for start in range(0, len(x), batch):
            session.run(None, {input_name: x[start:start + batch]})

    nb_batch_s = median_seconds(lambda: model.predict(x, batch_size=1000), args.repeats)
    ort_batch_s = median_seconds(lambda: ort_predict(1000), args.repeats)
    nb_one_s = median_seconds(lambda: model.predict(one), args.latency_repeats)
    nb_one_batch_s = median_seconds(lambda: model.predict_on_batch(one), args.latency_repeats)
    ort_one_s = median_seconds(lambda: session.run(None, {input_name: one}), args.latency_repeats)
    report = {
        "benchmark": "infer_mnist_cnn", "threads": args.threads, "images": len(x),
        "onnxruntime_version": onnxruntime.__version__,
        "nbnet": {"images_per_s_batch1000": round(len(x) / nb_batch_s, 1),
                  "latency_ms_one_image": round(nb_one_s * 1e3, 4),
                  "latency_ms_predict_on_batch": round(nb_one_batch_s * 1e3, 4)},
        "onnxruntime": {"images_per_s_batch1000": round(len(x) / ort_batch_s, 1),
                        "latency_ms_one_image": round(ort_one_s * 1e3, 4)},
    }
    report["throughput_ratio_nbnet_over_ort"] = round(ort_batch_s / nb_batch_s, 3)
    report["latency_ratio_nbnet_over_ort"] = round(nb_one_s / ort_one_s, 3)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
