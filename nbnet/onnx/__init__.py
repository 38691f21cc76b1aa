"""ONNX export, verification and re-import for nbnet Sequential models.

    from nbnet import onnx as nbnet_onnx
    nbnet_onnx.export(model, "model.onnx")          # verified against onnxruntime by default
    model2 = nbnet_onnx.load("model.onnx")          # the nbnet model back

The graph takes what ``model.predict`` takes (channels-last float32, symbolic batch axis),
returns what it returns, and uses standard operators only; see ``exporter``. The opset
defaults to the newest that both the installed onnx and onnxruntime support (>= 13).
"""

from dataclasses import dataclass
from pathlib import Path

from ..errors import ExportError
from .exporter import CONVERTERS, to_onnx
from .loader import load
from .opsets import MIN_OPSET, default_opset, max_opset, supported_opsets
from .verifier import VerificationReport, run_onnxruntime, verification_data, verify

__all__ = ["export", "verify", "load", "to_onnx", "run_onnxruntime", "verification_data", "default_opset",
           "max_opset", "supported_opsets", "MIN_OPSET", "ExportResult", "VerificationReport", "CONVERTERS"]


@dataclass
class ExportResult:
    path: Path
    opset: int
    ir_version: int
    size_bytes: int
    report: VerificationReport = None  # None when verification was skipped


def export(model, path, opset=None, verify=True, *, x=None, y=None, samples=1000, keep_failed=False, data_dir=None,
           atol=1e-4, print_fn=print):
    """Write ``model`` to ``path`` as ONNX, atomically.

    With ``verify`` (the default) the graph first passes onnx.checker (full_check), strict
    shape inference and an onnxruntime-vs-``model.predict`` comparison on ``x`` (default:
    the first ``samples`` MNIST test images for an MNIST-shaped model, else seeded random
    inputs). On failure ExportError is raised (its ``report`` attribute holds the figures)
    and nothing is written at ``path`` unless ``keep_failed``. ``print_fn`` (None: silent)
    receives the report table. Returns an ExportResult.
    """
    proto = to_onnx(model, opset)
    try:
        data = proto.SerializeToString()
    except ValueError as error:  # protobuf's 2 GiB limit
        raise ExportError(f"Model '{model.name}' is too large for a single ONNX file ({error}).") from None
    report = None
    if verify:
        source = "given inputs"
        if x is None:
            x, y, source = verification_data(model, samples, data_dir)
        report = _verify(model, data, x, y, atol, source)
        report.path = str(path)
        if print_fn is not None:
            print_fn(report.table())
        if not report.passed:
            if keep_failed:
                _write(path, data)
            kept = (f"the failing file was kept at {path} (keep_failed)" if keep_failed
                    else f"nothing was written to {path} (keep the file for inspection with --keep-failed / keep_failed=True)")
            error = ExportError(f"ONNX verification of '{model.name}' failed: {'; '.join(report.failures)}; {kept}.")
            error.report = report
            raise error
    _write(path, data)
    return ExportResult(Path(path), proto.opset_import[0].version, proto.ir_version, len(data), report)


def _verify(model, data, x, y, atol, source):
    return verify(model, data, x, y, atol=atol, source=source, raise_on_failure=False)


def _write(path, data):
    from ..paths import atomic_write

    try:
        with atomic_write(path) as handle:
            handle.write(data)
    except OSError as error:
        raise ExportError(f"Cannot write {path}: {error}") from None
