"""Masking strategies: which entries are hidden, which the loss sees, built on the batch's device."""

from __future__ import annotations

import pytest
import torch

from cellssl.masking import (
    GeneProgrammeMasking,
    ProgrammeToProgrammeMasking,
    ProgrammeToTFMasking,
    RandomMasking,
    membership_matrix,
)

GENES = [f"G{i}" for i in range(40)]
PROGRAMMES = {f"P{p}": [f"G{i}" for i in range(p * 6, p * 6 + 6)] for p in range(6)}  # G0..G35; G36-39 in none


def _x(n_cells: int = 64) -> torch.Tensor:
    return torch.rand(n_cells, len(GENES), generator=torch.Generator().manual_seed(1)) + 0.1


def test_random_masking_rate_and_rescale():
    x = _x(500)
    visible, mask = RandomMasking(rate=0.3)(x, torch.Generator().manual_seed(0))
    assert abs(mask.float().mean().item() - 0.3) < 0.02
    assert torch.all(visible[mask] == 0)
    assert torch.allclose(visible[~mask], x[~mask] / 0.7)


def test_membership_filters_small_sets_and_unknown_genes():
    names, membership = membership_matrix({"big": ["G1", "G2", "X"], "small": ["G3", "Y"]}, GENES, min_size=2)
    assert names == ["big"] and membership.shape == (1, 40)
    assert membership[0].nonzero().flatten().tolist() == [1, 2]
    with pytest.raises(ValueError, match="none of the 2 gene sets has 5 or more genes"):
        membership_matrix({"a": ["G1"], "b": ["X"]}, GENES, min_size=5)


def test_programme_masking_hides_whole_programmes_per_cell():
    masking = GeneProgrammeMasking(PROGRAMMES, GENES, rate=0.5, min_size=6)
    x = _x(200)
    visible, mask = masking(x, torch.Generator().manual_seed(0))
    blocks = mask[:, :36].reshape(200, 6, 6)
    assert torch.all(blocks.all(dim=2) == blocks.any(dim=2))  # each programme fully hidden or fully visible
    assert not mask[:, 36:].any()  # genes in no programme stay visible
    assert blocks.any(dim=2).any(dim=1).all()  # at least one programme per cell
    assert abs(blocks.any(dim=2).float().mean().item() - 0.5) < 0.1  # ≈ rate of programmes (plus the forced one)
    assert len({tuple(row.tolist()) for row in mask}) > 10  # drawn per cell
    assert torch.all(visible[mask] == 0) and torch.equal(visible[~mask], x[~mask])


def test_programme_masking_one_draw_per_batch():
    masking = GeneProgrammeMasking(PROGRAMMES, GENES, rate=0.5, per_cell=False, min_size=6)
    _, mask = masking(_x(), torch.Generator().manual_seed(3))
    assert torch.all(mask == mask[0]) and mask[0].any()


def test_programme_masking_rescales_visible_per_cell():
    masking = GeneProgrammeMasking(PROGRAMMES, GENES, rate=0.5, min_size=6, rescale=True)
    x = _x()
    visible, mask = masking(x, torch.Generator().manual_seed(0))
    scale = 40 / (~mask).sum(dim=1, keepdim=True)
    assert torch.allclose(visible, (x * scale).masked_fill(mask, 0.0))


REGULONS = {
    "G0": [f"G{i}" for i in range(1, 12)],  # 11 targets
    "G20": ["G20", *[f"G{i}" for i in range(21, 31)]],  # autoregulated: itself + 10 targets
    "G35": ["G36", "G37"],  # too few targets
    "NOT_IN_VOCAB": [f"G{i}" for i in range(10, 30)],
}


def test_programme_to_tf_keeps_only_targets_and_scores_only_the_tf():
    masking = ProgrammeToTFMasking(REGULONS, GENES, min_targets=10)
    assert masking.names == ["G0", "G20"]
    x = _x(300)
    network_input, loss_mask = masking(x, torch.Generator().manual_seed(0))
    tf_of_cell = loss_mask.float().argmax(dim=1)
    assert torch.all(loss_mask.sum(dim=1) == 1)  # the loss touches exactly one gene: the TF
    assert set(tf_of_cell.tolist()) == {0, 20}  # both TFs are drawn, per cell
    for tf, targets in (("G0", REGULONS["G0"]), ("G20", REGULONS["G20"])):
        cells = tf_of_cell == GENES.index(tf)
        allowed = torch.zeros(40, dtype=torch.bool)
        allowed[[GENES.index(g) for g in targets if g != tf]] = True
        assert torch.all(network_input[cells][:, ~allowed] == 0)  # no gene outside the TF's targets
        assert torch.equal(network_input[cells][:, allowed], x[cells][:, allowed])  # targets kept unchanged
        assert torch.all(network_input[cells][:, GENES.index(tf)] == 0)  # the TF is hidden, even autoregulated


def test_programme_to_tf_clear_errors_when_nothing_is_left():
    with pytest.raises(ValueError, match="none of the 1 transcription factors is in the vocabulary"):
        ProgrammeToTFMasking({"X": GENES}, GENES)
    with pytest.raises(ValueError, match=r"1 TFs are in the vocabulary.*10 or more genes"):
        ProgrammeToTFMasking({"G35": ["G36", "G37"]}, GENES)


def test_programme_to_programme_input_and_loss_on_one_programme():
    masking = ProgrammeToProgrammeMasking(PROGRAMMES, GENES, min_size=6)
    x = _x(100)
    network_input, loss_mask = masking(x, torch.Generator().manual_seed(0))
    assert torch.all(loss_mask.sum(dim=1) == 6)
    assert torch.equal(network_input, x * loss_mask)  # input and loss on the same programme


def test_same_generator_same_mask():
    masking = GeneProgrammeMasking(PROGRAMMES, GENES, min_size=6)
    first = masking(_x(), torch.Generator().manual_seed(7))[1]
    assert torch.equal(first, masking(_x(), torch.Generator().manual_seed(7))[1])
