"""Tests of companion.alignment.augmentation_peft (and its data loader, and train()'s lr_scale)."""

import random

import pytest
import torch
from torch import nn

from companion import assets
from companion.alignment import augmentation_peft as A
from companion.train import train

TABLE = {"good": ("fine", "nice"), "film": ("movie",), "not": ("nope",)}


def test_eda_operations():
    text = "the film was not good"
    rng = random.Random(0)
    sr = A.eda(text, 0.5, rng, op="sr", table=TABLE)
    assert len(sr.split()) == 5 and "not" in sr.split() and sr != text  # stop words never replaced
    ri = A.eda(text, 0.5, rng, op="ri", table=TABLE)
    assert len(ri.split()) == 5 + 2 and set(ri.split()) - set(text.split()) <= {"fine", "nice", "movie"}
    rs = A.eda(text, 0.5, rng, op="rs", table=TABLE)
    assert sorted(rs.split()) == sorted(text.split())
    assert A.eda(text, 1.0, rng, op="rd", table=TABLE) in text.split()  # all deleted -> one word kept
    assert A.eda(text, 0.0, rng, op="rd", table=TABLE) == text
    with pytest.raises(ValueError, match="op"):
        A.eda(text, 0.1, rng, op="xx", table=TABLE)
    with pytest.raises(ValueError, match="alpha"):
        A.eda(text, 1.5, rng, table=TABLE)
    with pytest.raises(ValueError, match="text"):
        A.eda("  ", 0.1, rng, table=TABLE)


def test_negation_reviews_balanced_and_deterministic():
    t1, y1 = A.negation_reviews(50, 3)
    t2, y2 = A.negation_reviews(50, 3)
    assert (t1, y1) == (t2, y2) and sum(y1) == 25
    for t, y in zip(*A.negation_reviews(200, 1)):
        words = set(t.split())
        negated = bool(words & set(A._NEGATORS))
        positive_adj = bool(words & set(A._POS))
        assert y == int(positive_adj != negated)
    with pytest.raises(ValueError, match="negation_rate"):
        A.negation_reviews(10, 0, negation_rate=2.0)


def test_lora_zero_init_is_identical_and_trains_only_a_b():
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    x = torch.randn(3, 6)
    ref = base(x)
    lora = A.LoRALinear(base, r=2, alpha=4.0)
    torch.testing.assert_close(lora(x), ref, rtol=0, atol=0)
    assert [n for n, p in lora.named_parameters() if p.requires_grad] == ["A", "B"]
    with torch.no_grad():
        lora.B.normal_()
    torch.testing.assert_close(lora(x), ref + 2.0 * x @ lora.A.t() @ lora.B.t())
    with pytest.raises(TypeError, match="base"):
        A.LoRALinear(nn.Conv1d(1, 1, 1))
    block = nn.Sequential()
    block.add_module("query", nn.Linear(4, 4))
    block.add_module("key", nn.Linear(4, 4))
    A.add_lora(block, r=1)
    assert isinstance(block.query, A.LoRALinear) and isinstance(block.key, nn.Linear)
    with pytest.raises(ValueError, match="targets"):
        A.add_lora(nn.Sequential(nn.Linear(2, 2)))


def test_supcon_loss_matches_a_loop():
    torch.manual_seed(1)
    z, y, tau = torch.randn(6, 4), torch.tensor([0, 0, 1, 1, 1, 2]), 0.5
    zn = torch.nn.functional.normalize(z, dim=-1)
    terms = []
    for i in range(6):
        pos = [p for p in range(6) if p != i and y[p] == y[i]]
        if not pos:
            continue
        denom = torch.logsumexp(torch.stack([zn[i] @ zn[a] / tau for a in range(6) if a != i]), 0)
        terms.append(torch.stack([-(zn[i] @ zn[p] / tau - denom) for p in pos]).mean())
    torch.testing.assert_close(A.supcon_loss(z, y, tau), torch.stack(terms).mean())
    with pytest.raises(ValueError, match="tau"):
        A.supcon_loss(z, y, 0.0)


def test_silhouette_matches_a_loop():
    torch.manual_seed(2)
    x, y = torch.randn(9, 3), torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 2])
    xn = torch.nn.functional.normalize(x.double(), dim=-1)
    d = 1 - xn @ xn.t()
    s = []
    for i in range(9):
        own = [j for j in range(9) if y[j] == y[i] and j != i]
        a = d[i, own].mean()
        b = min(d[i, [j for j in range(9) if y[j] == c]].mean() for c in set(y.tolist()) - {int(y[i])})
        s.append(float((b - a) / max(a, b)))
    assert A.silhouette(x, y) == pytest.approx(sum(s) / 9, abs=1e-12)
    with pytest.raises(ValueError, match="two classes"):
        A.silhouette(x, torch.zeros(9, dtype=torch.long))


def test_lr_scale_of_a_parameter_group():
    w1, w2 = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    model = nn.Module()
    model.register_parameter("w1", w1)
    model.register_parameter("w2", w2)
    opt = torch.optim.SGD([{"params": [w1]}, {"params": [w2], "lr_scale": 10.0}], lr=0.1)
    train(model, lambda m, b: -(m.w1 + m.w2).sum(), lambda s: None, steps=1, lr=0.1, optimizer=opt,
          schedule="constant", clip=None, progress=False)
    assert float(w1.detach()) == pytest.approx(0.1) and float(w2.detach()) == pytest.approx(1.0)


needs_encoder = pytest.mark.skipif(not assets.present("all-minilm-l6-v2"), reason="all-MiniLM-L6-v2 not installed")


@needs_encoder
def test_bert_layer_prefix_and_peft_classifier():
    from companion.models import load_encoder

    enc, tok = load_encoder()
    texts = ["a charming , funny film .", "dull and far too long"]
    t = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = enc(**t).last_hidden_state
    h, keep = A.encode_frozen(enc, tok, texts, 6, max_len=t["input_ids"].shape[1])
    torch.testing.assert_close(h[keep], ref[keep], rtol=1e-5, atol=1e-5)
    h5, k5 = A.encode_frozen(enc, tok, texts, 5, max_len=t["input_ids"].shape[1])
    torch.manual_seed(0)
    ft, lora = A.PeftClassifier(enc, 1, 2, "ft"), A.PeftClassifier(enc, 1, 2, "lora")
    with torch.no_grad():
        torch.testing.assert_close(lora.embed(h5, k5), ft.embed(h5, k5), rtol=0, atol=0)  # B = 0
        torch.testing.assert_close(ft.embed(h5, k5), A.mean_pool(ref, keep))
        pre = A.PeftClassifier(enc, 1, 2, "prefix")
        assert not torch.allclose(pre.embed(h5, k5), ft.embed(h5, k5))
        # a prefix made of the keys/values of m extra hidden states == those states prepended to the input
        layer, xp = enc.encoder.layer[5], torch.randn(3, 384)
        sa = layer.attention.self
        with_prefix = A.bert_layer(layer, h5, k5, 12, prefix=(sa.key(xp), sa.value(xp)))
        joined = A.bert_layer(layer, torch.cat([xp.expand(2, 3, 384), h5], 1),
                              torch.cat([torch.ones(2, 3, dtype=torch.bool), k5], 1), 12)[:, 3:]
        torch.testing.assert_close(with_prefix[k5], joined[k5], rtol=1e-5, atol=1e-5)
    assert sum(p.numel() for p in pre.body_parameters()) == 2 * 8 * 384
    assert all(not p.requires_grad for p in pre.layers.parameters())
    with pytest.raises(ValueError, match="method"):
        A.PeftClassifier(enc, 1, 2, "adapter")
    with pytest.raises(ValueError, match="n_top"):
        A.PeftClassifier(enc, 7, 2, "ft")


def test_pang_lee_polarity():
    if not assets.present("lee-corpus"):
        pytest.skip("gensim test data not installed")
    from companion.data import pang_lee_polarity

    texts, labels = pang_lee_polarity()
    assert len(texts) == 200 and sum(labels) == 100 and labels[:100] == [0] * 100
    assert texts[0] == "simplistic , silly and tedious ." and all(t and not t.startswith("__label__") for t in texts)
