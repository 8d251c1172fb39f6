"""Exact tests of the DSE student pieces (companion.embeddings.dse)."""

from __future__ import annotations

import pytest
import torch

from companion.embeddings import dse


def test_concat_top_mean_excludes_cls_masks_padding_and_concatenates_the_top_layers():
    g = torch.Generator().manual_seed(0)
    hs = [torch.randn(2, 5, 3, generator=g) for _ in range(4)]
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    e = dse.concat_top_mean(hs, mask, num_top=2)
    assert e.shape == (2, 6)
    torch.testing.assert_close(e[0], torch.cat([hs[2][0, 1:].mean(0), hs[3][0, 1:].mean(0)]))
    torch.testing.assert_close(e[1], torch.cat([hs[2][1, 1:3].mean(0), hs[3][1, 1:3].mean(0)]))


def test_pair_features_and_head_shapes_and_symmetry_of_the_last_two_blocks():
    u, v = torch.randn(3, 4), torch.randn(3, 4)
    f, f_swapped = dse.pair_features(u, v), dse.pair_features(v, u)
    assert f.shape == (3, 16)
    assert torch.equal(f[:, 8:], f_swapped[:, 8:])
    assert dse.PairHead(4, (8, 1))(u, v).shape == (3, 1)


def test_dse_loss_is_the_task_loss_at_alpha_zero_and_the_squared_error_at_alpha_one():
    s, t = torch.tensor([[0.5], [-1.0]]), torch.tensor([[1.5], [0.0]])
    y = torch.tensor([1, 0])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(s[:, 0], y.float())
    assert torch.equal(dse.dse_loss(s, y, t, alpha=0.0), bce)
    torch.testing.assert_close(dse.dse_loss(s, y, t, alpha=1.0), torch.tensor(1.0))
    torch.testing.assert_close(dse.binary_teacher_target(torch.tensor([[0.2, 1.2]])), torch.tensor([[1.0]]))


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="num_top"):
        dse.concat_top_mean([torch.zeros(1, 2, 3)], torch.ones(1, 2), num_top=2)
    with pytest.raises(ValueError, match="u and v"):
        dse.pair_features(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="alpha"):
        dse.dse_loss(torch.zeros(1, 1), torch.zeros(1), torch.zeros(1, 1), alpha=2.0)
    with pytest.raises(ValueError, match="teacher_logits"):
        dse.binary_teacher_target(torch.zeros(2, 3))
