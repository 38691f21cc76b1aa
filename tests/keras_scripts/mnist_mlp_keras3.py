"""An MLP on MNIST in the manner of the Keras 3 examples. Ported from Keras by changing
the import lines only: `import keras` -> `import nbnet as keras`, `from keras import
layers` -> `from nbnet import layers`."""

import numpy as np

import nbnet as keras
from nbnet import layers

num_classes = 10
input_shape = (784,)

(x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
x_train = x_train.reshape(-1, 784).astype("float32") / 255
x_test = x_test.reshape(-1, 784).astype("float32") / 255
print("x_train shape:", x_train.shape)
print(x_train.shape[0], "train samples")
print(x_test.shape[0], "test samples")

y_train = keras.utils.to_categorical(y_train, num_classes)
y_test = keras.utils.to_categorical(y_test, num_classes)

model = keras.Sequential(
    [
        keras.Input(shape=input_shape),
        layers.Dense(256, activation="relu"),
        layers.Dropout(0.2),
        layers.Dense(128, activation=keras.activations.relu),
        layers.Dropout(0.2),
        layers.Dense(num_classes, activation="softmax"),
    ]
)
model.summary()

model.compile(loss="categorical_crossentropy", optimizer=keras.optimizers.RMSprop(), metrics=["accuracy"])
callbacks = [
    keras.callbacks.EarlyStopping(monitor="val_loss", patience=2),
    keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=1, min_lr=1e-5),
]
history = model.fit(x_train, y_train, batch_size=128, epochs=4, validation_split=0.1, callbacks=callbacks, verbose=2)
print("history keys:", sorted(history.history))

score = model.evaluate(x_test, y_test, verbose=0)
print("Test loss:", score[0])
print("Test accuracy:", score[1])
print("first predictions:", np.argmax(model.predict(x_test[:5]), axis=1))
