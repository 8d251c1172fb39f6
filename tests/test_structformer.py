"""Unit tests of companion.interpretability.structformer: exact properties of the parser's algebra."""

import random

import pytest
import torch

from companion.interpretability import structformer as sf
from companion.nn.transformer import TransformerConfig


def gold_matrix(heads: list[int]) -> torch.Tensor:
    n = len(heads)
    P = torch.zeros(n, n)
    for i, j in enumerate(heads):
        if j >= 0:
            P[i, j] = 1.0
    return P


def test_hard_parser_on_gold_distances_gives_the_gold_heads():
    """The card's exact check: hard s0, s1 and distances/heights from a gold tree -> P = gold heads."""
    grammar, rng = sf.PCFG(), random.Random(0)
    for _ in range(50):
        words, tree = grammar.sample(rng)
        d, h = sf.gold_distance_height(tree, len(words))
        P = sf.parent_distribution(d[None], h[None], 100.0, 100.0)[0]
        assert (P - gold_matrix(sf.gold_heads(tree, len(words)))).abs().max() < 1e-3


def test_greedy_tree_of_gold_distances_is_the_gold_tree():
    grammar, rng = sf.PCFG(), random.Random(1)
    for _ in range(50):
        words, tree = grammar.sample(rng)
        d, _ = sf.gold_distance_height(tree, len(words))
        assert set(sf.tree_from_distances(d[: len(words) - 1].tolist())) == set(tree.spans())


def test_block_and_head_distributions_are_normalised():
    torch.manual_seed(0)
    d, h = torch.randn(2, 7), torch.randn(2, 7)
    d[:, -1] = sf.BIG
    block = sf.compute_block(d, h, 1.3)  # (B, i, l, r)
    torch.testing.assert_close(block.sum((-1, -2)), torch.ones(2, 7), atol=1e-5, rtol=0)
    assert (block.sum(-1).triu(1) == 0).all()  # l <= i
    head = sf.compute_head(h, 0.7)  # (B, l, r, j)
    idx = torch.arange(7)
    valid = idx[:, None] <= idx[None, :]
    torch.testing.assert_close(head.sum(-1)[:, valid], torch.ones(2, int(valid.sum())))


def test_branching_baselines_and_f1():
    n = 5
    left = sf.tree_from_distances(sf.branching_distances(n, "left"))
    right = sf.tree_from_distances(sf.branching_distances(n, "right"))
    assert (0, 3) in left and (1, 4) in right
    assert sf.unlabeled_f1(left, left, n) == 1.0
    assert sf.unlabeled_f1(left, right, n) == 0.0
    assert sf.attachment_score([-1, 0, 1], [-1, 0, 0]) == (1, 2)


def test_models_run_and_respect_padding():
    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=20, d_model=16, n_layers=2, n_heads=2, pos="none", max_len=10)
    for model in (sf.StructFormer(cfg), sf.MLMTransformer(cfg)):
        model.eval()
        ids, keep = sf.pad_batch([[3, 4, 5, 6], [3, 4, 5, 6, 7, 8]])
        out = model(ids, keep)
        assert out.shape == (2, 6, 20)
        alone = model(ids[:1, :4], keep[:1, :4])
        torch.testing.assert_close(out[0, :4], alone[0], atol=1e-4, rtol=1e-4)


def test_argument_errors_name_the_argument():
    with pytest.raises(ValueError, match="distance and height"):
        sf.compute_block(torch.zeros(2, 3), torch.zeros(2, 4), 1.0)
    with pytest.raises(ValueError, match="kind"):
        sf.branching_distances(4, "middle")
    with pytest.raises(ValueError, match="rate"):
        sf.mlm_batch(torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 3, dtype=torch.bool), 1, 1.5,
                     torch.Generator())


def test_dependency_spans_and_punctuation_removal():
    # "the cat sat ." : the -> cat, cat -> sat, sat = root, . -> sat
    assert sf.dependency_spans([1, 2, -1, 2]) == [(0, 0), (0, 1), (0, 3), (3, 3)]
    words, heads = sf.remove_punctuation(["the", "cat", "sat", "."], [1, 2, -1, 2], ["DET", "NOUN", "VERB", "PUNCT"])
    assert words == ["the", "cat", "sat"] and heads == [1, 2, -1]
    # a dependent of a punctuation token moves to the punctuation's head
    _, heads = sf.remove_punctuation(["a", "-", "b"], [-1, 0, 1], ["X", "PUNCT", "X"])
    assert heads == [-1, 0]
    with pytest.raises(ValueError, match="heads must be"):
        sf.dependency_spans([5, -1])
