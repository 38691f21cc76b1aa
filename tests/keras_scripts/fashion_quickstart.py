"""Fashion-MNIST in the manner of the TensorFlow beginner tutorials. Ported by changing
the import lines only: `import tensorflow as tf` / `from tensorflow import keras` ->
`import nbnet as keras`."""

import numpy as np

import nbnet as keras

fashion_mnist = keras.datasets.fashion_mnist
(train_images, train_labels), (test_images, test_labels) = fashion_mnist.load_data()
class_names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
print(train_images.shape, len(train_labels))

train_images = train_images / 255.0
test_images = test_images / 255.0

model = keras.Sequential([
    keras.layers.Flatten(input_shape=(28, 28)),
    keras.layers.Dense(128, activation="relu"),
    keras.layers.Dense(10)
])

predictions = model(train_images[:1]).numpy()
print("untrained logits:", predictions)
loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
print("untrained loss:", loss_fn(train_labels[:1], predictions).numpy())

model.compile(optimizer="adam", loss=loss_fn, metrics=["accuracy"])
model.fit(train_images, train_labels, epochs=3)

test_loss, test_acc = model.evaluate(test_images, test_labels, verbose=2)
print("\nTest accuracy:", test_acc)

probability_model = keras.Sequential([model, keras.layers.Softmax()])
predictions = probability_model.predict(test_images)
print("first prediction:", class_names[int(np.argmax(predictions[0]))], "label:", class_names[test_labels[0]])
print(probability_model(test_images[:5]))
