"""Tiny fair-esm `.pt` checkpoints written in the released files' layout, and fair-esm's own loader for them.

Shared by tests/test_fair_esm.py (conversion parity) and tests/test_cli.py (the `tf-esm` command on `.pt` files).
"""

from __future__ import annotations

import argparse
import os

import esm
import torch

ALPHABET = esm.data.Alphabet.from_architecture("ESM-1b")


def _perturb(model, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():  # tied embeddings/decoder are one parameter, perturbed once
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return model.eval()


def _fairseq_layout(state_dict):
    """Split a fair-esm state dict into fairseq's prefixed 'model' dict and the contact-regression dict."""
    model, regression = {}, {}
    for name, value in state_dict.items():
        if name.startswith("contact_head."):
            regression[name] = value
        elif name.startswith("lm_head."):
            model["encoder." + name] = value
        else:
            model["encoder.sentence_encoder." + name] = value
    return model, regression


def write_esm2(directory, stem="esm2_t2_tiny_UR50D"):
    torch.manual_seed(1)  # the constructor's initial weights, whatever the test order
    model = esm.model.esm2.ESM2(num_layers=2, embed_dim=32, attention_heads=4, alphabet=ALPHABET, token_dropout=True)
    _perturb(model, seed=1)
    with torch.no_grad():
        for layer in model.layers:  # released files store fp16-rounded tables: they must be used as stored
            layer.self_attn.rot_emb.inv_freq.mul_(1.03)
    weights, regression = _fairseq_layout(model.state_dict())
    cfg = argparse.Namespace(encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=128,
                             encoder_attention_heads=4, token_dropout=True, max_positions=1024, dropout=0.0)
    path = os.path.join(directory, stem + ".pt")
    torch.save({"model": weights, "cfg": {"model": cfg, "task": {"_name": "masked_lm"}}}, path)
    torch.save({"model": regression}, os.path.join(directory, stem + "-contact-regression.pt"))
    return path


def write_esm1b(directory, stem="esm1b_t2_tiny_UR50S", layer_norm_before=True, token_dropout=True,
                with_regression=True):
    args = argparse.Namespace(arch="roberta_large", layers=2, embed_dim=32, ffn_embed_dim=48, attention_heads=4,
                              max_positions=40, token_dropout=token_dropout, emb_layer_norm_before=layer_norm_before)
    torch.manual_seed(2)  # the constructor's initial weights, whatever the test order
    model = _perturb(esm.model.esm1.ProteinBertModel(args, ALPHABET), seed=2)
    weights, regression = _fairseq_layout(model.state_dict())
    # fairseq's argument names, which fair-esm strips of "encoder_".
    raw_args = argparse.Namespace(arch="roberta_large", encoder_layers=2, encoder_embed_dim=32,
                                  encoder_ffn_embed_dim=48, encoder_attention_heads=4, max_positions=40,
                                  token_dropout=token_dropout, dropout=0.1, attention_dropout=0.1)
    path = os.path.join(directory, stem + ".pt")
    torch.save({"model": weights, "args": raw_args}, path)
    if with_regression:
        torch.save({"model": regression}, os.path.join(directory, stem + "-contact-regression.pt"))
    return path


def write_esm1v(directory, stem="esm1v_t2_tiny_UR90S_1"):
    """An ESM-1v file: the ESM-1b layout with no contact-regression file, no embedding layer norm and no token
    dropout (so the zeroed `<mask>` embedding row reaches the encoder)."""
    return write_esm1b(directory, stem=stem, layer_norm_before=False, token_dropout=False, with_regression=False)


def fair_esm_load(path):
    """fair-esm's own loader (torch >= 2.6 loads with weights_only=True, so Namespace must be allowed)."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        model, alphabet = esm.pretrained.load_model_and_alphabet_local(path)
    return model.eval(), alphabet
