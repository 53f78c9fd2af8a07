"""Training the task models with Keras: `fit`/`evaluate`/`predict` with a compiled Keras loss or the built-in loss,
callbacks, a frozen encoder, LoRA adapters, and the built-in losses against PyTorch transformers' losses.

Each task is small and learnable (e.g. K-rich vs E-rich sequences), so "it trains" means the loss falls and the
accuracy beats chance; tiny random-weight checkpoints come from transformers (no downloads).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
import torch
import transformers

from tests._reference import assert_close
from tf_esm import (
    TFEsmForMaskedLM,
    TFEsmForSequenceClassification,
    TFEsmForTokenClassification,
    TFEsmModel,
)
from tf_esm.configuration import ESM2_VOCAB
from tf_esm.modeling.outputs import ModelOutput
from tf_esm.modeling.lora import is_lora_variable, merge_lora

CLS, PAD, EOS = ESM2_VOCAB.index("<cls>"), ESM2_VOCAB.index("<pad>"), ESM2_VOCAB.index("<eos>")
AMINO_ACIDS = [ESM2_VOCAB.index(letter) for letter in "LAGVSERTIDPKQNFYMHWC"]
K, R, D, E, W = (ESM2_VOCAB.index(letter) for letter in "KRDEW")
N_EXAMPLES, MAX_RESIDUES, BATCH = 64, 12, 16


# ------------------------------------------------------------------------------------------------------ fixtures
CHECKPOINTS = {  # name: (transformers class, config overrides) of tiny ESM-2-layout checkpoints
    "single_label": ("EsmForSequenceClassification", dict(num_labels=2)),
    "multi_label": ("EsmForSequenceClassification", dict(num_labels=3)),
    "regression": ("EsmForSequenceClassification", dict(num_labels=1)),
    "token": ("EsmForTokenClassification", dict(num_labels=3)),
    "mlm": ("EsmForMaskedLM", {}),
}


@pytest.fixture(scope="module")
def checkpoints(reference_checkpoints):
    """{name: ReferenceCheckpoint (path, PyTorch model)}."""
    return {name: reference_checkpoints("rotary", class_name, **overrides)
            for name, (class_name, overrides) in CHECKPOINTS.items()}


def load(checkpoints, name, model_class):
    return model_class.from_pretrained(checkpoints[name].path)


# ---------------------------------------------------------------------------------------------------- toy tasks
def encode(residue_rows):
    """Rows of residue ids -> `<cls> residues <eos>` padded with `<pad>`, and the attention mask."""
    width = max(len(row) for row in residue_rows) + 2
    input_ids = np.full((len(residue_rows), width), PAD, np.int32)
    for index, row in enumerate(residue_rows):
        input_ids[index, :len(row) + 2] = [CLS, *row, EOS]
    return {"input_ids": input_ids, "attention_mask": (input_ids != PAD).astype(np.int32)}


def random_rows(rng, enrich=None, fraction=0.6):
    """Random sequences of 8-12 residues; `enrich[i]` (a residue id or None) fills `fraction` of row i."""
    rows = []
    for index in range(N_EXAMPLES):
        row = rng.choice(AMINO_ACIDS, size=rng.integers(8, MAX_RESIDUES + 1))
        if enrich is not None and enrich[index] is not None:
            row = np.where(rng.random(len(row)) < fraction, enrich[index], row)
        rows.append(row.tolist())
    return rows


def single_label_task(seed=0):
    """Class 1: K-rich sequences; class 0: E-rich."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, N_EXAMPLES).astype(np.int32)
    return encode(random_rows(rng, [K if label else E for label in labels])), labels


def multi_label_task(seed=1):
    """Label j is on when residue (K, E, W)[j] was spread over the sequence."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((N_EXAMPLES, 3)) < 0.5).astype(np.float32)
    rows = random_rows(rng)
    for row, on in zip(rows, labels):
        for residue, flag in zip((K, E, W), on):
            if flag:
                for position in rng.choice(len(row), size=3, replace=False):
                    row[position] = residue
    return encode(rows), labels


def regression_task(seed=2):
    """Target: the fraction of K among the residues."""
    rng = np.random.default_rng(seed)
    rows = random_rows(rng, [K] * N_EXAMPLES, fraction=0.0)
    for row in rows:
        share = rng.uniform(0.0, 0.8)
        for position in range(len(row)):
            if rng.random() < share:
                row[position] = K
    targets = np.array([np.mean(np.array(row) == K) for row in rows], np.float32)
    return encode(rows), targets


def token_task(seed=3):
    """Per-residue class: 1 for K/R, 2 for D/E, 0 otherwise; -100 at `<cls>`, `<eos>` and padding."""
    rng = np.random.default_rng(seed)
    inputs = encode(random_rows(rng))
    ids = inputs["input_ids"]
    labels = np.where(np.isin(ids, [K, R]), 1, np.where(np.isin(ids, [D, E]), 2, 0)).astype(np.int32)
    labels[(ids == CLS) | (ids == EOS) | (ids == PAD)] = -100
    return inputs, labels


def mlm_task(seed=4):
    """Each sequence repeats one residue, so a masked residue is read off its neighbours."""
    rng = np.random.default_rng(seed)
    return encode([[int(rng.choice(AMINO_ACIDS))] * int(rng.integers(8, MAX_RESIDUES + 1))
                   for _ in range(N_EXAMPLES)])


def dataset(inputs, labels=None, batch=BATCH):
    elements = inputs if labels is None else (inputs, labels)
    return tf.data.Dataset.from_tensor_slices(elements).batch(batch)


def fit_history(model, data, epochs, loss=None, metrics=("accuracy",), learning_rate=1e-2, **fit_kwargs):
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss, metrics=list(metrics),
                  jit_compile=False)
    return model.fit(data, epochs=epochs, verbose=0, **fit_kwargs).history


def fit_keras_and_builtin_loss(checkpoints, name, model_class, data, epochs=6):
    """Fit two copies of a checkpoint, one with a Keras loss and one with the built-in loss; the built-in loss is
    the same cross-entropy, so both follow the same trajectory. Returns the built-in model and its history."""
    keras_style = fit_history(load(checkpoints, name, model_class), data, epochs=epochs,
                              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    builtin_model = load(checkpoints, name, model_class)
    builtin_style = fit_history(builtin_model, data, epochs=epochs)
    np.testing.assert_allclose(builtin_style["loss"], keras_style["loss"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(builtin_style["accuracy"], keras_style["accuracy"], atol=1e-6)
    return builtin_model, builtin_style


def snapshot(variables):
    return {variable.path.split("/", 1)[1]: np.array(variable.numpy()) for variable in variables}


# ------------------------------------------------------------------------------------------- fit: both styles
def test_sequence_classification_learns_with_keras_loss_and_with_builtin_loss(checkpoints):
    inputs, labels = single_label_task()
    builtin_model, builtin_style = fit_keras_and_builtin_loss(checkpoints, "single_label",
                                                              TFEsmForSequenceClassification, dataset(inputs, labels))
    assert builtin_style["loss"][-1] < 0.5 * builtin_style["loss"][0]
    assert builtin_style["accuracy"][-1] > 0.9  # chance: about 0.5

    # Labels may also come inside the inputs dict; calling the model still gives named outputs after fit.
    outputs = builtin_model(inputs, labels=labels)
    assert isinstance(outputs, ModelOutput)
    evaluated = builtin_model.evaluate(dataset({**inputs, "labels": labels}), verbose=0, return_dict=True)
    assert evaluated["loss"] == pytest.approx(float(outputs.loss), rel=1e-5)  # equal batches: mean of means
    assert evaluated["accuracy"] == pytest.approx(np.mean(outputs.logits.numpy().argmax(-1) == labels))


def test_regression_learns_with_the_builtin_loss(checkpoints):
    # (Multi-label and regression losses, built-in and Keras, are compared with transformers' further down.)
    inputs, targets = regression_task()
    model = load(checkpoints, "regression", TFEsmForSequenceClassification)
    history = fit_history(model, dataset(inputs, targets), epochs=30, metrics=())
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert np.corrcoef(model(inputs).logits.numpy()[:, 0], targets)[0, 1] > 0.8


def test_token_classification_learns_with_keras_loss_and_with_builtin_loss(checkpoints):
    inputs, labels = token_task()
    # No ignore_class: positions labelled -100 (special tokens, padding) are masked out for Keras losses too.
    builtin_model, builtin_style = fit_keras_and_builtin_loss(checkpoints, "token", TFEsmForTokenClassification,
                                                              dataset(inputs, labels))
    assert builtin_style["loss"][-1] < 0.5 * builtin_style["loss"][0]
    assert builtin_style["accuracy"][-1] > 0.9  # majority class (0): about 0.7 of the labelled residues
    # predict gives the logits (padding rows included).
    np.testing.assert_allclose(builtin_model.predict(dataset(inputs), verbose=0),
                               builtin_model(inputs).logits.numpy(), atol=1e-5)


def test_masked_lm_continued_pretraining_with_dynamic_masking(checkpoints):
    from tf_esm.pipelines.data import MlmMasking

    inputs = mlm_task()
    # 15% of residues selected and re-drawn every epoch; 80% of them <mask>, 10% random, 10% unchanged.
    data = dataset(inputs).map(MlmMasking(seed=0))
    model = load(checkpoints, "mlm", TFEsmForMaskedLM)
    history = fit_history(model, data, epochs=10)
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    held_out = dataset(mlm_task(seed=5)).map(MlmMasking(seed=1, probability=0.3))
    assert model.evaluate(held_out, verbose=0, return_dict=True)["accuracy"] > 0.5  # chance: 1/20


# --------------------------------------------------------------------------------- predict, callbacks, freezing
def test_predict_of_the_bare_encoder_gives_a_dict_of_arrays(checkpoints):
    inputs, _ = token_task()
    encoder = TFEsmModel.from_pretrained(checkpoints["mlm"].path)
    predicted = encoder.predict(inputs, batch_size=BATCH, verbose=0)
    assert sorted(predicted) == ["last_hidden_state", "pooler_output"]
    np.testing.assert_allclose(predicted["last_hidden_state"], encoder(inputs).last_hidden_state.numpy(),
                               atol=1e-5)


def test_callbacks_with_a_frozen_encoder(checkpoints, tmp_path):
    inputs, labels = single_label_task()
    model = load(checkpoints, "single_label", TFEsmForSequenceClassification)
    model.esm.trainable = False
    encoder_before, head_before = snapshot(model.esm.weights), snapshot(model.classifier.weights)
    weights_path, model_path = str(tmp_path / "epoch.weights.h5"), str(tmp_path / "epoch.keras")
    callbacks = [
        keras.callbacks.ModelCheckpoint(weights_path, save_weights_only=True),
        keras.callbacks.ModelCheckpoint(model_path),  # the whole model, reloadable with keras.models.load_model
        # Demanding an improvement of 10 nats: the run stops once patience (1 epoch) is used up.
        keras.callbacks.EarlyStopping(monitor="val_loss", min_delta=10.0, patience=1),
    ]
    history = fit_history(model, dataset(inputs, labels), epochs=20, callbacks=callbacks,
                          validation_data=dataset(*single_label_task(seed=9)))
    assert len(history["loss"]) == 2 and len(history["val_loss"]) == 2
    assert history["loss"][-1] < history["loss"][0]
    # Only the head trained.
    assert all(np.array_equal(value, encoder_before[name]) for name, value in snapshot(model.esm.weights).items())
    assert all(not np.array_equal(value, head_before[name])
               for name, value in snapshot(model.classifier.weights).items())

    # The checkpoints written after the last epoch restore the trained model.
    trained = model(inputs).logits.numpy()
    restored = load(checkpoints, "single_label", TFEsmForSequenceClassification)
    restored.load_weights(weights_path)
    np.testing.assert_allclose(restored(inputs).logits.numpy(), trained, atol=1e-5)
    reloaded = keras.models.load_model(model_path)
    assert isinstance(reloaded, TFEsmForSequenceClassification)
    np.testing.assert_allclose(reloaded(inputs).logits.numpy(), trained, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------- LoRA
def test_lora_trains_only_adapters_and_the_adapter_reloads(checkpoints, tmp_path):
    directory = checkpoints["single_label"].path
    inputs, labels = single_label_task()
    model = TFEsmForSequenceClassification.from_pretrained(directory)
    base = snapshot(model.esm.weights)
    head = snapshot(model.classifier.weights)
    layers = model.enable_lora(rank=2, targets=("query", "key", "value"))
    assert len(layers) == 3  # the template layer's projections; each adapter matrix is stacked over the 2 layers
    trainable = {variable.path.split("/", 1)[1] for variable in model.trainable_weights}
    lora = {variable.path.split("/", 1)[1] for variable in model.weights if is_lora_variable(variable)}
    assert len(lora) == 2 * len(layers)
    assert trainable == lora | set(head)

    history = fit_history(model, dataset(inputs, labels), epochs=8)
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert history["accuracy"][-1] > 0.9
    after = snapshot(model.weights)
    assert all(np.array_equal(after[name], value) for name, value in base.items())  # base kernels untouched
    assert all(np.any(after[name] != 0) for name in lora if name.endswith("lora_kernel_b"))  # init: zeros
    logits = model(inputs).logits.numpy()

    with pytest.raises(ValueError, match="LoRA adapters"):
        model.save_pretrained(str(tmp_path / "refused"))
    adapter = model.save_lora_weights(str(tmp_path / "adapter.safetensors"))
    fresh = TFEsmForSequenceClassification.from_pretrained(directory)
    fresh.load_lora_weights(adapter)  # enables rank-2 LoRA on query/key/value, then loads
    np.testing.assert_allclose(fresh(inputs).logits.numpy(), logits, atol=1e-5)

    # The merged model is a plain checkpoint: PyTorch transformers reproduces the LoRA model's logits.
    merge_lora(fresh).save_pretrained(str(tmp_path / "merged"), format="safetensors")
    reference = transformers.EsmForSequenceClassification.from_pretrained(str(tmp_path / "merged")).eval()
    with torch.no_grad():
        expected = reference(input_ids=torch.tensor(inputs["input_ids"]).long(),
                             attention_mask=torch.tensor(inputs["attention_mask"])).logits.numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-5)


def test_lora_errors_name_the_problem(checkpoints, tmp_path):
    directory = checkpoints["single_label"].path
    model = TFEsmForSequenceClassification.from_pretrained(directory)
    with pytest.raises(ValueError, match="positive integer"):
        model.enable_lora(rank=0)
    with pytest.raises(ValueError, match="subset of"):
        model.enable_lora(rank=2, targets=("dense",))
    with pytest.raises(ValueError, match="no LoRA adapters"):
        model.save_lora_weights(str(tmp_path / "none.safetensors"))
    with pytest.raises(ValueError, match="not a tf_esm LoRA adapter"):
        model.load_lora_weights(f"{directory}/model.safetensors")
    model.enable_lora(rank=2)
    adapter = model.save_lora_weights(str(tmp_path / "rank2.safetensors"))
    with pytest.raises(ValueError, match="already enabled"):
        model.enable_lora(rank=2)
    other = TFEsmForSequenceClassification.from_pretrained(directory)
    other.enable_lora(rank=4)
    with pytest.raises(ValueError, match="lora_kernel_a.*shape"):
        other.load_lora_weights(adapter)


# -------------------------------------------------------------------------------------------------- bad inputs
def test_training_without_labels_or_loss_is_a_clear_error(checkpoints):
    inputs, _ = single_label_task()
    model = load(checkpoints, "single_label", TFEsmForSequenceClassification)
    model.compile(optimizer="adam", jit_compile=False)
    with pytest.raises(ValueError, match="needs labels"):
        model.fit(dataset(inputs), epochs=1, verbose=0)
    encoder = TFEsmModel.from_pretrained(checkpoints["mlm"].path)
    encoder.compile(optimizer="adam", jit_compile=False)
    with pytest.raises(ValueError, match="no built-in loss"):
        encoder.fit(dataset(inputs, np.zeros(N_EXAMPLES, np.float32)), epochs=1, verbose=0)


# ------------------------------------------------------------------------------------ loss parity with PyTorch
def _torch_loss(torch_model, inputs, labels):
    kwargs = dict(input_ids=torch.tensor(inputs["input_ids"]).long(),
                  attention_mask=torch.tensor(inputs["attention_mask"]).long(), labels=torch.tensor(labels))
    if labels.dtype.kind == "i":
        kwargs["labels"] = kwargs["labels"].long()
    problem_type = torch_model.config.problem_type
    try:
        with torch.no_grad():
            return float(torch_model(**kwargs).loss)
    finally:  # transformers stores the problem type it infers on the (shared) model's config: restore it
        torch_model.config.problem_type = problem_type


PARITY = {  # name: (model class, task, Keras loss whose value must agree too, or None)
    "single_label": (TFEsmForSequenceClassification, single_label_task,
                     lambda: keras.losses.SparseCategoricalCrossentropy(from_logits=True)),
    "multi_label": (TFEsmForSequenceClassification, multi_label_task,
                    lambda: keras.losses.BinaryCrossentropy(from_logits=True)),
    "regression": (TFEsmForSequenceClassification, regression_task, lambda: keras.losses.MeanSquaredError()),
    "token": (TFEsmForTokenClassification, token_task,
              lambda: keras.losses.SparseCategoricalCrossentropy(from_logits=True)),
    "mlm": (TFEsmForMaskedLM, None, lambda: keras.losses.SparseCategoricalCrossentropy(from_logits=True)),
}


@pytest.mark.parametrize("name", list(PARITY))
def test_builtin_and_keras_losses_match_transformers(checkpoints, name):
    model_class, task, keras_loss = PARITY[name]
    if task is None:  # masked LM: mask 15% of the residues, -100 elsewhere (padding included)
        from tf_esm.pipelines.data import MlmMasking

        inputs, labels = MlmMasking(seed=0)(mlm_task())
        inputs = {key: np.asarray(value) for key, value in inputs.items()}
        labels = np.asarray(labels)
    else:
        inputs, labels = task()
    expected = _torch_loss(checkpoints[name].model, inputs, labels)
    model = model_class.from_pretrained(checkpoints[name].path)

    outputs = model(inputs, labels=labels)
    assert_close(outputs.loss, expected, 1e-5, "loss")
    # What fit/evaluate minimise: `compute_loss` on the logits, with the built-in loss or a compiled Keras loss.
    model.compile(jit_compile=False)
    builtin = model.compute_loss(x=inputs, y=labels, y_pred=outputs.logits)
    model.compile(loss=keras_loss(), jit_compile=False)
    compiled = model.compute_loss(x=inputs, y=labels, y_pred=outputs.logits)
    assert_close(builtin, expected, 1e-5, "compute_loss, built-in loss")
    assert_close(compiled, expected, 1e-5, "compute_loss, compiled Keras loss")


def test_tf_data_inputs_reach_keras_as_the_user_gave_them(checkpoints, monkeypatch):
    """fit/evaluate/predict never change a dataset's options; turning tf.data autotuning off (TensorFlow can stall
    deleting an autotuned iterator after multi-second steps) is the user's choice, `without_autotune_stall`."""
    from tf_esm.pipelines.data import without_autotune_stall

    inputs, labels = single_label_task()
    model = load(checkpoints, "single_label", TFEsmForSequenceClassification)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    seen = {}
    for method in ("fit", "evaluate", "predict"):
        real = getattr(keras.Model, method)

        def spy(self, *args, _method=method, _real=real, **kwargs):
            seen[_method] = (args[0] if args else kwargs["x"], kwargs.get("validation_data"))
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(keras.Model, method, spy)
    train = tf.data.Dataset.from_tensor_slices((inputs, labels)).batch(BATCH)
    chosen = without_autotune_stall(train)
    model.fit(train, validation_data=chosen, epochs=1, verbose=0)
    model.evaluate(train, verbose=0)
    features = train.map(lambda x, y: x)
    model.predict(features, verbose=0)
    assert seen["fit"][0] is train and seen["evaluate"][0] is train and seen["predict"][0] is features
    assert seen["fit"][1] is chosen and chosen.options().autotune.enabled is False
    assert train.options().autotune.enabled is None
    explicit = tf.data.Options()
    explicit.autotune.enabled = True
    assert without_autotune_stall(train.with_options(explicit)).options().autotune.enabled is True
    arrays = {"input_ids": np.zeros((2, 3), np.int32)}
    assert without_autotune_stall(arrays) is arrays  # non-datasets pass through
