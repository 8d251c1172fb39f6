"""Companion package of the book: shared building blocks and one module per paper.

Layout (mirrors the book's parts):

* :mod:`companion.config`   -- profiles (``ci``/``gpu``), seeds, threads
* :mod:`companion.device`   -- device choice and the environment report
* :mod:`companion.nn`       -- masks, reference attention, positions, transformer blocks, small LMs
* :mod:`companion.kernels`  -- Triton kernels (reference + kernel + dispatch)
* :mod:`companion.train`    -- the one training loop used by every chapter
* :mod:`companion.viz`, :mod:`companion.widgets` -- plots and ipywidgets explorers
* :mod:`companion.models`   -- offline pretrained models (SmolLM2, Gemma-3, MiniLM)
* :mod:`companion.assets`   -- the registry of every model and data set (``python -m companion.assets``)
* :mod:`companion.data`     -- data loaders and the shared text corpus
* ``companion.<part>.<method>`` -- one module per paper
"""

__version__ = "0.1.0"

import os as _os

import torch as _torch

if not _torch.cuda.is_available():
    # Without a GPU, Triton kernels run in Triton's interpreter. The variable must be set before
    # anything imports triton (transformers does, lazily), hence here rather than in kernels/.
    _os.environ.setdefault("TRITON_INTERPRET", "1")
