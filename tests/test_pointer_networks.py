"""Unit tests of the Pointer Networks module: data, masking, decoding, metrics."""

import itertools

import numpy as np
import pytest
import torch

from companion.structure import pointer_networks as pn


def brute_force_tour_length(p: np.ndarray) -> float:
    """Shortest closed tour by trying every order of cities 1..n-1 after city 0."""
    best = np.inf
    for perm in itertools.permutations(range(1, len(p))):
        ring = p[[0, *perm]]
        best = min(best, float(np.linalg.norm(ring - np.roll(ring, -1, axis=0), axis=1).sum()))
    return best


# ---------------------------------------------------------------------------- convex hull

def test_hull_of_square_with_interior_points_is_canonical():
    pts = [(0.5, 0.5), (1, 1), (0, 0), (1, 0), (0, 1), (0.2, 0.7)]
    # CCW from (0,0): (0,0)->(1,0)->(1,1)->(0,1), i.e. 0-based 2,3,1,4; rotated to start at 1
    assert pn.convex_hull(pts) == [1, 4, 2, 3]
    assert pn.hull_target(pts) == [2, 5, 3, 4, 2, 0]


def test_hull_drops_points_in_the_middle_of_edges():
    pts = [(0, 0), (0.5, 0), (1, 0), (1, 0.5), (1, 1), (0, 1), (0, 0.25)]
    assert pn.convex_hull(pts) == [0, 2, 4, 5]


def test_hull_of_collinear_points_and_duplicates():
    assert pn.convex_hull([(0, 0), (2, 2), (1, 1), (3, 3)]) == [0, 3]
    assert pn.convex_hull([(1, 1), (1, 1)]) == [0]
    # a duplicated corner is represented by its smallest index
    assert pn.convex_hull([(0.5, 0.2), (0, 0), (1, 0), (0, 1), (0, 0)]) == [1, 2, 3]


def test_hull_is_convex_ccw_and_contains_every_point():
    rng = np.random.default_rng(0)
    for _ in range(20):
        p = rng.random((rng.integers(3, 30), 2))
        hull = pn.convex_hull(p)
        assert hull[0] == min(hull)
        for a, b in zip(hull, hull[1:] + hull[:1]):
            cross = (p[b, 0] - p[a, 0]) * (p[:, 1] - p[a, 1]) - (p[b, 1] - p[a, 1]) * (p[:, 0] - p[a, 0])
            assert (cross >= -1e-12).all()  # every point is on the left of every hull edge


# ---------------------------------------------------------------------------- TSP

@pytest.mark.parametrize("n", [3, 4, 5, 6, 7])
def test_held_karp_matches_brute_force(n):
    rng = np.random.default_rng(n)
    p = rng.random((4, n, 2))
    tours, lengths = pn.held_karp(p)
    for b in range(4):
        assert lengths[b] == pytest.approx(brute_force_tour_length(p[b]), abs=1e-12)
        assert sorted(tours[b]) == list(range(n)) and tours[b][0] == 0
        assert n < 3 or tours[b][1] < tours[b][-1]  # canonical direction
        seq = pn.closed_sequence(tours[b])
        assert pn.tour_length(p[b], seq) == pytest.approx(lengths[b], abs=1e-12)


def test_tsp_target_format():
    p = np.array([[0, 0], [1, 1], [1, 0], [0, 1]], dtype=float)
    assert pn.tsp_target(p) == [1, 3, 2, 4, 1, 0]


# ---------------------------------------------------------------------------- models

@pytest.mark.parametrize("cls", [pn.PointerNet, pn.Seq2SeqAttention])
def test_padding_gets_exactly_zero_probability_and_changes_nothing(cls):
    torch.manual_seed(0)
    model = cls(16).eval()
    pts = torch.rand(2, 7, 2)
    lengths = torch.tensor([4, 7])
    pts[0, 4:] = 0.0
    tgt = pn.pad_targets([pn.hull_target(pts[0, :4]), pn.hull_target(pts[1])])
    logp = model(pts, tgt, lengths)  # (2, T, C)
    probs = logp.exp()
    assert (probs[0, :, 5:] == 0).all()  # pointers 5.. name padded points
    assert torch.allclose(probs.sum(-1), torch.ones(2, tgt.shape[1]))
    alone = model(pts[:1, :4], tgt[:1, :6])  # the same instance without padding
    C = alone.shape[-1]
    torch.testing.assert_close(logp[0, :6, :C], alone[0])


def test_pointer_net_output_grows_with_the_input_seq2seq_does_not():
    ptr, s2s = pn.PointerNet(8), pn.Seq2SeqAttention(8, vocab=10)
    assert ptr.num_outputs(25) == 26 and s2s.num_outputs(25) == 11
    pts = torch.rand(3, 15, 2)
    assert int(pn.greedy_decode(s2s, pts).max()) <= 10
    with pytest.raises(ValueError, match="fixed-vocabulary"):
        s2s(pts, torch.tensor([[12, 1, 0]] * 3))


@pytest.mark.parametrize("task", ["hull", "tsp"])
@pytest.mark.parametrize("beam", [1, 3])
def test_constrained_decoding_returns_valid_sequences(task, beam):
    torch.manual_seed(1)
    model = pn.PointerNet(16)
    pts = torch.rand(6, 8, 2)
    lengths = torch.tensor([8, 5, 6, 8, 3, 7])
    pred = pn.beam_search(model, pts, lengths, task=task, beam=beam)
    for b in range(6):
        n = int(lengths[b])
        ring = pn.parse_closed_sequence(pred[b], n)
        assert ring is not None and len(ring) >= 3
        if task == "tsp":
            assert sorted(ring) == list(range(n))


@pytest.mark.parametrize("cls", [pn.PointerNet, pn.Seq2SeqAttention])
@pytest.mark.parametrize("task", ["hull", "tsp", None])
def test_beam_width_one_equals_greedy(cls, task):
    torch.manual_seed(2)
    model = cls(16)
    pts, lengths = torch.rand(10, 9, 2), torch.randint(4, 10, (10,))
    greedy = pn.greedy_decode(model, pts, lengths, task=task)
    torch.testing.assert_close(pn.beam_search(model, pts, lengths, task=task, beam=1), greedy)


def test_wider_beam_finds_at_least_as_likely_sequences_on_average():
    torch.manual_seed(3)
    model = pn.PointerNet(16)
    pts = torch.rand(32, 8, 2)

    def loglik(seqs):
        tgt = seqs.clamp(min=0)
        logp = model(pts, tgt).gather(-1, tgt[..., None])[..., 0]
        return (logp * (seqs != pn.PAD)).sum(-1)

    with torch.no_grad():
        assert loglik(pn.beam_search(model, pts, beam=4)).mean() >= loglik(pn.greedy_decode(model, pts)).mean()


def test_training_reduces_the_loss():
    torch.manual_seed(4)
    model = pn.PointerNet(16)
    batch = pn.make_batch("hull", 16, 5, 7, torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    first = pn.pointer_loss(model, batch).item()
    for _ in range(30):
        loss = pn.pointer_loss(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.8 * first


def test_pointer_distributions_are_distributions_over_points_and_end():
    model = pn.PointerNet(8)
    pts = torch.rand(6, 2)
    probs = pn.pointer_distributions(model, pts, pn.hull_target(pts))
    assert probs.shape == (len(pn.hull_target(pts)), 7)
    torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[0]))


# ---------------------------------------------------------------------------- metrics

def test_true_hull_has_full_area_coverage():
    batch = pn.make_batch("hull", 20, 5, 12, torch.Generator().manual_seed(5))
    m = pn.hull_metrics(batch.points, batch.lengths, batch.targets, batch.targets)
    assert m == {"accuracy": 1.0, "area": pytest.approx(1.0), "fail": 0.0}


def test_invalid_polygons_fail_and_smaller_polygons_cover_less():
    pts = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.5, 0.1]]])
    target = torch.tensor([[1, 2, 3, 4, 1, 0]])
    bow_tie = torch.tensor([[1, 3, 2, 4, 1, 0]])  # self-intersecting
    unclosed = torch.tensor([[1, 2, 3, 4, 0, pn.PAD]])
    triangle = torch.tensor([[1, 2, 3, 1, 0, pn.PAD]])
    assert pn.hull_metrics(pts, None, bow_tie, target)["fail"] == 1.0
    assert pn.hull_metrics(pts, None, unclosed, target)["fail"] == 1.0
    m = pn.hull_metrics(pts, None, triangle, target)
    assert m["fail"] == 0.0 and m["accuracy"] == 0.0 and m["area"] == pytest.approx(0.5)
    assert pn.polygon_area(pts[0], [0, 1, 2, 3]) == pytest.approx(1.0)


def test_tour_length_is_nan_for_invalid_tours():
    p = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=float)
    assert pn.tour_length(p, [1, 2, 3, 4, 1, 0]) == pytest.approx(4.0)
    assert np.isnan(pn.tour_length(p, [1, 2, 3, 1, 0]))  # misses a city
    assert np.isnan(pn.tour_length(p, [1, 2, 2, 3, 4, 1, 0]))  # revisits
    m = pn.tsp_metrics(torch.tensor(p[None]), torch.tensor([[1, 2, 3, 4, 1, 0]]))
    assert m == {"length": pytest.approx(4.0), "optimal": pytest.approx(4.0), "fail": 0.0}


# ---------------------------------------------------------------------------- errors

def test_bad_inputs_raise_clear_value_errors():
    with pytest.raises(ValueError, match="points must have shape"):
        pn.convex_hull(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="finite"):
        pn.convex_hull([[0, 0], [np.nan, 1]])
    with pytest.raises(ValueError, match="2 <= n <= 13"):
        pn.held_karp(np.zeros((14, 2)))
    with pytest.raises(ValueError, match="task must be one of"):
        pn.make_batch("sort", 4, 5, 10)
    with pytest.raises(ValueError, match="batch must be >= 1"):
        pn.make_batch("hull", 0, 5, 10)
    with pytest.raises(ValueError, match="n_min"):
        pn.make_batch("hull", 4, 10, 5)
    with pytest.raises(ValueError, match="hidden"):
        pn.PointerNet(0)
    model = pn.PointerNet(8)
    with pytest.raises(ValueError, match=r"points must be a tensor of shape \(B, N, 2\)"):
        pn.greedy_decode(model, torch.rand(4, 2))
    with pytest.raises(ValueError, match="lengths must lie in"):
        pn.greedy_decode(model, torch.rand(2, 5, 2), torch.tensor([3, 6]))
    with pytest.raises(ValueError, match="beam must be >= 1"):
        pn.beam_search(model, torch.rand(2, 5, 2), beam=0)
    with pytest.raises(ValueError, match="task must be one of"):
        pn.greedy_decode(model, torch.rand(2, 5, 2), task="delaunay")
    with pytest.raises(ValueError, match="pred and target"):
        pn.hull_metrics(torch.rand(2, 5, 2), None, torch.zeros(3, 4, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long))


# ---------------------------------------------------------------------------- figures and explorer

def test_plot_and_explorer_build():
    import matplotlib

    matplotlib.use("Agg")
    pts = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.4, 0.5]])
    ax = pn.plot_hull_prediction(pts, pn.hull_target(pts))
    assert ax.get_title() == "exact"
    ax = pn.plot_hull_prediction(pts, [1, 3, 2, 4, 1, 0])
    assert ax.get_title() == "FAIL"
    widget = pn.hull_explorer({"tiny": pn.PointerNet(8)}, n=6, n_max=8)
    assert len(widget.children) == 2
    with pytest.raises(ValueError, match="models"):
        pn.hull_explorer({})
    with pytest.raises(ValueError, match="ring"):
        pn.closed_sequence([])


def test_forward_rejects_targets_that_point_into_padding():
    model = pn.PointerNet(8)
    pts = pn.random_points(2, 6, torch.Generator().manual_seed(0))
    lengths = torch.tensor([4, 6])
    targets = torch.tensor([[1, 2, 5, 1, 0], [1, 2, 3, 1, 0]])  # instance 0 has no point 5
    with pytest.raises(ValueError, match=r"targets\[0\] points at 5 .* lengths\[0\] = 4"):
        model(pts, targets, lengths)
