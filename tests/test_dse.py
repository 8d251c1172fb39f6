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


# --- the chapter's experiment pieces ---------------------------------------------------------------------------

from companion.data.lexical import Sense  # noqa: E402


def _tiny_thesaurus() -> dict:
    n = lambda *s: (Sense("noun", tuple(s), ()),)  # noqa: E731
    return {"dog": n("hound"), "hound": n("dog"), "cat": n("feline"), "feline": n("cat"), "park": n("garden"),
            "garden": n("park"), "ball": n("sphere"), "sphere": n("ball"), "tree": n()}


def test_paraphrase_pairs_labels_kinds_and_bags_of_words():
    th = _tiny_thesaurus()
    sents = ["the dog saw the cat in the park .", "a ball hit the tree near the cat ."]
    kinds = set()
    for seed in range(20):
        pairs = dse.paraphrase_pairs(sents, th, torch.Generator().manual_seed(seed))
        assert len(pairs) == 4
        for a in sents:
            ps = [p for p in pairs if p.a == a]
            assert sorted(p.label for p in ps) == [0, 1]  # each first sentence once with each label
            paraphrase = next(p for p in ps if p.label == 1)
            for p in ps:
                kinds.add(p.kind)
                assert p.kind in dse.KINDS and p.label == (p.kind == "synonym")
                wa, wb = p.a.split(), p.b.split()
                changed = [i for i, (x, z) in enumerate(zip(wa, wb)) if x != z]
                if p.kind == "synonym":
                    assert len(changed) == 1 and th[wa[changed[0]]][0].synonyms[0] == wb[changed[0]]
                elif p.kind == "replacement":
                    assert len(changed) == 1 and wb[changed[0]] not in th[wa[changed[0]]][0].synonyms
                else:  # the paraphrase's bag of words, in another order
                    assert sorted(wb) == sorted(paraphrase.b.split()) and p.b != paraphrase.b
    assert kinds == set(dse.KINDS)


def _tiny_bert():
    """A 3-layer random BERT (transformers), d = 16."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32)
    return BertModel(cfg).eval()


def test_cached_bottom_plus_top_layers_equals_the_full_encoder_and_padding_does_not_matter():
    model = _tiny_bert()
    ids = torch.tensor([[2, 5, 6, 7, 3], [2, 8, 9, 3, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    with torch.no_grad():
        full = model(**batch, output_hidden_states=True).hidden_states
        h = dse.bottom_states(model, batch, upto=2)
        top = dse.TopLayers(model, 1)(h, mask)
    torch.testing.assert_close(h, full[2])
    torch.testing.assert_close(top[-1][mask.bool()], full[3][mask.bool()])
    # the second sentence alone (no padding) gives the same states as inside the padded batch
    with torch.no_grad():
        alone = dse.bottom_states(model, {k: v[1:, :4] for k, v in batch.items()}, upto=2)
    torch.testing.assert_close(alone[0], h[1, :4])


def test_student_embedding_of_a_sentence_does_not_depend_on_its_partner():
    model = _tiny_bert()
    student = dse.SiameseStudent(model, num_layers=1, num_top=2, fc_dims=(8, 1)).eval()
    assert all(p.requires_grad for p in student.top.parameters())
    g = torch.Generator().manual_seed(1)
    ha, hb1, hb2 = (torch.randn(2, 5, 16, generator=g) for _ in range(3))
    m = torch.ones(2, 5, dtype=torch.long)
    with torch.no_grad():
        e1 = student.embed(torch.cat([ha, hb1]), torch.cat([m, m]))[:2]
        e2 = student.embed(torch.cat([ha, hb2]), torch.cat([m, m]))[:2]
    torch.testing.assert_close(e1, e2)
    assert student(ha, m, hb1, m).shape == (2, 1)
    teacher = dse.CrossEncoder(model, num_layers=1)
    assert teacher(ha, m).shape == (2, 2) and all(p.requires_grad for p in teacher.parameters())


def test_dse_loss_with_unlabelled_rows_uses_the_teacher_only_there():
    s, t = torch.tensor([[0.5], [-1.0], [2.0]]), torch.tensor([[1.5], [0.0], [2.0]])
    y = torch.tensor([1, 0, 0])
    lab = torch.tensor([True, True, False])
    full = dse.dse_loss(s[:2], y[:2], t[:2], alpha=0.5)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(s[:2, 0], y[:2].float())
    mixed = dse.dse_loss(s, y, t, alpha=0.5, labelled=lab)
    torch.testing.assert_close(mixed, 0.5 * bce + 0.5 * ((s - t) ** 2).mean())
    assert torch.equal(dse.dse_loss(s, y, t, alpha=0.0, labelled=torch.ones(3, dtype=torch.bool)),
                       torch.nn.functional.binary_cross_entropy_with_logits(s[:, 0], y.float()))
    assert full.ndim == 0
    with pytest.raises(ValueError, match="labelled"):
        dse.dse_loss(s, y, t, labelled=torch.ones(3))


def test_experiment_arguments_are_checked():
    model = _tiny_bert()
    with pytest.raises(ValueError, match="upto"):
        dse.bottom_states(model, {"input_ids": torch.zeros(1, 2, dtype=torch.long),
                                  "attention_mask": torch.ones(1, 2)}, upto=9)
    with pytest.raises(ValueError, match="num_layers"):
        dse.TopLayers(model, 0)
    with pytest.raises(ValueError, match="num_top"):
        dse.SiameseStudent(model, num_layers=1, num_top=3)
    with pytest.raises(ValueError, match="generator"):
        dse.paraphrase_pairs([], {}, generator=0)
    with pytest.raises(ValueError, match="min_words"):
        dse.corpus_sentences(5, 2)
    with pytest.raises(ValueError, match="partners"):
        dse.cache_states(model, None, ["a"], ["b", "c"], upto=1)


def _tiny_tokenizer(tmp_path):
    from transformers import BertTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "dog", "cat", "saw", "a", "park", "ran", "in", "."]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    return BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"), do_lower_case=True)


def test_all_pairs_scoring_equals_scoring_each_pair_on_its_own(tmp_path):
    model, tok = _tiny_bert(), _tiny_tokenizer(tmp_path)
    torch.manual_seed(0)
    student = dse.SiameseStudent(model, num_layers=1, num_top=2, fc_dims=(8, 1)).eval()
    teacher = dse.CrossEncoder(model, num_layers=1).eval()
    queries, cands = ["the dog saw a cat .", "a cat ran"], ["the dog ran in the park .", "a park", "cat"]
    s = dse.bi_encoder_scores(model, student, tok, queries, cands, upto=2, batch_size=2, chunk=4)
    t = dse.cross_encoder_scores(model, teacher, tok, queries, cands, upto=2, batch_size=4)
    assert s.shape == t.shape == (2, 3)
    with torch.no_grad():
        for i, q in enumerate(queries):
            for j, c in enumerate(cands):
                ca = dse.cache_states(model, tok, [q], upto=2)
                cb = dse.cache_states(model, tok, [c], upto=2)
                torch.testing.assert_close(student(ca.states, ca.mask, cb.states, cb.mask)[0, 0], s[i, j])
                cp = dse.cache_states(model, tok, [q], [c], upto=2)
                torch.testing.assert_close(dse.binary_teacher_target(teacher(cp.states, cp.mask))[0, 0], t[i, j])
    with pytest.raises(ValueError, match="queries and candidates"):
        dse.bi_encoder_scores(model, student, tok, [], cands, upto=2)
