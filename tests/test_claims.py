"""companion.claims: each kind of claim, the control rule, and the ledger round trip."""

from __future__ import annotations

import json

import pytest
import torch

from companion import claims


@pytest.fixture
def ledger_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(claims, "LEDGER_DIR", tmp_path)
    monkeypatch.delenv(claims.RECORD_ENV, raising=False)
    monkeypatch.delenv("BOOK_SEED", raising=False)
    monkeypatch.delenv("BOOK_PROFILE", raising=False)
    return tmp_path


def three(C: claims.ClaimCheck, acc: float = 0.9) -> None:
    C.exact("greedy output identical", True, detail="12 prompts")
    C.empirical("accuracy at 2x length", value=acc, threshold=0.8, source="card", controls={"baseline": 0.5}, paper=0.95)
    C.not_reproduced("paper-scale gain", value=0.01, paper=0.1, why="tiny model.", gpu="BOOK_PROFILE=gpu")


def test_exact_failure_raises_with_the_claim_name():
    C = claims.ClaimCheck("structure/demo")
    with pytest.raises(AssertionError, match="Implementation check failed.*cache equals recompute.*bug"):
        C.exact("cache equals recompute", False, detail="max err 0.3")
    C.exact("tensor bool accepted", torch.tensor(True))
    with pytest.raises(TypeError, match="ok must be a bool"):
        C.exact("a float is not a condition", 0.5)


def test_empirical_needs_method_to_pass_and_every_control_to_fail():
    C = claims.ClaimCheck("structure/demo")
    c = C.empirical("acc", value=0.9, threshold=0.8, source="card", controls={"a": 0.5, "b": 0.79})
    assert c.status == "reproduced at reduced scale" and c.controls == {"a": 0.5, "b": 0.79}
    with pytest.raises(AssertionError, match=r"Claim not reproduced.*acc2.*0\.7.*>= 0\.8.*card"):
        C.empirical("acc2", value=0.7, threshold=0.8, source="card", controls={"a": 0.5})
    with pytest.raises(AssertionError, match=r"no evidence.*acc3.*control 'b'.*0\.85"):
        C.empirical("acc3", value=0.9, threshold=0.8, source="card", controls={"a": 0.5, "b": 0.85})
    C.empirical("error", value=0.01, threshold=0.05, op="<=", source="paper", controls={"base": 0.2})
    with pytest.raises(AssertionError, match="no evidence"):
        C.empirical("error2", value=0.01, threshold=0.05, op="<=", source="paper", controls={"base": 0.05})


def test_empirical_argument_errors():
    C = claims.ClaimCheck("structure/demo")
    with pytest.raises(ValueError, match="controls must map"):
        C.empirical("x", value=1.0, threshold=0.5, source="card", controls={})
    with pytest.raises(ValueError, match="source must say"):
        C.empirical("x", value=1.0, threshold=0.5, source=" ", controls={"a": 0.0})
    with pytest.raises(ValueError, match="op must be one of"):
        C.empirical("x", value=1.0, threshold=0.5, op="=>", source="card", controls={"a": 0.0})
    with pytest.raises(ValueError, match="NaN"):
        C.empirical("x", value=float("nan"), threshold=0.5, source="card", controls={"a": 0.0})
    C.empirical("x", value=torch.tensor(1.0), threshold=0.5, source="card", controls={"a": 0.0})
    with pytest.raises(ValueError, match="used twice"):
        C.empirical("x", value=1.0, threshold=0.5, source="card", controls={"a": 0.0})
    with pytest.raises(ValueError, match="chapter must be"):
        claims.ClaimCheck("pointer-networks")


def test_a_paper_chapter_without_an_empirical_claim_fails_to_close(ledger_dir):
    C = claims.ClaimCheck("structure/demo")
    C.exact("x", True)
    with pytest.raises(AssertionError, match="no empirical claim"):
        C.close()
    K = claims.ClaimCheck("kernels/demo")  # the kernel interlude is not a paper chapter
    K.exact("x", True)
    with pytest.raises(AssertionError, match="no ledger file"):
        K.close()


def test_record_then_check_round_trip(ledger_dir, monkeypatch):
    for seed in (0, 1, 2):
        monkeypatch.setenv("BOOK_SEED", str(seed))
        monkeypatch.setenv(claims.RECORD_ENV, "1")
        C = claims.ClaimCheck("structure/demo")
        three(C, acc=0.9 + seed / 100)
        C.close()
    data = json.loads((ledger_dir / "demo.json").read_text())
    assert [r["seed"] for r in data["runs"]] == [0, 1, 2]
    rows = claims.ledger_rows()
    assert [r["kind"] for r in rows] == ["exact", "empirical", "not reproduced"]
    assert rows[1]["seed 2"] == "0.92" and rows[1]["controls (seed 0)"] == "baseline: 0.5"
    assert "accuracy at 2x length" in claims.ledger_table(html=False)
    # a later run, any seed, must agree on names, kinds and statuses
    monkeypatch.delenv(claims.RECORD_ENV)
    monkeypatch.setenv("BOOK_SEED", "7")
    C = claims.ClaimCheck("structure/demo")
    three(C, acc=0.85)
    C.close()
    C = claims.ClaimCheck("structure/demo")
    C.exact("greedy output identical", True)
    C.empirical("accuracy at 2x length", value=0.9, threshold=0.8, source="card", controls={"baseline": 0.5})
    with pytest.raises(AssertionError, match="disagrees with its ledger.*paper-scale gain"):
        C.close()


def test_an_exact_check_not_run_here_agrees_with_the_ledger_where_it_holds(ledger_dir, monkeypatch):
    monkeypatch.setenv(claims.RECORD_ENV, "1")
    C = claims.ClaimCheck("structure/demo")
    three(C)
    C.close()
    monkeypatch.delenv(claims.RECORD_ENV)
    C = claims.ClaimCheck("structure/demo")  # a machine without the prerequisite (e.g. no triton)
    c = C.not_run("greedy output identical", why="triton is not installed")
    assert c.kind == "exact" and c.status == "not run" and "triton" in c.detail
    C.empirical("accuracy at 2x length", value=0.9, threshold=0.8, source="card", controls={"baseline": 0.5})
    C.not_reproduced("paper-scale gain", value=0.01, why="tiny model.", gpu="BOOK_PROFILE=gpu")
    C.close()
    # "not run" is not a way to drop a claim: another name still disagrees
    C = claims.ClaimCheck("structure/demo")
    C.not_run("some other check", why="triton is not installed")
    C.empirical("accuracy at 2x length", value=0.9, threshold=0.8, source="card", controls={"baseline": 0.5})
    C.not_reproduced("paper-scale gain", value=0.01, why="tiny model.", gpu="BOOK_PROFILE=gpu")
    with pytest.raises(AssertionError, match="disagrees with its ledger"):
        C.close()
    with pytest.raises(ValueError, match="why must say"):
        claims.ClaimCheck("structure/demo").not_run("x", why=" ")


def test_glue_outside_a_notebook_returns_the_value():
    assert claims.glue("x", torch.tensor(0.5)) == 0.5
