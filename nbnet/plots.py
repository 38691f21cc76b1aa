"""Pictures of training and evaluation, through matplotlib (``pip install 'nbnet[plots]'``):
learning curves, a confusion matrix, and a grid of the worst-misclassified images. Each
function writes one PNG (atomically) and returns its path. Figures are drawn on
matplotlib's Agg canvas without pyplot, so nothing changes the caller's backend."""

from pathlib import Path

import numpy as np

from .errors import NbnetError
from .paths import atomic_write


def require_matplotlib():
    """matplotlib's Figure, or an error naming the extra that installs it (checked before
    training starts, so a missing extra does not cost a run)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise NbnetError("Plots need matplotlib: pip install 'nbnet[plots]' (or pip install matplotlib).") from None
    return Figure


def _figure(width, height):
    return require_matplotlib()(figsize=(width, height), dpi=100, layout="constrained")


def _save(figure, path):
    path = Path(path)
    with atomic_write(path) as handle:
        figure.savefig(handle, format="png")
    return path


def _epochs_for(values, epochs):
    """The epochs a series was logged at: every epoch, or every k-th (validation_freq)."""
    if len(values) == len(epochs) or not values:
        return epochs[:len(values)]
    every = max(1, round(len(epochs) / len(values)))
    return epochs[every - 1::every][:len(values)]


def learning_curves(history, path, title=None):
    """Loss and accuracy per epoch, training and validation, side by side."""
    history = {key: list(values) for key, values in (history or {}).items()}
    if not history.get("loss"):
        raise NbnetError("No training history to plot: the model has not been trained for an epoch yet.")
    epochs = list(range(1, len(history["loss"]) + 1))
    accuracy = next((key for key in history if not key.startswith("val_") and "acc" in key), None)
    panels = [("loss", "loss")] + ([(accuracy, "accuracy")] if accuracy else [])
    figure = _figure(5.5 * len(panels), 4.2)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, (key, label) in zip(axes, panels):
        for series, name, style in ((key, "training", "o-"), (f"val_{key}", "validation", "s--")):
            values = history.get(series)
            if values:
                ax.plot(_epochs_for(values, epochs), values, style, label=name, markersize=4)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_title(label)
        ax.grid(True, alpha=0.3)
        ax.legend()
        if len(epochs) <= 20:
            ax.set_xticks(epochs)
        if label == "accuracy":
            last = history[key][-1]
            val = history.get(f"val_{key}")
            ax.set_title(f"accuracy (last: {last:.4f}" + (f", validation {val[-1]:.4f})" if val else ")"))
    if title:
        figure.suptitle(_wrap(title, figure))
    return _save(figure, path)


def _wrap(title, figure):
    """The title's lines wrapped to the figure's width (about 11 characters an inch)."""
    import textwrap

    width = max(20, int(figure.get_figwidth() * 11))
    return "\n".join(textwrap.fill(line, width) for line in str(title).splitlines())


def _labels(class_names, count):
    return [str(name) for name in class_names] if class_names else [str(i) for i in range(count)]


def confusion_matrix(confusion, path, class_names=None, title=None):
    """Rows: true class, columns: predicted; each cell's count, coloured by its share of the row."""
    confusion = np.asarray(confusion)
    count = len(confusion)
    names = _labels(class_names, count)
    shares = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    size = min(max(5.0, 0.55 * count + 2.5), 16.0)
    figure = _figure(size + 1.2, size)
    ax = figure.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ax.set_xticks(range(count))
    ax.set_yticks(range(count))
    rotate = max(len(name) for name in names) > 3
    ax.set_xticklabels(names, rotation=45 if rotate else 0, ha="right" if rotate else "center")
    ax.set_yticklabels(names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if count <= 30:
        font = 9 if count <= 12 else 7 if count <= 20 else 5
        for row in range(count):
            for column in range(count):
                if confusion[row, column]:
                    ax.text(column, row, str(int(confusion[row, column])), ha="center", va="center", fontsize=font,
                            color="white" if shares[row, column] > 0.5 else "black")
    accuracy = np.trace(confusion) / max(confusion.sum(), 1)
    summary = f"confusion matrix: accuracy {accuracy:.4f} on {confusion.sum()} images"
    ax.set_title(_wrap(f"{title}\n{summary}" if title else summary, figure))
    return _save(figure, path)


def worst_misclassified(images, true, predicted, probabilities, path, class_names=None, count=25, title=None):
    """A grid of the misclassified images the model was most sure of (lowest probability
    given to the true class first), each titled with its true and predicted class."""
    true, predicted = np.asarray(true), np.asarray(predicted)
    wrong = np.flatnonzero(true != predicted)
    order = wrong[np.argsort(probabilities[wrong, true[wrong]], kind="stable")][:count]
    return image_grid(images(order) if callable(images) else np.asarray(images)[order],
                      [f"true: {_name(class_names, true[i])}\npred: {_name(class_names, predicted[i])} "
                       f"({probabilities[i, predicted[i]]:.2f})" for i in order], path,
                      title=(f"{title}\n" if title else "") + (f"the {len(order)} worst of {len(wrong)} misclassified "
                                                               f"(of {len(true)})" if len(wrong) else
                                                               f"none of {len(true)} misclassified"),
                      empty="no misclassified images")


def _name(class_names, index):
    return str(class_names[index]) if class_names and index < len(class_names) else str(int(index))


def image_grid(images, captions, path, title=None, empty="no images"):
    """Images (N, H, W, C), pixel values 0..255 or 0..1, in a near-square grid with captions."""
    count = len(captions)
    columns = max(1, min(5, count))
    rows = max(1, -(-count // columns))
    figure = _figure(max(2.1 * columns, 6.0), 2.4 * rows + 0.4)  # wide enough for the title
    axes = figure.subplots(rows, columns, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    if not count:
        axes[0, 0].text(0.5, 0.5, empty, ha="center", va="center", fontsize=12)
    for ax, image, caption in zip(axes.ravel(), images, captions):
        image = np.asarray(image, np.float32)
        top = 255.0 if image.max() > 1.0 else 1.0
        if image.ndim == 3 and image.shape[-1] == 1:
            ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=top)
        else:
            ax.imshow(np.clip(image / top, 0, 1))
        ax.set_title(caption, fontsize=9)
    if title:
        figure.suptitle(_wrap(title, figure))
    return _save(figure, path)
