"""Words to token ids: the tokenizer and the vocabulary of the `text` source.

The vocabulary is built from the training split alone, so validation and test words the model
never trained on map to <unk> as they would for new text. Ids are stored as float32 in the `x`
tensor (the data contract's dtype; exact for ids below 2**24), and the `textcnn` model turns
them back into integers before its embedding.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np

PAD, UNK = 0, 1
SPECIALS = ("<pad>", "<unk>")
# a word before "n't", "n't", a clitic ('s 're 've 'm 'll 'd), a word, one punctuation mark
_TOKEN = re.compile(r"\w+(?=n't\b)|n't\b|'(?:s|re|ve|m|ll|d)\b|\w+|[^\w\s]")


def tokenize(text: str) -> list[str]:
    """Lower-cased words, clitics split off as the Penn Treebank (and GloVe's vocabulary) does
    ("isn't" -> "is", "n't"; "it's" -> "it", "'s"), and single punctuation marks, which carry
    sentiment too ('!')."""
    return _TOKEN.findall(text.lower())


class Vocabulary:
    """Word <-> id: <pad> is 0, <unk> is 1, then the words, most frequent first."""

    def __init__(self, words: list[str]):
        if tuple(words[:2]) != SPECIALS:
            raise ValueError(f"words: must start with {SPECIALS}, got {words[:2]}")
        self.words = list(words)
        self.index = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def build(cls, counts: Counter, max_size: int, min_count: int = 1) -> "Vocabulary":
        """The `max_size - 2` most frequent words seen at least `min_count` times; ties go to
        the alphabetically first word, so the same counts give the same ids."""
        if max_size < 3:
            raise ValueError(
                f"max_size: must be > 2 (room for <pad>, <unk> and a word), got {max_size}"
            )
        kept = sorted(
            (w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w)
        )
        return cls([*SPECIALS, *kept[: max_size - 2]])

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, texts, max_len: int) -> np.ndarray:
        """(n, max_len) float32 ids: the first max_len tokens of each text, padded with 0."""
        out = np.full((len(texts), max_len), PAD, dtype=np.float32)
        for row, text in enumerate(texts):
            ids = [self.index.get(t, UNK) for t in tokenize(text)[:max_len]]
            out[row, : len(ids)] = ids
        return out

    def save(self, path: str | Path) -> None:
        Path(path).write_text(
            json.dumps({"words": self.words}, ensure_ascii=False), encoding="utf-8"
        )

    @classmethod
    def load(cls, path: str | Path) -> "Vocabulary":
        return cls(json.loads(Path(path).read_text(encoding="utf-8"))["words"])
