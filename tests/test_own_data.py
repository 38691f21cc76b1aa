"""Your own data: image folders (Keras's image_dataset_from_directory), .npz, CSV and IDX
files built here from MNIST and Fashion-MNIST slices, trained on from the library and
from `nbnet train --data`, predicted from image files by `nbnet predict`, and bad input
named in one line, never a traceback."""

import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

import nbnet as keras  # noqa: E402
from nbnet.cli import main  # noqa: E402
from nbnet.datasets import idx, mnist, sources  # noqa: E402
from nbnet.datasets.image_folder import ImageDatasetError, index_directory, resize, split  # noqa: E402
from nbnet.errors import DatasetError  # noqa: E402
from nbnet.models import load_model  # noqa: E402
from nbnet.zoo import small_cnn  # noqa: E402

FASHION_DIR = Path("/work/shared/datasets/fashion-mnist")
DIGITS = [str(d) for d in range(10)]


@pytest.fixture(scope="module")
def digits():
    """300 training and 100 test MNIST images, uint8 (N, 28, 28), int64 labels."""
    (x_train, y_train), (x_test, y_test) = mnist.load_data(verbose=False)
    return (x_train[:300], y_train[:300].astype(np.int64)), (x_test[:100], y_test[:100].astype(np.int64))


@pytest.fixture(scope="module")
def clothes():
    """300 training and 100 test Fashion-MNIST images, read from the IDX files."""
    if not FASHION_DIR.is_dir():
        pytest.skip(f"no Fashion-MNIST IDX files in {FASHION_DIR}")
    (x_train, y_train), (x_test, y_test) = idx.load_dir(FASHION_DIR)
    return (x_train[:300], y_train[:300].astype(np.int64)), (x_test[:100], y_test[:100].astype(np.int64))


def write_folder(root, x, y, names=DIGITS, fmt="png"):
    """root/<class name>/<index>.<fmt>, one grayscale image per sample."""
    for i, (image, label) in enumerate(zip(x, y)):
        folder = Path(root) / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:05d}.{fmt}")
    return Path(root)


def write_csv(path, x, y):
    """Kaggle's digit-recognizer layout: label, pixel0..pixelN."""
    pixels = x.reshape(len(x), -1)
    lines = ["label," + ",".join(f"pixel{i}" for i in range(pixels.shape[1]))]
    lines += [f"{label}," + ",".join(map(str, row)) for label, row in zip(y, pixels)]
    Path(path).write_text("\n".join(lines) + "\n")
    return Path(path)


def write_idx_folder(folder, train, test):
    folder = Path(folder)
    folder.mkdir()
    for (x, y), (images, labels) in ((train, idx.STANDARD_FILES[:2]), (test, idx.STANDARD_FILES[2:])):
        idx.write_idx(folder / images, x)
        idx.write_idx(folder / (labels + ".gz"), y.astype(np.uint8), compress=True)
    return folder


def cli(*args):
    """What a command that must succeed prints on stdout."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.stdout


def cli_error(*args):
    """The one-line error of a command that must fail cleanly."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output and "Error: " in result.output, result.output
    return result.output


# -- image_dataset_from_directory, as Keras ----------------------------------------------
def keras_layout(root):
    """The folder Keras's index was taken from (tools: Keras 3.15 index_directory)."""
    files = {"zebra": ["a.png", "b.PNG", "c.jpg", "notes.txt", "sub/d.bmp", "sub/e.gif"],
             "apple": ["1.png", "2.png", "10.png", ".hidden/x.png"], "mango": ["m1.jpeg", "m2.png"], ".git": ["q.png"]}
    formats = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "bmp": "BMP", "gif": "GIF", "txt": "PNG"}
    for k, (name, entries) in enumerate(files.items()):
        for i, entry in enumerate(entries):
            path = Path(root) / name / entry
            path.parent.mkdir(parents=True, exist_ok=True)
            fmt = formats[entry.rsplit(".")[-1].lower()]
            Image.fromarray(np.full((6, 5), 10 * k + i, np.uint8)).save(path, format=fmt)
    Image.fromarray(np.zeros((6, 5), np.uint8)).save(Path(root) / "loose.png")
    return Path(root)


# What Keras 3.15's index_directory and get_training_or_validation_split give for keras_layout.
KERAS_SHUFFLED_1337 = ["mango/m1.jpeg", "zebra/sub/d.bmp", "apple/.hidden/x.png", "apple/1.png", "mango/m2.png",
                       "zebra/a.png", "apple/2.png", "apple/10.png", "zebra/sub/e.gif", "zebra/c.jpg", "zebra/b.PNG"]
KERAS_LABELS_1337 = [1, 2, 0, 0, 1, 2, 0, 0, 2, 2, 2]
KERAS_SORTED = ["apple/1.png", "apple/10.png", "apple/2.png", "apple/.hidden/x.png", "mango/m1.jpeg", "mango/m2.png",
                "zebra/a.png", "zebra/b.PNG", "zebra/c.jpg", "zebra/sub/d.bmp", "zebra/sub/e.gif"]
KERAS_NAMES_SEED_3 = (["apple/10.png", "apple/.hidden/x.png", "apple/2.png", "mango/m2.png", "mango/m1.jpeg",
                       "apple/1.png"], [1, 1, 1, 0, 0, 1])
KERAS_NO_LABELS = ["loose.png", ".git/q.png"] + KERAS_SORTED


def test_files_classes_and_split_are_keras_s(tmp_path, capsys):
    root = keras_layout(tmp_path / "root")
    relative = lambda paths: [os.path.relpath(p, root) for p in paths]  # noqa: E731
    paths, labels, names = index_directory(root, shuffle=True, seed=1337, verbose=False)
    assert names == ["apple", "mango", "zebra"]
    assert relative(paths) == KERAS_SHUFFLED_1337 and labels.tolist() == KERAS_LABELS_1337
    assert relative(index_directory(root, shuffle=False)[0]) == KERAS_SORTED
    paths, labels, names = index_directory(root, class_names=["mango", "apple"], shuffle=True, seed=3)
    assert names == ["mango", "apple"] and (relative(paths), labels.tolist()) == KERAS_NAMES_SEED_3
    assert relative(index_directory(root, labels=None, shuffle=False)[0]) == KERAS_NO_LABELS
    # validation_split: the last int(0.25 * 11) = 2 files of the shuffled list
    train, validation = keras.utils.image_dataset_from_directory(root, validation_split=0.25, subset="both",
                                                                 seed=1337, image_size=(6, 5), batch_size=4)
    assert relative(train.file_paths) == KERAS_SHUFFLED_1337[:9]
    assert relative(validation.file_paths) == KERAS_SHUFFLED_1337[9:]
    assert train.class_names == validation.class_names == ["apple", "mango", "zebra"]
    assert "Found 11 files belonging to 3 classes." in capsys.readouterr().out
    assert split(list(range(11)), None, 0.25, "validation", verbose=False)[0] == [9, 10]


def test_resizing_is_keras_s():
    """keras.ops.image.resize's numbers (Keras 3.15, antialias off) for small images."""
    a = np.arange(15, dtype=np.float32).reshape(3, 5, 1) ** 2
    b = (np.arange(20, dtype=np.float32).reshape(5, 4, 1) * 7) % 23
    np.testing.assert_allclose(resize(a, (4, 2))[..., 0], [[0.75, 10.75], [21.0625, 46.6875], [64.1875, 108.5625],
                                                           [115.75, 175.75]], rtol=1e-6)
    np.testing.assert_allclose(resize(b, (3, 7))[..., 0], [
        [1.6667, 4.1667, 8.1667, 12.1667, 15.6190, 15.2381, 15.0], [10.0, 12.5, 16.5, 9.0, 1.5, 5.5, 8.0],
        [18.3333, 15.3571, 10.5952, 9.6667, 9.8333, 13.8333, 16.3333]], atol=1e-4)
    np.testing.assert_array_equal(resize(a, (4, 2), "nearest")[..., 0], [[1, 9], [36, 64], [36, 64], [121, 169]])
    np.testing.assert_allclose(resize(b, (3, 7), crop_to_aspect_ratio=True)[..., 0],
                               [[10.0, 12.5, 16.5, 9.0, 1.5, 5.5, 8.0]] * 3, atol=1e-5)
    np.testing.assert_allclose(resize(a, (4, 2), pad_to_aspect_ratio=True)[..., 0],
                               [[0, 0], [0.6562, 9.4062], [101.2812, 153.7812], [0, 0]], atol=1e-4)


def test_label_modes_colour_modes_and_single_samples(tmp_path):
    root = keras_layout(tmp_path / "root")
    flow = keras.utils.image_dataset_from_directory
    ds = flow(root, shuffle=False, color_mode="grayscale", batch_size=4, image_size=(6, 5), verbose=False)
    assert len(ds) == 3 and isinstance(ds, keras.utils.PyDataset)
    x, y = ds[0]
    assert x.shape == (4, 6, 5, 1) and x.dtype == np.float32 and y.dtype == np.int32 and y.tolist() == [0, 0, 0, 0]
    assert x[0, 0, 0, 0] == 10.0  # apple/1.png holds 10 everywhere: unscaled 0..255 values, as Keras
    assert [len(b[1]) for b in ds] == [4, 4, 3]
    x, y = flow(root, shuffle=False, label_mode="categorical", batch_size=11, image_size=(3, 4), verbose=False)[0]
    assert x.shape == (11, 3, 4, 3) and y.dtype == np.float32 and y.shape == (11, 3)  # rgb by default, as Keras
    np.testing.assert_array_equal(y.argmax(axis=1), [0, 0, 0, 0, 1, 1, 2, 2, 2, 2, 2])
    x, y = flow(root, class_names=["apple", "mango"], label_mode="binary", color_mode="rgba", shuffle=False,
                verbose=False)[0]
    assert x.shape == (6, 256, 256, 4) and y.shape == (6, 1) and y[:, 0].tolist() == [0, 0, 0, 0, 1, 1]
    single = flow(root, batch_size=None, shuffle=False, image_size=(6, 5), color_mode="grayscale", verbose=False)
    assert len(single) == 11 and single[4][0].shape == (6, 5, 1) and single[4][1] == 1
    only_images = flow(root, labels=None, shuffle=False, image_size=(6, 5), verbose=False)
    assert only_images[0].shape == (13, 6, 5, 3) and only_images.class_names is None  # all 13 files, as Keras
    assert flow(root, image_size=None, shuffle=False, verbose=False).image_size == (6, 5)  # nbnet: their own size
    with pytest.raises(ValueError, match="exactly 2 classes"):
        flow(root, label_mode="binary", verbose=False)


def test_library_fit_on_an_image_folder_is_fit_on_the_arrays(tmp_path, digits):
    (x, y), _ = digits
    root = write_folder(tmp_path / "digits", x, y)
    ds = keras.utils.image_dataset_from_directory(root, color_mode="grayscale", image_size=(28, 28), shuffle=False,
                                                  batch_size=32, verbose=False)
    assert ds.class_names == DIGITS and len(ds.file_paths) == 300
    order = [int(Path(p).stem) for p in ds.file_paths]  # sorted by class folder, then by name
    images = np.concatenate([batch for batch, _ in ds])
    np.testing.assert_array_equal(images[..., 0], x[order].astype(np.float32))
    np.testing.assert_array_equal(np.concatenate([labels for _, labels in ds]), y[order])
    from_folder, from_arrays = small_cnn.build(seed=2), small_cnn.build(seed=2)
    from_folder.fit(ds, epochs=1, shuffle=False, verbose=0)
    from_arrays.fit(x[order][..., None], y[order], batch_size=32, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(from_folder.get_weights(), from_arrays.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(from_folder.predict(ds), from_arrays.predict(x[order][..., None]))
    assert from_folder.evaluate(ds, verbose=0) == pytest.approx(
        from_arrays.evaluate(x[order][..., None], y[order], verbose=0), rel=1e-5)


def test_npz_csv_and_idx_read_back_what_was_written_and_train(tmp_path, digits, clothes):
    (x, y), (x_test, y_test) = clothes
    np.savez(tmp_path / "clothes.npz", x_train=x, y_train=y, x_test=x_test, y_test=y_test)
    (npz_train, npz_y), test = sources.read_npz(tmp_path / "clothes.npz")
    np.testing.assert_array_equal(npz_train[..., 0], x)
    np.testing.assert_array_equal(test[1], y_test)
    (dx, dy), _ = digits
    images, labels, names = sources.read_pixel_csv(write_csv(tmp_path / "train.csv", dx, dy))
    assert images.dtype == np.uint8 and names is None
    np.testing.assert_array_equal(images[..., 0], dx)
    np.testing.assert_array_equal(labels, dy)
    (idx_x, idx_y), (idx_tx, idx_ty) = sources.read_idx_folder(write_idx_folder(tmp_path / "idx", (x, y),
                                                                                (x_test, y_test)))
    np.testing.assert_array_equal(idx_x[..., 0], x)
    np.testing.assert_array_equal(idx_ty, y_test)
    for train_x, train_y in ((npz_train, npz_y), (images, labels), (idx_x, idx_y)):
        model = small_cnn.build(seed=0)
        history = model.fit(train_x, train_y, epochs=1, batch_size=64, verbose=0)
        assert np.isfinite(history.history["loss"][0])
    # a CSV's labels may be names: sorted, as folder names are
    lines = ["pixel0,pixel1,pixel2,pixel3,kind", "0,1,2,3,dog", "4,5,6,7,cat", "8,9,10,11,dog"]
    (tmp_path / "named.csv").write_text("\n".join(lines))
    with pytest.raises(DatasetError, match="no label column"):  # "kind" is not one of the label columns' names
        sources.read_pixel_csv(tmp_path / "named.csv")
    (tmp_path / "named.csv").write_text("\n".join(lines).replace("kind", "label"))
    images, labels, names = sources.read_pixel_csv(tmp_path / "named.csv")
    assert names == ["cat", "dog"] and labels.tolist() == [1, 0, 1] and images[1, 1, 1, 0] == 7


# -- nbnet train --data, evaluate, predict -----------------------------------------------
@pytest.fixture(scope="module")
def trained_on_folder(tmp_path_factory, digits):
    """`nbnet train --data FOLDER` with train/ and test/ folders of MNIST PNGs."""
    (x, y), (x_test, y_test) = digits
    root = tmp_path_factory.mktemp("own") / "digits"
    write_folder(root / "train", x, y)
    write_folder(root / "test", x_test, y_test)
    output = root.parent / "digits.nbnet"
    printed = cli("train", "--data", root, "--epochs", 2, "--seed", 0, "--output", output, "--verbose", 0)
    return root, output, printed


def test_train_on_an_image_folder(trained_on_folder, digits):
    root, output, printed = trained_on_folder
    assert f"Data: {root} (a folder of class folders, in train/ and test/)" in printed
    assert "300 images, 10 classes (0, 1, 2, 3, 4, 5, 6, 7, 8, 9), 28x28 grayscale (inferred from the files" in printed
    assert f"test set: 100 images in {root / 'test'}" in printed
    assert "Model: small_cnn for input (28, 28, 1) and 10 classes" in printed
    accuracy = float(printed.split("Test accuracy: ")[1].split()[0])
    model = load_model(output)
    assert model.class_names == DIGITS and model.epochs_trained == 2
    assert model.preprocessing["image_size"] == [28, 28] and model.preprocessing["color_mode"] == "grayscale"
    assert model.preprocessing["input_scale"] == 1.0  # small_cnn rescales 0..255 itself
    # evaluate on the same folder's test/ gives the accuracy train printed
    report = cli("evaluate", output, "--data", root)
    assert f"accuracy: {accuracy:.4f}" in report and "name" not in report.splitlines()[3]
    _, (x_test, y_test) = digits
    assert model.evaluate(x_test[..., None], y_test, verbose=0)[1] == pytest.approx(accuracy, abs=1e-4)


def test_predict_image_files_as_the_arrays(trained_on_folder, digits, tmp_path):
    _, output, _ = trained_on_folder
    model = load_model(output)
    _, (x_test, _) = digits
    files = []
    for i, fmt in enumerate(["png", "bmp", "png"]):
        files.append(tmp_path / f"digit{i}.{fmt}")
        Image.fromarray(x_test[i]).save(files[-1])
    expected = model.predict(x_test[:3][..., None])
    printed = cli("predict", output, *files).splitlines()
    assert [line.split()[0] for line in printed] == [str(f) for f in files]
    assert [line.split()[1] for line in printed] == [str(c) for c in expected.argmax(axis=1)]
    np.testing.assert_allclose([float(line.split()[2]) for line in printed], expected.max(axis=1), atol=5e-5)
    # an RGB photo twice the size, and a dark digit on light paper with --invert
    Image.fromarray(x_test[3]).convert("RGB").resize((56, 56), Image.NEAREST).save(tmp_path / "big.png")
    Image.fromarray(255 - x_test[4]).save(tmp_path / "paper.png")
    from nbnet.datasets.image_folder import load_image

    big = load_image(tmp_path / "big.png", "grayscale", (28, 28))
    np.save(tmp_path / "arrays.npy", x_test[5:8])
    idx.write_idx(tmp_path / "images-idx3-ubyte", x_test[8:10])
    out = tmp_path / "p.json"
    printed = cli("predict", output, tmp_path / "big.png", tmp_path / "arrays.npy", tmp_path / "images-idx3-ubyte",
                  "--output", out).splitlines()
    expected = model.predict(np.concatenate([big[None], x_test[5:10][..., None].astype(np.float32)]))
    assert [line.split()[1] for line in printed] == [str(c) for c in expected.argmax(axis=1)]
    saved = json.loads(out.read_text())
    assert saved["class_names"] == DIGITS and saved["predictions"][1]["input"] == f"{tmp_path / 'arrays.npy'}[0]"
    np.testing.assert_allclose([row["probabilities"] for row in saved["predictions"]], expected, atol=1e-6)
    inverted = cli("predict", output, tmp_path / "paper.png", "--invert").split()
    expected = model.predict(x_test[4:5][..., None])
    assert inverted[1] == str(expected.argmax()) and float(inverted[2]) == pytest.approx(expected.max(), abs=5e-5)
    # a folder of images, and CSV output
    printed = cli("predict", output, tmp_path, "--output", tmp_path / "p.csv").splitlines()
    assert len(printed) == 5  # big, digit0-2, paper: the .npy, IDX and JSON files are not images
    header = (tmp_path / "p.csv").read_text().splitlines()[0]
    assert header == "input,class,class_name,probability," + ",".join(f"p_{d}" for d in DIGITS)


def test_predict_with_a_model_that_records_nothing(tmp_path, digits):
    """The reference MNIST model (no preprocessing record): a PNG is converted by its input
    shape and first layer, as `predict` on the uint8 array."""
    from nbnet.zoo import REFERENCE_MODEL

    model = load_model(REFERENCE_MODEL)
    _, (x_test, _) = digits
    Image.fromarray(x_test[0]).save(tmp_path / "seven.png")
    printed = cli("predict", REFERENCE_MODEL, tmp_path / "seven.png").split()
    expected = model.predict(x_test[:1][..., None])
    assert printed[1] == str(expected.argmax()) and float(printed[2]) == pytest.approx(expected.max(), abs=5e-5)


def test_train_on_npz_csv_and_idx_files(tmp_path, digits, clothes):
    (x, y), (x_test, y_test) = clothes
    np.savez(tmp_path / "clothes.npz", x_train=x, y_train=y, x_test=x_test, y_test=y_test)
    printed = cli("train", "--data", tmp_path / "clothes.npz", "--epochs", 1, "--seed", 0, "--verbose", 0,
                  "--output", tmp_path / "clothes.nbnet")
    assert "300 training images 28x28x1 (uint8 0..255), 10 classes (labels 0..9)" in printed
    assert "test set: 100 images" in printed and "Test accuracy: " in printed
    # evaluate on the built-in test set with Fashion-MNIST's class names
    report = cli("evaluate", tmp_path / "clothes.nbnet", "--dataset", "fashion_mnist", "--data-dir", FASHION_DIR)
    assert "    9  " in report and "Ankle boot" in report and report.count("\n") > 20

    printed = cli("train", "--data", write_idx_folder(tmp_path / "idx", (x, y), (x_test, y_test)), "--epochs", 1,
                  "--seed", 0, "--verbose", 0, "--output", tmp_path / "idx.nbnet")
    assert "(IDX files)" in printed and "test set: 100 images" in printed
    assert load_model(tmp_path / "idx.nbnet").get_weights()[0].tobytes() == \
        load_model(tmp_path / "clothes.nbnet").get_weights()[0].tobytes()  # the same data, the same training

    (dx, dy), _ = digits
    printed = cli("train", "--data", write_csv(tmp_path / "train.csv", dx, dy), "--validation-split", 0.2,
                  "--epochs", 1, "--seed", 0, "--verbose", 0, "--model", "mnist_cnn",
                  "--output", tmp_path / "csv.nbnet")
    assert "CSV: a label column and 28x28 pixel columns" in printed and "no test set in the data" in printed
    assert "the last 60 training images held out for validation" in printed
    assert "Validation accuracy: " in printed and "Model: mnist_cnn for input (28, 28, 1)" in printed
    report = cli("evaluate", tmp_path / "csv.nbnet", "--data", tmp_path / "train.csv")
    assert report.startswith("loss: ")


def test_resume_continues_on_the_recorded_folder_exactly(tmp_path, digits):
    (x, y), _ = digits
    root = write_folder(tmp_path / "digits", x[:200], y[:200])
    common = ["--data", root, "--validation-split", 0.25, "--seed", 3, "--verbose", 0, "--batch-size", 50]
    cli("train", *common, "--epochs", 2, "--output", tmp_path / "straight.nbnet")
    cli("train", *common, "--epochs", 1, "--output", tmp_path / "split.nbnet")
    printed = cli("train", "--resume", tmp_path / "split.nbnet", "--epochs", 2, "--verbose", 0)
    assert "Resuming" in printed and "Validation accuracy" in printed
    straight, resumed = load_model(tmp_path / "straight.nbnet"), load_model(tmp_path / "split.nbnet")
    assert resumed.preprocessing["split_seed"] == 3 and resumed.preprocessing["data"] == str(root.resolve())
    for a, b in zip(straight.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert straight.history_log == resumed.history_log


# -- bad input: named, never a traceback -------------------------------------------------
def png(path, size=(8, 8), value=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.full(size, value, np.uint8) if value is not None else np.random.default_rng(0).integers(0, 255, size)
    Image.fromarray(pixels.astype(np.uint8)).save(path)


def test_bad_image_folders_are_named(tmp_path):
    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "a" / "notes.txt").write_text("no images")
    assert "No images found in" in cli_error("train", "--data", tmp_path / "empty")
    png(tmp_path / "one" / "cats" / "1.png")
    assert "found 1 class folder (cats); a classifier needs at least two" in cli_error("train", "--data",
                                                                                        tmp_path / "one")
    png(tmp_path / "loose" / "1.png")
    assert "holds 1 image file but no class subfolders" in cli_error("train", "--data", tmp_path / "loose")
    for name, size in (("a", (8, 8)), ("b", (9, 7))):
        png(tmp_path / "mixed" / name / "1.png", size)
    message = cli_error("train", "--data", tmp_path / "mixed")
    assert "2 different sizes" in message and "8x8: 1" in message and "--image-size HxW" in message
    # not an image at all: named as soon as the headers are read
    for name in "ab":
        png(tmp_path / "junk" / name / "1.png")
    (tmp_path / "junk" / "b" / "2.png").write_text("not an image")
    assert f"{tmp_path / 'junk' / 'b' / '2.png'}: not a readable image" in cli_error("train", "--data",
                                                                                      tmp_path / "junk")
    # truncated: refused when read (as Keras fails on it), the file named
    for name in "ab":
        png(tmp_path / "cut" / name / "1.png")
    whole = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (8, 8)).astype(np.uint8)).save(whole, "PNG")
    (tmp_path / "cut" / "b" / "2.png").write_bytes(whole.getvalue()[:60])
    message = cli_error("train", "--data", tmp_path / "cut", "--epochs", 1, "--verbose", 0,
                        "--output", tmp_path / "cut.nbnet")
    assert f"{tmp_path / 'cut' / 'b' / '2.png'}: cannot read the image" in message and "truncated" in message
    with pytest.raises(DatasetError, match="truncated"):
        list(keras.utils.image_dataset_from_directory(tmp_path / "cut", image_size=(8, 8), verbose=False))


def test_bad_files_are_named(tmp_path, digits):
    lines = ["label,pixel0,pixel1,pixel2,pixel3", "1,0,0,0,0", "0,1,2,x3,4"]
    (tmp_path / "bad.csv").write_text("\n".join(lines))
    assert "bad.csv: line 3, column 'pixel2': 'x3' is not a number" in cli_error("train", "--data",
                                                                                 tmp_path / "bad.csv")
    (tmp_path / "short.csv").write_text("\n".join(lines[:2] + ["0,1,2"]))
    assert "line 3 has 3 fields, the header 5" in cli_error("train", "--data", tmp_path / "short.csv")
    (tmp_path / "nolabel.csv").write_text("a,b,c,d\n1,2,3,4\n")
    assert "no label column" in cli_error("train", "--data", tmp_path / "nolabel.csv")
    np.savez(tmp_path / "keys.npz", images=np.zeros((3, 8, 8)), labels=np.zeros(3))
    message = cli_error("train", "--data", tmp_path / "keys.npz")
    assert "no x_train and no y_train array" in message and "found: images, labels" in message
    np.savez(tmp_path / "one.npz", x_train=np.zeros((3, 8, 8), np.uint8), y_train=np.ones(3))
    assert "a classifier needs at least two classes" in cli_error("train", "--data", tmp_path / "one.npz")
    np.savez(tmp_path / "neg.npz", x_train=np.zeros((3, 8, 8), np.uint8), y_train=[0, -1, 1])
    assert "class ids must be 0 or more" in cli_error("train", "--data", tmp_path / "neg.npz")
    (tmp_path / "idx").mkdir()
    idx.write_idx(tmp_path / "idx" / "train-images-idx3-ubyte", np.zeros((3, 4, 4), np.uint8))
    assert "no training labels IDX file" in cli_error("train", "--data", tmp_path / "idx")
    assert "Give --data PATH or --dataset NAME, not both" in cli_error("train", "--data", tmp_path / "keys.npz",
                                                                       "--dataset", "mnist")


TINY = '''
from nbnet import layers, models
EPOCHS, BATCH_SIZE = 1, 16
def build(optimizer="adam", learning_rate=None, seed=None):
    model = models.Sequential([layers.Flatten(input_shape=(8, 8, 1)), layers.Dense(10, activation="softmax")],
                              name="tiny", seed=seed)
    model.compile(optimizer, "sparse_categorical_crossentropy", ["accuracy"])
    return model
'''


def test_labels_and_shapes_the_model_cannot_take(tmp_path, digits):
    (tmp_path / "tiny.py").write_text(TINY)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (40, 8, 8)).astype(np.uint8)
    np.savez(tmp_path / "twelve.npz", x_train=x, y_train=np.arange(40) % 12, x_test=x, y_test=np.arange(40) % 12)
    message = cli_error("train", "--data", tmp_path / "twelve.npz", "--model", tmp_path / "tiny.py")
    assert "labels go up to 11 (12 classes), but model 'tiny' has 10 outputs" in message
    (dx, dy), _ = digits
    np.savez(tmp_path / "digits.npz", x_train=dx, y_train=dy)
    assert "model 'tiny' takes inputs of shape (8, 8, 1), the data are images of shape (28, 28, 1)" in cli_error(
        "train", "--data", tmp_path / "digits.npz", "--model", tmp_path / "tiny.py")
    np.savez(tmp_path / "ten.npz", x_train=x, y_train=np.arange(40) % 10)
    cli("train", "--data", tmp_path / "ten.npz", "--model", tmp_path / "tiny.py", "--verbose", 0,
        "--output", tmp_path / "tiny.nbnet")
    assert "labels go up to 11, but model 'tiny' has 10 outputs" in cli_error("evaluate", tmp_path / "tiny.nbnet",
                                                                              "--data", tmp_path / "twelve.npz")
    assert "no x_test/y_test arrays" in cli_error("evaluate", tmp_path / "tiny.nbnet", "--data", tmp_path / "ten.npz")
    assert "images of shape (28, 28), but the model takes (8, 8, 1)" in cli_error(
        "predict", tmp_path / "tiny.nbnet", tmp_path / "digits.npz")
    for name in ("cat", "dog"):
        png(tmp_path / "pets" / name / "1.png")
    assert "the model records no class names, so its class folders must be numbered" in cli_error(
        "evaluate", tmp_path / "tiny.nbnet", "--data", tmp_path / "pets")
    (tmp_path / "empty").mkdir()
    assert "no image files" in cli_error("predict", tmp_path / "tiny.nbnet", tmp_path / "empty")


def test_without_pillow_the_error_names_the_extra(tmp_path, monkeypatch):
    for name in ("a", "b"):
        png(tmp_path / "pets" / name / "1.png")
    monkeypatch.setitem(sys.modules, "PIL", None)
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    assert "pip install 'nbnet[images]'" in cli_error("train", "--data", tmp_path / "pets")
    with pytest.raises(DatasetError, match=r"nbnet\[images\]"):
        keras.utils.image_dataset_from_directory(tmp_path / "pets")[0]


def test_library_errors_are_keras_value_errors(tmp_path):
    flow = keras.utils.image_dataset_from_directory
    with pytest.raises(ImageDatasetError, match="no such directory"):
        flow(tmp_path / "nowhere")
    root = keras_layout(tmp_path / "root")
    with pytest.raises(ValueError, match="give a `seed`"):
        flow(root, validation_split=0.2, subset="training")
    with pytest.raises(ValueError, match="must be set, and inversely"):
        flow(root, validation_split=0.2)
    with pytest.raises(ValueError, match="leaves 0 for validation"):
        flow(root, validation_split=0.05, subset="training", seed=1)
    with pytest.raises(ValueError, match="do not match the subfolders"):
        flow(root, class_names=["apple", "pear"])
    with pytest.raises(ValueError, match="TensorFlow's only"):
        flow(root, interpolation="area")
    with pytest.raises(ValueError, match="6x5: 11"):  # nbnet's image_size=None, one size per dataset
        png(root / "zebra" / "big.png", (7, 7))
        flow(root, image_size=None)


def test_printed_probabilities_are_probabilities():
    """A model ending in logits (as imported ONNX models may) or one sigmoid output still
    prints each input's class probability."""
    logits = np.array([[2.0, 0.0, -1.0], [0.0, 3.0, 0.0]])
    rows = sources.prediction_rows(["a", "b"], logits, ["x", "y", "z"])
    assert [row["class_name"] for row in rows] == ["x", "y"]
    assert rows[0]["probability"] == pytest.approx(np.exp(2) / (np.exp(2) + 1 + np.exp(-1)))
    rows = sources.prediction_rows(["a", "b"], np.array([[0.2], [0.9]]), ["cat", "dog"])
    assert [(row["class_name"], round(row["probability"], 6)) for row in rows] == [("cat", 0.8), ("dog", 0.9)]
    softmax = np.array([[0.1, 0.9], [0.6, 0.4]])
    np.testing.assert_array_equal(sources.as_probabilities(softmax), softmax)
    assert sources.prediction_lines(rows) == ["a  cat  0.8000", "b  dog  0.9000"]
