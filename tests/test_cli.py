"""The nbnet command, end to end on real MNIST with a tiny model definition."""

import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from nbnet import layers, models
from nbnet.cli import main
from nbnet.datasets import idx, mnist
from nbnet.models import load_model

TINY_DEFINITION = '''
from nbnet import layers, models, optimizers

EPOCHS = 1
BATCH_SIZE = 256


def build(optimizer="adam", learning_rate=None, seed=None):
    model = models.Sequential([layers.Flatten(input_shape=(28, 28, 1)), layers.Dense(32, activation="relu"),
                               layers.Dense(10, activation="softmax")], name="tiny", seed=seed)
    model.compile(optimizers.get(optimizer, learning_rate), "sparse_categorical_crossentropy", ["accuracy"])
    return model
'''


def _evaluate_report(output):
    """The numbers `nbnet evaluate` prints: loss, accuracy, per-class accuracy and count, confusion matrix."""
    lines = output.splitlines()
    report = {"loss": float(lines[0].removeprefix("loss: ")), "accuracy": float(lines[1].removeprefix("accuracy: "))}
    start = lines.index("class  accuracy  count") + 1
    rows = [line.split() for line in lines[start:start + 10]]
    assert [int(row[0]) for row in rows] == list(range(10)), output
    report["class_accuracy"] = np.array([float(row[1]) for row in rows])
    report["counts"] = np.array([int(row[2]) for row in rows])
    start = next(i for i, line in enumerate(lines) if line.startswith("confusion matrix")) + 2
    matrix = np.array([[int(n) for n in line.split()] for line in lines[start:start + 10]])
    assert matrix.shape == (10, 11) and matrix[:, 0].tolist() == list(range(10)), output
    report["confusion"] = matrix[:, 1:]
    return report


def test_help_and_version_start_without_importing_numba():
    code = "import sys; from nbnet.cli import main; print('numba' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and "nbnet, version" in result.output


def test_train_resume_evaluate_predict_summary(tmp_path):
    definition = tmp_path / "tiny.py"
    definition.write_text(TINY_DEFINITION)
    output = tmp_path / "tiny.nbnet"
    runner = CliRunner()
    result = runner.invoke(main, ["train", "--model", str(definition), "--seed", "1", "--output", str(output),
                                  "--verbose", "2"])
    assert result.exit_code == 0, result.output
    assert "Epoch 1/1" in result.output and f"Saved model to {output}" in result.output
    accuracy = float(result.output.split("Test accuracy: ")[1].split()[0])
    assert accuracy > 0.85  # one epoch of a 32-unit MLP on all of MNIST

    result = runner.invoke(main, ["train", "--resume", str(output), "--epochs", "2", "--verbose", "2"])
    assert result.exit_code == 0, result.output
    assert "Resuming" in result.output and "Epoch 2/2" in result.output and "Epoch 1/2" not in result.output
    assert load_model(output).epochs_trained == 2

    # evaluate and predict print what the Python API gives on the same model and data.
    model = load_model(output)
    _, (x_test, y_test) = mnist.load_data(verbose=False)
    x = x_test[..., None] * np.float32(1 / 255)  # as the MNIST models were trained
    loss, accuracy = model.evaluate(x, y_test, verbose=0)
    probabilities = model.predict(x)
    predicted = probabilities.argmax(axis=1)
    confusion = np.zeros((10, 10), np.int64)
    np.add.at(confusion, (y_test.astype(np.int64), predicted), 1)
    assert accuracy == pytest.approx(np.mean(predicted == y_test), abs=1e-6)

    result = runner.invoke(main, ["evaluate", str(output)])
    assert result.exit_code == 0, result.output
    printed = _evaluate_report(result.output)
    half_unit = 5e-5 + 1e-6  # printed to 4 decimals
    assert abs(printed["loss"] - loss) <= half_unit and abs(printed["accuracy"] - accuracy) <= half_unit, result.output
    np.testing.assert_array_equal(printed["counts"], np.bincount(y_test, minlength=10))
    np.testing.assert_allclose(printed["class_accuracy"], confusion.diagonal() / confusion.sum(axis=1), atol=half_unit)
    np.testing.assert_array_equal(printed["confusion"], confusion)

    images = np.concatenate([x_test[:40], np.zeros((2, 28, 28), np.uint8)])
    images[41, 10:18, 14] = 255  # a vertical stroke
    np.save(tmp_path / "images.npy", images)
    idx.write_idx(tmp_path / "images-idx3-ubyte", images)
    expected = model.predict(images[..., None] * np.float32(1 / 255))
    np.testing.assert_array_equal(expected[:40].argmax(axis=1), predicted[:40])
    for source in ("images.npy", "images-idx3-ubyte"):
        result = runner.invoke(main, ["predict", str(output), str(tmp_path / source),
                                      "--output", str(tmp_path / "p.npy")])
        assert result.exit_code == 0, result.output
        classes = [int(line.split()[1]) for line in result.stdout.splitlines()]  # input, class, probability
        assert classes == expected.argmax(axis=1).tolist()
        np.testing.assert_allclose(np.load(tmp_path / "p.npy"), expected, rtol=1e-6, atol=1e-7)

    result = runner.invoke(main, ["summary", str(output)])
    assert result.exit_code == 0 and "Total params: 25,450" in result.output


def test_errors_are_one_clear_line(tmp_path):
    bad = tmp_path / "bad.nbnet"
    bad.write_bytes(b"not a model")
    result = CliRunner().invoke(main, ["evaluate", str(bad)])
    assert result.exit_code == 1 and "truncated or corrupt" in result.output
    result = CliRunner().invoke(main, ["train", "--model", "no_such_model"])
    assert result.exit_code == 1 and "Unknown model 'no_such_model'" in result.output


def test_device_cuda_without_a_gpu_says_what_is_missing():
    from nbnet.kernels.cuda import available

    usable, reason = available()
    if usable:
        pytest.skip("a GPU is usable here")
    result = CliRunner().invoke(main, ["train", "--device", "cuda", "--epochs", "1"])
    assert result.exit_code == 1 and "device='cuda' was requested" in result.output and reason in result.output


def test_sigint_mid_epoch_saves_a_checkpoint_and_resume_is_bit_identical(tmp_path):
    import os
    import signal
    import time

    definition = tmp_path / "tiny.py"
    definition.write_text(TINY_DEFINITION.replace("BATCH_SIZE = 256", "BATCH_SIZE = 16"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    base = [sys.executable, "-m", "nbnet.cli", "train", "--model", str(definition), "--seed", "5", "--epochs", "2",
            "--verbose", "2"]
    reference = tmp_path / "reference.nbnet"
    subprocess.run(base + ["--output", str(reference)], check=True, capture_output=True, env=env)

    checkpoint = tmp_path / "interrupted.nbnet"
    process = subprocess.Popen(base + ["--output", str(checkpoint)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env)
    for line in process.stdout:
        if line.startswith("Epoch 1/2"):
            break
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Checkpoint saved to" in err and f"nbnet train --resume {checkpoint}" in err
    stopped = load_model(checkpoint)
    assert stopped.resume_point is not None and stopped.epochs_trained == 0

    resumed = subprocess.run([sys.executable, "-m", "nbnet.cli", "train", "--resume", str(checkpoint),
                              "--verbose", "0"], capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr
    for got, expected in zip(load_model(checkpoint).get_weights(), load_model(reference).get_weights()):
        np.testing.assert_array_equal(got, expected)


def test_warmup_compiles_the_kernels_a_model_uses():
    result = CliRunner().invoke(main, ["warmup", "--model", "mnist_mlp"])
    assert result.exit_code == 0, result.output
    assert "Compiling kernels" in result.output and "Kernels ready in" in result.output


def test_commands_take_a_keras_file(tmp_path):
    from pathlib import Path

    keras_file = Path(__file__).parent / "fixtures" / "keras_files" / "cnn_batchnorm.keras"
    runner = CliRunner()
    result = runner.invoke(main, ["summary", str(keras_file)])
    assert result.exit_code == 0, result.output
    assert "(BatchNormalization)" in result.output and "Total params: 359" in result.output
    result = runner.invoke(main, ["export", str(keras_file), str(tmp_path / "m.onnx"), "--verify-samples", "50"])
    assert result.exit_code == 0, result.output
    import onnxruntime

    model = load_model(keras_file)
    x = np.random.default_rng(3).uniform(0, 255, (5, 12, 12, 1)).astype(np.float32)
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"input": x})[0], model.predict(x), atol=1e-5)


def test_train_resumes_a_keras_file(tmp_path):
    path = tmp_path / "m.keras"
    model = models.Sequential([layers.Input((28, 28, 1)), layers.Flatten(), layers.Dense(16, activation="relu"),
                               layers.Dense(10, activation="softmax")], seed=0)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.save(path)
    result = CliRunner().invoke(main, ["train", "--resume", str(path), "--epochs", "1", "--batch-size", "256"])
    assert result.exit_code == 0, result.output
    trained = load_model(path)  # still a Keras file, now with the optimizer's state
    assert trained.optimizer.iterations == 235  # 60000 images in batches of 256
    accuracy = float(result.output.split("Test accuracy: ")[1].split(" ")[0])
    assert accuracy > 0.85


def test_a_foreign_onnx_model_takes_its_own_pixel_scale_and_fine_tunes_beside_its_file(tmp_path):
    """The ONNX zoo's mnist-8 takes raw 0..255 pixels: `--input-scale 1` feeds them so, and
    the fine-tuned model records it; the foreign file itself is never overwritten."""
    from pathlib import Path

    import onnxruntime

    zoo_file = Path(__file__).resolve().parents[2] / "shared" / "onnx" / "mnist-8.onnx"
    if not zoo_file.is_file():
        pytest.skip("the zoo's mnist-8.onnx is not in ../shared/onnx")
    foreign = tmp_path / "mnist-8.onnx"
    foreign.write_bytes(zoo_file.read_bytes())
    runner = CliRunner()
    report = _evaluate_report(runner.invoke(main, ["evaluate", str(foreign), "--input-scale", "1"]).output)

    (_, _), (x_test, y_test) = mnist.load_data(verbose=False)
    session = onnxruntime.InferenceSession(str(foreign), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    pixels = x_test.astype(np.float32).reshape(-1, 1, 1, 28, 28)  # the file fixes its batch at 1
    logits = np.concatenate([session.run(None, {name: image})[0] for image in pixels]).astype(np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    loss = np.mean(np.log(np.exp(shifted).sum(axis=1)) - shifted[np.arange(len(y_test)), y_test])
    assert report["accuracy"] == pytest.approx(np.mean(logits.argmax(axis=1) == y_test), abs=1e-4)
    assert report["loss"] == pytest.approx(loss, rel=1e-3)
    scaled = _evaluate_report(runner.invoke(main, ["evaluate", str(foreign), "--input-scale", "1/255"]).output)
    assert scaled["loss"] < report["loss"] / 10  # logits 255 times smaller: another model in effect

    before = foreign.read_bytes()
    result = runner.invoke(main, ["train", "--resume", str(foreign), "--input-scale", "1", "--epochs", "1",
                                  "--batch-size", "1000", "--lr", "1e-4", "--verbose", "0"])
    assert result.exit_code == 0, result.output
    assert foreign.read_bytes() == before
    tuned = foreign.with_suffix(".nbnet")
    assert load_model(tuned).preprocessing["input_scale"] == 1.0
    from nbnet.errors import ModelFileError

    with pytest.raises(ModelFileError, match="nbnet.onnx.export"):  # an archive named .onnx would look corrupt
        load_model(tuned).save(tmp_path / "y.onnx")
    accuracy = float(result.output.split("Test accuracy: ")[1].split(" ")[0])
    assert accuracy >= report["accuracy"] - 0.002, result.output
    again = _evaluate_report(runner.invoke(main, ["evaluate", str(tuned)]).output)  # the scale comes from the file
    assert again["accuracy"] == pytest.approx(accuracy, abs=1e-4)
    result = runner.invoke(main, ["train", "--resume", str(foreign), "--output", str(tmp_path / "x.onnx")])
    assert result.exit_code == 2 and "nbnet export" in result.output
