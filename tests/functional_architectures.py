"""Five functional-API models, written once and built twice: with ``import keras`` by
tools/keras_functional_parity.py (which records what Keras 3 computes) and with
``import nbnet as keras`` by tests/test_functional_parity.py (which checks nbnet against
that record). Nothing here imports either library: ``build(keras, name)`` takes the module.

Every layer with weights is named, so the two sides can match a weight by its layer's
name as well as by its place in ``get_weights()``. No Dropout (random masks differ); where
Maximum or Minimum pick between inputs, at most one of them is relu-clamped, so the
inputs do not tie (Keras on PyTorch splits a tied gradient, TensorFlow and nbnet do not).
"""

# name -> the loss each model is compiled with (its targets: see LABELS).
LOSSES = {
    "residual_mlp": "sparse_categorical_crossentropy",
    "residual_cnn": "sparse_categorical_crossentropy",
    "inception": "categorical_crossentropy",
    "siamese": "binary_crossentropy",
    "nested": "sparse_categorical_crossentropy",
}
NAMES = tuple(LOSSES)


def residual_mlp(keras):
    """x + Dense(Dense(x)), the identity shortcut of a residual MLP, with layers.add."""
    layers = keras.layers
    inputs = keras.Input(shape=(6,), name="features")
    x = layers.Dense(8, activation="relu", name="stem")(inputs)
    h = layers.Dense(8, activation="relu", name="block_dense_1")(x)
    h = layers.Dense(8, name="block_dense_2")(h)
    x = layers.add([x, h], name="residual_add")
    x = layers.Activation("relu", name="residual_relu")(x)
    outputs = layers.Dense(3, activation="softmax", name="classifier")(x)
    return keras.Model(inputs, outputs, name="residual_mlp")


def residual_cnn(keras):
    """A ResNet-style stem, an identity block (conv-BN-relu-conv-BN + shortcut, layers.Add)
    and a downsampling block whose shortcut is a strided 1x1 conv with BN, written before
    its main branch; then GlobalAveragePooling2D and a softmax Dense. Convs before a BN have
    no bias, as in ResNet (a bias there has a zero gradient, which Adam turns into noise)."""
    layers = keras.layers
    inputs = keras.Input(shape=(8, 8, 2), name="image")
    x = layers.Conv2D(4, 3, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.Activation("relu", name="stem_relu")(x)

    y = layers.Conv2D(4, 3, padding="same", use_bias=False, name="id_conv_1")(x)
    y = layers.BatchNormalization(name="id_bn_1")(y)
    y = layers.Activation("relu", name="id_relu_1")(y)
    y = layers.Conv2D(4, 3, padding="same", use_bias=False, name="id_conv_2")(y)
    y = layers.BatchNormalization(name="id_bn_2")(y)
    x = layers.Add(name="id_add")([x, y])
    x = layers.Activation("relu", name="id_relu_out")(x)

    shortcut = layers.Conv2D(6, 1, strides=2, use_bias=False, name="down_shortcut_conv")(x)
    shortcut = layers.BatchNormalization(name="down_shortcut_bn")(shortcut)
    y = layers.Conv2D(6, 3, strides=2, padding="same", use_bias=False, name="down_conv_1")(x)
    y = layers.BatchNormalization(name="down_bn_1")(y)
    y = layers.Activation("relu", name="down_relu_1")(y)
    y = layers.Conv2D(6, 3, padding="same", use_bias=False, name="down_conv_2")(y)
    y = layers.BatchNormalization(name="down_bn_2")(y)
    x = layers.Add(name="down_add")([shortcut, y])
    x = layers.Activation("relu", name="down_relu_out")(x)

    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(3, activation="softmax", name="classifier")(x)
    return keras.Model(inputs, outputs, name="residual_cnn")


def inception(keras):
    """An Inception block: a 1x1 conv, a 1x1-reduce then 3x3 'same' conv, and a 3x3
    max-pool ('same', stride 1) then 1x1 conv, joined by Concatenate on the channels;
    then MaxPooling2D, Flatten and a softmax Dense."""
    layers = keras.layers
    inputs = keras.Input(shape=(8, 8, 3), name="image")
    b1 = layers.Conv2D(4, 1, activation="relu", name="branch_1x1")(inputs)
    b2 = layers.Conv2D(3, 1, activation="relu", name="branch_3x3_reduce")(inputs)
    b2 = layers.Conv2D(4, 3, padding="same", activation="relu", name="branch_3x3")(b2)
    b3 = layers.MaxPooling2D(3, strides=1, padding="same", name="branch_pool")(inputs)
    b3 = layers.Conv2D(2, 1, activation="relu", name="branch_pool_proj")(b3)
    x = layers.Concatenate(name="mixed")([b1, b2, b3])
    x = layers.MaxPooling2D(name="downsample")(x)
    x = layers.Flatten(name="flatten")(x)
    outputs = layers.Dense(3, activation="softmax", name="classifier")(x)
    return keras.Model(inputs, outputs, name="inception")


def siamese(keras):
    """Two inputs through one shared Dense (its weights used twice, gradients summed),
    compared by Subtract and Multiply, concatenated (layers.concatenate) with both
    embeddings; a sigmoid output for binary_crossentropy."""
    layers = keras.layers
    left = keras.Input(shape=(5,), name="left")
    right = keras.Input(shape=(5,), name="right")
    shared = layers.Dense(6, activation="relu", name="shared_embedding")
    a, b = shared(left), shared(right)
    difference = layers.Subtract(name="difference")([a, b])
    product = layers.Multiply(name="product")([a, b])
    x = layers.concatenate([difference, product, a, b], name="joined")
    x = layers.Dense(4, activation="relu", name="head")(x)
    outputs = layers.Dense(1, activation="sigmoid", name="similarity")(x)
    return keras.Model([left, right], outputs, name="siamese")


def nested(keras):
    """A Sequential encoder and a functional gate (Maximum of a relu and a linear Dense)
    called as layers inside a functional model; a linear skip Dense from the input, the
    Minimum of gate and skip, the Average of three tensors, a softmax Dense."""
    layers = keras.layers
    encoder = keras.Sequential([keras.Input(shape=(6,)), layers.Dense(8, activation="relu", name="enc_1"),
                                layers.Dense(5, activation="relu", name="enc_2")], name="encoder")
    gate_input = keras.Input(shape=(5,), name="gate_input")
    p = layers.Dense(5, activation="relu", name="gate_relu")(gate_input)
    q = layers.Dense(5, name="gate_linear")(gate_input)
    gate = keras.Model(gate_input, layers.Maximum(name="gate_max")([p, q]), name="gate")

    inputs = keras.Input(shape=(6,), name="features")
    encoded = encoder(inputs)
    gated = gate(encoded)
    skip = layers.Dense(5, name="skip")(inputs)
    low = layers.Minimum(name="low")([gated, skip])
    x = layers.average([low, encoded, skip], name="mean")
    outputs = layers.Dense(3, activation="softmax", name="classifier")(x)
    return keras.Model(inputs, outputs, name="nested")


def two_heads(keras):
    """Two outputs from one trunk: a softmax classifier and a linear regressor that also
    sees the input (compiled with TWO_HEADS_COMPILE: a loss, a loss weight and metrics each)."""
    layers = keras.layers
    inputs = keras.Input(shape=(7,), name="features")
    trunk = layers.Dense(6, activation="relu", name="trunk")(inputs)
    classes = layers.Dense(3, activation="softmax", name="classes")(trunk)
    value = layers.Dense(2, name="value")(layers.concatenate([trunk, inputs], name="with_input"))
    return keras.Model(inputs, [classes, value], name="two_heads")


TWO_HEADS_COMPILE = {"loss": {"classes": "sparse_categorical_crossentropy", "value": "mse"},
                     "loss_weights": {"classes": 1.0, "value": 0.5},
                     "metrics": {"classes": ["accuracy"], "value": ["mae"]}}

_BUILDERS = {"residual_mlp": residual_mlp, "residual_cnn": residual_cnn, "inception": inception,
             "siamese": siamese, "nested": nested}


def build(keras, name):
    """The model ``name`` (one of NAMES), built with the library module ``keras``."""
    return _BUILDERS[name](keras)
