"""Keras's functional API on MNIST: a small residual network, then a model with two inputs
(the image and a hint vector) and two outputs (the digit and whether it is even), saved as
a .keras file and loaded back. Ported from Keras by changing the import lines only:
`import keras` -> `import nbnet as keras`, `from keras import layers` -> `from nbnet import
layers`."""

import numpy as np

import nbnet as keras
from nbnet import layers

(x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
x_train = np.expand_dims(x_train, -1).astype("float32") / 255
x_test = np.expand_dims(x_test, -1).astype("float32") / 255


def conv_bn(x, filters):
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
    return layers.BatchNormalization(momentum=0.9)(x)


image = keras.Input(shape=(28, 28, 1), name="image")
x = layers.Conv2D(16, 3, strides=2, padding="same", activation="relu")(image)   # 14x14
shortcut = x
x = layers.ReLU()(conv_bn(x, 16))
x = conv_bn(x, 16)
x = layers.ReLU()(layers.add([x, shortcut]))
x = layers.MaxPooling2D()(x)                                                       # 7x7
shortcut = layers.Conv2D(24, 1)(x)
x = layers.ReLU()(conv_bn(x, 24))
x = conv_bn(x, 24)
x = layers.Activation("relu")(layers.Add()([x, shortcut]))
features = layers.GlobalAveragePooling2D()(x)
logits = layers.Dense(10)(features)
resnet = keras.Model(image, logits, name="small_resnet")
resnet.summary()

resnet.compile(optimizer=keras.optimizers.Adam(learning_rate=3e-3),
               loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["acc"])
history = resnet.fit(x_train, y_train, batch_size=64, epochs=3, validation_split=0.1)
score = resnet.evaluate(x_test, y_test, verbose=0)
print("resnet test loss:", score[0], "test accuracy:", score[1])

# Two inputs, two outputs: the residual trunk is shared, called as a layer.
hint = keras.Input(shape=(4,), name="hint")
trunk = keras.Model(image, features, name="trunk")
joined = layers.concatenate([trunk(image), layers.Dense(8, activation="relu")(hint)])
digit = layers.Dense(10, activation="softmax", name="digit")(joined)
even = layers.Dense(1, activation="sigmoid", name="even")(joined)
model = keras.Model(inputs=[image, hint], outputs=[digit, even], name="two_heads")
model.compile(optimizer="adam",
              loss={"digit": "sparse_categorical_crossentropy", "even": "binary_crossentropy"},
              loss_weights={"digit": 1.0, "even": 0.5},
              metrics={"digit": ["accuracy"], "even": ["accuracy"]})
rng = np.random.default_rng(0)
hints_train = rng.normal(size=(len(x_train), 4)).astype("float32")
hints_test = rng.normal(size=(len(x_test), 4)).astype("float32")
targets_train = {"digit": y_train, "even": (y_train % 2 == 0).astype("float32")}
targets_test = {"digit": y_test, "even": (y_test % 2 == 0).astype("float32")}
model.fit({"image": x_train, "hint": hints_train}, targets_train, batch_size=64, epochs=1)
results = model.evaluate({"image": x_test, "hint": hints_test}, targets_test, verbose=0, return_dict=True)
print(results)
digit_probabilities, even_probabilities = model.predict([x_test, hints_test])

resnet.save("small_resnet.keras")
reloaded = keras.models.load_model("small_resnet.keras")
np.testing.assert_allclose(reloaded.predict(x_test[:100]), resnet.predict(x_test[:100]), rtol=1e-5, atol=1e-5)
