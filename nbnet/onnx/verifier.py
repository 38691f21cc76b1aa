"""Checking an exported file: the ONNX checker (full check), strict shape inference, then
onnxruntime against ``model.predict`` on the same inputs.

Pass criteria: max |onnxruntime - nbnet| <= atol (1e-4), and no sample whose argmax
differs while nbnet's top-2 gap exceeds ``gap`` (1e-4): a near-tie may flip either way
in float32, a decisive prediction may not.
"""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ExportError

ATOL = 1e-4
ARGMAX_GAP = 1e-4
REL_FLOOR = 1e-6  # relative differences are taken against max(|nbnet|, REL_FLOOR)
MNIST_SHAPES = ((28, 28, 1), (28, 28), (784,))


@dataclass
class VerificationReport:
    model_name: str
    source: str  # where the inputs came from
    samples: int
    opset: int
    ir_version: int
    runtime: str
    output_shape: str  # as shape inference found it
    max_abs_diff: float
    max_rel_diff: float
    argmax_identical: int  # samples whose argmax agrees (None for one-value outputs)
    decisive_mismatches: int  # argmax differs although nbnet's top-2 gap > ARGMAX_GAP
    accuracy_nbnet: float = None
    accuracy_onnx: float = None
    atol: float = ATOL
    failures: list = field(default_factory=list)
    path: str = None

    @property
    def passed(self):
        return not self.failures

    def table(self):
        rows = [("onnx.checker (full_check)", "ok"), ("shape inference", f"ok, output {self.output_shape}"),
                ("max abs diff", f"{self.max_abs_diff:.3g}  (limit {self.atol:.0e})"),
                ("max rel diff", f"{self.max_rel_diff:.3g}")]
        if self.argmax_identical is not None:
            rows.append(("identical argmax", f"{self.argmax_identical}/{self.samples} "
                                             f"({100.0 * self.argmax_identical / self.samples:.2f}%)"))
        if self.accuracy_nbnet is not None:
            rows += [("accuracy nbnet", f"{self.accuracy_nbnet:.4f}"), ("accuracy onnxruntime", f"{self.accuracy_onnx:.4f}")]
        rows.append(("result", "PASS" if self.passed else "FAIL: " + "; ".join(self.failures)))
        width = max(len(name) for name, _ in rows)
        where = f" -> {self.path}" if self.path else ""
        lines = [f"ONNX verification of '{self.model_name}'{where}",
                 f"opset {self.opset} (IR {self.ir_version}), {self.runtime}, {self.samples} {self.source}",
                 f"{'check':<{width}}  value", f"{'-' * width}  {'-' * 30}"]
        lines += [f"{name:<{width}}  {value}" for name, value in rows]
        return "\n".join(lines)

    __str__ = table


def _proto_and_bytes(onnx_model):
    import onnx

    if isinstance(onnx_model, onnx.ModelProto):
        return onnx_model, onnx_model.SerializeToString(), None
    if isinstance(onnx_model, (bytes, bytearray)):
        return onnx.load_from_string(bytes(onnx_model)), bytes(onnx_model), None
    path = Path(onnx_model)
    if not path.is_file():
        raise ExportError(f"ONNX file {path} does not exist.")
    data = path.read_bytes()
    try:
        return onnx.load_from_string(data), data, str(path)
    except Exception as error:
        raise ExportError(f"{path} is not a readable ONNX file ({type(error).__name__}: {error}).") from None


def _format_shape(value_info):
    dims = value_info.type.tensor_type.shape.dim
    return "(" + ", ".join(d.dim_param if d.HasField("dim_param") else str(d.dim_value) if d.HasField("dim_value")
                           else "?" for d in dims) + ")"


def _check_structure(proto, model):
    """The ONNX checker and strict shape inference; returns (output shape text, failures)."""
    import onnx

    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as error:
        raise ExportError(f"onnx.checker rejected the exported graph of '{model.name}': {error}") from None
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    except Exception as error:
        raise ExportError(f"ONNX shape inference failed on the exported graph of '{model.name}': {error}") from None
    failures, shapes = [], []
    outputs = list(inferred.graph.output)
    if len(outputs) != len(model._output_tensors):
        failures.append(f"the graph has {len(outputs)} outputs, the model {len(model._output_tensors)}")
    for output, tensor in zip(outputs, model._output_tensors):
        shape = _format_shape(output)
        shapes.append(shape)
        dims = output.type.tensor_type.shape.dim
        expected = tuple(tensor.sample_shape)
        if not dims or not dims[0].HasField("dim_param"):
            failures.append(f"the batch axis of output {output.name} is not symbolic: {shape}")
        elif tuple(d.dim_value for d in dims[1:]) != expected:
            failures.append(f"shape inference gives output {output.name} {shape}, nbnet "
                            f"(batch, {', '.join(map(str, expected))})")
    return ", ".join(shapes), failures


def _argmax_stats(ref, out, gap):
    """(identical argmax count, decisive mismatches) over the flattened per-sample outputs."""
    ref2, out2 = ref.reshape(len(ref), -1), out.reshape(len(out), -1)
    if ref2.shape[1] < 2:
        return None, 0
    mismatch = ref2.argmax(axis=1) != out2.argmax(axis=1)
    top2 = np.partition(ref2, -2, axis=1)[:, -2:]
    decisive = mismatch & ((top2[:, 1] - top2[:, 0]) > gap)
    return int(np.count_nonzero(~mismatch)), int(np.count_nonzero(decisive))


def _accuracy(outputs, y):
    flat = outputs.reshape(len(outputs), -1)
    predicted = flat.argmax(axis=1) if flat.shape[1] > 1 else (flat[:, 0] > 0.5).astype(np.int64)
    return float(np.mean(predicted == np.asarray(y).reshape(-1)))


def run_onnxruntime(onnx_model, x, batch_size=1000):
    """Run ``x`` (an array, or a list, one per graph input) through the graph with
    onnxruntime's CPU provider, ``batch_size`` at a time: the first output, or with
    several outputs a list of them."""
    import onnxruntime

    _, data, _ = _proto_and_bytes(onnx_model)
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    xs = [np.ascontiguousarray(a, np.float32) for a in (x if isinstance(x, (list, tuple)) else [x])]
    runs = [session.run(None, {name: a[start:start + batch_size] for name, a in zip(names, xs)})
            for start in range(0, len(xs[0]), batch_size)]
    outputs = [np.concatenate([run[index] for run in runs]) for index in range(len(runs[0]))]
    return outputs[0] if len(outputs) == 1 else outputs


def verify(model, onnx_model, x, y=None, *, atol=ATOL, gap=ARGMAX_GAP, source="given inputs", raise_on_failure=True,
           batch_size=1000):
    """Verify an exported graph (a path, bytes or ModelProto) against ``model`` on inputs
    ``x`` (labels ``y`` optional, for accuracies). Returns a VerificationReport; raises
    ExportError if the checker or shape inference rejects the graph, and (unless
    ``raise_on_failure=False``) if the numbers disagree."""
    import onnxruntime

    proto, data, path = _proto_and_bytes(onnx_model)
    x = model._prepare_x(x)
    count = len(x[0])
    if y is not None and len(y) != count:
        raise ExportError(f"verify: x has {count} samples but y has {len(y)} labels.")
    output_shape, failures = _check_structure(proto, model)
    try:
        out = run_onnxruntime(data, x, batch_size)
    except Exception as error:
        raise ExportError(f"onnxruntime {onnxruntime.__version__} could not run the exported graph of "
                          f"'{model.name}': {error}") from None
    ref = model.predict(x, batch_size=min(batch_size, 256))
    if isinstance(ref, (list, dict)):  # several outputs: compared side by side, one row a sample
        ref = np.concatenate([r.reshape(count, -1) for r in (ref.values() if isinstance(ref, dict) else ref)], axis=1)
        out = np.concatenate([o.reshape(count, -1) for o in out], axis=1)
    if out.shape != ref.shape:
        failures.append(f"onnxruntime returns shape {out.shape}, nbnet {ref.shape}")
        diff = np.array([np.inf])
        identical, decisive = None, 0
        out = None
    else:
        diff = np.abs(out.astype(np.float64) - ref)
        identical, decisive = _argmax_stats(ref, out, gap)
    max_abs = float(diff.max())
    max_rel = float((diff / np.maximum(np.abs(ref), REL_FLOOR)).max()) if out is not None else float("inf")
    if not max_abs <= atol:
        failures.append(f"max abs diff {max_abs:.3g} > {atol:g}")
    if decisive:
        failures.append(f"{decisive} sample(s) change argmax although nbnet's top-2 gap exceeds {gap:g}")
    report = VerificationReport(
        model_name=model.name, source=source, samples=count, opset=proto.opset_import[0].version,
        ir_version=proto.ir_version, runtime=f"onnxruntime {onnxruntime.__version__}", output_shape=output_shape,
        max_abs_diff=max_abs, max_rel_diff=max_rel, argmax_identical=identical, decisive_mismatches=decisive,
        atol=atol, failures=failures, path=path)
    if y is not None and out is not None:
        report.accuracy_nbnet, report.accuracy_onnx = _accuracy(ref, y), _accuracy(out, y)
    if failures and raise_on_failure:
        error = ExportError(f"ONNX verification of '{model.name}' failed: {'; '.join(failures)}.")
        error.report = report
        raise error
    return report


def verification_data(model, samples=1000, data_dir=None, seed=0):
    """(x, y, description) to verify ``model`` on: the first ``samples`` MNIST test images
    (as ``mnist.model_input`` prepares them) for an MNIST-shaped input, else seeded standard-normal inputs."""
    samples = int(samples)
    if samples < 1:
        raise ExportError(f"verification needs at least one sample, received {samples}.")
    if len(model._input_shapes()) == 1 and tuple(model._input_shapes()[0]) in MNIST_SHAPES:
        from ..datasets import mnist
        from ..errors import DatasetError

        try:
            _, (x_test, y_test) = mnist.load_data(data_dir=data_dir, verbose=False)
        except DatasetError as error:
            raise ExportError(f"Verification compares on MNIST test images, which could not be loaded ({error}). "
                              "Point --data-dir / data_dir= at the IDX files, pass your own x=, or skip "
                              "verification (--no-verify / verify=False).") from None
        samples = min(samples, len(x_test))
        # As the model takes them (its Rescaling, if any, scales them), as float32: ONNX's input type.
        x = mnist.model_input(x_test[:samples], model).astype(np.float32)
        return x.reshape((samples,) + tuple(model.input_shape[1:])), y_test[:samples].astype(np.int64), "MNIST test images"
    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal((samples,) + tuple(shape), dtype=np.float32) for shape in model._input_shapes()]
    return (xs[0] if len(xs) == 1 else xs), None, f"random normal inputs (seed {seed})"
