"""Chimera: the draft's masks and index bookkeeping, and lossless tree verification (exact)."""

import pytest
import torch

import companion.kernels.hf  # noqa: F401  (registers attn_implementation="companion"; sets the interpreter up)
from companion.inference import chimera as C

V, D = 61, 32


@pytest.fixture(scope="module")
def base():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=V, hidden_size=D, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, tie_word_embeddings=True, attn_implementation="companion")
    return LlamaForCausalLM(cfg).eval()


def _drafts(base, seed=1):
    torch.manual_seed(seed)
    chim = C.ChimeraDraft(base.model.embed_tokens.weight, base.lm_head.weight, n_heads=3, n_attn_heads=4,
                          trigram_rank=8)
    med = C.MedusaHeads(base.lm_head.weight, n_heads=3)
    for d in (chim, med):  # leave the zero initialisation, so the drafts propose something non-trivial
        for p in d.parameters():
            torch.nn.init.normal_(p, std=0.2)
    return chim, med


def test_chimera_mask_exact():
    m = C.chimera_mask(3, 3).int()
    expect = torch.tensor([[1, 0, 0, 0, 0, 0],
                           [1, 1, 0, 0, 0, 0],
                           [1, 1, 1, 0, 0, 0],
                           [1, 0, 0, 1, 0, 0],   # g_1 sees h_0 and itself
                           [1, 1, 0, 0, 1, 0],   # g_2 sees h_0, h_1 and itself
                           [1, 1, 1, 0, 0, 1]])  # g_3 sees h_0..h_2 and itself
    assert torch.equal(m, expect)
    assert torch.equal(C.chimera_mask(3, 1).int()[3], torch.tensor([1, 1, 1, 1]))
    with pytest.raises(ValueError, match="n_query"):
        C.chimera_mask(2, 3)


def test_features_causal_and_last_only(base):
    chim, med = _drafts(base)
    h, x = torch.randn(2, 9, D), torch.randint(0, V, (2, 10))
    for d in (chim, med):
        z = d(h, x)  # (K, B, L, d)
        assert z.shape == (3, 2, 9, D)
        torch.testing.assert_close(d(h, x, last_only=True)[:, :, 0], z[:, :, -1])
        # feature t may read h_{<=t} and x_{<=t+1} only: change the future, the past stays bit-identical
        h2, x2 = h.clone(), x.clone()
        h2[:, 5:] += 1.0
        x2[:, 6:] = (x2[:, 6:] + 1) % V
        assert torch.equal(d(h2, x2)[:, :, :5], z[:, :, :5])
        assert not torch.equal(d(h2, x2)[:, :, 5], z[:, :, 5])


def test_zero_init_heads_are_the_base_head(base):
    h, x = torch.randn(1, 5, D), torch.randint(0, V, (1, 6))
    med = C.MedusaHeads(base.lm_head.weight, n_heads=2)
    assert torch.equal(med(h, x), torch.stack([h, h]))  # h + SiLU(0) = h
    chim = C.ChimeraDraft(base.model.embed_tokens.weight, base.lm_head.weight, n_heads=2, n_attn_heads=4)
    z = chim(h, x)
    assert torch.equal(z[0], z[1])  # zero-initialised residual heads: all heads start as h_t + h~_{t+1}
    names = {n for n, _ in chim.named_parameters()}
    assert not any("embed" in n or "lm_weight" in n for n in names)  # the base's matrices stay frozen


def test_head_targets_match_loop():
    labels = torch.arange(20).view(2, 10)
    targets = C.head_targets(labels, 3)
    for k, t in enumerate(targets):
        for pos in range(t.shape[1]):  # head k at position t predicts token t + 2 + k = label of t + 1 + k
            assert torch.equal(t[:, pos], labels[:, pos + 1 + k])
        assert t.shape[1] == 10 - 1 - k  # every t <= N - 2 - k
    with pytest.raises(ValueError, match="labels"):
        C.head_targets(labels[:, :3], 3)


def test_loss_and_accuracy_shapes(base):
    chim, med = _drafts(base)
    h, a = C.base_states(base, torch.randint(0, V, (2, 12)))
    x = torch.randint(0, V, (2, 12))
    for d in (chim, med):
        loss = C.draft_loss(d, h, x, a)
        loss.backward()
        assert torch.isfinite(loss) and all(p.grad is not None for p in d.parameters())
        acc = C.head_accuracy(d, h, x, a, topk=V)
        assert acc.shape == (3, 2) and torch.all(acc[:, 1] == 1)  # top-V always contains the target


def test_trees_and_accept_path():
    tree = C.full_tree((2, 2))
    assert tree.paths == ((0,), (1,), (0, 0), (0, 1), (1, 0), (1, 1))
    assert tree.parents == (-1, -1, 0, 0, 1, 1) and tree.depth == 2 and tree.width == 2
    nodes = torch.tensor([5, 6, 7, 8, 9, 10])
    # greedy after root = 6 -> node 1; after node 1 (index 2 of greedy) = 10 -> node 5; then stop
    greedy = torch.tensor([6, 0, 10, 0, 0, 0, 3])
    assert C.accept_path(tree, nodes, greedy) == [1, 5]
    assert C.accept_path(tree, nodes, torch.tensor([4, 0, 0, 0, 0, 0, 0])) == []
    with pytest.raises(ValueError, match="prefix"):
        C.make_tree([(0, 0), (0,)])
    with pytest.raises(ValueError, match="widths"):
        C.full_tree([])


@pytest.mark.parametrize("which", ["chimera", "medusa"])
def test_speculative_equals_greedy(base, which):
    draft = dict(zip(("chimera", "medusa"), _drafts(base)))[which]
    tree = C.make_tree([(0,), (1,), (2,), (0, 0), (1, 0), (0, 0, 0)])
    for seed in range(3):
        prompt = torch.randint(0, V, (1, 5 + seed), generator=torch.Generator().manual_seed(seed))
        ref = C.greedy_generate(base, prompt, 17)
        out = C.speculative_generate(base, draft, prompt, 17, tree)
        assert out.tokens == ref.tokens
        assert sum(out.per_call) >= 17 and out.calls == len(out.drafts) + 1


def test_verify_accepts_the_greedy_chain(base):
    """Nodes that spell the greedy continuation are all accepted; the cache keeps exactly those."""
    prompt = torch.randint(0, V, (1, 6), generator=torch.Generator().manual_seed(4))
    ref = C.greedy_generate(base, prompt, 5).tokens
    tree = C.make_tree([(0,), (1,), (0, 0), (0, 0, 0)])
    nodes = torch.tensor([ref[1], (ref[1] + 1) % V, ref[2], ref[3]])
    cache, _, first = C.prefill(base, prompt)
    assert first == ref[0]
    path, bonus, states = C.verify_tree(base, cache, ref[0], nodes, tree)
    assert path == [0, 2, 3] and bonus == ref[4]
    assert cache.get_seq_length() == 6 + 4 and states.shape == (1, 4, D)
    full = base.model(torch.tensor([prompt[0].tolist() + ref[:4]])).last_hidden_state
    torch.testing.assert_close(states, full[:, 6:], atol=1e-5, rtol=1e-5)  # tree states = sequential states


def test_kernel_tree_mask_is_lossless(base):
    """The same decoding with the Triton kernel's tree mask (CPU: the interpreter)."""
    chim, _ = _drafts(base)
    tree = C.make_tree([(0,), (1,), (0, 0)])
    prompt = torch.randint(0, V, (1, 4), generator=torch.Generator().manual_seed(7))
    ref = C.greedy_generate(base, prompt, 6)
    out = C.speculative_generate(base, chim, prompt, 6, tree, impl="triton")
    assert out.tokens == ref.tokens


def test_bad_arguments(base):
    chim, _ = _drafts(base)
    with pytest.raises(ValueError, match="x must"):
        chim(torch.randn(1, 4, D), torch.randint(0, V, (1, 4)))
    with pytest.raises(ValueError, match="h must"):
        chim(torch.randn(1, 4, D + 1), torch.randint(0, V, (1, 5)))
    with pytest.raises(ValueError, match="prompt"):
        C.greedy_generate(base, torch.zeros(5, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="max_new"):
        C.greedy_generate(base, torch.zeros(1, 5, dtype=torch.long), 0)
    with pytest.raises(ValueError, match="exceeds"):
        C.draft_tree(chim, torch.randn(1, 3, D), torch.randint(0, V, (1, 4)), C.full_tree((1, 1, 1, 1)))
    with pytest.raises(ValueError, match="trigram_rank"):
        C.ChimeraDraft(base.model.embed_tokens.weight, base.lm_head.weight, trigram_rank=0)


def test_autoregressive_drafting_depth1_matches_heads_and_is_lossless(base):
    chim, med = _drafts(base)
    prompt = torch.randint(0, V, (1, 9), generator=torch.Generator().manual_seed(5))
    _, states, first = C.prefill(base, prompt)
    x = torch.cat([prompt, torch.tensor([[first]])], dim=1)
    flat = C.make_tree([(0,), (1,), (2,)])
    with torch.no_grad():  # depth 1: the same head-0 guesses either way
        assert torch.equal(C.draft_tree_autoregressive(chim, states, x, flat), C.draft_tree(chim, states, x, flat))
        tree = C.make_tree([(0,), (1,), (0, 0), (0, 1), (0, 0, 0)])
        nodes = C.draft_tree_autoregressive(chim, states, x, tree)
        # node (0, 0): head 0 on [e_root; e_(0,)], e_(0,) from the layer re-run with e_root in the context
        e_root = C._emulate(chim, states, states[:, :0], x[:, -3:])
        e0 = C._emulate(chim, states, e_root[None], torch.tensor([[int(x[0, -2]), int(x[0, -1]), int(nodes[0])]]))
        z = e_root + e0 + chim.heads[0](torch.cat([e_root, e0], dim=-1))
        assert int(nodes[2]) == int(chim.logits(z).argmax(-1))
    for seed in range(2):
        p = torch.randint(0, V, (1, 6 + seed), generator=torch.Generator().manual_seed(seed))
        ref = C.greedy_generate(base, p, 13)
        assert C.speculative_generate(base, chim, p, 13, tree, drafting="autoregressive").tokens == ref.tokens
    with pytest.raises(ValueError, match="ChimeraDraft"):
        C.draft_tree_autoregressive(med, states, x, tree)
    with pytest.raises(ValueError, match="drafting"):
        C.speculative_generate(base, chim, prompt, 3, tree, drafting="beam")
