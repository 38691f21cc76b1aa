"""Callbacks in the manner of the Keras guide "Writing your own callbacks": a custom
callback on the old batch hook, the learning rate read and set through the backend,
a schedule, CSV logs, freezing a layer and compiling again. Ported by changing the
import lines only."""

import numpy as np

import nbnet as keras
from nbnet import backend as K
from nbnet import layers

(x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
x_train = x_train.reshape(-1, 784).astype("float32") / 255.0
x_test = x_test.reshape(-1, 784).astype("float32") / 255.0


def get_model():
    model = keras.Sequential()
    model.add(layers.Dense(64, activation="relu", input_shape=(784,), name="hidden"))
    model.add(layers.Dense(10, activation="softmax", name="predictions"))
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1, momentum=0.9),
                  loss="sparse_categorical_crossentropy", metrics=["acc"])
    return model


class LossHistory(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.losses = []

    def on_batch_end(self, batch, logs=None):
        self.losses.append(logs.get("loss"))


class HalveEveryEpoch(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        lr = float(K.get_value(self.model.optimizer.learning_rate))
        if epoch > 0:
            K.set_value(self.model.optimizer.learning_rate, lr / 2)
        print("\nEpoch %05d: learning rate is %6.4f." % (epoch, K.get_value(self.model.optimizer.learning_rate)))


def scheduler(epoch, lr):
    return lr if epoch < 1 else lr * 0.9


model = get_model()
model.summary()
losses = LossHistory()
csv_logger = keras.callbacks.CSVLogger("training.log")
printer = keras.callbacks.LambdaCallback(
    on_epoch_end=lambda epoch, logs: print("epoch", epoch, "acc", round(logs["acc"], 4)))
history = model.fit(x_train, y_train, batch_size=64, epochs=3, verbose=0, validation_split=0.2,
                    callbacks=[losses, HalveEveryEpoch(), keras.callbacks.LearningRateScheduler(scheduler),
                               csv_logger, printer])
print("batches seen:", len(losses.losses))
print("history keys:", sorted(history.history))
print("final learning rate:", K.get_value(model.optimizer.learning_rate))

model.get_layer("hidden").trainable = False
before = model.get_layer("hidden").get_weights()[0].copy()
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["acc"])
print("trainable weights:", len(model.trainable_weights), "non-trainable:", len(model.non_trainable_weights))
model.fit(x_train, y_train, batch_size=64, epochs=1, verbose=0)
print("frozen layer unchanged:", bool(np.array_equal(before, model.get_layer("hidden").get_weights()[0])))
results = model.evaluate(x_test, y_test, batch_size=128, return_dict=True, verbose=0)
print("results:", results)
K.clear_session()
