"""Localisation metrics: hand-computed cases, pooling and shapes, bad masks."""

import pytest
import torch

from funcattr.metrics import pointing_game, relevance_mass_accuracy, relevance_rank_accuracy


def hand():
    # 1 sample, 3x3, mask = left column
    attribution = torch.tensor([[[4.0, 1.0, -2.0],
                                 [3.0, 0.0, 5.0],
                                 [-1.0, 2.0, 0.0]]])
    masks = torch.tensor([[[True, False, False],
                           [True, False, False],
                           [True, False, False]]])
    return attribution, masks


def test_relevance_mass_accuracy_hand_computed():
    attribution, masks = hand()
    # positive relevance: inside 4 + 3 = 7, total 4 + 1 + 3 + 5 + 2 = 15
    torch.testing.assert_close(relevance_mass_accuracy(attribution, masks),
                               torch.tensor([7.0 / 15.0]))
    # signed: inside 4 + 3 - 1 = 6, total 12
    torch.testing.assert_close(relevance_mass_accuracy(attribution, masks, positive=False),
                               torch.tensor([0.5]))
    # no positive relevance at all scores 0
    torch.testing.assert_close(relevance_mass_accuracy(-attribution.abs(), masks),
                               torch.tensor([0.0]))


def test_relevance_rank_accuracy_hand_computed():
    attribution, masks = hand()
    # K = 3; top 3 locations: 5 (outside), 4 (inside), 3 (inside) -> 2 / 3
    torch.testing.assert_close(relevance_rank_accuracy(attribution, masks),
                               torch.tensor([2.0 / 3.0]))
    # ties are broken by position: two equal maxima, the first one is on the mask
    tied = torch.zeros(1, 3, 3)
    tied[0, 0, 0] = tied[0, 0, 1] = 1.0
    torch.testing.assert_close(relevance_rank_accuracy(tied, masks), torch.tensor([1.0 / 3.0]))


def test_pointing_game_hand_computed_and_tolerance():
    attribution, masks = hand()
    assert pointing_game(attribution, masks).tolist() == [0.0]  # max 5 at (1, 2)
    assert pointing_game(attribution, masks, tolerance=1).tolist() == [0.0]  # 2 columns away
    assert pointing_game(attribution, masks, tolerance=2).tolist() == [1.0]
    attribution[0, 2, 0] = 5.0  # a tie with one maximum on the mask is a hit
    assert pointing_game(attribution, masks).tolist() == [1.0]


def test_channel_pooling_and_mask_shapes():
    attribution, masks = hand()
    channels = torch.stack([attribution, 2 * attribution, -attribution], dim=1)  # sum = 2 a
    for a in (channels, attribution[:, None]):
        for m in (masks, masks[:, None]):
            torch.testing.assert_close(relevance_mass_accuracy(a, m),
                                       torch.tensor([7.0 / 15.0]))
            torch.testing.assert_close(relevance_rank_accuracy(a, m),
                                       torch.tensor([2.0 / 3.0]))
    torch.testing.assert_close(relevance_mass_accuracy(attribution, masks.double()),
                               torch.tensor([7.0 / 15.0]))


def test_batch_equals_per_sample(rng):
    attribution = torch.randn(5, 3, 8, 8, generator=rng)
    masks = torch.rand(5, 8, 8, generator=rng) > 0.6
    for metric in (relevance_mass_accuracy, relevance_rank_accuracy, pointing_game):
        batched = metric(attribution, masks)
        single = torch.cat([metric(attribution[i:i + 1], masks[i:i + 1]) for i in range(5)])
        torch.testing.assert_close(batched, single)
        assert bool(((batched >= 0) & (batched <= 1)).all())
    # an attribution equal to the mask is perfect
    perfect = masks.double()
    for metric in (relevance_mass_accuracy, relevance_rank_accuracy, pointing_game):
        torch.testing.assert_close(metric(perfect, masks), torch.ones(5))


def test_errors():
    attribution, masks = hand()
    with pytest.raises(ValueError, match=r"relevance_mass_accuracy\(masks=tensor of shape "
                                         r"\(1, 4, 4\)\): expected one mask per sample"):
        relevance_mass_accuracy(attribution, torch.ones(1, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"pointing_game\(masks=tensor of shape \(2, 3, 3\)\)"):
        pointing_game(attribution, masks.expand(2, 3, 3))
    with pytest.raises(ValueError, match=r"relevance_rank_accuracy\(masks=\.\.\.\): expected a "
                                         r"non-empty mask for every sample, got empty masks for "
                                         r"samples \[1\]"):
        relevance_rank_accuracy(attribution.expand(2, 3, 3),
                                torch.stack([masks[0], torch.zeros(3, 3, dtype=torch.bool)]))
    with pytest.raises(ValueError, match=r"masks=tensor of dtype torch.float64\): expected "
                                         r"boolean masks"):
        relevance_mass_accuracy(attribution, masks * 0.5)
    with pytest.raises(TypeError, match=r"masks=list\): expected a tensor"):
        pointing_game(attribution, [[1]])
    with pytest.raises(ValueError, match=r"attribution=\(3,\)\): expected a batch"):
        pointing_game(torch.ones(3), masks)
    with pytest.raises(ValueError, match=r"tolerance=-1\): expected an int >= 0"):
        pointing_game(attribution, masks, tolerance=-1)
    with pytest.raises(ValueError, match=r"tolerance=1\): a tolerance needs 1-D or 2-D masks"):
        pointing_game(torch.ones(1, 2, 2, 2), torch.ones(1, 2, 2, 2, dtype=torch.bool),
                      tolerance=1)
