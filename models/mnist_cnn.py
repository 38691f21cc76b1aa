"""The classic Keras MNIST CNN: two 3x3 conv + 2x2 max-pool stages, a 64-unit dense layer
and a softmax over the 10 digits; Adam, sparse categorical cross-entropy, batch 128."""

from nbnet import layers, models, optimizers

EPOCHS = 10
BATCH_SIZE = 128


def build(optimizer="adam", learning_rate=None, seed=None):
    model = models.Sequential([
        layers.Conv2D(32, (3, 3), activation="relu", input_shape=(28, 28, 1)),
        layers.MaxPooling2D((2, 2)),
        layers.Conv2D(64, (3, 3), activation="relu"),
        layers.MaxPooling2D((2, 2)),
        layers.Flatten(),
        layers.Dense(64, activation="relu"),
        layers.Dense(10, activation="softmax"),
    ], name="mnist_cnn", seed=seed)
    model.compile(optimizer=optimizers.get(optimizer, learning_rate), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model
