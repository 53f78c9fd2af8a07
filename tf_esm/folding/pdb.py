"""PDB text from predicted atom37 coordinates, with per-atom B-factors (ESMFold writes pLDDT there).

The format follows AlphaFold's/OpenFold's writer: a `PARENT N/A` header per chain, `ATOM` records for atoms
whose mask is set, a `TER` record after each chain's last written residue, then `END`.
"""

from __future__ import annotations

import string

import numpy as np

from tf_esm.folding import residue_constants as rc
from tf_esm.folding.atoms import atom14_to_atom37

CHAIN_IDS = string.ascii_uppercase


def _resname(aatype):
    return rc.resnames[aatype] if 0 <= aatype < len(rc.resnames) else "UNK"


def to_pdb(aatype, atom_positions, atom_mask, residue_index, b_factors, chain_index=None):
    """One protein as PDB text.

    Args:
        aatype: [N] residue types (0..20).
        atom_positions: [N, 37, 3] coordinates in Angstrom.
        atom_mask: [N, 37]; atoms with mask < 0.5 are not written.
        residue_index: [N] residue numbers as written in the file.
        b_factors: [N, 37] B-factor of every atom.
        chain_index: [N] chain of every residue (0 -> "A", ...), or None for a single chain "A".
    """
    aatype = np.asarray(aatype).astype(np.int64)
    atom_positions = np.asarray(atom_positions)
    atom_mask = np.asarray(atom_mask)
    residue_index = np.asarray(residue_index).astype(np.int32)
    b_factors = np.asarray(b_factors)
    if np.any(aatype > rc.restype_num) or np.any(aatype < 0):
        raise ValueError("Residue types must lie in 0..20.")
    if chain_index is not None:
        chain_index = np.asarray(chain_index).astype(np.int64)
        if np.any(chain_index >= len(CHAIN_IDS)):
            raise ValueError(f"PDB files hold at most {len(CHAIN_IDS)} chains.")

    lines = ["PARENT N/A"]
    serial = 1
    # The residues with atoms to write: not the padding of a batch's shorter sequences, nor a complex's linker, so
    # that each TER names its chain's last residue (transformers' and OpenFold's writers name the batch's last
    # position there, so a sequence folded in a batch got another file than folded alone).
    written = np.flatnonzero(np.max(atom_mask, axis=-1) >= 0.5) if atom_mask.size else np.zeros(0, np.int64)
    for rank, i in enumerate(written):
        resname = _resname(aatype[i])
        chain_id = CHAIN_IDS[chain_index[i]] if chain_index is not None else "A"
        for atom_name, position, present, b_factor in zip(rc.atom_types, atom_positions[i], atom_mask[i],
                                                         b_factors[i]):
            if present < 0.5:
                continue
            name = atom_name if len(atom_name) == 4 else f" {atom_name}"
            element = atom_name[0]  # only C, N, O, S occur in proteins
            lines.append(
                f"{'ATOM':<6}{serial:>5} {name:<4} {resname:>3} {chain_id:>1}{residue_index[i]:>4}    "
                f"{position[0]:>8.3f}{position[1]:>8.3f}{position[2]:>8.3f}{1.0:>6.2f}{b_factor:>6.2f}"
                f"          {element:>2}  "
            )
            serial += 1
        last = rank == len(written) - 1
        chain_ends = last or (chain_index is not None and chain_index[written[rank + 1]] != chain_index[i])
        if chain_ends:
            lines.append(f"{'TER':<6}{serial:>5}      {resname:>3} {chain_id:>1}{residue_index[i]:>4}")
            serial += 1
            if not last:
                lines.append("PARENT N/A")
    lines.append("END")
    lines.append("")
    return "\n".join(lines)


def output_to_pdb(output):
    """PDB texts, one per batch element, from a folding output (dict-like with numpy or tensor values).

    Uses the last structure-module block's atom14 positions, `atom37_atom_exists` as the atom mask,
    `residue_index + 1` as residue numbers, pLDDT as B-factors and, when present, `chain_index`.
    """
    out = {key: np.asarray(value) for key, value in output.items() if value is not None and key in (
        "positions", "aatype", "residx_atom37_to_atom14", "atom37_atom_exists", "residue_index", "plddt",
        "chain_index")}
    atom37 = atom14_to_atom37(out["positions"][-1], out["residx_atom37_to_atom14"], out["atom37_atom_exists"])
    pdbs = []
    for b in range(out["aatype"].shape[0]):
        pdbs.append(
            to_pdb(
                aatype=out["aatype"][b],
                atom_positions=atom37[b],
                atom_mask=out["atom37_atom_exists"][b],
                residue_index=out["residue_index"][b] + 1,
                b_factors=out["plddt"][b],
                chain_index=out["chain_index"][b] if "chain_index" in out else None,
            )
        )
    return pdbs
