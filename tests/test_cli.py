"""The nbnet command, end to end on real MNIST with a tiny model definition."""

import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from nbnet.cli import main
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

    result = runner.invoke(main, ["evaluate", str(output)])
    assert result.exit_code == 0, result.output
    assert "confusion matrix" in result.output and "accuracy:" in result.output

    images = np.zeros((3, 28, 28), np.uint8)
    images[1, 10:18, 14] = 255  # a vertical stroke
    np.save(tmp_path / "images.npy", images)
    result = runner.invoke(main, ["predict", str(output), str(tmp_path / "images.npy"),
                                  "--output", str(tmp_path / "p.npy")])
    assert result.exit_code == 0, result.output
    classes = [int(line) for line in result.stdout.split()]
    assert len(classes) == 3 and all(0 <= c <= 9 for c in classes)
    assert np.load(tmp_path / "p.npy").shape == (3, 10)

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
