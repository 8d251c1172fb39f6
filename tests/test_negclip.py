"""NegCLIP / ARO on procedural scenes: the generator, the captions and swaps, the loss, tie-aware accuracy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from companion.data import scenes as sc
from companion.embeddings import negclip as nc


def _scenes(n=32, seed=0, **kw):
    return sc.two_object_scenes(n, torch.Generator().manual_seed(seed), **kw)


@pytest.mark.parametrize("layout", ["free", "halves"])
def test_scenes_are_deterministic_and_left_is_left(layout):
    a, b = _scenes(layout=layout), _scenes(layout=layout)
    assert torch.equal(a.images, b.images) and torch.equal(a.colors, b.colors)
    assert a.images.shape == (32, 3, 8, 24) and 0 <= a.images.min() and a.images.max() <= 1
    assert (a.colors[:, 0] != a.colors[:, 1]).all() and (a.shapes[:, 0] != a.shapes[:, 1]).all()
    clean = _scenes(layout=layout, noise=0.0)
    for i in range(len(clean)):  # the left object's colour occupies columns left of the right object's
        cols = []
        for side in range(2):
            rgb = torch.tensor(sc.COLORS[list(sc.COLORS)[int(clean.colors[i, side])]])[:, None, None]
            hit = (clean.images[i] - rgb).abs().sum(0) < 1e-6  # (H, W)
            cols.append(hit.any(0).nonzero().flatten())
        assert cols[0].max() < cols[1].min()


def test_scene_argument_errors():
    g = torch.Generator()
    with pytest.raises(ValueError, match="layout"):
        sc.two_object_scenes(2, g, layout="grid")
    with pytest.raises(ValueError, match="n_colors"):
        sc.two_object_scenes(2, g, n_colors=1)
    with pytest.raises(ValueError, match="canvas"):
        sc.two_object_scenes(2, g, width=10)
    with pytest.raises(ValueError, match="shape"):
        sc.shape_mask("hexagon")


def test_captions_swaps_and_scene_keys():
    s = _scenes()
    left, right = nc.captions(s, form="left"), nc.captions(s, form="right")
    assert nc.decode(left[:1])[0].split()[2:4] == ["left", "of"]
    assert torch.equal(nc.scene_key(left), nc.scene_key(right))  # two templates, one scene
    for t in (left, right):
        rel, att = nc.relation_swap(t), nc.attribute_swap(t)
        assert (nc.scene_key(rel) != nc.scene_key(t)).all() and (nc.scene_key(att) != nc.scene_key(t)).all()
        assert torch.equal(nc.relation_swap(rel), t) and torch.equal(nc.attribute_swap(att), t)
        assert torch.equal(t.sort(1).values, rel.sort(1).values)  # same bag of words
        assert torch.equal(t.sort(1).values, att.sort(1).values)
    # the relation swap of "A left of B" describes the mirrored scene "B left of A"
    mirrored = sc.TwoObjectScenes(s.images.flip(-1), s.colors.flip(1), s.shapes.flip(1))
    assert torch.equal(nc.scene_key(nc.relation_swap(left)), nc.scene_keys(mirrored))
    with pytest.raises(ValueError, match="tokens"):
        nc.relation_swap(left[:, :5])


def test_bag_of_words_tower_is_exactly_order_blind():
    torch.manual_seed(0)
    m = nc.TinyCLIP(text="bow")
    t = nc.captions(_scenes())
    e = m.encode_text(t)
    assert torch.equal(e, m.encode_text(nc.relation_swap(t)))
    assert torch.equal(e, m.encode_text(nc.attribute_swap(t)))
    s = _scenes()
    assert nc.swap_accuracy(m, s.images, t, nc.relation_swap(t)) == 0.5


def test_tie_aware_top1():
    scores = torch.tensor([[1.0, 1.0], [0.0, 2.0], [3.0, 1.0], [5.0, 5.0]])
    correct = torch.tensor([[False, True]] * 4)
    assert float(nc.tie_aware_top1(scores, correct)) == pytest.approx((0.5 + 1 + 0 + 0.5) / 4)
    three = torch.tensor([[2.0, 2.0, 2.0]])
    assert float(nc.tie_aware_top1(three, torch.tensor([[True, False, True]]))) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="bool"):
        nc.tie_aware_top1(scores, correct.float())


def test_clip_loss_matches_cross_entropy_and_negatives_only_enter_image_to_text():
    torch.manual_seed(0)
    img, txt, neg = (F.normalize(torch.randn(5, 8), dim=-1) for _ in range(3))
    labels = torch.arange(5)
    ref = 0.5 * (F.cross_entropy(10 * img @ txt.T, labels) + F.cross_entropy(10 * txt @ img.T, labels))
    torch.testing.assert_close(nc.clip_loss(img, txt, 10.0), ref)
    neg = neg.requires_grad_()
    loss = nc.clip_loss(img, txt, 10.0, neg)
    ref_neg = 0.5 * (F.cross_entropy(10 * img @ torch.cat([txt, neg]).T, labels) + F.cross_entropy(10 * txt @ img.T, labels))
    torch.testing.assert_close(loss, ref_neg)
    # the text->image direction never sees the negatives: only the image->text term has a gradient
    (g_neg,) = torch.autograd.grad(loss, neg)
    neg2 = neg.detach().clone().requires_grad_()
    (g_ref,) = torch.autograd.grad(0.5 * F.cross_entropy(10 * img @ torch.cat([txt, neg2]).T, labels), neg2)
    torch.testing.assert_close(g_neg, g_ref)
    with pytest.raises(ValueError, match="neg_txt"):
        nc.clip_loss(img, txt, 1.0, neg[:3])


def test_model_shapes_and_errors():
    m = nc.TinyCLIP()
    s = _scenes(4)
    assert m.encode_image(s.images).shape == (4, 64)
    assert torch.allclose(m.encode_text(nc.captions(s)).norm(dim=-1), torch.ones(4))
    with pytest.raises(ValueError, match="images"):
        m.encode_image(s.images[:, :, :, :20])
    with pytest.raises(ValueError, match="text"):
        nc.TinyCLIP(text="lstm")
    r = nc.retrieval_r1(m, s.images, nc.captions(s), nc.scene_keys(s))
    assert set(r) == {"i2t", "t2i"}


def test_training_batches():
    g = torch.Generator().manual_seed(0)
    imgs, toks, neg = nc.training_batch(64, g, batches="bag-free", negatives=True)
    assert imgs.shape == (64, 3, 8, 24) and toks.shape == (64, 6) and neg.shape == (64, 6)
    bags = toks.sort(1).values
    assert len(torch.unique(bags, dim=0)) == 64  # no two captions share their bag of words
    assert all(torch.equal(n.sort().values, t.sort().values) for n, t in zip(neg, toks))
    assert (nc.scene_key(neg) != nc.scene_key(toks)).all()
    imgs, toks, neg = nc.training_batch(8, g, batches="mirror-pairs")
    assert neg is None
    keys = nc.scene_key(toks)
    assert torch.equal(keys[4:], nc.scene_key(nc.relation_swap(nc.captions(
        sc.TwoObjectScenes(imgs[:4], *_objects(toks[:4])), form="left"))))
    with pytest.raises(ValueError, match="batches"):
        nc.training_batch(8, g, batches="random")
    with pytest.raises(ValueError, match="even"):
        nc.training_batch(7, g, batches="mirror-pairs")


def _objects(tokens):
    """(colors, shapes) of the scenes the captions describe (left object first)."""
    is_left = tokens[:, 2] == nc.WORD_ID["left"]
    first, second = tokens[:, 0:2], tokens[:, 4:6]
    lo = torch.where(is_left[:, None], first, second)
    ro = torch.where(is_left[:, None], second, first)
    c0, s0 = 1, 1 + len(sc.COLORS)
    return torch.stack([lo[:, 0], ro[:, 0]], 1) - c0, torch.stack([lo[:, 1], ro[:, 1]], 1) - s0
