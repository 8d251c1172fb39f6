"""Unit tests of the structurization module: reports, structures, renderings, reader, linker."""

from collections import Counter

import numpy as np
import pytest
import torch

from companion.structure import structurization as sx


@pytest.fixture
def vocab():
    return sx.ReportVocab(max_entities=16, n_relations=2, n_values=8)


def reports(vocab, n=20, n_entities=(2, 8), seed=0):
    return sx.make_reports(n, n_entities, vocab, np.random.default_rng(seed))


# ---------------------------------------------------------------------------- vocabulary and data

def test_vocab_layout_and_decode(vocab):
    assert len(vocab) == len(set(vocab.tokens))
    assert vocab.tokens[vocab.entity(0)] == "Ann" and vocab.is_entity(vocab.entity(15))
    assert not vocab.is_entity(vocab.item(0)) and vocab.tokens[vocab.item(3)] == "#3"
    assert vocab.tokens[vocab.relation(1)] == "pet" and vocab.tokens[vocab.value(0, 0)] == "red"
    assert vocab.entity_index(vocab.entity(7)) == 7
    assert vocab.decode([vocab.entity(0), vocab.pad, vocab.colon]) == "Ann :"
    with pytest.raises(ValueError, match="not an entity"):
        vocab.entity_index(vocab.item(0))
    for kwargs in ({"max_entities": 0}, {"n_relations": 5}, {"n_values": 9}):
        with pytest.raises(ValueError):
            sx.ReportVocab(**kwargs)


def test_report_facts_answer_their_questions(vocab):
    for r in reports(vocab):
        E = r.n_entities
        assert len(r.sentences) == 2 * vocab.n_relations * E == len(r.labels)
        assert len(r.questions) == min(4, E * vocab.n_relations) == len(set(r.questions))
        owner = {s[2]: (s[0], s[1]) for s in r.sentences if len(s) == 3}  # item -> (entity, relation)
        value = {s[0]: s[1] for s in r.sentences if len(s) == 2}  # item -> value
        for s, lab in zip(r.sentences, r.labels):
            item = s[2] if len(s) == 3 else s[0]
            assert vocab.entity_index(owner[item][0]) == lab
        for q, ans, (a, b) in zip(r.questions, r.answers, r.evidence):
            item = next(i for i, eo in owner.items() if eo == (q[1], q[2]))
            assert value[item] == ans
            assert {r.sentences[a], r.sentences[b]} == {(q[1], q[2], item), (item, ans)}


def test_make_report_validates_arguments(vocab):
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="n_entities"):
        sx.make_report(17, vocab, rng)
    with pytest.raises(ValueError, match="rng"):
        sx.make_report(3, vocab, 0)
    with pytest.raises(ValueError, match="n_questions"):
        sx.make_report(3, vocab, rng, n_questions=0)
    with pytest.raises(ValueError, match="n_entities"):
        sx.make_reports(2, (5, 3), vocab, rng)


# ---------------------------------------------------------------------------- structures

def test_structure_from_labels_partitions_in_order():
    s = sx.structure_from_labels([3, 1, 3, 2, 1], names=["a", "b", "c", "d"])
    assert [a.name for a in s.aspects] == ["d", "b", "c"]
    assert [a.sentences for a in s.aspects] == [(0, 2), (1, 4), (3,)]
    assert s.sentence_order() == [0, 2, 1, 4, 3]
    with pytest.raises(ValueError, match="names"):
        sx.structure_from_labels([0, 5], names=["a"])


def test_validate_structure_catches_dropped_repeated_and_foreign_sentences():
    ok = sx.Structure("s", (sx.Aspect("a", (0, 1)), sx.Aspect("b", (2,))))
    sx.validate_structure(ok, 3)
    with pytest.raises(ValueError, match=r"missing \[3\]"):
        sx.validate_structure(ok, 4)
    with pytest.raises(ValueError, match="repeated"):
        sx.validate_structure(sx.Structure("s", (sx.Aspect("a", (0, 1)), sx.Aspect("b", (1, 2)))), 3)
    with pytest.raises(ValueError, match="outside"):
        sx.validate_structure(sx.Structure("s", (sx.Aspect("a", (0, 1, 2, 3)),)), 3)
    with pytest.raises(ValueError, match="Structure"):
        sx.validate_structure({"Scope": "s"}, 3)


def test_structure_from_v2_is_one_based_inclusive_and_nested():
    # the shape of StruXGPT-v2's output (its second few-shot example): 15 sentences
    obj = {"Scope": "water absorption of rice", "Aspects": [
        {"AspectName": "curve", "SentenceRange": {"start": 1, "end": 3}},
        {"AspectName": "humidity", "SentenceRange": {"start": 4, "end": 8}, "SubAspects": [
            {"AspectName": "dynamics", "SentenceRange": {"start": 4, "end": 5}},
            {"AspectName": "moisture", "SentenceRange": {"start": 7, "end": 8}}]},
        {"AspectName": "stages", "SentenceRange": {"start": 9, "end": 12}},
        {"AspectName": "temperature", "SentenceRange": {"start": 13, "end": 15}}]}
    s = sx.structure_from_v2(obj, 15)
    assert s.sentence_order() == list(range(15))  # each aspect prints its range in document order
    humidity = s.aspects[1]
    assert humidity.sentences == (5,)  # sentence 6 is claimed by no sub-aspect: it stays with the parent
    assert [a.sentences for a in humidity.subaspects] == [(3, 4), (6, 7)]
    assert sorted(s.sentence_order()) == list(range(15))
    bad = {"Scope": "x", "Aspects": [{"AspectName": "a", "SentenceRange": {"start": 1, "end": 2},
                                      "SubAspects": [{"AspectName": "b", "SentenceRange": {"start": 2, "end": 3}}]}]}
    with pytest.raises(ValueError, match="inside its parent"):
        sx.structure_from_v2(bad, 3)
    with pytest.raises(ValueError, match="missing"):  # v2 output that forgets the last sentence
        short = {"Scope": "x", "Aspects": [{"AspectName": "a", "SentenceRange": {"start": 1, "end": 2}}]}
        sx.structure_from_v2(short, 3)
    with pytest.raises(ValueError, match="Scope"):
        sx.structure_from_v2({"Aspects": []}, 3)


# ---------------------------------------------------------------------------- renderings and units

def test_structured_context_holds_the_same_sentences_verbatim(vocab):
    """Exact property of v2-style structurization: nothing added but headers, nothing paraphrased."""
    for r in reports(vocab):
        raw, raw_sent = sx.render(r, vocab, "raw")
        assert raw == [t for s in r.sentences for t in s] and -1 not in raw_sent
        ids, sent = sx.render(r, vocab, "structured")
        pieces = Counter(tuple(ids[p] for p, x in enumerate(sent) if x == s) for s in range(len(r.sentences)))
        assert pieces == Counter(r.sentences)
        headers = [t for t, x in zip(ids, sent) if x == -1]
        assert headers[:3] == [vocab.index["Scope"], vocab.colon, vocab.index["report"]]
        assert len(headers) == 3 + 2 * r.n_entities


def test_units_cover_every_sentence_and_oracle_units_colocate_evidence(vocab):
    for r in reports(vocab):
        raw = sx.units(r, vocab, "raw")
        assert [s for _, ss in raw for s in ss] == list(range(len(r.sentences)))
        assert all(len(ss) == 2 * vocab.n_relations for _, ss in raw)
        struct = sx.units(r, vocab, "structured")
        assert len(struct) == r.n_entities
        assert sorted(s for _, ss in struct for s in ss) == list(range(len(r.sentences)))
        for a, b in r.evidence:  # with the oracle structure both evidence sentences share a unit
            assert any(a in ss and b in ss for _, ss in struct)
        batch = sx.reader_batch([r], vocab, "structured")
        assert bool(batch.covered.all())
    with pytest.raises(ValueError, match="chunk"):
        sx.units(r, vocab, "raw", chunk=0)
    with pytest.raises(ValueError, match="fmt"):
        sx.units(r, vocab, "yaml")
    with pytest.raises(ValueError, match="labels"):
        sx.units(r, vocab, "structured", labels=[0])
    with pytest.raises(ValueError, match="entity indices"):
        sx.units(r, vocab, "structured", labels=[99] * len(r.sentences))


def test_evidence_is_closer_after_structurization(vocab):
    for r in reports(vocab, n_entities=(6, 12)):
        block = 2 + 5 * vocab.n_relations  # header + one 3-token and one 2-token sentence per relation
        assert max(sx.evidence_distance(r, vocab, "structured")) < block
        assert len(sx.evidence_distance(r, vocab, "raw")) == len(r.questions)


def test_retrieve_ranks_by_shared_tokens_with_ties_to_the_earlier_unit():
    u = [[1, 2], [5, 6, 7], [5, 6], [9]]
    assert sx.retrieve(u, [0, 5, 6], k=1) == [1]
    assert sx.retrieve(u, [0, 5, 6], k=3) == [1, 2, 0]
    assert sx.retrieve(u, [0, 42], k=2) == [0, 1]
    assert sx.retrieve(u, [5, 42], k=1) == [0]  # the first question token ("?") is ignored
    with pytest.raises(ValueError, match="k"):
        sx.retrieve(u, [0, 1], k=0)
    with pytest.raises(ValueError, match="unit_tokens"):
        sx.retrieve([], [0, 1])


# ---------------------------------------------------------------------------- reader

def test_reader_batch_rows_end_with_their_question(vocab):
    rs = reports(vocab, n=3)
    batch = sx.reader_batch(rs, vocab, ["raw", "structured", "raw"], k=2)
    rows = [(r, q, a) for r in rs for q, a in zip(r.questions, r.answers)]
    assert batch.ids.shape[0] == len(rows) == len(batch.answers)
    for b, (r, q, a) in enumerate(rows):
        n = int(batch.lengths[b])
        assert batch.ids[b, n - 3:n].tolist() == list(q) and int(batch.answers[b]) == a
        assert (batch.ids[b, n:] == vocab.pad).all()
    with pytest.raises(ValueError, match="fmt"):
        sx.reader_batch(rs, vocab, ["raw"])
    with pytest.raises(ValueError, match="labels"):
        sx.reader_batch(rs, vocab, "structured", labels=[[0]])


def test_answer_logits_do_not_see_right_padding(vocab):
    torch.manual_seed(0)
    model = sx.make_reader(vocab, d_model=32, n_layers=1)
    rs = reports(vocab, n=4)
    batch = sx.reader_batch(rs, vocab, "raw")
    together = sx.answer_logits(model, batch)
    for b in range(len(batch.answers)):
        n = int(batch.lengths[b])
        alone = sx.ReaderBatch(batch.ids[b:b + 1, :n], batch.lengths[b:b + 1], batch.answers[b:b + 1],
                               batch.covered[b:b + 1])
        torch.testing.assert_close(sx.answer_logits(model, alone)[0], together[b], rtol=1e-5, atol=1e-5)
    acc = sx.reader_accuracy(model, batch)
    assert 0.0 <= acc <= 1.0
    assert torch.isfinite(sx.reader_loss(model, batch))


# ---------------------------------------------------------------------------- linker (mini-StruXGPT)

def test_linker_with_one_hot_embeddings_and_identity_links_exactly(vocab):
    """b_s^T W a_e with one-hot token embeddings and W = I counts tokens shared with e's sentences:
    a description ``#i v`` shares only its item with its owner's sentence."""
    linker = sx.Linker(vocab, dim=len(vocab))
    with torch.no_grad():
        linker.embed.weight.copy_(torch.eye(len(vocab)))
        linker.embed.weight[vocab.pad] = 0
        linker.W.copy_(torch.eye(len(vocab)))
    rs = reports(vocab, n=10)
    pred = [linker.predict(r) for r in rs]
    assert sx.label_accuracy(pred, rs) == 1.0
    logits, ents = linker(rs[0])
    assert logits.shape == (len(rs[0].sentences), rs[0].n_entities) and ents == sorted(set(rs[0].labels))


def test_linker_learns_from_zero(vocab):
    torch.manual_seed(0)
    linker = sx.Linker(vocab)
    rs = reports(vocab, n=8)
    before = linker.loss(rs).item()
    assert before == pytest.approx(float(np.mean([np.log(r.n_entities) for r in rs])), rel=1e-5)  # W = 0: uniform
    opt = torch.optim.Adam(linker.parameters(), lr=0.05)
    for _ in range(30):
        loss = linker.loss(rs)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert linker.loss(rs).item() < 0.5 * before
    with pytest.raises(ValueError, match="dim"):
        sx.Linker(vocab, dim=0)


def test_label_accuracy_checks_shapes(vocab):
    rs = reports(vocab, n=2)
    assert sx.label_accuracy([list(r.labels) for r in rs], rs) == 1.0
    with pytest.raises(ValueError, match="one entry per report"):
        sx.label_accuracy([[0]], rs)
    with pytest.raises(ValueError, match="one label per sentence"):
        sx.label_accuracy([[0], [0]], rs)


# ---------------------------------------------------------------------------- views

def test_context_html_and_explorer_build(vocab):
    r = reports(vocab, n=1)[0]
    html = sx.context_html(r, vocab, "structured", question=1)
    for s in r.sentences:
        assert vocab.decode(s) in html
    assert html.count("2px solid") == 1  # one unit in the reader's window
    with pytest.raises(ValueError, match="question"):
        sx.context_html(r, vocab, question=9)
    widget = sx.explorer(sx.make_reader(vocab, d_model=32, n_layers=1), sx.Linker(vocab), vocab)
    assert "reader says" in widget.children[-1].value


def test_shared_values_need_the_chain_and_full_context_batches():
    shared, split = sx.ReportVocab(8, 2, 4), sx.ReportVocab(8, 2, 4, shared_values=False)
    assert shared.value(0, 3) == shared.value(1, 3) and split.value(0, 3) != split.value(1, 3)
    assert len(split) == len(shared) + 4
    rep = sx.make_report(5, shared, np.random.default_rng(0))
    full = sx.reader_batch([rep], shared, "raw", k=None)
    assert bool(full.covered.all())  # the whole context holds every evidence sentence
    ctx = sx.render(rep, shared, "raw")[0]
    assert full.ids[0, :len(ctx)].tolist() == ctx
    with pytest.raises(ValueError, match="k must be"):
        sx.reader_batch([rep], shared, "raw", k=0)
