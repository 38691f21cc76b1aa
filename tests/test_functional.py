"""Graph models (Keras's functional API) on the execution plan: gradients against finite
differences through residual, branching, shared and nested graphs; a graph and its chain
computing bit for bit the same; training, saving, config and ONNX export of graphs; the
errors a wrong graph gets."""

import numpy as np
import pytest

import nbnet as keras
from nbnet import layers
from nbnet.devices import cpu
from nbnet.errors import NbnetError, ShapeError

FD_STEP = 1e-6


def residual_block():
    inputs = keras.Input((6, 6, 2))
    x = layers.Conv2D(3, 3, padding="same", activation="relu")(inputs)
    y = layers.Conv2D(3, 3, padding="same")(x)
    y = layers.BatchNormalization()(y)
    x = layers.Activation("relu")(layers.add([x, y]))
    x = layers.MaxPooling2D()(x)
    outputs = layers.Dense(4, activation="softmax")(layers.Flatten()(x))
    return keras.Model(inputs, outputs)


def two_branch_concat():
    inputs = keras.Input((5, 5, 2))
    a = layers.Conv2D(2, 1, activation="tanh")(inputs)
    b = layers.Conv2D(3, 3, padding="same", activation="relu")(inputs)
    c = layers.AveragePooling2D(3, strides=1, padding="same")(inputs)
    x = layers.Concatenate()([a, b, c])
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.maximum([layers.Dense(4)(x), layers.Dense(4)(x)])
    return keras.Model(inputs, layers.Dense(3)(x))


def shared_layer():
    left, right = keras.Input((5,)), keras.Input((5,))
    shared = layers.Dense(4, activation="tanh")
    a, b = shared(left), shared(right)
    again = shared(layers.Dense(5)(a))  # the same layer a third time, deeper
    x = layers.concatenate([a - b, a * b, layers.average([a, again]), layers.minimum([b, again])])
    return keras.Model([left, right], layers.Dense(2, activation="sigmoid")(x))


def nested_model():
    encoder_input = keras.Input((6,))
    hidden = layers.Dense(5, activation="relu")(encoder_input)
    encoder = keras.Model(encoder_input, layers.add([layers.Dense(5)(hidden), hidden]))
    head = keras.Sequential([layers.Input((5,)), layers.Dense(4, activation="tanh"), layers.Dense(3)])
    inputs = keras.Input((6,))
    x = encoder(inputs)
    return keras.Model(inputs, head(layers.subtract([x, encoder(layers.Dense(6)(inputs))])))


GRAPHS = {"residual block": residual_block, "two-branch concat": two_branch_concat, "shared layer": shared_layer,
          "nested model": nested_model}


def float64_gradient_check(model, seed=0, coords=6):
    """The plan's backward (float64 layers) against central differences of sum(output * w)."""
    rng = np.random.default_rng(seed)
    plan = model._plan
    for layer in plan.layers:
        layer.astype(np.float64)
    xs = [rng.standard_normal((3,) + shape) for shape in model._input_shapes()]
    projection = rng.standard_normal((3,) + tuple(model.output_shape[1:]))
    plan.set_fused_outputs([False])

    def objective():
        return float((plan.forward(xs, training=True)[0] * projection).sum())

    for layer in plan.layers:
        for grad in layer.grads.values():
            grad.fill(0)
    plan.forward(xs, training=True)
    plan.backward([projection.copy()], cpu)
    checked = 0
    centre = objective()
    for layer in plan.layers:
        for key, value in layer.params.items():
            flat, grad = value.reshape(-1), layer.grads[key].reshape(-1)
            for index in rng.choice(flat.size, min(coords, flat.size), replace=False):
                saved = flat[index]
                flat[index] = saved + FD_STEP
                up = objective()
                flat[index] = saved - FD_STEP
                down = objective()
                flat[index] = saved
                numeric = (up - down) / (2 * FD_STEP)
                # A ReLU or a max-pool choice that flips within the step (about one weight draw in
                # a thousand here) makes the two one-sided slopes disagree: no derivative to check.
                if abs((up - centre) - (centre - down)) / FD_STEP > 1e-3 * max(1.0, abs(numeric)):
                    continue
                assert grad[index] == pytest.approx(numeric, rel=1e-5, abs=1e-7), f"{layer.name}.{key}[{index}]"
                checked += 1
    return checked


@pytest.mark.parametrize("name", GRAPHS)
def test_graph_gradients_match_finite_differences(name):
    keras.utils.set_random_seed(11)
    model = GRAPHS[name]()
    assert float64_gradient_check(model) >= 20


def test_shared_layer_gradient_is_the_sum_of_its_calls():
    inputs = keras.Input((3,))
    shared = layers.Dense(3, use_bias=False)
    model = keras.Model(inputs, layers.add([shared(inputs), shared(shared(inputs))]))
    kernel = model.get_weights()[0].astype(np.float64)
    x = np.random.default_rng(1).standard_normal((4, 3))
    plan = model._plan
    for layer in plan.layers:
        layer.astype(np.float64)
    plan.forward([x], training=True)
    shared.grads["kernel"].fill(0)
    plan.backward([np.ones((4, 3))], cpu)
    # d/dW sum(xW + xWW) = x^T 1 + x^T 1 W^T + (xW)^T 1
    ones = np.ones((4, 3))
    expected = x.T @ ones + x.T @ ones @ kernel.T + (x @ kernel).T @ ones
    np.testing.assert_allclose(shared.grads["kernel"], expected, rtol=1e-12)


def chain_layers():
    return [layers.Conv2D(4, 3, activation="relu"), layers.MaxPooling2D(), layers.BatchNormalization(),
            layers.Flatten(), layers.Dense(8, activation="relu"), layers.Dense(3, activation="softmax")]


def test_a_graph_and_its_chain_compute_bit_for_bit_the_same():
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((40, 8, 8, 1)).astype(np.float32), rng.integers(0, 3, 40)
    chain = keras.Sequential([layers.Input((8, 8, 1))] + chain_layers(), seed=5)
    tensor = inputs = keras.Input((8, 8, 1))
    for layer in chain_layers():
        tensor = layer(tensor)
    graph = keras.Model(inputs, tensor, seed=5)
    graph.set_weights(chain.get_weights())
    for model in (chain, graph):
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    # No shuffling: the chain drew its weights from its generator, the graph's layers theirs at each call.
    history_chain = chain.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False)
    history_graph = graph.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False)
    assert history_chain.history == history_graph.history
    for a, b in zip(chain.get_weights(), graph.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(chain.predict(x), graph.predict(x))
    # The pool is the conv's only consumer in both: both fuse it.
    assert graph.layers[2].absorbed and chain.layers[1].absorbed


def test_a_pool_that_is_not_the_convs_only_consumer_is_not_fused():
    inputs = keras.Input((6, 6, 1))
    conv = layers.Conv2D(2, 3, padding="same", activation="relu")(inputs)
    pooled = layers.MaxPooling2D(1)(conv)
    model = keras.Model(inputs, layers.Flatten()(layers.add([conv, pooled])))
    assert not model.get_layer(index=2).absorbed and model.get_layer(index=1).pool is None
    x = np.random.default_rng(3).standard_normal((2, 6, 6, 1)).astype(np.float32)
    expected = model.layers[1](x).numpy()
    np.testing.assert_allclose(model.predict(x), 2 * expected.reshape(2, -1), rtol=1e-6)


def test_residual_network_trains_and_learns():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((256, 6, 6, 2)).astype(np.float32)
    y = (x[..., 0].mean(axis=(1, 2)) > x[..., 1].mean(axis=(1, 2))).astype(np.int64)
    keras.utils.set_random_seed(0)
    model = residual_block()
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    history = model.fit(x, y, batch_size=32, epochs=10, verbose=0, validation_split=0.25)
    assert history.history["loss"][-1] < 0.4 * history.history["loss"][0]  # 1.12 -> 0.26 seen
    assert history.history["accuracy"][-1] > 0.8  # 0.91 seen; chance is 0.5


def test_several_inputs_as_a_list_or_a_dict():
    keras.utils.set_random_seed(1)
    model = shared_layer()
    model.compile(optimizer="sgd", loss="binary_crossentropy", metrics=["accuracy"])
    rng = np.random.default_rng(5)
    left, right = rng.standard_normal((20, 5)), rng.standard_normal((20, 5))
    target = rng.integers(0, 2, (20, 2))
    names = model.input_names
    by_list = model.predict([left, right])
    np.testing.assert_array_equal(by_list, model.predict({names[1]: right, names[0]: left}))
    assert model.evaluate([left, right], target, verbose=0) == model.evaluate(dict(zip(names, [left, right])),
                                                                              target, verbose=0)
    history = model.fit([left, right], target, batch_size=5, epochs=2, verbose=0,
                        validation_data=([left, right], target))
    assert np.isfinite(history.history["val_loss"]).all()
    assert model([left[:3], right[:3]]).numpy().shape == (3, 2)


def test_model_shapes_carry_the_batch_axis_as_keras():
    # Keras scripts index these (model.output_shape[1], model.input_shape[1:]).
    left, right = keras.Input((5,)), keras.Input((3, 2))
    merged = layers.Concatenate()([left, layers.Flatten()(right)])
    two = keras.Model([left, right], [layers.Dense(4)(merged), layers.Dense(1)(merged)])
    assert two.input_shape == [(None, 5), (None, 3, 2)] and two.output_shape == [(None, 4), (None, 1)]
    chain = keras.Sequential([keras.Input((28, 28, 1)), layers.Conv2D(8, 3), layers.Flatten(), layers.Dense(10)])
    assert chain.input_shape == (None, 28, 28, 1) and chain.output_shape == (None, 10)
    assert keras.Sequential([layers.Dense(3, input_shape=(7,))]).input_shape == (None, 7)
    assert keras.Sequential([layers.Dense(3)]).input_shape is None
    with pytest.raises(ShapeError, match=r"built for input shape \(None, 28, 28, 1\)"):
        chain.build((None, 14, 14, 1))


@pytest.mark.parametrize("name", GRAPHS)
def test_graphs_save_load_config_and_export(name, tmp_path):
    from nbnet.onnx import export, load

    keras.utils.set_random_seed(2)
    model = GRAPHS[name]()
    model.compile(optimizer="adam", loss="mse")
    rng = np.random.default_rng(6)
    xs = [rng.standard_normal((16,) + shape).astype(np.float32) for shape in model._input_shapes()]
    x = xs[0] if len(xs) == 1 else xs
    model.fit(x, rng.standard_normal((16,) + tuple(model.output_shape[1:])), batch_size=4, verbose=0)
    expected = model.predict(x)
    model.save(tmp_path / "graph.nbnet")
    loaded = keras.models.load_model(tmp_path / "graph.nbnet")
    np.testing.assert_array_equal(loaded.predict(x), expected)
    assert loaded.optimizer.iterations == model.optimizer.iterations
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in model.layers]
    rebuilt = keras.Model.from_config(model.get_config())
    rebuilt.set_weights(model.get_weights())
    np.testing.assert_array_equal(rebuilt.predict(x), expected)
    result = export(model, tmp_path / "graph.onnx", x=x)
    assert result.report.max_abs_diff <= 1e-5
    np.testing.assert_array_equal(load(tmp_path / "graph.onnx").predict(x), expected)


def test_summary_has_keras_functional_columns():
    model = shared_layer()
    text = model.summary(print_fn=lambda _: None)
    assert "Connected to" in text
    shared = model.get_layer(index=1)
    assert f"{shared.name}[0][0], {shared.name}[1][0]" in text  # subtract reads both calls of the shared layer
    assert f"Total params: {model.count_params():,}" in text


def test_weights_are_shared_and_listed_once():
    model = shared_layer()
    assert len(model.get_weights()) == len(model.weights) == 2 * 3  # shared, inner, output Dense
    nested = nested_model()
    assert nested.count_params() == sum(w.size for w in nested.get_weights())


# -- errors ----------------------------------------------------------------------------
def test_mismatched_merges_name_the_layer_and_shapes():
    a, b = keras.Input((4,)), keras.Input((5,))
    with pytest.raises(ShapeError, match=r"Add 'add\w*' .*\(None, 4\), \(None, 5\)"):
        layers.Add()([a, b])
    c, d = keras.Input((4, 4, 2)), keras.Input((4, 3, 2))
    with pytest.raises(ShapeError, match=r"Concatenate .*\(None, 4, 4, 2\), \(None, 4, 3, 2\)"):
        layers.Concatenate()([c, d])


def test_graph_errors_name_what_is_wrong():
    a, b, stray = keras.Input((4,)), keras.Input((5,)), keras.Input((4,))
    x = layers.Dense(3)(a)
    with pytest.raises(NbnetError, match="not one of the model's inputs"):
        keras.Model(a, layers.add([x, layers.Dense(3)(stray)]))
    with pytest.raises(NbnetError, match=r"not used to compute any output"):
        keras.Model([a, b], x)
    with pytest.raises(NbnetError, match="inputs must come from keras.Input"):
        keras.Model(x, layers.Dense(2)(x))
    with pytest.raises(ShapeError, match=r"Conv2D .* expects input of rank 4"):
        layers.Conv2D(2, 3)(a)
    with pytest.raises(NbnetError, match="takes one input, but was called on 2"):
        layers.Dense(2)([a, a])
    shared = layers.Dense(2)
    shared(a)
    with pytest.raises(ShapeError, match=r"built for input shape \(None, 4\), but is now called on \(None, 5\)"):
        shared(b)
    with pytest.raises(NbnetError, match="subclassing Model"):
        keras.Model()


def test_wrong_inputs_to_fit_are_named():
    a, b = keras.Input((4,), name="left"), keras.Input((5,), name="right")
    model = keras.Model([a, b], layers.concatenate([a, b]))
    model.compile("sgd", "mse")
    y = np.zeros((3, 9))
    with pytest.raises(NbnetError, match=r"takes 2 inputs \['left', 'right'\]"):
        model.fit(np.zeros((3, 4)), y, verbose=0)
    with pytest.raises(NbnetError, match=r"the dict given has the keys \['x'\]"):
        model.fit({"x": np.zeros((3, 4))}, y, verbose=0)
    with pytest.raises(ShapeError, match=r"different sample counts \[3, 2\]"):
        model.fit([np.zeros((3, 4)), np.zeros((2, 5))], y, verbose=0)
    with pytest.raises(ShapeError, match=r"x\['right'\]: .* expects input shape \(None, 5\)"):
        model.predict([np.zeros((3, 4)), np.zeros((3, 6))])


# -- several outputs ------------------------------------------------------------------------
def two_outputs(as_dict=False):
    inputs = keras.Input((6,), name="features")
    trunk = layers.Dense(8, activation="relu")(inputs)
    classes = layers.Dense(3, activation="softmax", name="classes")(trunk)
    value = layers.Dense(1, name="value")(trunk)
    outputs = {"label": classes, "amount": value} if as_dict else [classes, value]
    return keras.Model(inputs, outputs)


def two_output_data(count=32):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((count, 6)).astype(np.float32)
    return x, rng.integers(0, 3, count), x[:, :1] * 2 - x[:, 1:2]


def test_two_outputs_train_each_loss_weighted(tmp_path):
    from nbnet.onnx import export, load

    keras.utils.set_random_seed(3)
    model = two_outputs()
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss=["sparse_categorical_crossentropy", "mse"],
                  loss_weights=[1.0, 0.25], metrics=[["accuracy"], ["mae"]])
    x, labels, amounts = two_output_data()
    history = model.fit(x, [labels, amounts], batch_size=8, epochs=15, verbose=0)
    logs = {key: values[-1] for key, values in history.history.items()}
    assert set(logs) == {"loss", "classes_loss", "value_loss", "classes_accuracy", "value_mae"}
    assert logs["loss"] == pytest.approx(logs["classes_loss"] + 0.25 * logs["value_loss"], rel=1e-6)
    assert history.history["value_loss"][-1] < 0.5 * history.history["value_loss"][0]
    results = model.evaluate(x, {"classes": labels, "value": amounts}, verbose=0)
    assert model.metrics_names == ["loss", "classes_loss", "value_loss", "classes_accuracy", "value_mae"]
    assert len(results) == 5 and results[0] == pytest.approx(results[1] + 0.25 * results[2], rel=1e-6)
    predicted = model.predict(x)
    assert [p.shape for p in predicted] == [(32, 3), (32, 1)]
    model.save(tmp_path / "two.nbnet")
    loaded = keras.models.load_model(tmp_path / "two.nbnet")
    for a, b in zip(loaded.predict(x), predicted):
        np.testing.assert_array_equal(a, b)
    assert loaded.evaluate(x, [labels, amounts], verbose=0) == results
    export(model, tmp_path / "two.onnx", x=x)
    for a, b in zip(load(tmp_path / "two.onnx").predict(x), predicted):
        np.testing.assert_array_equal(a, b)


def test_outputs_given_as_a_dict_are_named_by_its_keys():
    model = two_outputs(as_dict=True)
    # As Keras 3: outputs given as a dict are ordered by key; output_names are their layers'.
    assert model.output_names == ["value", "classes"]
    assert [layer.name for layer in model.layers][-2:] == ["value", "classes"]
    model.compile(optimizer="sgd", loss={"label": "sparse_categorical_crossentropy", "amount": "mse"})
    x, labels, amounts = two_output_data()
    history = model.fit(x, {"label": labels, "amount": amounts}, verbose=0)
    assert {"label_loss", "amount_loss", "loss"} <= set(history.history)
    predicted = model.predict(x)
    assert isinstance(predicted, dict) and predicted["amount"].shape == (32, 1)
    rebuilt = keras.Model.from_config(model.get_config())
    rebuilt.set_weights(model.get_weights())
    assert sorted(rebuilt.predict(x)) == ["amount", "label"]


def test_compile_arguments_must_fit_the_outputs():
    model = two_outputs()
    x, labels, amounts = two_output_data()
    with pytest.raises(NbnetError, match=r"2 outputs \['classes', 'value'\], but received 3 entries"):
        model.compile(optimizer="sgd", loss=["mse", "mse", "mse"])
    with pytest.raises(NbnetError, match=r"\['other'\] are not outputs of the model"):
        model.compile(optimizer="sgd", loss={"other": "mse"})
    with pytest.raises(NbnetError, match=r"no loss for the output\(s\) \['value'\]"):
        model.compile(optimizer="sgd", loss={"classes": "sparse_categorical_crossentropy"})
    with pytest.raises(NbnetError, match=r"metrics=.*2 outputs .* but received 1 entries"):
        model.compile(optimizer="sgd", loss="mse", metrics=["accuracy"])
    model.compile(optimizer="sgd", loss=["sparse_categorical_crossentropy", "mse"])
    with pytest.raises(NbnetError, match=r"give a list of 2 target arrays"):
        model.fit(x, labels, verbose=0)
    with pytest.raises(NbnetError, match=r"the dict given has the keys \['classes'\]"):
        model.fit(x, {"classes": labels}, verbose=0)
    with pytest.raises(ShapeError, match=r"y\['value'\]"):
        model.fit(x, [labels, amounts[:5]], verbose=0)


def test_feature_extraction_from_layer_outputs():
    """Keras's idiom: a model from another's inputs to its layers' outputs."""
    model = keras.Sequential([keras.Input((8, 8, 1)), layers.Conv2D(4, 3, activation="relu", name="features"),
                              layers.MaxPooling2D(), layers.Flatten()])
    model.add(layers.Dense(3, activation="softmax"))  # re-linked: each layer keeps one call in the chain
    extractor = keras.Model(inputs=model.inputs, outputs=[layer.output for layer in model.layers])
    x = np.random.default_rng(8).standard_normal((2, 8, 8, 1)).astype(np.float32)
    outputs = extractor.predict(x)
    assert [o.shape for o in outputs] == [(2, 6, 6, 4), (2, 3, 3, 4), (2, 36), (2, 3)]
    np.testing.assert_array_equal(outputs[0], model.get_layer("features")(x).numpy())
    np.testing.assert_array_equal(outputs[-1], model.predict(x))
    assert model.get_layer("features").input is model.inputs[0]
    shared = layers.Dense(2)
    a, b = keras.Input((3,)), keras.Input((3,))
    shared(a), shared(b)
    with pytest.raises(NbnetError, match="called 2 times, so it has several outputs"):
        shared.output
