"""Exact tests of the DSE student pieces (companion.embeddings.dse)."""

from __future__ import annotations

import pytest
import torch

from companion.embeddings import dse


def test_concat_top_mean_excludes_cls_masks_padding_and_concatenates_the_top_layers():
    g = torch.Generator().manual_seed(0)
    hs = [torch.randn(2, 5, 3, generator=g) for _ in range(4)]
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    e = dse.concat_top_mean(hs, mask, num_top=2)
    assert e.shape == (2, 6)
    torch.testing.assert_close(e[0], torch.cat([hs[2][0, 1:].mean(0), hs[3][0, 1:].mean(0)]))
    torch.testing.assert_close(e[1], torch.cat([hs[2][1, 1:3].mean(0), hs[3][1, 1:3].mean(0)]))


def test_pair_features_and_head_shapes_and_symmetry_of_the_last_two_blocks():
    u, v = torch.randn(3, 4), torch.randn(3, 4)
    f, f_swapped = dse.pair_features(u, v), dse.pair_features(v, u)
    assert f.shape == (3, 16)
    assert torch.equal(f[:, 8:], f_swapped[:, 8:])
    assert dse.PairHead(4, (8, 1))(u, v).shape == (3, 1)


def test_dse_loss_is_the_task_loss_at_alpha_zero_and_the_squared_error_at_alpha_one():
    s, t = torch.tensor([[0.5], [-1.0]]), torch.tensor([[1.5], [0.0]])
    y = torch.tensor([1, 0])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(s[:, 0], y.float())
    assert torch.equal(dse.dse_loss(s, y, t, alpha=0.0), bce)
    torch.testing.assert_close(dse.dse_loss(s, y, t, alpha=1.0), torch.tensor(1.0))
    torch.testing.assert_close(dse.binary_teacher_target(torch.tensor([[0.2, 1.2]])), torch.tensor([[1.0]]))


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="num_top"):
        dse.concat_top_mean([torch.zeros(1, 2, 3)], torch.ones(1, 2), num_top=2)
    with pytest.raises(ValueError, match="u and v"):
        dse.pair_features(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="alpha"):
        dse.dse_loss(torch.zeros(1, 1), torch.zeros(1), torch.zeros(1, 1), alpha=2.0)
    with pytest.raises(ValueError, match="teacher_logits"):
        dse.binary_teacher_target(torch.zeros(2, 3))


# --- teacher, student and scoring on an encoder ------------------------------------------------------------------

from companion.nn.transformer import TinyEncoder, TransformerConfig  # noqa: E402


def test_dse_loss_with_unlabelled_rows_uses_the_teacher_only_there():
    s, t = torch.tensor([[0.5], [-1.0], [2.0]]), torch.tensor([[1.5], [0.0], [2.0]])
    y = torch.tensor([1, 0, 0])
    lab = torch.tensor([True, True, False])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(s[:2, 0], y[:2].float())
    mixed = dse.dse_loss(s, y, t, alpha=0.5, labelled=lab)
    torch.testing.assert_close(mixed, 0.5 * bce + 0.5 * ((s - t) ** 2).mean())
    with pytest.raises(ValueError, match="labelled"):
        dse.dse_loss(s, y, t, labelled=torch.ones(3))


def _tiny_encoder(vocab: int) -> TinyEncoder:
    torch.manual_seed(0)
    return TinyEncoder(TransformerConfig(vocab_size=vocab, d_model=16, n_layers=2, n_heads=2, pos="learned",
                                         max_len=40)).eval()


def test_all_layers_of_the_tiny_encoder_end_with_its_output():
    enc = _tiny_encoder(20)
    ids = torch.randint(20, (2, 7))
    states = enc.hidden(ids, None, None, all_layers=True)
    assert len(states) == 3 and all(h.shape == (2, 7, 16) for h in states)
    torch.testing.assert_close(states[-1], enc(ids))


def test_student_embedding_does_not_depend_on_padding_or_partner_and_teacher_shapes():
    vocab = dse.WordVocab()
    enc = _tiny_encoder(len(vocab))
    student = dse.SiameseStudent(enc, 16, num_top=2, fc_dims=(8, 1)).eval()
    short, long_ = "the judge helped a pilot", "a tall pilot was helped by the quiet judge in the park"
    with torch.no_grad():
        alone = student.embed(vocab([short]))
        padded = student.embed(vocab([short, long_]))[:1]
        logits = student(vocab([short, long_]), vocab([long_, short]))
        pair_logits = dse.CrossEncoder(enc, 16, pool="mean").eval()(vocab([short], [long_]))
    torch.testing.assert_close(alone, padded)
    assert alone.shape == (1, 32) and logits.shape == (2, 1) and pair_logits.shape == (1, 2)


def test_all_pairs_scoring_equals_scoring_each_pair_and_the_uncached_control_gives_the_same_scores():
    vocab = dse.WordVocab()
    enc = _tiny_encoder(len(vocab))
    student = dse.SiameseStudent(enc, 16, num_top=2, fc_dims=(8, 1)).eval()
    teacher = dse.CrossEncoder(enc, 16).eval()
    queries = ["the judge helped a pilot", "a child was called by the farmer today"]
    cands = ["the pilot was helped by a judge", "a farmer called the child", "the singer blamed a calm doctor again"]
    s = dse.bi_encoder_scores(student, vocab, queries, cands, batch_size=2, chunk=4)
    s_nc = dse.bi_encoder_scores(student, vocab, queries, cands, cache=False, batch_size=4)
    t = dse.cross_encoder_scores(teacher, vocab, queries, cands, batch_size=4)
    assert s.shape == t.shape == (6,)
    torch.testing.assert_close(s, s_nc)
    with torch.no_grad():
        for i, q in enumerate(queries):
            for j, c in enumerate(cands):
                torch.testing.assert_close(student(vocab([q]), vocab([c]))[0, 0], s[i * 3 + j])
                torch.testing.assert_close(dse.binary_teacher_target(teacher(vocab([q], [c])))[0, 0], t[i * 3 + j])
    sub = torch.tensor([[1, 2], [0, 0]])
    torch.testing.assert_close(dse.cross_encoder_scores(teacher, vocab, queries, cands, sub), t[[5, 0]])
    with pytest.raises(ValueError, match="queries and candidates"):
        dse.bi_encoder_scores(student, vocab, [], cands)
    with pytest.raises(ValueError, match="pairs"):
        dse.cross_encoder_scores(teacher, vocab, queries, cands, torch.tensor([[2, 0]]))


def _tiny_bert_and_tokenizer(tmp_path):
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "dog", "cat", "saw", "a", "park", "ran", "in", "."]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32)
    return BertModel(cfg).eval(), BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"), do_lower_case=True)


def test_a_transformers_bert_works_through_the_same_scoring(tmp_path):
    model, tok = _tiny_bert_and_tokenizer(tmp_path)
    tokenize = dse.hf_tokenize(tok)
    student = dse.SiameseStudent(model, 16, num_top=4, fc_dims=(8, 1)).eval()
    queries, cands = ["the dog saw a cat .", "a cat ran"], ["the dog ran in the park .", "a park", "cat"]
    s = dse.bi_encoder_scores(student, tokenize, queries, cands, batch_size=2)
    torch.testing.assert_close(s, dse.bi_encoder_scores(student, tokenize, queries, cands, cache=False))
    with torch.no_grad():
        states = dse.layer_states(model, tokenize(queries))
    assert len(states) == 4 and states[0].shape[-1] == 16
    teacher = dse.CrossEncoder(model, 16).eval()
    assert dse.cross_encoder_scores(teacher, tokenize, queries, cands).shape == (6,)
    with pytest.raises(ValueError, match="max_length"):
        dse.hf_tokenize(tok, max_length=1)


# --- the synthetic task -------------------------------------------------------------------------------------------

def _triple(sentence: str) -> tuple[str, str, str]:
    """(agent, verb, object) read back from a grammar sentence."""
    w = sentence.split()
    v = next(i for i, x in enumerate(w) if x in dse.VERBS)
    before = [x for x in w[:v] if x in dse.ENTITIES]
    after = [x for x in w[v:] if x in dse.ENTITIES]
    assert len(before) == len(after) == 1
    return (after[0], w[v], before[0]) if w[v - 1] == "was" else (before[0], w[v], after[0])


def test_pairs_are_paraphrases_iff_they_state_the_same_triple_and_negatives_are_what_their_kind_says():
    pairs = dse.make_pairs(400, torch.Generator().manual_seed(0))
    assert {p.kind for p in pairs} == set(dse.KINDS)
    assert 0.4 < sum(p.label for p in pairs) / len(pairs) < 0.6
    voices = set()
    for p in pairs:
        ta, tb = _triple(p.a), _triple(p.b)
        assert p.label == (ta == tb) == (p.kind == "paraphrase")
        voices.add("was" in p.a.split())
        if p.kind == "role swap":
            assert tb == (ta[2], ta[1], ta[0])
        elif p.kind != "paraphrase":
            slot = ("other agent", "other verb", "other object").index(p.kind)
            assert tb[slot] != ta[slot] and all(tb[k] == ta[k] for k in range(3) if k != slot)
            assert tb[0] != tb[2]
    assert voices == {True, False}
    assert dse.make_pairs(5, torch.Generator().manual_seed(3)) == dse.make_pairs(5, torch.Generator().manual_seed(3))


def test_word_vocab_and_mlm_loss():
    vocab = dse.WordVocab()
    b = vocab(["the judge helped a pilot"], ["a pilot"])
    assert b["input_ids"][0].tolist()[:2] == [vocab.cls, vocab.stoi["the"]]
    assert b["input_ids"][0].tolist().count(vocab.sep) == 2 and bool(b["attention_mask"].all())
    b = vocab(["the judge", "a tall pilot was helped by the judge"])
    assert b["attention_mask"].sum(1).tolist() == [4, 10] and int(b["input_ids"][0, -1]) == vocab.pad
    enc = _tiny_encoder(len(vocab))
    tgt = torch.full_like(b["input_ids"], -100)
    tgt[1, 2] = int(b["input_ids"][1, 2])
    loss = dse.mlm_loss(enc, (b["input_ids"], b["attention_mask"], tgt))
    assert loss.ndim == 0 and loss > 0
    with pytest.raises(ValueError, match="outside the vocabulary"):
        vocab(["the unicorn"])
    with pytest.raises(ValueError, match="partners"):
        vocab(["the judge"], [])


def test_experiment_arguments_are_checked():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="generator"):
        dse.make_pairs(3, generator=0)
    with pytest.raises(ValueError, match="p_swap"):
        dse.make_pairs(3, g, p_swap=2.0)
    with pytest.raises(ValueError, match="agent"):
        dse.realise(0, 99, 1, g)
    with pytest.raises(ValueError, match="pool"):
        dse.CrossEncoder(_tiny_encoder(10), 16, pool="max")
    with pytest.raises(ValueError, match="input_ids"):
        dse.layer_states(_tiny_encoder(10), {"input_ids": torch.zeros(1, 2, dtype=torch.long)})
