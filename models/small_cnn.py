"""A small CNN for images of any size and channel count (what `nbnet train --data` builds
unless told otherwise): Rescaling(1/255), then 3x3 conv (same padding) + 2x2 max-pool
stages, 32 filters doubling to at most 128, until the smaller side is under 12 pixels and
the flattened features at most 4096 (28x28: two stages, 7x7x64; 256x256: six, 4x4x128),
then dropout, a 128-unit dense layer and a softmax over ``num_classes``. Adam, sparse
categorical cross-entropy.

It takes 0..255 pixels as they are (uint8 arrays stay uint8 in fit), as
image_dataset_from_directory gives them."""

from nbnet import layers, models, optimizers

EPOCHS = 10
BATCH_SIZE = 64


def build(input_shape=(28, 28, 1), num_classes=10, optimizer="adam", learning_rate=None, seed=None):
    height, width, _ = (int(d) for d in input_shape)
    stack = [layers.Rescaling(1.0 / 255.0, input_shape=tuple(input_shape))]
    filters = 32
    while True:
        stack.append(layers.Conv2D(filters, (3, 3), padding="same", activation="relu"))
        if min(height, width) < 2 or (min(height, width) < 12 and height * width * filters <= 4096):
            break
        stack.append(layers.MaxPooling2D((2, 2)))
        height, width = height // 2, width // 2
        if min(height, width) < 12 and height * width * filters <= 4096:
            break
        filters = min(filters * 2, 128)
    stack += [layers.Flatten(), layers.Dropout(0.25), layers.Dense(128, activation="relu"),
              layers.Dense(int(num_classes), activation="softmax")]
    model = models.Sequential(stack, name="small_cnn", seed=seed)
    model.compile(optimizer=optimizers.get(optimizer, learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model
