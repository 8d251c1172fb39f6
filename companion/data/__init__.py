"""Real data sets for the chapters, read from installed packages or from files shipped here.

Every loader reads local files only (see :mod:`companion.assets` for provenance, licences and
checksums); a missing package raises :class:`companion.assets.AssetMissingError` naming the
install step.

=====================================  ==============================================================
loader                                 returns
=====================================  ==============================================================
:func:`movielens_100k`                 :class:`MovieLens` of DataFrames: 100,000 ratings, 943 users,
                                       1,682 items
:func:`wordnet`                        :class:`WordNet`: 117,659 synsets (lemmas, hypernyms, definitions)
:func:`thesaurus`, :func:`synonym_pairs`  synonym lists for en, de, fr, es, ru, sv
:func:`wordsim353`, :func:`simlex999`  lists of :class:`WordPair` (word1, word2, human score 0-10)
:func:`google_analogies`               list of :class:`Analogy` (section, a, b, c, d)
:func:`lee_corpus`, :func:`lee_similarity`  news documents; 50 x 50 human similarity matrix
:func:`wikipedia_sample`               106 Wikipedia articles, markup stripped
:func:`pang_lee_polarity`              200 movie-review sentences with polarity labels (100 / 100)
:func:`text_corpus`                    the book's clean English LM corpus (train/valid) as one str
:func:`corpus_tokenizer`, :func:`encode_corpus`  byte / BPE / GPT-2 tokenizer; corpus as a LongTensor
:func:`gpt2_tokenizer`                 GPT-2's BPE as a ``transformers`` tokenizer
:func:`humaneval`                      164 HumanEval problems (dicts)
:func:`word_frequencies`               the n most frequent words of a language with frequencies
:func:`dependency_parse`, :func:`silver_treebank`  spaCy (en_core_web_sm) dependency parses
=====================================  ==============================================================
"""

from .code_tasks import humaneval
from .corpus import (CorpusTokenizer, corpus_documents, corpus_tokenizer, encode_corpus, gpt2_tokenizer,
                     text_corpus)
from .gensim_data import (Analogy, Article, WordPair, google_analogies, lee_corpus, lee_similarity, pang_lee_polarity,
                          simlex999, strip_wiki_markup, wikipedia_sample, wordsim353)
from .lexical import Sense, Synset, WordNet, synonym_pairs, thesaurus, word_frequencies, wordnet
from .movielens import MovieLens, movielens_100k
from .parses import Parse, dependency_parse, silver_treebank

__all__ = [
    "Analogy", "Article", "CorpusTokenizer", "MovieLens", "Parse", "Sense", "Synset", "WordNet", "WordPair",
    "corpus_documents",
    "corpus_tokenizer", "dependency_parse", "encode_corpus", "google_analogies", "gpt2_tokenizer", "humaneval",
    "lee_corpus", "lee_similarity", "movielens_100k", "pang_lee_polarity", "silver_treebank", "simlex999",
    "strip_wiki_markup", "synonym_pairs", "text_corpus", "thesaurus", "wikipedia_sample", "word_frequencies", "wordnet", "wordsim353",
]
