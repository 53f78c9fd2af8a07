"""Per-module parity of the folding trunk and structure module with the PyTorch reference.

Reference modules get Gaussian noise on every parameter (the reference zero-initialises many output layers,
which would make the comparison vacuous), then their state dicts are loaded by the tf_esm name rule.
"""

from types import SimpleNamespace

import pytest
import torch
from transformers.models.esm import modeling_esmfold as ref
from transformers.models.esm.configuration_esm import StructureModuleConfig as RefStructureModuleConfig
from transformers.models.esm.configuration_esm import TrunkConfig as RefTrunkConfig

from tests._reference import assert_within
from tests.folding_reference import load_into_keras, max_abs_diff, perturb_, state_dict_numpy
from tf_esm.configuration import StructureModuleConfig, TrunkConfig
from tf_esm.folding.structure_module import StructureModule
from tf_esm.folding.triangular_attention import TriangleAttention
from tf_esm.folding.triangular_multiplicative_update import TriangleMultiplicativeUpdate
from tf_esm.folding.trunk import FoldingTrunk, TriangularSelfAttentionBlock

SM = dict(sequence_dim=32, pairwise_dim=16, ipa_dim=8, resnet_dim=16, num_heads_ipa=2, num_qk_points=2,
          num_v_points=3, num_blocks=3)
TRUNK = dict(num_blocks=2, sequence_state_dim=32, pairwise_state_dim=16, sequence_head_width=8,
             pairwise_head_width=8, position_bins=8, max_recycles=2, chunk_size=None)
B, N = 2, 9
SINGLE_SHAPE, PAIR_SHAPE = (None, None, 32), (None, None, None, 16)


@pytest.fixture(scope="module")
def inputs():
    generator = torch.Generator().manual_seed(0)
    mask = torch.ones(B, N)
    mask[1, 6:] = 0
    return SimpleNamespace(
        s=torch.randn(B, N, 32, generator=generator), z=torch.randn(B, N, N, 16, generator=generator),
        aatype=torch.randint(0, 21, (B, N), generator=generator), mask=mask,
        pair_mask=mask[:, :, None] * mask[:, None, :], residx=torch.arange(N).expand(B, N) * 2,
    )


def with_weights_of(torch_layer, layer, *input_shapes):
    """`layer`, built for `input_shapes`, holding the (perturbed) reference layer's weights."""
    layer.build(*input_shapes)
    load_into_keras(layer, state_dict_numpy(torch_layer))
    return layer


def assert_pair_update_matches(layer, torch_layer, inputs, atol):
    """A pair-representation layer, given the perturbed reference's weights, matches it whole and chunked."""
    layer = with_weights_of(torch_layer, layer, PAIR_SHAPE)
    with torch.no_grad():
        expected = torch_layer(inputs.z, mask=inputs.pair_mask)
    assert_within("pair update", max_abs_diff(layer(inputs.z.numpy(), inputs.pair_mask.numpy()), expected), atol)
    assert_within("pair update, chunked",
                  max_abs_diff(layer(inputs.z.numpy(), inputs.pair_mask.numpy(), chunk_size=4), expected), atol)


@pytest.mark.parametrize("starting", [True, False])
def test_triangle_attention(inputs, starting):
    torch_layer = perturb_(ref.EsmFoldTriangleAttention(16, 8, 2, starting=starting, inf=1e9)).eval()
    assert_pair_update_matches(TriangleAttention(16, 2, 8, starting=starting, name="tri_att"), torch_layer, inputs,
                               atol=1e-6)  # measured 1.8e-7


@pytest.mark.parametrize("outgoing", [True, False])
def test_triangle_multiplicative_update(inputs, outgoing):
    torch_layer = perturb_(ref.EsmFoldTriangleMultiplicativeUpdate(SimpleNamespace(pairwise_state_dim=16),
                                                                   _outgoing=outgoing)).eval()
    assert_pair_update_matches(TriangleMultiplicativeUpdate(16, outgoing=outgoing, name="tri_mul"), torch_layer,
                               inputs, atol=5e-6)  # measured 5.7e-7


def test_trunk_block(inputs):
    torch_block = perturb_(ref.EsmFoldTriangularSelfAttentionBlock(RefTrunkConfig(**TRUNK))).eval()
    block = with_weights_of(torch_block, TriangularSelfAttentionBlock(TrunkConfig(**TRUNK), name="block"),
                            SINGLE_SHAPE, PAIR_SHAPE)
    with torch.no_grad():
        expected_s, expected_z = torch_block(inputs.s, inputs.z, mask=inputs.mask)
    for chunk_size in (None, 4):
        s, z = block(inputs.s.numpy(), inputs.z.numpy(), residue_mask=inputs.mask.numpy(), chunk_size=chunk_size)
        assert_within(f"s (chunk_size={chunk_size})", max_abs_diff(s, expected_s), 5e-6)  # measured 6.0e-7
        assert_within(f"z (chunk_size={chunk_size})", max_abs_diff(z, expected_z), 1e-5)  # measured 1.3e-6


def test_structure_module(inputs):
    torch_module = perturb_(ref.EsmFoldStructureModule(RefStructureModuleConfig(**SM))).eval()
    module = with_weights_of(torch_module, StructureModule(StructureModuleConfig(**SM), name="structure_module"),
                             SINGLE_SHAPE, PAIR_SHAPE)
    with torch.no_grad():
        expected = torch_module({"single": inputs.s, "pair": inputs.z}, inputs.aatype, inputs.mask)
    ours = module(inputs.s.numpy(), inputs.z.numpy(), inputs.aatype.numpy(), residue_mask=inputs.mask.numpy())
    assert float(expected["positions"].std()) > 1.0  # a real structure, not a collapse at the origin
    # measured: frames 2.3e-5, sidechain_frames 2.5e-5, positions 2.7e-5, unnormalized_angles 3.6e-7, angles 1.0e-5,
    # states 1.7e-6, single 1.7e-6
    tolerances = dict(frames=2e-4, sidechain_frames=2e-4, positions=2e-4, unnormalized_angles=2e-6, angles=1e-4,
                      states=1e-5, single=1e-5)
    for key, atol in tolerances.items():
        assert_within(key, max_abs_diff(ours[key], expected[key]), atol)


@pytest.mark.parametrize("no_recycles", [0, 2])
def test_folding_trunk_with_recycling(inputs, no_recycles):
    reference_config = RefTrunkConfig(**TRUNK, structure_module=RefStructureModuleConfig(**SM))
    torch_trunk = perturb_(ref.EsmFoldingTrunk(reference_config)).eval()
    config = TrunkConfig(**TRUNK, structure_module=StructureModuleConfig(**SM))
    trunk = with_weights_of(torch_trunk, FoldingTrunk(config, name="trunk"), SINGLE_SHAPE, PAIR_SHAPE)
    args = (inputs.s, inputs.z, inputs.aatype, inputs.residx, inputs.mask)
    with torch.no_grad():
        expected = torch_trunk(*args, no_recycles=no_recycles)
    ours = trunk(*(a.numpy() for a in args), no_recycles=no_recycles, chunk_size=4)
    # measured (no_recycles 2): positions 2.4e-5, frames 2.4e-5, s_s 1.4e-6, s_z 2.9e-6, angles 7.8e-6
    tolerances = dict(positions=2e-4, frames=2e-4, s_s=1e-5, s_z=2e-5, angles=5e-5)
    for key, atol in tolerances.items():
        assert_within(key, max_abs_diff(ours[key], expected[key]), atol)


def test_layers_round_trip_through_get_config():
    from tf_esm.folding.primitives import Attention, Linear

    layers = [
        TriangleAttention(16, 2, 8, starting=False, name="tri_att_end"),
        TriangleMultiplicativeUpdate(16, outgoing=False, name="tri_mul_in"),
        TriangularSelfAttentionBlock(TrunkConfig(**TRUNK), name="blocks.0"),
        StructureModule(StructureModuleConfig(**SM), name="structure_module"),
        FoldingTrunk(TrunkConfig(**TRUNK, structure_module=StructureModuleConfig(**SM)), name="trunk"),
        Attention(2, 4, 8, name="mha"),
        Linear(4, init="gating", name="linear_g"),
    ]
    for layer in layers:
        clone = type(layer).from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()
