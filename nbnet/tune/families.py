"""Tunable model families: builders that take their architecture as keyword arguments.

``tunable_cnn`` with its defaults is the classic MNIST CNN of ``models/mnist_cnn.py``
(32 and 64 filters, 64 units, no dropout); ``tunable_mlp`` with its defaults is
``models/mnist_mlp.py``. ``nbnet tune --model tunable_cnn`` searches over them; a definition
of your own does the same by exposing ``build_tunable(**hyperparameters)`` (or a ``build``
that takes the hyperparameters as keyword arguments).
"""

EPOCHS = 3
BATCH_SIZE = 128


def _optimizer(optimizer, learning_rate):
    from nbnet import optimizers

    return optimizers.get(optimizer, learning_rate)


def _l2(l2):
    from nbnet import regularizers

    return regularizers.l2(float(l2)) if l2 else None


def tunable_cnn(filters=32, filters2=None, units=64, dropout=0.0, l2=0.0, kernel_size=3, optimizer="adam",
                learning_rate=None, seed=None):
    """Two conv + max-pool stages (``filters``, then ``filters2``, default 2 x filters), a dense
    layer of ``units`` with ``dropout`` before and after it, softmax over 10 digits; ``l2`` on
    every kernel."""
    from nbnet import layers, models

    filters2 = int(filters2) if filters2 else 2 * int(filters)
    k = int(kernel_size)
    stack = [
        layers.Conv2D(int(filters), (k, k), activation="relu", input_shape=(28, 28, 1), kernel_regularizer=_l2(l2)),
        layers.MaxPooling2D((2, 2)),
        layers.Conv2D(filters2, (k, k), activation="relu", kernel_regularizer=_l2(l2)),
        layers.MaxPooling2D((2, 2)),
        layers.Flatten(),
    ]
    if dropout:
        stack.append(layers.Dropout(float(dropout)))
    stack.append(layers.Dense(int(units), activation="relu", kernel_regularizer=_l2(l2)))
    if dropout:
        stack.append(layers.Dropout(float(dropout)))
    stack.append(layers.Dense(10, activation="softmax", kernel_regularizer=_l2(l2)))
    model = models.Sequential(stack, name="tunable_cnn", seed=seed)
    model.compile(optimizer=_optimizer(optimizer, learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def tunable_mlp(units=256, units2=128, dropout=0.2, l2=0.0, optimizer="adam", learning_rate=None, seed=None):
    """784 -> ``units`` -> dropout -> ``units2`` (0: no second hidden layer) -> 10."""
    from nbnet import layers, models

    stack = [layers.Flatten(input_shape=(28, 28, 1)),
             layers.Dense(int(units), activation="relu", kernel_regularizer=_l2(l2))]
    if dropout:
        stack.append(layers.Dropout(float(dropout)))
    if units2:
        stack.append(layers.Dense(int(units2), activation="relu", kernel_regularizer=_l2(l2)))
    stack.append(layers.Dense(10, activation="softmax", kernel_regularizer=_l2(l2)))
    model = models.Sequential(stack, name="tunable_mlp", seed=seed)
    model.compile(optimizer=_optimizer(optimizer, learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


FAMILIES = {"tunable_cnn": tunable_cnn, "tunable_mlp": tunable_mlp}

# Used by ``nbnet tune --model tunable_cnn`` (or tunable_mlp) when no --space is given.
DEFAULT_SPACES = {
    "tunable_cnn": {
        "learning_rate": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
        "optimizer": {"type": "choice", "values": ["adam", "rmsprop"]},
        "batch_size": {"type": "choice", "values": [32, 64, 128]},
        "filters": {"type": "int", "low": 16, "high": 48, "step": 16},
        "units": {"type": "int", "low": 32, "high": 128, "step": 32},
        "dropout": {"type": "uniform", "low": 0.0, "high": 0.5},
        "l2": {"type": "choice", "values": [0.0, 1e-5, 1e-4]},
    },
    "tunable_mlp": {
        "learning_rate": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
        "optimizer": {"type": "choice", "values": ["adam", "rmsprop", "sgd"]},
        "batch_size": {"type": "choice", "values": [32, 64, 128]},
        "units": {"type": "int", "low": 64, "high": 512, "step": 64},
        "units2": {"type": "int", "low": 0, "high": 256, "step": 64},
        "dropout": {"type": "uniform", "low": 0.0, "high": 0.5},
        "l2": {"type": "choice", "values": [0.0, 1e-5, 1e-4]},
    },
}
