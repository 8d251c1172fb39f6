import pytest
import torch

from companion.nn import CausalMask, TinyEncoder, TinyLM, TransformerConfig, set_based
from companion.train import EarlyStop, History, lr_at, train


@pytest.mark.parametrize("pos", ["rope", "alibi", "learned", "sinusoidal", "none"])
def test_lm_shapes_and_causality(pos):
    torch.manual_seed(0)
    lm = TinyLM(TransformerConfig(vocab_size=20, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, pos=pos, max_len=16))
    x = torch.randint(0, 20, (2, 9))
    logits = lm(x)
    assert logits.shape == (2, 9, 20)
    y = x.clone()
    y[:, 6:] = (y[:, 6:] + 1) % 20  # changing the future must not change the past
    torch.testing.assert_close(lm(y)[:, :6], logits[:, :6])


def test_lm_set_mask_and_position_reset_make_logits_order_invariant():
    torch.manual_seed(0)
    lm = TinyLM(TransformerConfig(vocab_size=30, d_model=32, n_layers=2, n_heads=4))
    prefix, a, b, suffix = [1, 2], [3, 4, 5], [6, 7, 8], [9]
    def run(first, second):
        ids = torch.tensor([prefix + first + second + suffix])
        sets = torch.tensor([-1] * 2 + [0] * 3 + [1] * 3 + [-1])
        pos = torch.tensor([0, 1, 2, 3, 4, 2, 3, 4, 5])
        return lm(ids, mask=set_based(sets), position_ids=pos)[0, -1]
    torch.testing.assert_close(run(a, b), run(b, a), atol=1e-5, rtol=0)


def test_encoder_padding_is_invisible():
    torch.manual_seed(0)
    enc = TinyEncoder(TransformerConfig(vocab_size=20, d_model=32, n_heads=4))
    x = torch.randint(0, 20, (1, 6))
    y = x.clone()
    y[0, 4:] = 0
    h1 = enc(x, lengths=torch.tensor([4]))
    h2 = enc(y, lengths=torch.tensor([4]))
    torch.testing.assert_close(h1[:, :4], h2[:, :4])
    pooled = TinyEncoder.mean_pool(h1, torch.tensor([4]))
    torch.testing.assert_close(pooled, h1[:, :4].mean(1))


def test_model_argument_errors():
    with pytest.raises(ValueError, match="pos must be"):
        TransformerConfig(vocab_size=10, pos="xpos")
    with pytest.raises(ValueError, match="divisible"):
        TransformerConfig(vocab_size=10, d_model=30, n_heads=4)
    lm = TinyLM(TransformerConfig(vocab_size=10, d_model=16, n_heads=2))
    with pytest.raises(ValueError, match="idx values"):
        lm(torch.tensor([[3, 12]]))
    with pytest.raises(ValueError, match="idx must be"):
        lm(torch.zeros(2, 3))


def test_train_learns_a_copy_task_and_reports_history():
    torch.manual_seed(0)
    lm = TinyLM(TransformerConfig(vocab_size=8, d_model=32, n_layers=1, n_heads=2))

    def batch(step):
        x = torch.randint(0, 8, (32, 6))
        return torch.cat([x, x], 1)  # second half repeats the first

    def loss_fn(model, seq):
        targets = seq[:, 1:].clone()
        targets[:, :5] = -100  # the first half is random: score only the copied half
        return model.loss(seq[:, :-1], targets)

    def acc(model):
        seq = batch(0)
        pred = model(seq[:, :-1]).argmax(-1)[:, 6:]
        return {"acc": (pred == seq[:, 7:]).float().mean()}

    hist = train(lm, loss_fn, batch, steps=150, lr=1e-2, eval_fn=acc, eval_every=50, progress=False)
    assert isinstance(hist, History) and len(hist.losses) == 150
    assert hist.eval_steps == [50, 100, 150]
    assert sum(hist.losses[-10:]) / 10 < 0.25 * hist.losses[0]
    assert hist.metric("acc")[-1] > 0.8


def test_early_stop_and_schedule():
    lm = TinyLM(TransformerConfig(vocab_size=5, d_model=16, n_heads=2))
    seq = torch.randint(0, 5, (4, 5))
    hist = train(lm, lambda m, b: m.loss(b[:, :-1], b[:, 1:]), lambda s: seq, steps=100,
                 eval_fn=lambda m: {"score": 1.0}, eval_every=10, early_stop=EarlyStop("score", patience=2),
                 progress=False)
    assert hist.stopped_early and len(hist.losses) == 30
    assert lr_at(0, 100, 1.0, 10, "cosine") == pytest.approx(0.1)
    assert lr_at(99, 100, 1.0, 0, "cosine") == pytest.approx(0.1, abs=1e-3)
    with pytest.raises(ValueError, match="early_stop needs"):
        train(lm, lambda m, b: m.loss(b, b), lambda s: seq, steps=1, early_stop=EarlyStop("x"))
    with pytest.raises(ValueError, match="steps must be"):
        train(lm, lambda m, b: m.loss(b, b), lambda s: seq, steps=0)


def test_causal_default_equals_explicit_mask():
    lm = TinyLM(TransformerConfig(vocab_size=10, d_model=16, n_heads=2))
    x = torch.randint(0, 10, (1, 5))
    torch.testing.assert_close(lm(x), lm(x, mask=CausalMask()))


def test_lm_batches_windows_and_loss():
    from companion.nn import TinyLM, TransformerConfig
    from companion.train import lm_batches, lm_loss, lm_windows

    stream = torch.arange(100) % 7
    get = lm_batches(stream, batch=3, length=5, seed=1)
    x, y = get(4)
    assert x.shape == y.shape == (3, 5)
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(get(4)[0], x)  # shifted, reproducible
    xs, ys = lm_windows(stream, 10)
    assert xs.shape == (9, 10) and torch.equal(ys, (xs + 1) % 7)
    model = TinyLM(TransformerConfig(vocab_size=7, d_model=16, n_layers=1, n_heads=2))
    loss = lm_loss(model, xs, ys, batch=4)
    expect = torch.nn.functional.cross_entropy(model(xs).flatten(0, 1), ys.flatten()).item()
    assert abs(loss - expect) < 1e-5
    with pytest.raises(ValueError, match="length"):
        lm_batches(stream, 2, 100)
    with pytest.raises(ValueError, match="n must be"):
        lm_windows(stream, 10, n=50)


def test_embedding_init_std_is_configurable():
    torch.manual_seed(0)
    wide = TinyLM(TransformerConfig(vocab_size=500, d_model=64, embed_std=1.0))
    assert 0.9 < float(wide.embed.weight.detach().std()) < 1.1
    assert float(TinyLM(TransformerConfig(vocab_size=500, d_model=64)).embed.weight.detach().std()) < 0.03
    with pytest.raises(ValueError, match="embed_std"):
        TransformerConfig(vocab_size=10, embed_std=0.0)
