"""Shared helpers of the folding tests: PyTorch reference modules with non-degenerate random weights, and
loading their state dicts into Keras layers by the tf_esm name rule."""

from __future__ import annotations

import numpy as np

LEAF_RENAMES = {"kernel": "weight", "embeddings": "weight", "gamma": "weight", "beta": "bias"}


def torch_name(variable_path):
    """PyTorch parameter name of a Keras variable: drop the top-level layer, '/' and '-' (the reference's '.' inside
    a Keras name: `layers-0`) -> '.', rename the leaf. A stacked weight of a LayerStack
    (`blocks/stacked-tri_mul_out-linear_z-kernel`) gives the name with `*` for the layer index."""
    parts = [part.replace("-", ".") for part in variable_path.split("/")[1:]]
    leaf = parts[-1].split(".")
    parts = parts[:-1] + (["*"] + leaf[1:] if leaf[0] == "stacked" and len(leaf) > 1 else leaf)
    return ".".join(parts[:-1] + [LEAF_RENAMES.get(parts[-1], parts[-1])])


def _reference_value(name, state_dict, kernel):
    """The tensor of `name` in `state_dict`, in Keras' layout; for a stacked name, the layers' tensors stacked."""
    if ".*." not in name:
        value = np.asarray(state_dict[name])
        return (value.T if kernel and value.ndim == 2 else value), {name}
    head, tail = name.split(".*.")
    names = []
    while f"{head}.{len(names)}.{tail}" in state_dict:
        names.append(f"{head}.{len(names)}.{tail}")
    if not names:
        raise KeyError(name)
    values = [_reference_value(member, state_dict, kernel)[0] for member in names]
    return np.stack(values), set(names)


def state_dict_numpy(module):
    return {name: tensor.detach().float().cpu().numpy() for name, tensor in module.state_dict().items()}


def load_into_keras(layer, state_dict, ignore=()):
    """Assign every Keras weight of `layer` from `state_dict`; every tensor must be used (except `ignore`)."""
    used = set()
    for variable in layer.weights:
        name = torch_name(variable.path)
        try:
            value, names = _reference_value(name, state_dict, kernel=variable.path.endswith("kernel"))
        except KeyError:
            raise KeyError(f"{variable.path} -> {name} is not in the state dict") from None
        if tuple(value.shape) != tuple(variable.shape):
            raise ValueError(f"{name}: shape {value.shape} != {tuple(variable.shape)}")
        variable.assign(value.astype(variable.dtype))
        used.update(names)
    unused = sorted(set(state_dict) - used - set(ignore))
    if unused:
        raise KeyError(f"unused state-dict entries: {unused}")


def perturb_(module, scale=0.1, seed=0):
    """Add Gaussian noise to every floating-point parameter, so zero-initialised layers do something."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.is_floating_point():
                noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float32)
                parameter.add_((scale * noise).to(parameter.dtype))
    return module


def max_abs_diff(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b.detach().cpu().numpy() if hasattr(b, "detach") else b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b))) if a.size else 0.0
