"""TensorFlow-only: trace one transformer layer once and run every layer of the stack through it.

Inside a `tf.function` (the embedding graph of `tf_esm.inference`, SavedModel signatures, `predict`), calling the N
layers of the encoder one after the other traces N copies of the same few hundred ops, and tracing is most of the
fixed cost of a short `tf-esm embed` run. Here the first layer's `call` is traced once as a `tf.function` whose
weights are arguments (`keras.layers.Layer.stateless_call`), and every layer calls that one function with its own
weights: the same operations on the same values, so the same numbers, with one layer's worth of tracing.

Used only for inference (no attention maps, head mask, cache, cross-attention or training): the encoder falls back
to calling its layers directly otherwise, or when the layers' variables differ in shape (e.g. LoRA on some layers).
"""

from __future__ import annotations

import weakref

import tensorflow as tf

_FUNCTIONS = weakref.WeakKeyDictionary()  # template layer -> its traced tf.function


def applies():
    """Whether this call is being traced into a graph (where tracing each layer would cost time), outside a
    distribution strategy (whose replicas read mirrored variables: there the layers are called directly)."""
    return tf.inside_function() and not tf.distribute.has_strategy()


def _variables(layer):
    return layer.trainable_variables, layer.non_trainable_variables


def _same_structure(layers):
    template = [[tuple(v.shape) for v in group] for group in _variables(layers[0])]
    return all([[tuple(v.shape) for v in group] for group in _variables(layer)] == template for layer in layers[1:])


def _function(template):
    if template not in _FUNCTIONS:
        def layer_step(trainable, non_trainable, hidden_states, attention_mask, rotary):
            outputs, _ = template.stateless_call(trainable, non_trainable, hidden_states,
                                                 attention_mask=attention_mask, rotary=rotary)
            return outputs[0]

        _FUNCTIONS[template] = tf.function(layer_step, autograph=False, reduce_retracing=True)
    return _FUNCTIONS[template]


def run_layers(layers, hidden_states, attention_mask=None, rotary=None):
    """The hidden states after each of `layers` (a list), every layer run through one traced function; None when
    the layers cannot share one (the caller then calls them directly)."""
    if len(layers) < 2 or not _same_structure(layers):
        return None
    step = _function(layers[0])
    states = []
    for layer in layers:
        trainable, non_trainable = _variables(layer)
        hidden_states = step([v.value for v in trainable], [v.value for v in non_trainable], hidden_states,
                             attention_mask, rotary)
        states.append(hidden_states)
    return states
