"""Exact tests for companion.alignment.monosemantic_selection (MONA) and the TopK mode of the book's SAE."""

import pytest
import torch

from companion.alignment import monosemantic_selection as ms
from companion.interpretability.sae_circuits import SparseAutoencoder


def _pool(n=6, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 5, (n,), generator=g)
    sample = torch.repeat_interleave(torch.arange(n), lengths)
    T = len(sample)
    return ms.TokenPool(torch.rand(T, d, generator=g), sample, torch.randint(0, 10, (T,), generator=g),
                        torch.arange(n) % 2, n)


def test_weighted_jaccard_reduces_to_set_jaccard_on_binary_vectors():
    a = torch.tensor([[1.0, 1, 0, 0, 1], [0, 0, 0, 0, 0], [1, 1, 0, 0, 1]])
    p = torch.tensor([1.0, 0, 1, 0, 1])
    assert torch.allclose(ms.jaccard(a, p), torch.tensor([2 / 4, 0.0, 2 / 4]))
    assert ms.jaccard(p[None], p).item() == 1.0
    with pytest.raises(ValueError, match="non-negative"):
        ms.jaccard(a - 2, p)


def test_mean_pooling_is_length_free_and_sum_is_not():
    x = torch.tensor([[1.0, 2], [1, 2], [1, 2], [3, 0]])
    sample = torch.tensor([0, 0, 0, 1])
    assert torch.allclose(ms.pool(x, sample, 2, "mean"), torch.tensor([[1.0, 2], [3, 0]]))
    assert torch.allclose(ms.pool(x, sample, 2, "sum"), torch.tensor([[3.0, 6], [3, 0]]))
    with pytest.raises(ValueError, match="how"):
        ms.pool(x, sample, 2, "max")


def test_alignment_scores_use_the_mean_prototype():
    P, T = _pool(8, seed=1), _pool(3, seed=2)
    s = ms.alignment_scores(P.h, P.sample, P.n, T.h, T.sample, T.n, "mean", "jaccard")
    proto = ms.pool(T.h, T.sample, T.n).mean(0)
    assert torch.allclose(s, ms.jaccard(ms.pool(P.h, P.sample, P.n), proto))
    c = ms.alignment_scores(P.h, P.sample, P.n, T.h, T.sample, T.n, "mean", "cosine")
    assert torch.allclose(c, ms.cosine(ms.pool(P.h, P.sample, P.n), proto))


def test_subset_and_concat_keep_samples_intact():
    P = _pool(6)
    idx = torch.tensor([4, 1])
    sub = P.subset(idx)
    assert sub.n == 2 and sub.task.tolist() == P.task[idx].tolist()
    for new, old in enumerate(idx.tolist()):
        assert torch.equal(sub.h[sub.sample == new], P.h[P.sample == old])
    both = ms.concat_pools([sub, P])
    assert both.n == 8 and torch.equal(both.h[both.sample == 2], P.h[P.sample == 0])


def test_topk_sae_keeps_k_nonnegative_codes_and_default_sae_is_unchanged():
    torch.manual_seed(0)
    sae = SparseAutoencoder(8, 32, k=3)
    z = sae.encode(torch.randn(50, 8))
    assert (z >= 0).all() and ((z > 0).sum(-1) <= 3).all()
    assert torch.allclose(sae.decoder.weight.norm(dim=0), torch.ones(32), atol=1e-5)  # unit atoms
    assert torch.equal(sae.encoder.weight, sae.decoder.weight.T) and (sae.encoder.bias == 0).all()
    full = SparseAutoencoder(8, 32, k=32)  # k = all features: plain ReLU code
    x = torch.randn(5, 8)
    assert torch.allclose(full.encode(x), torch.relu(full.encoder(x - full.tied_bias)))
    torch.manual_seed(1)
    a = SparseAutoencoder(8, 16)
    torch.manual_seed(1)
    b = SparseAutoencoder(8, 16, k=None)
    assert a.k is None and torch.equal(a.encoder.weight, b.encoder.weight)
    with pytest.raises(ValueError, match="k must be"):
        SparseAutoencoder(8, 16, k=17)


def test_train_topk_sae_reconstructs_a_sparse_dictionary():
    g = torch.Generator().manual_seed(0)
    world = ms.toy_world(d=16, n_tasks=2, task_concepts=4, n_generic=8, n_rare=0, generator=g)
    P = ms.toy_samples(world, torch.tensor([0, 1] * 100), noise=0.0, generator=g)
    sae = ms.train_topk_sae(P.h, 32, 4, steps=300, seed=0, progress=False)
    assert ms.explained_variance(sae, P.h) > 0.5
    assert torch.allclose(sae.decoder.weight.norm(dim=0), torch.ones(32), atol=1e-5)


def test_toy_samples_follow_the_tasks():
    g = torch.Generator().manual_seed(0)
    world = ms.toy_world(generator=g)
    P = ms.toy_samples(world, torch.tensor([0, 3, 3]), min_len=5, max_len=5, generator=g)
    assert P.n == 3 and P.lengths.tolist() == [5, 5, 5] and P.h.shape == (15, 32)
    assert P.task.tolist() == [0, 3, 3] and int(P.tokens.max()) < world.vocab
    with pytest.raises(ValueError, match="tasks"):
        ms.toy_samples(world, torch.tensor([8]))


def test_bm25_prefers_documents_with_query_terms():
    tokens = torch.tensor([0, 0, 1, 2, 2, 3])
    sample = torch.tensor([0, 0, 0, 1, 1, 1])
    s = ms.bm25_scores(tokens, sample, 2, torch.tensor([0]), vocab=4)
    assert s[0] > 0 and s[1] == 0
    with pytest.raises(ValueError, match="vocab"):
        ms.bm25_scores(tokens, sample, 2, torch.tensor([7]), vocab=4)


def test_precision_selection_and_unigram_nll():
    task = torch.tensor([0, 1, 0, 1])
    assert ms.precision_at_k(torch.tensor([0, 2]), task, 0) == 1.0
    assert ms.select_topk(torch.tensor([0.1, 0.9, 0.5]), 2).tolist() == [1, 2]
    nll = ms.unigram_nll(torch.tensor([0, 0, 1]), torch.tensor([0]), vocab=2, alpha=1.0)
    assert nll == pytest.approx(-torch.log(torch.tensor(3 / 5)).item())
    with pytest.raises(ValueError, match="k"):
        ms.select_topk(torch.tensor([1.0]), 2)


def test_target_split_hits_the_share_and_keeps_roles_disjoint():
    labels = torch.tensor([0] * 30 + [1] * 95)
    sp = ms.target_split(labels, 0, share=0.05, m=8, generator=torch.Generator().manual_seed(0))
    assert sp.n_target_in_pool == 5 and len(sp.pool) == 100
    assert (labels[sp.pool] == 0).sum() == 5 and len(sp.exemplars) == 8 and len(sp.held_out) == 17
    roles = torch.cat([sp.exemplars, sp.pool[labels[sp.pool] == 0], sp.held_out])
    assert len(set(roles.tolist())) == len(roles)


def test_overlap_profile_shapes():
    z = torch.rand(10, 20)
    task = torch.tensor([0, 1] * 5)
    prof = ms.overlap_profile(z, task, (0, 1), top=5)
    assert prof.shape == (2, 5) and torch.allclose(prof.abs().amax(1), torch.ones(2))
    assert 0 <= ms.overlap_coefficient(prof) <= 1


def test_cooccurrence_tasks_share_their_concept_marginals():
    pairs = ms.COOCCURRENCE_PAIRS
    for t in range(pairs.shape[0]):
        assert torch.bincount(pairs[t].flatten(), minlength=8).tolist() == [1] * 8
    D = torch.eye(12)
    P = ms.cooccurrence_samples(torch.tensor([0, 1]), D, min_len=3, max_len=3, noise=0.0,
                                generator=torch.Generator().manual_seed(0))
    assert P.h.shape == (6, 12) and torch.allclose(P.h[:, :8].sum(1), torch.full((6,), 2.0))
    first = {tuple(torch.nonzero(r[:8])[:, 0].tolist()) for r in P.h[:3]}
    assert first <= {tuple(x) for x in pairs[0].tolist()}
    with pytest.raises(ValueError, match="dictionary"):
        ms.cooccurrence_samples(torch.tensor([0]), torch.eye(8))
