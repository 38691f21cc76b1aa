"""A multilayer perceptron for MNIST: 784 -> 256 -> 128 -> 10 with dropout; Adam."""

from nbnet import layers, models, optimizers

EPOCHS = 10
BATCH_SIZE = 128


def build(optimizer="adam", learning_rate=None, seed=None):
    model = models.Sequential([
        layers.Flatten(input_shape=(28, 28, 1)),
        layers.Dense(256, activation="relu"),
        layers.Dropout(0.2),
        layers.Dense(128, activation="relu"),
        layers.Dense(10, activation="softmax"),
    ], name="mnist_mlp", seed=seed)
    model.compile(optimizer=optimizers.get(optimizer, learning_rate), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model
