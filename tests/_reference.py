"""Build tiny random-weight PyTorch reference models with transformers and save them (no downloads)."""

from __future__ import annotations

import dataclasses
import os

import numpy as np

TINY = dict(vocab_size=33, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64, pad_token_id=1, mask_token_id=32, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0, layer_norm_eps=1e-5)

KINDS = {
    # ESM-2 layout: rotary positions, token dropout, no embedding layer norm.
    "rotary": dict(position_embedding_type="rotary", token_dropout=True, emb_layer_norm_before=False),
    # ESM-1b layout: learned absolute positions, embedding layer norm, token dropout.
    "absolute": dict(position_embedding_type="absolute", token_dropout=True, emb_layer_norm_before=True),
}


@dataclasses.dataclass
class ReferenceCheckpoint:
    path: str
    model: object  # the torch model, in eval mode
    config: object


def make_reference_checkpoint(directory, kind="rotary", model_class="EsmForMaskedLM", noise=0.2, seed=0, **options):
    """Save a perturbed tiny transformers model (safetensors: transformers 5.x writes nothing else)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    settings = dict(TINY, **KINDS[kind], **options)
    config = transformers.EsmConfig(**settings)
    config._attn_implementation = "eager"  # eager attention returns the attention maps we compare
    model = getattr(transformers, model_class)(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            # Random, non-trivial values everywhere (layer norms, biases, heads), so every weight matters.
            parameter.add_(torch.randn_like(parameter) * noise)
    model.save_pretrained(str(directory))
    return ReferenceCheckpoint(str(directory), model, config)


def batch_with_padding_and_masks(rng=None, lengths=(12, 7, 3), mask_positions=((0, 3), (1, 2), (1, 5))):
    """A right-padded batch of residue ids with <cls>/<eos> and a few <mask> tokens (ESM-2 vocabulary)."""
    rng = rng or np.random.default_rng(1)
    width = max(lengths) + 2
    input_ids = np.ones((len(lengths), width), dtype=np.int32)
    for row, length in enumerate(lengths):
        input_ids[row, 0] = 0
        input_ids[row, 1:length + 1] = rng.integers(4, 29, size=length)
        input_ids[row, length + 1] = 2
    for row, position in mask_positions:
        input_ids[row, position] = 32
    attention_mask = (input_ids != 1).astype(np.int32)
    return input_ids, attention_mask


def torch_outputs(model, input_ids, attention_mask=None, **kwargs):
    """The reference model's outputs, leaving the (shared) model as it was: transformers stores the problem type it
    infers from `labels` on the model's config, which would change later calls of other tests."""
    import torch

    problem_type = model.config.problem_type
    try:
        with torch.no_grad():
            return model(torch.as_tensor(input_ids, dtype=torch.long),
                         attention_mask=None if attention_mask is None else torch.as_tensor(attention_mask),
                         **kwargs)
    finally:
        model.config.problem_type = problem_type


# Directories that fixtures build once and tests share: path -> fingerprint. No test may write into one (a test that
# did would make the others' results depend on the order); conftest.py checks them after every test.
SHARED_DIRECTORIES = {}


def directory_fingerprint(path):
    """{relative file path: (size, mtime in ns)} of every file under `path`."""
    fingerprint = {}
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            status = os.stat(full)
            fingerprint[os.path.relpath(full, path)] = (status.st_size, status.st_mtime_ns)
    return fingerprint


def share_directory(path):
    """Register a fixture's directory as shared (read-only for tests); returns `path`."""
    SHARED_DIRECTORIES[os.fspath(path)] = directory_fingerprint(path)
    return path


# Reference models that fixtures build once and tests share: [(description, model, state, config)].
SHARED_MODELS = []


def _model_state(model):
    return {name: tensor.detach().clone() for name, tensor in model.state_dict(keep_vars=False).items()}


def share_model(description, model):
    """Register a fixture's PyTorch reference model as shared (read-only for tests); returns `model`."""
    SHARED_MODELS.append((description, model, _model_state(model), model.config.to_dict()))
    return model


def changed_shared_models():
    """Descriptions of the shared reference models whose weights, buffers or config changed since registration
    (each is then registered afresh, so that only the test that changed it is blamed)."""
    import torch

    changed = []
    for index, (description, model, state, config) in enumerate(SHARED_MODELS):
        now = model.state_dict()
        tensors = sorted(name for name in set(state) | set(now)
                         if name not in state or name not in now or not torch.equal(state[name], now[name]))
        settings = sorted(key for key in set(config) | set(model.config.to_dict())
                          if config.get(key) != model.config.to_dict().get(key))
        if tensors or settings:
            changed.append(f"{description}: tensors {tensors}, config {settings}")
            SHARED_MODELS[index] = (description, model, _model_state(model), model.config.to_dict())
    return changed


def changed_shared_directories():
    """{path: description} of the shared directories whose files changed since they were registered (each is then
    registered afresh, so that only the test that wrote is blamed)."""
    changed = {}
    for path, before in SHARED_DIRECTORIES.items():
        after = directory_fingerprint(path)
        if after != before:
            added = sorted(set(after) - set(before))
            removed = sorted(set(before) - set(after))
            modified = sorted(name for name in set(after) & set(before) if after[name] != before[name])
            changed[path] = f"added {added}, removed {removed}, modified {modified}"
            SHARED_DIRECTORIES[path] = after
    return changed


# Max abs differences measured by parity assertions, printed at the end of the test run (see conftest.py).
PARITY_REPORT = {}


def as_numpy(value):
    """A backend tensor (or a list of them, stacked) as a NumPy array, under every backend (`backend.to_numpy`)."""
    from tf_esm.backend import to_numpy

    if isinstance(value, (list, tuple)):
        return np.stack([as_numpy(item) for item in value])
    return to_numpy(value)


def assert_close(ours, theirs, atol, what, case=None):
    """Assert max |ours - theirs| <= atol (shapes equal) and record the measured difference for the report."""
    ours = as_numpy(ours)  # (a torch-backend output requires grad: np.asarray refuses it)
    theirs = theirs.detach().numpy() if hasattr(theirs, "detach") else np.asarray(theirs)
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} != {theirs.shape}"
    assert np.all(np.isfinite(ours)), f"{what}: non-finite values"
    diff = float(np.max(np.abs(ours - theirs))) if ours.size else 0.0
    record_parity(what, diff, case)
    assert diff <= atol, f"{what}: max abs diff {diff:.3g} > {atol}"
    return diff


def assert_within(what, diff, atol):
    """Assert an already measured max abs difference `diff` <= atol, recording it for the report."""
    record_parity(what, diff)
    assert diff <= atol, f"{what}: max abs diff {diff:.3g} > {atol}"
    return diff


def record_parity(what, diff, case=None):
    """Record a measured max abs difference for the end-of-run parity report (the largest one per key)."""
    if case is None:  # the running test's id, parameters included: "test_name[rotary]"
        case = os.environ.get("PYTEST_CURRENT_TEST", "").split("::")[-1].split(" ")[0]
    key = f"{case} :: {what}"
    PARITY_REPORT[key] = max(float(diff), PARITY_REPORT.get(key, 0.0))


ESMC_TINY = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
                 classifier_dropout=0.0, attention_dropout=0.0)


def make_esmc_reference_checkpoint(directory, model_class="EsmcForMaskedLM", seed=0, tokenizer=True, **options):
    """Save a tiny transformers ESM C model with random, non-trivial weights (layer norms near 1, biases near 0,
    matrices of standard deviation 0.2), and its tokenizer beside it, as a hub directory is laid out."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.EsmcConfig(**dict(ESMC_TINY, **options))
    config._attn_implementation = "eager"  # eager attention returns the attention maps we compare
    model = getattr(transformers, model_class)(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                parameter.copy_(1 + 0.2 * torch.randn_like(parameter))
            elif name.endswith("bias"):
                parameter.copy_(0.1 * torch.randn_like(parameter))
            else:
                parameter.copy_(0.2 * torch.randn_like(parameter))
    model.save_pretrained(str(directory))
    if tokenizer:
        transformers.EsmcTokenizer().save_pretrained(str(directory))
    return ReferenceCheckpoint(str(directory), model, config)
