"""benchmarks/gpu_session.sh --smoke runs end to end on CPU (interpreter, tiny sizes), so the one
script a GPU lease runs is known to work before the lease starts."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_session_smoke(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    res = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_session.sh"), str(tmp_path), "--smoke"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    check = json.loads((tmp_path / "check.json").read_text())
    assert check["results"] and not check["failures"]
    bench = json.loads(next(tmp_path.glob("attention-*.json")).read_text())
    assert {r["mask"] for r in bench["results"]} == {"causal", "prefix", "sliding", "set", "tree"}
    assert {r["impl"] for r in bench["results"]} >= {"ours", "sdpa"}
    assert all(r["max_abs_err_vs_sdpa"] < 1e-4 for r in bench["results"])
    assert next(tmp_path.glob("attention-*.png")).stat().st_size > 0
    assert "check rc=0, benchmark rc=0" in (tmp_path / "session.log").read_text()
