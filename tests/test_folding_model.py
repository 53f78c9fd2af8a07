"""End-to-end parity of `TFEsmForProteinFolding` with transformers' `EsmForProteinFolding` on tiny
random-weight checkpoints (every parameter perturbed, so no layer is a no-op and the structure does not collapse).
"""

import os

import numpy as np
import pytest
import torch
import transformers

from tests._reference import assert_within, record_parity, share_directory, share_model
from tests.folding_reference import max_abs_diff, perturb_
from tf_esm.configuration import ESM2_VOCAB
from tf_esm.folding import InvalidSequenceError, TFEsmForProteinFolding
from tf_esm.folding.residue_constants import restype_1to3

STRUCTURE_MODULE = dict(sequence_dim=32, pairwise_dim=16, ipa_dim=8, resnet_dim=16, num_heads_ipa=2,
                        num_qk_points=2, num_v_points=3, num_blocks=2)
TRUNK = dict(num_blocks=2, sequence_state_dim=32, pairwise_state_dim=16, sequence_head_width=8,
             pairwise_head_width=8, position_bins=8, max_recycles=2, chunk_size=None,
             structure_module=STRUCTURE_MODULE)
STEM = dict(vocab_size=33, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=1026, pad_token_id=1, mask_token_id=32, position_embedding_type="rotary",
            token_dropout=True, emb_layer_norm_before=False, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0, layer_norm_eps=1e-5)
SEQUENCES = ["MKTAYIAKQRQISFVKSH", "GSHMLEDPVX", "WCYNQ"]

# Largest max abs difference allowed per output against the PyTorch reference, float32 on CPU: about 5-10x the
# largest difference measured over the parity tests of this file and of test_folding_compiled.py (compiled vs eager
# differs by as much), in the comments; they come from float32 summation order. Coordinates are in Angstrom.
ATOL = dict(
    positions=1e-4,  # measured 1.3e-5
    frames=1e-4,  # 1.1e-5
    sidechain_frames=1e-4,  # 1.3e-5
    angles=2e-5,  # 2.9e-6
    unnormalized_angles=2e-6,  # 2.4e-7
    plddt=1e-6,  # 1.8e-7
    ptm=1e-7,  # 1.9e-8
    predicted_aligned_error=5e-5,  # 5.7e-6
    distogram_logits=1e-5,  # 1.5e-6
    lm_logits=1e-5,  # 1.2e-6
    s_s=1e-5,  # 1.8e-6
    s_z=2e-5,  # 3.3e-6
    states=1e-5,  # 1.4e-6
)


def _make_reference(directory, fp16_esm, safe_serialization=True, seed=0):
    torch.manual_seed(seed)
    config = transformers.EsmConfig(**STEM, is_folding_model=True, vocab_list=list(ESM2_VOCAB),
                                    esmfold_config=dict(fp16_esm=fp16_esm, lddt_head_hid_dim=16, trunk=TRUNK))
    model = transformers.EsmForProteinFolding(config).eval()
    perturb_(model, scale=0.1, seed=seed)
    if safe_serialization:
        model.save_pretrained(str(directory))
    else:  # transformers 5.x writes safetensors whatever safe_serialization says: the 4.x .bin layout by hand
        torch.save(model.state_dict(), os.path.join(directory, "pytorch_model.bin"))
        config.save_pretrained(str(directory))
    return model


@pytest.fixture(scope="session")
def folding_pair(tmp_path_factory):
    """(PyTorch reference, its directory, our model loaded from it) for a float32-stem checkpoint."""
    directory = tmp_path_factory.mktemp("esmfold_ref")
    reference = _make_reference(directory, fp16_esm=False)
    share_directory(directory)
    share_model("test_folding_model.folding_pair", reference)
    model = TFEsmForProteinFolding.from_pretrained(str(directory), strict=True)
    # These tests compare the eager maths with the reference; test_folding_compiled.py checks that the compiled
    # inference path (the default) equals it.
    model.compiled_inference = False
    return reference, str(directory), model


def _batch(sequences):
    from transformers.models.esm.openfold_utils import residue_constants as rc

    length = max(map(len, sequences))
    aatype = np.zeros((len(sequences), length), np.int64)
    mask = np.zeros((len(sequences), length), np.int64)
    for row, sequence in enumerate(sequences):
        aatype[row, :len(sequence)] = [rc.restype_order_with_x.get(c, 20) for c in sequence]
        mask[row, :len(sequence)] = 1
    return aatype, mask


def _compare(ours, theirs):
    assert float(theirs["positions"][-1].std()) > 1.0  # a real structure
    assert float(theirs["plddt"].std()) > 1e-3  # not the collapsed pLDDT = 0.5 of an untrained model
    checks = ATOL
    diffs = {key: max_abs_diff(ours[key], theirs[key]) for key in checks}
    for key, diff in diffs.items():
        record_parity(key, diff)
    for key in ("aatype", "atom14_atom_exists", "atom37_atom_exists", "residx_atom14_to_atom37",
                "residx_atom37_to_atom14", "residue_index"):
        np.testing.assert_array_equal(np.asarray(ours[key]), theirs[key].numpy(), err_msg=key)
    failed = {key: diff for key, diff in diffs.items() if not diff <= checks[key]}
    assert not failed, f"max abs differences over tolerance: {failed}"
    return diffs


def test_output_names_match_reference(folding_pair):
    reference, _, model = folding_pair
    aatype, mask = _batch(SEQUENCES[:1])
    with torch.no_grad():
        theirs = reference(torch.from_numpy(aatype), attention_mask=torch.from_numpy(mask), num_recycles=0)
    ours = model(aatype, attention_mask=mask, num_recycles=0)
    assert set(theirs.keys()) == set(ours.keys())
    assert tuple(ours["positions"].shape) == (2, 1, len(SEQUENCES[0]), 14, 3)  # blocks x B x L x 14 x 3
    assert tuple(ours["plddt"].shape) == (1, len(SEQUENCES[0]), 37)
    assert tuple(ours["ptm"].shape) == ()


@pytest.mark.parametrize("num_recycles", [0, 1])
def test_single_sequence_parity(folding_pair, num_recycles):
    reference, _, model = folding_pair
    aatype, mask = _batch(SEQUENCES[:1])
    with torch.no_grad():
        theirs = reference(torch.from_numpy(aatype), attention_mask=torch.from_numpy(mask), num_recycles=num_recycles)
    _compare(model(aatype, attention_mask=mask, num_recycles=num_recycles), theirs)


def test_padded_batch_parity_default_recycles(folding_pair):
    reference, _, model = folding_pair
    aatype, mask = _batch(SEQUENCES)
    with torch.no_grad():
        theirs = reference(torch.from_numpy(aatype), attention_mask=torch.from_numpy(mask))  # max_recycles passes
    _compare(model(aatype, attention_mask=mask), theirs)


def test_chunk_size_gives_the_same_result(folding_pair):
    _, _, model = folding_pair
    aatype, mask = _batch(SEQUENCES)
    full = model(aatype, attention_mask=mask, num_recycles=0)
    chunked = model(aatype, attention_mask=mask, num_recycles=0, chunk_size=3)
    # measured: positions 6.7e-6, s_z 2.5e-7, plddt 1.2e-7, distogram_logits 1.2e-7
    for key in ("positions", "s_z", "plddt", "distogram_logits"):
        assert_within(f"chunked {key}", max_abs_diff(chunked[key], full[key]), ATOL[key])


def _atoms(pdb_text):
    import gemmi

    structure = gemmi.read_pdb_string(pdb_text)
    atoms = []
    for chain in structure[0]:
        for residue in chain:
            for atom in residue:
                atoms.append((chain.name, residue.seqid.num, residue.name, atom.name, atom.pos.x, atom.pos.y,
                              atom.pos.z, atom.b_iso))
    return atoms


def _assert_same_atoms(ours_text, theirs_text):
    ours, theirs = _atoms(ours_text), _atoms(theirs_text)
    assert len(ours) == len(theirs) > 0
    assert [a[:4] for a in ours] == [a[:4] for a in theirs]
    coordinates = np.array([a[4:7] for a in ours]) - np.array([a[4:7] for a in theirs])
    assert np.max(np.abs(coordinates)) <= 0.0011  # PDB precision (3 decimals)
    assert np.max(np.abs(np.array([a[7] for a in ours]) - np.array([a[7] for a in theirs]))) <= 0.011


def _lines(text, record, width=None):
    return [line[:width] for line in text.splitlines() if line.startswith(record)]


def test_pdb_matches_reference(folding_pair):
    reference, _, model = folding_pair
    with torch.no_grad():
        theirs = reference.infer_pdbs(SEQUENCES[:2])
    ours = model.infer_pdbs(SEQUENCES[:2])
    for ours_text, theirs_text, sequence in zip(ours, theirs, SEQUENCES[:2]):
        _assert_same_atoms(ours_text, theirs_text)
        assert _lines(ours_text, "ATOM", 30) == _lines(theirs_text, "ATOM", 30)
        assert _lines(ours_text, "PARENT") == _lines(theirs_text, "PARENT") == ["PARENT N/A"]
        # TER names the chain's last residue, also for the shorter sequence of a padded batch, where transformers
        # names the batch's last position: our batch's file is the one of the sequence folded alone.
        assert _lines(ours_text, "TER") == _lines(model.infer_pdb(sequence), "TER")
        _, _, resname, chain, number = _lines(ours_text, "TER")[0].split()
        written = sequence.rstrip("X")  # an unknown residue has no atoms to write
        assert (resname, chain, int(number)) == (restype_1to3[written[-1]], "A", len(written))
        assert ours_text.endswith("END\n")
    single = model.infer_pdb(SEQUENCES[0])
    _assert_same_atoms(single, reference.infer_pdb(SEQUENCES[0]))


def test_multimer_with_chain_separator(folding_pair):
    from tf_esm.folding.model import DEFAULT_CHAIN_LINKER, encode_sequence

    reference, _, model = folding_pair
    chains = ("MKTAYIAKQ", "GSHMLE")
    output = model.infer(":".join(chains))
    aatype, residue_index, linker_mask, chain_index = encode_sequence(":".join(chains))
    assert len(aatype) == len(chains[0]) + len(DEFAULT_CHAIN_LINKER) + len(chains[1])
    assert residue_index[len(chains[0]) + len(DEFAULT_CHAIN_LINKER)] - residue_index[len(chains[0]) - 1] > 500
    with torch.no_grad():
        theirs = reference.infer(chains[0] + DEFAULT_CHAIN_LINKER + chains[1],
                                 position_ids=torch.from_numpy(residue_index))
    assert_within("multimer positions", max_abs_diff(output["positions"], theirs["positions"]),
                  ATOL["positions"])  # measured 1.1e-5
    pdb_text = model.output_to_pdb(output)[0]
    atoms = _atoms(pdb_text)
    for chain_name, chain in zip("AB", chains):
        residues = sorted({a[1] for a in atoms if a[0] == chain_name})
        assert len(residues) == len(chain)  # linker residues are not written
    assert pdb_text.count("TER") == 2
    ter_a, ter_b = _lines(pdb_text, "TER")  # each after its chain's last residue, not after the linker
    assert ter_a.split()[2:] == [restype_1to3[chains[0][-1]], "A", str(len(chains[0]))]
    assert ter_b.split()[2:4] == [restype_1to3[chains[1][-1]], "B"]
    assert int(ter_b.split()[4]) == residue_index[-1] + 1


@pytest.mark.parametrize("bad", ["MKT*A", "mkta", "MK TA", "", "MKT::A"])
def test_invalid_sequences_raise_a_clear_error(folding_pair, bad):
    _, _, model = folding_pair
    with pytest.raises(InvalidSequenceError):
        model.infer(bad)


@pytest.mark.parametrize("format", ["h5", "safetensors"])
def test_save_pretrained_round_trip(folding_pair, tmp_path, format):
    _, _, model = folding_pair
    model.save_pretrained(str(tmp_path), format=format)
    reloaded = TFEsmForProteinFolding.from_pretrained(str(tmp_path), strict=True)
    aatype, mask = _batch(SEQUENCES[1:])
    a = model(aatype, attention_mask=mask, num_recycles=0)
    b = reloaded(aatype, attention_mask=mask, num_recycles=0, compiled=False)
    assert max_abs_diff(a["positions"], np.asarray(b["positions"])) == 0.0


def test_convert_folds_as_the_reference(folding_pair, tmp_path):
    """`tf-esm convert` of an ESMFold directory (transformers' save_pretrained) gives an ESMFold model directory,
    not a language model: loaded, it folds as the reference does."""
    from tf_esm.pipelines.convert import convert_checkpoint

    reference, directory, _ = folding_pair
    destination = convert_checkpoint(directory, tmp_path / "converted")
    model = TFEsmForProteinFolding.from_pretrained(destination, strict=True)
    assert model.stem_precision == "float32"
    aatype, mask = _batch(SEQUENCES[:1])
    with torch.no_grad():
        theirs = reference(torch.from_numpy(aatype), attention_mask=torch.from_numpy(mask), num_recycles=0)
    _compare(model(aatype, attention_mask=mask, num_recycles=0, compiled=False), theirs)


def test_fp16_stem_checkpoint_in_bin_format(tmp_path):
    """fp16_esm=True stores the stem in float16 (a .bin here); on CPU we run it in float32, like the reference
    with its stem cast to float32."""
    reference = _make_reference(tmp_path, fp16_esm=True, safe_serialization=False, seed=1)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "pytorch_model.bin"]
    assert next(reference.esm.parameters()).dtype == torch.float16
    model = TFEsmForProteinFolding.from_pretrained(str(tmp_path), strict=True)
    assert model.stem_precision == "float32"
    reference.esm.float()
    aatype, mask = _batch(SEQUENCES[1:])
    with torch.no_grad():
        theirs = reference(torch.from_numpy(aatype), attention_mask=torch.from_numpy(mask), num_recycles=0)
    _compare(model(aatype, attention_mask=mask, num_recycles=0, compiled=False), theirs)


def test_half_precision_stem_matches_reference_half_stem(tmp_path):
    """fp16_esm on a GPU runs the stem with float16 compute; checked here on CPU against the reference's
    float16 stem (differences are half-precision rounding, ~1e-2 Angstrom)."""
    from tf_esm.configuration import EsmConfig
    from tf_esm.io.weights import load_state_dict, read_state_dict

    reference = _make_reference(tmp_path, fp16_esm=True, seed=1)
    model = TFEsmForProteinFolding(EsmConfig.from_pretrained(str(tmp_path)), stem_precision="mixed_float16")
    model.build()
    load_state_dict(model, read_state_dict(str(tmp_path)), strict=True)
    aatype, mask = _batch(SEQUENCES[1:])
    with torch.no_grad():
        theirs = reference(torch.from_numpy(aatype), attention_mask=torch.from_numpy(mask), num_recycles=0)
    ours = model(aatype, attention_mask=mask, num_recycles=0, compiled=False)
    assert_within("fp16 positions", max_abs_diff(ours["positions"], theirs["positions"]), 0.1)  # measured 0.015
    assert_within("fp16 plddt", max_abs_diff(ours["plddt"], theirs["plddt"]), 5e-5)  # measured 4.6e-6


def test_safetensors_export_loads_in_transformers(folding_pair, tmp_path):
    reference, _, model = folding_pair
    model.save_pretrained(str(tmp_path), format="safetensors")
    reloaded, info = transformers.EsmForProteinFolding.from_pretrained(str(tmp_path), output_loading_info=True)
    reloaded.eval()
    # Every tensor transformers' checkpoints hold, the af2_to_esm buffer included, and nothing else.
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    np.testing.assert_array_equal(reloaded.af2_to_esm.numpy(), reference.af2_to_esm.numpy())
    aatype, mask = _batch(SEQUENCES[:2])
    with torch.no_grad():
        expected = reference(torch.from_numpy(aatype), attention_mask=torch.from_numpy(mask), num_recycles=0)
        got = reloaded(torch.from_numpy(aatype), attention_mask=torch.from_numpy(mask), num_recycles=0)
    # The same float32 weights in the same PyTorch model: the same computation (measured 0).
    assert_within("reloaded positions", max_abs_diff(got["positions"].numpy(), expected["positions"]), 0.0)


def test_attention_map_input_to_the_pair_stack():
    """use_esm_attn_map (fair-esm's option; absent from the HF port) feeds the stem's attention maps through
    `esm_z_mlp` into the initial pair state."""
    from tf_esm.configuration import EsmConfig

    config = EsmConfig(**STEM, is_folding_model=True, esmfold_config=dict(
        fp16_esm=False, use_esm_attn_map=True, lddt_head_hid_dim=16, trunk=TRUNK))
    model = TFEsmForProteinFolding(config)
    model.build()
    names = {v.path.split("/", 1)[1] for v in model.weights}
    assert {"esm_z_mlp/0/gamma", "esm_z_mlp/1/kernel"} <= names
    assert tuple(model.esm_z_mlp.dense_layers[0].kernel.shape) == (2 * 4, 16)  # layers x heads -> pair dim
    aatype, mask = _batch(SEQUENCES[1:])
    output = model(aatype, attention_mask=mask, num_recycles=0, compiled=False)
    assert tuple(output["s_z"].shape) == (2, aatype.shape[1], aatype.shape[1], 16)
    assert np.all(np.isfinite(np.asarray(output["positions"])))


def test_cross_products_along_the_last_axis_whatever_the_leading_axes():
    """The recycled distogram's virtual C-beta and `Rigid.from_3_points` cross along the coordinate axis even where a
    leading axis also has size 3 (a batch of 3 sequences, 3 residues): Keras' PyTorch backend hands `ops.cross`'s
    default axis=None on to `torch.cross(dim=None)`, which crosses along the first axis of size 3. Against
    transformers' `EsmFoldingTrunk.distogram` and openfold's `Rigid.from_3_points`."""
    import keras
    from transformers.models.esm.modeling_esmfold import EsmFoldingTrunk
    from transformers.models.esm.openfold_utils.rigid_utils import Rigid as ReferenceRigid

    from tf_esm.backend import to_numpy
    from tf_esm.folding.rigid import Rigid
    from tf_esm.folding.trunk import pseudo_beta_distogram

    rng = np.random.default_rng(0)  # B, L, N/CA/C, xyz: atoms ~1 A around residue centres ~8 A apart
    coords = (rng.normal(scale=5.0, size=(3, 3, 1, 3)) + rng.normal(size=(3, 3, 3, 3))).astype(np.float32)
    theirs = EsmFoldingTrunk.distogram(torch.from_numpy(coords), 3.375, 21.375, 15).numpy()
    assert len(np.unique(theirs)) > 3  # distances spread over the bins
    ours = pseudo_beta_distogram(keras.ops.convert_to_tensor(coords), num_bins=15)
    np.testing.assert_array_equal(to_numpy(ours), theirs)

    points = [coords[:, :, i] for i in range(3)]  # 3 x [3, 3, 3]
    theirs = ReferenceRigid.from_3_points(*map(torch.from_numpy, points)).get_rots().get_rot_mats().numpy()
    ours = to_numpy(Rigid.from_3_points(*map(keras.ops.convert_to_tensor, points)).get_rots().get_rot_mats())
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)
