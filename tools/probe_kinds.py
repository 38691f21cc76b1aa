"""Layer kinds beyond tools/bench_zoo.py's, timed under nbnet and under real Keras: the same
Keras-API script (``import nbnet as keras`` or ``import keras``) builds each model, trains
it (median ms a step at batch 128, Adam) and predicts 1000 images. Keras here is Keras 3
on PyTorch (the benchmark virtualenv: ``pip install torch==2.13.0 keras``, run with
``KERAS_BACKEND=torch``): its own overhead makes it slower than PyTorch eager, so read the
ratios between kinds, not against bench_zoo's: a kind far behind the others is a kind
nbnet runs slowly (session 25 found ELU, softplus and depth-multiplier depthwise convs
this way). Prints one JSON object.

    python tools/probe_kinds.py                                   # nbnet, every kind
    KERAS_BACKEND=torch VENV/bin/python tools/probe_kinds.py --keras --only dilated,grouped
"""

import argparse
import importlib
import json
import time

import numpy as np


def models(keras):
    """name -> a function making (model, loss), of Keras's layers only."""
    L = keras.layers
    classes = "sparse_categorical_crossentropy"

    def conv(filters, size, strides=1, padding="same", activation="relu", **options):
        return L.Conv2D(filters, size, strides=strides, padding=padding, activation=activation, **options)

    def stack(shape, *parts, loss=classes):
        inputs = keras.Input(shape)
        x = inputs
        for layer in parts:
            x = layer(x)
        return keras.Model(inputs, x), loss

    def head():
        return L.Dense(10, activation="softmax")

    def inception():
        inputs = keras.Input((28, 28, 1))
        x = L.MaxPooling2D(2)(conv(32, 3)(inputs))
        branches = [conv(16, 1)(x), conv(24, 3)(conv(16, 1)(x)), conv(8, 5)(conv(4, 1)(x)),
                    conv(8, 1)(L.MaxPooling2D(3, strides=1, padding="same")(x))]
        x = L.GlobalAveragePooling2D()(L.Concatenate()(branches))
        return keras.Model(inputs, head()(x)), classes

    def autoencoder():
        return stack((28, 28, 1), conv(32, 3), L.MaxPooling2D(2), conv(16, 3), L.MaxPooling2D(2), conv(16, 3),
                     L.UpSampling2D(2), conv(32, 3), L.UpSampling2D(2), conv(1, 3, activation="sigmoid"), loss="mse")

    mnist, cifar = (28, 28, 1), (32, 32, 3)
    return {
        "alexnet_pool": lambda: stack(cifar, conv(48, 5), L.MaxPooling2D(3, strides=2), conv(64, 3),
                                      L.MaxPooling2D(3, strides=2), L.Flatten(), head()),
        "global_max_pool": lambda: stack(mnist, conv(32, 3), conv(64, 3), L.GlobalMaxPooling2D(), head()),
        "inception": inception,
        "autoencoder": autoencoder,
        "dense_on_sequences": lambda: stack((28, 28), L.Dense(64, activation="relu"), L.Dense(32, activation="relu"),
                                            L.Flatten(), head()),
        "zero_padding": lambda: stack(mnist, L.ZeroPadding2D(2), conv(32, 5, padding="valid"), L.MaxPooling2D(2),
                                      L.ZeroPadding2D(1), conv(64, 3, padding="valid"), L.GlobalAveragePooling2D(),
                                      head()),
        "avgpool_3x3_stride_1": lambda: stack(mnist, conv(32, 3), L.AveragePooling2D(3, strides=1, padding="same"),
                                              conv(32, 3, strides=2), L.Flatten(), head()),
        "softplus": lambda: stack(mnist, conv(32, 3, activation="softplus"), L.MaxPooling2D(2), L.Flatten(),
                                  L.Dense(64, activation="softplus"), head()),
        "dilated": lambda: stack(mnist, conv(32, 3, dilation_rate=2), conv(32, 3, dilation_rate=2),
                                 L.MaxPooling2D(2), L.Flatten(), head()),
        "valid_stride_2": lambda: stack(mnist, conv(32, 3, strides=2, padding="valid"),
                                        conv(64, 3, strides=2, padding="valid"), L.Flatten(), head()),
        "depth_multiplier_2": lambda: stack(mnist, conv(16, 3), L.DepthwiseConv2D(3, depth_multiplier=2,
                                                                                  padding="same", activation="relu"),
                                            conv(32, 1), L.MaxPooling2D(2), L.GlobalAveragePooling2D(), head()),
        "grouped": lambda: stack(mnist, conv(32, 3), conv(64, 3, groups=4), L.MaxPooling2D(2), L.Flatten(), head()),
        "preprocessing": lambda: stack(mnist, L.Rescaling(1 / 255.0), L.RandomFlip("horizontal"), conv(32, 3),
                                       L.MaxPooling2D(2), L.Flatten(), head()),
        "norm_leaky_relu": lambda: stack(mnist, conv(32, 3, activation=None), L.BatchNormalization(),
                                         L.LeakyReLU(0.1), L.MaxPooling2D(2), conv(64, 3, activation=None),
                                         L.BatchNormalization(), L.LeakyReLU(0.1), L.GlobalAveragePooling2D(), head()),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keras", action="store_true", help="run under real Keras instead of nbnet")
    parser.add_argument("--only", help="comma-separated kinds (default: all)")
    args = parser.parse_args()
    keras = importlib.import_module("keras" if args.keras else "nbnet")
    kinds = models(keras)
    report = {"framework": "keras " + keras.__version__ if args.keras else "nbnet", "kinds": {}}
    for name in (args.only.split(",") if args.only else kinds):
        model, loss = kinds[name]()
        model.compile(optimizer="adam", loss=loss)
        rng = np.random.default_rng(0)
        x = rng.random((128 * 12,) + tuple(model.inputs[0].shape[1:]), dtype=np.float32)
        y = x if loss == "mse" else rng.integers(0, 10, len(x))
        model.fit(x[:256], y[:256], batch_size=128, verbose=0)  # compiles
        steps = []
        for start in range(0, len(x), 128):
            began = time.perf_counter()
            model.train_on_batch(x[start:start + 128], y[start:start + 128])
            steps.append(time.perf_counter() - began)
        model.predict(x[:1000], batch_size=1000, verbose=0)
        began = time.perf_counter()
        model.predict(x[:1000], batch_size=1000, verbose=0)
        report["kinds"][name] = {"train_ms_b128": round(float(np.median(steps)) * 1e3, 2),
                                 "predict_images_per_s": round(1000 / (time.perf_counter() - began))}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
