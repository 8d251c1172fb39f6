"""Tests of companion.inference.infllm: exact equalities of InfLLM's attention and its task."""

import math

import pytest
import torch

from companion.inference import infllm as inf
from companion.nn import TinyLM, TransformerConfig, attention
from companion.nn.masks import CausalMask
from companion.nn.positions import apply_rope


def _qkv(b=2, h=4, hkv=4, n=40, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, h, n, d, generator=g), torch.randn(b, hkv, n, d, generator=g),
            torch.randn(b, hkv, n, d, generator=g))


def _full(q, k, v):
    pos = torch.arange(q.shape[2])
    return attention(apply_rope(q, pos), apply_rope(k, pos), v, CausalMask())


def _dense_two_distance(q, k, v, window, visible_far, far_distance=None):
    """Dense reference: window keys at their true distance, far keys (where visible_far) at `far_distance`."""
    n, d = q.shape[2], q.shape[3]
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    pos = torch.arange(n)
    s_near = apply_rope(q, pos) @ apply_rope(k, pos).transpose(-1, -2)
    s_far = apply_rope(q, torch.full((n,), window if far_distance is None else far_distance)) @ k.transpose(-1, -2)
    dist = pos[:, None] - pos[None, :]
    near = (dist >= 0) & (dist < window)
    far = (dist >= window) & visible_far
    s = torch.where(near, s_near, torch.where(far, s_far, torch.tensor(float("-inf")))) / math.sqrt(d)
    return torch.softmax(s, -1) @ v


@pytest.mark.parametrize("hkv,exc", [(4, 16), (2, 8), (1, 5)])
def test_equals_full_attention_when_nothing_is_evicted(hkv, exc):
    q, k, v = _qkv(hkv=hkv, n=40)
    cfg = inf.InfLLMConfig(n_local=40, n_init=4, block_size=8, topk=2, exc_block_size=exc)
    torch.testing.assert_close(inf.infllm_attention(q, k, v, cfg), _full(q, k, v), atol=1e-5, rtol=1e-5)


def test_kernel_decode_path_equals_full_attention_and_torch_path():
    q, k, v = _qkv(b=1, h=2, hkv=2, n=24)
    cfg = inf.InfLLMConfig(n_local=24, n_init=2, block_size=8, topk=2, exc_block_size=8)
    out = inf.infllm_attention(q, k, v, cfg, impl="triton", num_splits=2)
    torch.testing.assert_close(out, _full(q, k, v), atol=1e-5, rtol=1e-5)
    cfg = inf.InfLLMConfig(n_local=16, n_init=2, block_size=8, repr_topk=2, topk=1, exc_block_size=8)
    q, k, v = _qkv(b=1, h=2, hkv=2, n=48, seed=1)
    torch.testing.assert_close(inf.infllm_attention(q, k, v, cfg, impl="triton"),
                               inf.infllm_attention(q, k, v, cfg), atol=1e-5, rtol=1e-5)


def test_all_units_retrieved_equals_dense_two_distance_attention():
    q, k, v = _qkv(n=70)
    cfg = inf.InfLLMConfig(n_local=16, n_init=3, block_size=8, topk=100, exc_block_size=8)
    torch.testing.assert_close(inf.infllm_attention(q, k, v, cfg), _dense_two_distance(q, k, v, 16, True),
                               atol=1e-5, rtol=1e-5)


def test_memory_distance_moves_every_memory_key():
    q, k, v = _qkv(n=60)
    cfg = inf.InfLLMConfig(n_local=16, n_init=2, block_size=8, topk=100, exc_block_size=8, memory_distance=100)
    assert cfg.distance == 100
    torch.testing.assert_close(inf.infllm_attention(q, k, v, cfg), _dense_two_distance(q, k, v, 16, True, 100),
                               atol=1e-5, rtol=1e-5)


def test_attended_keys_map_matches_the_counts():
    q, k, v = _qkv(b=2, n=100)
    cfg = inf.InfLLMConfig(n_local=32, n_init=4, block_size=16, topk=2, exc_block_size=16)
    st = inf.MemoryStats(100)
    inf.infllm_attention(q, k, v, cfg, stats=st)
    for row in (0, 1):
        kinds = inf.attended_keys(st, cfg, row)
        assert kinds.shape == (7, 100)
        assert (kinds > 0).sum(1).tolist() == st.attended
        assert ((kinds[-1] == inf.RETRIEVED).sum()) == 2 * 16
    with pytest.raises(ValueError, match="row"):
        inf.attended_keys(st, cfg, 2)


def test_streaming_config_is_sinks_plus_window():
    q, k, v = _qkv(n=50, hkv=2)
    cfg = inf.streaming_config(n_sink=4, window=16, exc_block_size=8)
    sinks = (torch.arange(50) < 4)[None, :]
    torch.testing.assert_close(inf.infllm_attention(q, k, v, cfg), _dense_two_distance(q, k, v, 16, sinks),
                               atol=1e-5, rtol=1e-5)


def test_merge_by_lse_equals_softmax_over_the_union():
    g = torch.Generator().manual_seed(0)
    s, v = torch.randn(3, 10, generator=g), torch.randn(10, 4, generator=g)
    s[0, :5] = float("-inf")  # one row sees nothing in the first stage
    o1 = torch.nan_to_num(torch.softmax(s[:, :5], -1)) @ v[:5]
    o2 = torch.softmax(s[:, 5:], -1) @ v[5:]
    o, lse = inf.merge_by_lse(o1, torch.logsumexp(s[:, :5], -1), o2, torch.logsumexp(s[:, 5:], -1))
    torch.testing.assert_close(o, torch.softmax(s, -1) @ v)
    torch.testing.assert_close(lse, torch.logsumexp(s, -1))
    with pytest.raises(ValueError, match="o1/o2"):
        inf.merge_by_lse(o1, lse, o2[:, :2], lse)


def test_representative_keys_average_the_most_attended():
    keys = torch.arange(4.0).view(1, 1, 1, 4, 1).expand(1, 1, 1, 4, 2)  # key j = (j, j)
    scores = torch.tensor([0.1, 0.9, 0.5, 0.0]).view(1, 1, 1, 4)
    torch.testing.assert_close(inf.representative_keys(keys, scores, 2), torch.full((1, 1, 1, 2), 1.5))
    torch.testing.assert_close(inf.representative_keys(keys, scores, 4), torch.full((1, 1, 1, 2), 1.5))
    with pytest.raises(ValueError, match="repr_topk"):
        inf.representative_keys(keys, scores, 5)


def test_stats_count_the_attended_keys():
    q, k, v = _qkv(b=1, n=100)
    cfg = inf.InfLLMConfig(n_local=32, n_init=4, block_size=16, topk=2, exc_block_size=16)
    st = inf.MemoryStats(100)
    inf.infllm_attention(q, k, v, cfg, stats=st)
    # last chunk starts at 96: lo = 65, 3 full units (4..52), remainder 52..67 for the last query (99)
    assert st.n_units[-1] == 3 and st.selected[-1].shape == (1, 2)
    assert st.attended[-1] == 32 + 4 + 2 * 16 + (99 - 32 + 1 - 52)
    assert st.attended_fraction == st.attended[-1] / 100


def test_use_infllm_restores_the_model_and_is_exact_in_the_window():
    model = TinyLM(TransformerConfig(vocab_size=inf.VOCAB_SIZE, d_model=32, n_layers=2, n_heads=2)).eval()
    x = torch.randint(0, inf.VOCAB_SIZE, (2, 30))
    with torch.no_grad():
        ref = model(x)
        with inf.use_infllm(model, inf.InfLLMConfig(n_local=32, exc_block_size=16)) as wrappers:
            out = model(x)
        assert len(wrappers) == 2 and wrappers[0].stats.attended[-1] == 30
    assert all(type(b.attn).__name__ == "MultiHeadAttention" for b in model.blocks)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_recall_batch_places_the_needle():
    g = torch.Generator().manual_seed(0)
    x, y, pos = inf.recall_batch(3, 100, 3, 2, g, depth=torch.tensor([0.0, 0.5, 1.0]))
    assert x.shape == y.shape == (3, 100)
    assert pos[0] == 0 and pos[2] == 2 * ((101 - 6 - 1) // 2 - 1)
    rows = torch.arange(3)
    keys, vals = x[rows, pos], x[rows, pos + 1]
    assert (x[:, -5] == inf.QUERY).all() and (x[:, -4] == keys).all() and (y[:, -4] == vals).all()
    assert ((y != inf.IGNORE).sum(1) == 2).all()
    assert ((x >= inf.KEY0) & (x < inf.VALUE0)).sum(1).tolist() == [5, 5, 5]  # 3 pairs + 2 queries


@pytest.mark.parametrize("kw,match", [
    (dict(n_local=0), "n_local"), (dict(exc_block_size=64, n_local=32), "exc_block_size"),
    (dict(repr_topk=20, block_size=16), "repr_topk"), (dict(topk=-1), "topk"),
])
def test_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        inf.InfLLMConfig(**kw)


def test_argument_validation():
    q, k, v = _qkv(n=8)
    cfg = inf.InfLLMConfig()
    with pytest.raises(ValueError, match="impl"):
        inf.infllm_attention(q, k, v, cfg, impl="cuda")
    with pytest.raises(ValueError, match="k, v"):
        inf.infllm_attention(q, k[:, :3], v[:, :3], cfg)
    with pytest.raises(ValueError, match="n_queries"):
        inf.recall_batch(2, 64, 1, 2, torch.Generator())
    model = TinyLM(TransformerConfig(vocab_size=inf.VOCAB_SIZE, d_model=32, n_layers=1, n_heads=2))
    with inf.use_infllm(model, cfg), pytest.raises(ValueError, match="CausalMask"):
        model(torch.zeros(1, 8, dtype=torch.long), mask=torch.ones(8, 8, dtype=torch.bool))
