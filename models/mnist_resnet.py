"""A small residual network for MNIST, written with Keras's functional API: a 3x3 conv
stem, then three residual blocks (conv-BatchNormalization-ReLU-conv-BatchNormalization
added to the block's input, then ReLU), the first at 14x14 with 16 channels, two at 7x7
with 32 (a 1x1 conv widens the shortcut between them), global average pooling and a
softmax. Adam, sparse categorical cross-entropy, batch 128.

Convs before a BatchNormalization carry no bias, as in ResNet: the normalisation removes
it anyway (its gradient would be zero). It starts with Rescaling(1/255), so fit keeps
MNIST's uint8 pixels as they are."""

from nbnet import Input, Model, layers, optimizers, utils

EPOCHS = 5
BATCH_SIZE = 128


def residual_block(x, filters, name):
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv1")(x)
    y = layers.BatchNormalization(name=f"{name}_bn1")(y)
    y = layers.ReLU(name=f"{name}_relu1")(y)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv2")(y)
    y = layers.BatchNormalization(name=f"{name}_bn2")(y)
    return layers.ReLU(name=f"{name}_out")(layers.add([x, y], name=f"{name}_add"))


def build(optimizer="adam", learning_rate=None, seed=None):
    if seed is not None:
        utils.set_random_seed(seed)  # the layers draw their weights as they are called
    inputs = Input(shape=(28, 28, 1), name="image")
    x = layers.Rescaling(1.0 / 255.0)(inputs)
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="stem")(x)
    x = layers.MaxPooling2D(name="stem_pool")(x)
    x = residual_block(x, 16, "block1")
    x = layers.MaxPooling2D(name="pool")(x)
    x = layers.Conv2D(32, 1, name="widen")(x)
    x = residual_block(x, 32, "block2")
    x = residual_block(x, 32, "block3")
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(10, activation="softmax", name="digits")(x)
    model = Model(inputs, outputs, name="mnist_resnet", seed=seed)
    model.compile(optimizer=optimizers.get(optimizer, learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model
