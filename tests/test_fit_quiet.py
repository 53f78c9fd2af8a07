"""`model.fit` on tf_esm's own datasets prints no warning a user cannot act on, and make_dataset states how many
batches it yields (whatever the shuffle order), so Keras knows the epoch length from the first epoch."""

import warnings

import keras
import numpy as np
import pytest

from tf_esm import TFEsmForSequenceClassification
from tf_esm.pipelines.data import sequences_dataset


def _sequences(count, seed):
    rng = np.random.default_rng(seed)
    letters = np.array(list("LAGVSERTIDPKQNFYMHWC"))
    return ["".join(rng.choice(letters, size=int(n))) for n in rng.integers(3, 90, size=count)]


@pytest.mark.parametrize("batching", [dict(batch_size=7), dict(max_tokens_per_batch=600), dict(bucket_boundaries=None)])
@pytest.mark.parametrize("drop_remainder", [False, True])
def test_make_dataset_states_its_batch_count(esm_tokenizer, batching, drop_remainder):
    dataset = sequences_dataset(_sequences(101, seed=3), tokenizer=esm_tokenizer, shuffle=True, seed=5,
                                drop_remainder=drop_remainder, **batching)
    stated = int(dataset.cardinality())
    assert stated > 0
    for _ in range(3):  # reshuffled each epoch: the count holds (assert_cardinality would raise otherwise)
        assert sum(1 for _ in dataset) == stated


def test_fit_on_a_tf_data_dataset_warns_nothing(reference_checkpoints, esm_tokenizer):
    model = TFEsmForSequenceClassification.from_pretrained(reference_checkpoints("rotary").path, num_labels=2)
    sequences = _sequences(24, seed=4)
    train = sequences_dataset(sequences, labels=[i % 2 for i in range(24)], tokenizer=esm_tokenizer, batch_size=8,
                              shuffle=True, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(train, epochs=2, verbose=0)
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "shuffle" in m or "ran out of data" in m], messages
    assert len(history.history["loss"]) == 2
