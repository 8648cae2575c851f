"""The molecular graph flow: SMILES ↔ tensors, invertibility, exact densities, permutations."""

from __future__ import annotations

import math
import random

import pytest
import torch

pytest.importorskip("rdkit")
from rdkit import Chem  # noqa: E402

from pushforward.diagnostics import check_transform  # noqa: E402
from pushforward.molecules import (  # noqa: E402
    ATOM_TYPES,
    GraphAffineCoupling,
    GraphFlow,
    graph_to_smiles,
    heavy_atom_count,
    moses_dir,
    moses_smiles,
    node_mask,
    sample_metrics,
    smiles_to_graph,
    write_smiles,
)

SMILES = [
    "CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "C#N", "NS(=O)(=O)c1ccc(Br)cc1",
    "FC(F)(F)c1ccc(Cl)cn1", "O=C1CCCN1", "Cc1nc2ccccc2[nH]1",
]


def _canonical(smiles: str) -> str:
    return Chem.MolToSmiles(Chem.MolFromSmiles(smiles), isomericSmiles=False)


def _shuffled(smiles: str, seed: int) -> str:
    """The same molecule written with its atoms in a random order."""
    mol = Chem.MolFromSmiles(smiles)
    order = list(range(mol.GetNumAtoms()))
    random.Random(seed).shuffle(order)
    return Chem.MolToSmiles(Chem.RenumberAtoms(mol, order), canonical=False)


def _batch(smiles: list[str], n: int) -> tuple[torch.Tensor, torch.Tensor]:
    bonds, atoms = zip(*(smiles_to_graph(s, n) for s in smiles))
    return torch.stack(bonds), torch.stack(atoms)


@pytest.mark.parametrize("smiles", SMILES)
def test_round_trip_and_shapes(smiles: str) -> None:
    bonds, atoms = smiles_to_graph(smiles, max_atoms=12)
    assert bonds.shape == (4, 12, 12) and atoms.shape == (12, len(ATOM_TYPES) + 1)
    assert torch.equal(bonds.sum(0), torch.ones(12, 12))  # one-hot per pair
    assert torch.equal(atoms.sum(-1), torch.ones(12))  # one-hot per slot
    assert torch.equal(bonds, bonds.transpose(1, 2))
    assert torch.equal(bonds[0].diagonal(), torch.ones(12))
    n = Chem.MolFromSmiles(smiles).GetNumAtoms()
    assert torch.equal(atoms[n:, -1], torch.ones(12 - n))  # padding: "no atom"
    assert torch.equal(bonds[0, n:], torch.ones(12 - n, 12))  # padding has no bonds
    assert graph_to_smiles(bonds, atoms) == _canonical(smiles)
    assert heavy_atom_count(smiles) == n


@pytest.mark.parametrize("smiles", SMILES)
def test_permuted_atoms_give_the_same_tensors(smiles: str) -> None:
    for seed in range(4):
        other = _shuffled(smiles, seed)
        b1, a1 = smiles_to_graph(smiles, 12)
        b2, a2 = smiles_to_graph(other, 12)
        assert torch.equal(b1, b2) and torch.equal(a1, a2), other


def test_permuted_atoms_give_the_same_likelihood() -> None:
    torch.manual_seed(0)
    model = GraphFlow(12, bond_layers=2, bond_hidden=(16,), atom_layers=1).eval()
    smiles = "CC(=O)Nc1ccc(O)cc1"
    others = [_shuffled(smiles, seed) for seed in range(3)]
    assert len(set(others)) > 1  # really different strings
    values = []
    for s in [smiles, *others]:
        bonds, atoms = _batch([s], 12)
        torch.manual_seed(1)  # the same dequantisation noise
        values.append(model.nll(bonds, atoms).item())
    assert max(values) - min(values) == 0.0


@pytest.mark.parametrize("bad", ["C1CC", "not a molecule", "", "C(C)(C)(C)(C)C"])
def test_invalid_smiles_raise(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid SMILES"):
        smiles_to_graph(bad, 8)


def test_unrepresentable_molecules_raise() -> None:
    with pytest.raises(ValueError, match="more than max_atoms=5"):
        smiles_to_graph("CCCCCCC", 5)
    with pytest.raises(ValueError, match="element Si"):
        smiles_to_graph("C[Si](C)C", 8)
    with pytest.raises(ValueError, match="charged"):
        smiles_to_graph("C[N+](C)(C)C", 8)


def test_write_smiles_keeps_invalid_samples_invalid() -> None:
    bonds, atoms = smiles_to_graph("CC(C)(C)C", 6)
    centre = int(bonds[1:].sum((0, 2)).argmax())
    assert bonds[1:, centre].sum() == 4
    atoms[5] = 0.0
    atoms[5, 0] = 1.0  # a sixth carbon ...
    bonds[:, centre, 5] = bonds[:, 5, centre] = 0.0
    bonds[1, centre, 5] = bonds[1, 5, centre] = 1.0  # ... as the centre's fifth neighbour
    assert graph_to_smiles(bonds, atoms) is None
    line = write_smiles(bonds, atoms)
    assert Chem.MolFromSmiles(line) is None and line.count("C") == 6
    assert Chem.MolFromSmiles(write_smiles(*smiles_to_graph("CC(C)(C)C", 6))) is not None
    empty_atoms = torch.zeros_like(atoms)
    empty_atoms[:, -1] = 1.0
    assert write_smiles(bonds, empty_atoms) == "[empty]"
    assert Chem.MolFromSmiles("[empty]") is None


def _tiny(dtype: torch.dtype = torch.float64) -> GraphFlow:
    torch.manual_seed(0)
    model = GraphFlow(3, bond_layers=2, bond_hidden=(8,), atom_layers=1, atom_hidden=8)
    bonds, atoms = _batch(["CCO", "C=O", "CC", "OO"], 3)
    model.nll(bonds, atoms)  # initialises the ActNorms
    for p in model.parameters():  # move off the identity initialisation
        p.data.add_(0.2 * torch.randn_like(p))
    return model.to(dtype).eval()


def test_flows_invert_exactly_in_float64() -> None:
    model = _tiny()
    bonds, _ = _batch(["CCO", "C=O"], 3)
    z = torch.randn(2, 12, dtype=torch.float64)
    x, ladj = model.bond_flow.transform(z)
    z_back, ladj_inv = model.bond_flow.transform.inverse(x)
    assert torch.allclose(z_back, z, atol=1e-12) and torch.allclose(ladj, -ladj_inv, atol=1e-12)
    context = bonds.double().flatten(1)
    z = torch.randn(2, 3, 8, dtype=torch.float64)
    x, ladj = model.atom_flow.transform(z, context)
    z_back, ladj_inv = model.atom_flow.transform.inverse(x, context)
    assert torch.allclose(z_back, z, atol=1e-12) and torch.allclose(ladj, -ladj_inv, atol=1e-12)


def test_log_density_matches_brute_force_jacobian() -> None:
    model = _tiny()
    bonds, atoms = _batch(["CCO", "C=O"], 3)
    bonds, atoms = bonds.double(), atoms.double()
    x_bonds, x_atoms = model.dequantise(bonds, atoms)
    exact = model.log_prob(x_bonds, x_atoms, bonds)
    normal = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0)
    for i in range(2):
        context = bonds[i:i + 1].flatten(1)

        def to_z_bonds(x: torch.Tensor) -> torch.Tensor:
            return model.bond_flow.transform.inverse(x[None])[0][0]

        def to_z_atoms(x: torch.Tensor, context: torch.Tensor = context) -> torch.Tensor:
            return model.atom_flow.transform.inverse(x[None], context)[0][0].flatten()

        jb = torch.autograd.functional.jacobian(to_z_bonds, x_bonds[i])
        ja = torch.autograd.functional.jacobian(to_z_atoms, x_atoms[i]).reshape(24, 24)
        brute = (
            normal.log_prob(to_z_bonds(x_bonds[i])).sum() + torch.linalg.slogdet(jb)[1]
            + normal.log_prob(to_z_atoms(x_atoms[i])).sum() + torch.linalg.slogdet(ja)[1]
        )
        assert torch.allclose(exact[i], brute, atol=1e-9), (exact[i], brute)


def test_nll_is_the_dequantisation_bound() -> None:
    model = _tiny()
    bonds, atoms = _batch(["CCO", "C=O"], 3)
    bonds, atoms = bonds.double(), atoms.double()
    torch.manual_seed(5)
    x_bonds, x_atoms = model.dequantise(bonds, atoms)
    torch.manual_seed(5)
    nll = model.nll(bonds, atoms)
    dims = 12 + 24
    expected = -model.log_prob(x_bonds, x_atoms, bonds) - dims * math.log(model.noise)
    assert torch.allclose(nll, expected)


@pytest.mark.parametrize("mask", ["even", "odd", "channels"])
def test_graph_coupling_passes_the_kit(mask: str) -> None:
    torch.manual_seed(0)
    masks = {"even": node_mask(4, 0), "odd": node_mask(4, 1),
             "channels": (torch.arange(5) < 3).expand(4, 5)}
    t = GraphAffineCoupling(4, 5, 4, masks[mask], hidden=8)
    for p in t.out.parameters():  # off the identity initialisation
        torch.nn.init.normal_(p, std=0.3)
    bonds, _ = _batch(["CCO", "C=O", "CC(C)C"], 4)
    context = bonds.flatten(1)
    check_transform(t, torch.randn(3, 4, 5), context=context)
    check_transform(t.inv, torch.randn(3, 4, 5), context=context)


def test_whole_flows_pass_the_kit() -> None:
    model = _tiny(torch.float32)
    bonds, _ = _batch(["CCO", "C=O", "CC"], 3)
    check_transform(model.bond_flow.transform, torch.randn(3, 12))
    check_transform(model.atom_flow.transform, torch.randn(3, 3, 8), context=bonds.flatten(1))


def test_graph_coupling_refuses_bad_masks() -> None:
    with pytest.raises(ValueError, match="mask"):
        GraphAffineCoupling(4, 5, 4, torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask"):
        GraphAffineCoupling(4, 5, 4, torch.ones(3, dtype=torch.bool))


def test_pairs_round_trip_and_shape_errors() -> None:
    model = GraphFlow(6, bond_layers=1, bond_hidden=(8,), atom_layers=1)
    bonds, atoms = _batch(SMILES[:1] + ["CC(C)C"], 6)
    assert torch.equal(model.unpair(model.pairs(bonds)), bonds)
    with pytest.raises(ValueError, match="bonds must be"):
        model.nll(bonds[:, :, :5, :5], atoms)
    with pytest.raises(ValueError, match="atoms must be"):
        model.nll(bonds, atoms[:, :5])


def test_samples_decode_to_graphs_and_training_lowers_the_nll() -> None:
    torch.manual_seed(0)
    model = GraphFlow(8, bond_layers=2, bond_hidden=(32,), atom_layers=1, atom_hidden=16)
    bonds, atoms = _batch(["CCO", "c1ccccc1", "CC(=O)O", "CCN"], 8)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.nll(bonds, atoms)  # initialises the ActNorms on this batch
    with torch.no_grad():  # fresh dequantisation noise: no credit for the initialisation batch
        first = model.nll(bonds, atoms, samples=8).mean().item()
    for _ in range(100):
        loss = model.nll(bonds, atoms).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        assert model.nll(bonds, atoms, samples=8).mean().item() < first - 10
    sampled_bonds, sampled_atoms = model.eval().sample(16, temperature=0.7)
    assert torch.equal(sampled_bonds.sum(1), torch.ones(16, 8, 8))
    assert torch.equal(sampled_bonds, sampled_bonds.transpose(2, 3))
    assert torch.equal(sampled_atoms.sum(-1), torch.ones(16, 8))
    lines = [write_smiles(b, a) for b, a in zip(sampled_bonds, sampled_atoms)]
    metrics = sample_metrics(lines, ["CCO"])
    # the reported validity is exactly what RDKit finds when it reads the written lines
    parsed = [Chem.MolFromSmiles(s) for s in lines]
    connected = [m for m in parsed if m is not None and len(Chem.GetMolFrags(m)) == 1]
    assert metrics["validity"] == len(connected) / 16


def test_atom_temperature_scales_only_the_atom_flow() -> None:
    torch.manual_seed(0)
    model = GraphFlow(6, bond_layers=2, bond_hidden=(16,), atom_layers=1, atom_hidden=8)
    bonds, atoms = _batch(["CCO", "C1CC1", "CC(=O)O", "CCN"], 6)
    model.nll(bonds, atoms)  # initialises the ActNorms
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    model.eval()
    draws = {}
    for key, atom_temperature in (("default", None), ("same", 0.7), ("cold", 0.0)):
        torch.manual_seed(1)
        draws[key] = model.sample(64, temperature=0.7, atom_temperature=atom_temperature)
    assert torch.equal(draws["default"][0], draws["same"][0])
    assert torch.equal(draws["default"][1], draws["same"][1])
    assert torch.equal(draws["cold"][0], draws["same"][0])  # the bonds do not change
    assert not torch.equal(draws["cold"][1], draws["same"][1])
    # at atom temperature 0 the atoms are the flow's image of z = 0 given the sampled bonds
    x_atoms, _ = model.atom_flow.transform(torch.zeros(64, 6, 8), draws["cold"][0].flatten(1))
    assert torch.equal(draws["cold"][1].argmax(-1), x_atoms.argmax(-1))


def test_moses_loader() -> None:
    try:
        moses_dir()
    except FileNotFoundError:
        pytest.skip("MOSES data (pip install --no-deps molsets==0.3.1) not installed")
    smiles = moses_smiles("test", max_atoms=14, limit=50)
    assert len(smiles) == 50
    for s in smiles:
        assert Chem.MolFromSmiles(s).GetNumAtoms() == heavy_atom_count(s) <= 14
        smiles_to_graph(s, 14)
    with pytest.raises(ValueError, match="unknown split"):
        moses_smiles("validation")
    with pytest.raises(FileNotFoundError, match="molsets"):
        moses_dir("/nonexistent")
