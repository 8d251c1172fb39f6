"""Tests of companion.inference.cache_augmentation: mask, packing, exactness when off, gradients."""

import pytest
import torch

from companion.nn.transformer import run_blocks_cached
from companion.inference.cache_augmentation import (
    AugmentationMask, CacheAugmentedLM, Coprocessor, PauseTokens, ahead_loss, ahead_targets, packed_layout,
)
from companion.nn import CausalMask, TinyLM, TransformerConfig


def _decoder(seed: int = 0) -> TinyLM:
    torch.manual_seed(seed)
    return TinyLM(TransformerConfig(vocab_size=17, d_model=16, n_layers=2, n_heads=2, pos="rope")).eval()


def _data(B: int = 2, T: int = 14):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 17, (B, T), generator=g)
    splits = torch.tensor([[2, 5, 9], [3, 4, 8]])[:B]
    return ids, splits


def test_mask_matches_the_formula():
    group, split, pos = packed_layout(torch.tensor([[1, 3]]), prefix_len=4, block_len=2)
    assert group.tolist() == [[-1, -1, -1, -1, 0, 0, 1, 1]]
    assert split.tolist() == [[0, 1, 2, 3, 1, 1, 3, 3]]
    assert pos.tolist() == [[2, 3, 4, 5]]
    dense = AugmentationMask(group, split).dense(8)[0].int()
    expected = torch.tensor([
        [1, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0],
        [1, 1, 0, 0, 1, 0, 0, 0],  # block 0 (split 1): prefix <= 1, then itself
        [1, 1, 0, 0, 1, 1, 0, 0],
        [1, 1, 1, 1, 0, 0, 1, 0],  # block 1 (split 3): never block 0
        [1, 1, 1, 1, 0, 0, 1, 1],
    ])
    assert torch.equal(dense, expected)


def test_run_blocks_cached_is_the_decoder():
    dec = _decoder()
    ids, _ = _data()
    h, _ = run_blocks_cached(dec.blocks, dec.embed(ids), torch.arange(ids.shape[1]), CausalMask())
    torch.testing.assert_close(dec.lm_head(dec.ln_f(h)), dec(ids), rtol=0, atol=1e-6)


def test_packed_without_latents_equals_plain_decoder():
    """No writer: every packed ahead token sees exactly what it sees in the original sequence."""
    dec = _decoder()
    ids, splits = _data()
    n_ahead = 4
    got = CacheAugmentedLM(dec).ahead_logits(ids, splits, n_ahead)  # (B, N_B, n_ahead, V)
    full = dec(ids)
    take = splits[..., None] + torch.arange(n_ahead)  # the positions predicting ahead tokens 1..n_ahead
    want = full[torch.arange(ids.shape[0])[:, None, None], take]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("writer_cls", [Coprocessor, PauseTokens])
def test_packed_equals_one_group_at_a_time(writer_cls):
    """The multi-group pass equals running each augmentation point alone (no cross-group leakage)."""
    dec = _decoder()
    ids, splits = _data()
    n_lat, n_ahead = 3, 4
    model = CacheAugmentedLM(dec, writer_cls(dec, n_lat, generator=torch.Generator().manual_seed(0)))
    got = model.ahead_logits(ids, splits, n_ahead)
    for b in range(ids.shape[0]):
        for j, p in enumerate(splits[b].tolist()):
            prefix = ids[b:b + 1, :p + 1]
            _, cache = model.prefix_cache(prefix)
            z = model.writer(cache, torch.tensor([[p]]))[0, 0]  # (N_L, d), computed from the prefix alone
            seq = torch.cat([dec.embed(prefix)[0], z, dec.embed(ids[b, p + 1:p + n_ahead])])[None]
            h, _ = run_blocks_cached(dec.blocks, seq, torch.arange(seq.shape[1]), CausalMask())
            want = dec.lm_head(dec.ln_f(h))[0, p + n_lat: p + n_lat + n_ahead]
            torch.testing.assert_close(got[b, j], want, rtol=0, atol=1e-5)


def test_latents_ignore_the_future():
    dec = _decoder()
    ids, splits = _data()
    model = CacheAugmentedLM(dec, Coprocessor(dec, 2))
    z = model.writer(model.prefix_cache(ids)[1], splits)
    changed = ids.clone()
    changed[:, 6:] = (changed[:, 6:] + 1) % 17  # touches only what follows the first two splits of row 0
    z2 = model.writer(model.prefix_cache(changed)[1], splits)
    torch.testing.assert_close(z2[0, :2], z[0, :2], rtol=0, atol=0)
    assert not torch.allclose(z2[0, 2], z[0, 2])


def test_off_is_bit_identical_and_decoder_stays_frozen():
    dec = _decoder()
    ids, splits = _data()
    before = dec(ids).detach().clone()
    weights = {k: v.clone() for k, v in dec.state_dict().items()}
    model = CacheAugmentedLM(dec, Coprocessor(dec, 2))
    opt = torch.optim.SGD(model.writer.parameters(), lr=0.5)
    loss = ahead_loss(model, ids, splits, 3)
    loss.backward()
    assert all(p.grad is None for p in dec.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.writer.parameters())
    opt.step()
    assert all(torch.equal(v, dec.state_dict()[k]) for k, v in weights.items())
    assert torch.equal(model(ids), before)


def test_targets_and_validation():
    ids, splits = _data()
    assert torch.equal(ahead_targets(ids, splits, 2)[0, 0], ids[0, 3:5])
    dec = _decoder()
    with pytest.raises(ValueError, match="n_ahead"):
        CacheAugmentedLM(dec).ahead_logits(ids, splits, 6)
    with pytest.raises(ValueError, match="strictly increasing"):
        packed_layout(torch.tensor([[3, 3]]), 8, 2)
    with pytest.raises(ValueError, match="splits must lie"):
        packed_layout(torch.tensor([[8]]), 8, 2)
    with pytest.raises(ValueError, match="n_latents"):
        Coprocessor(dec, 0)
    with pytest.raises(ValueError, match="init_ids"):
        PauseTokens(dec, 2, init_ids=torch.tensor([99]))
    with pytest.raises(ValueError, match="group and split"):
        AugmentationMask(torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long))


def test_forward_cached_equals_the_full_forward():
    dec = _decoder(3)
    ids = torch.randint(0, 17, (2, 11))
    full = dec(ids)
    a, cache = dec.forward_cached(ids[:, :6])
    b, cache = dec.forward_cached(ids[:, 6:], cache)
    assert torch.allclose(torch.cat([a, b], 1), full, atol=1e-6) and cache[0][0].shape[2] == 11


def test_content_free_controls():
    from companion.inference.cache_augmentation import RepeatWriter, ZeroWriter

    dec = _decoder(4)
    ids = torch.randint(0, 17, (2, 14))
    splits = torch.tensor([[4, 9], [5, 10]])
    _, cache = CacheAugmentedLM(dec).prefix_cache(ids)
    z = ZeroWriter(3, 16)(cache, splits)
    assert z.shape == (2, 2, 3, 16) and not z.any()
    rep = RepeatWriter(dec, 3)
    rep.set_ids(ids)
    r = rep(cache, splits)
    assert torch.equal(r[1, 0], dec.embed(ids[1, 3:6]))  # the 3 embeddings up to split 5
    model = CacheAugmentedLM(dec, RepeatWriter(dec, 3))
    assert model.ahead_logits(ids, splits, 3).shape == (2, 2, 3, 17)
    with pytest.raises(ValueError, match="n_ahead"):
        ahead_targets(ids, splits, 4)


def test_pointer_chase_batch_answers_follow_the_links():
    from companion.inference.cache_augmentation import pointer_chase_batch, pointer_vocab
    n, nq = 6, 3
    voc = pointer_vocab(n)
    for hops in (1, 2):
        ids, y, at = pointer_chase_batch(5, n, nq, hops, torch.Generator().manual_seed(hops))
        assert ids.shape == y.shape == (5, n + 3 * nq) and at.shape == (5, nq)
        assert int(ids.max()) < voc["vocab_size"]
        for b in range(5):
            f = {int(t) // n: int(t) % n for t in ids[b, :n]}
            assert sorted(f) == list(range(n))  # every symbol has one link
            for j, p in enumerate(at[b].tolist()):
                assert int(ids[b, p - 1]) == voc["marker0"] + hops
                x = int(ids[b, p]) - voc["sym0"]
                for _ in range(hops):
                    x = f[x]
                assert int(y[b, p]) == int(ids[b, p + 1]) == x + voc["sym0"]
        assert int((y != -100).sum()) == 5 * nq


def test_pointer_chase_batch_checks_arguments():
    from companion.inference.cache_augmentation import pointer_chase_batch
    with pytest.raises(ValueError, match="hops"):
        pointer_chase_batch(2, 6, 2, 3, torch.Generator())
    with pytest.raises(ValueError, match="n_queries"):
        pointer_chase_batch(2, 6, 0, 1, torch.Generator())
