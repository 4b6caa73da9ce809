"""Built-in classifiers and the user-factory hook.

Every built-in model is a stack of `stages` (an nn.ModuleList): forward applies them in order,
the output of the first k stages is the hidden representation at layer k (what adversarial
mixup interpolates), and the input of the last stage is the embedding the scorer returns.
"""

from __future__ import annotations

import importlib
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from raysift.config import ConfigError, ModelConfig


class Staged(nn.Module):
    """A classifier made of stages; the last stage maps the embedding to logits."""

    def __init__(self, stages: list[nn.Module]):
        super().__init__()
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return x

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages[:-1]:
            x = stage(x)
        return x.flatten(1)


def mlp(input_shape, num_classes: int, hidden=(256, 128)) -> Staged:
    widths = [math.prod(input_shape), *hidden]
    stages = [nn.Flatten()]
    for a, b in zip(widths, widths[1:]):
        stages.append(nn.Sequential(nn.Linear(a, b), nn.ReLU()))
    return Staged([*stages, nn.Linear(widths[-1], num_classes)])


def _conv_block(conv, channels: int, dims: int) -> nn.Sequential:
    norm = nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d
    return nn.Sequential(conv, norm(channels), nn.ReLU())


def cnn1d(input_shape, num_classes: int, channels: int = 32, hidden: int = 128) -> Staged:
    """Four convolutions (three of stride 2), then a dense layer: position-aware, for signals."""
    in_ch, length = input_shape
    c = channels
    stages = [
        _conv_block(nn.Conv1d(in_ch, c, 5, padding=2), c, 1),
        _conv_block(nn.Conv1d(c, c, 5, stride=2, padding=2), c, 1),
        _conv_block(nn.Conv1d(c, c, 3, stride=2, padding=1), c, 1),
        _conv_block(nn.Conv1d(c, c, 3, stride=2, padding=1), c, 1),
    ]
    out_len = length
    for _ in range(3):
        out_len = (out_len + 1) // 2
    stages.append(nn.Sequential(nn.Flatten(), nn.Linear(c * out_len, hidden), nn.ReLU()))
    return Staged([*stages, nn.Linear(hidden, num_classes)])


def cnn2d(input_shape, num_classes: int, channels: int = 32, hidden: int = 128) -> Staged:
    """Three 3x3 convolution blocks with pooling, then a dense layer: for small images."""
    in_ch, h, w = input_shape
    c = channels
    stages = [
        _conv_block(nn.Conv2d(in_ch, c, 3, padding=1), c, 2),
        nn.Sequential(_conv_block(nn.Conv2d(c, 2 * c, 3, padding=1), 2 * c, 2), nn.MaxPool2d(2)),
        nn.Sequential(
            _conv_block(nn.Conv2d(2 * c, 2 * c, 3, padding=1), 2 * c, 2),
            nn.AdaptiveAvgPool2d((max(1, h // 4), max(1, w // 4))),
        ),
        nn.Sequential(
            nn.Flatten(), nn.Linear(2 * c * max(1, h // 4) * max(1, w // 4), hidden), nn.ReLU()
        ),
    ]
    return Staged([*stages, nn.Linear(hidden, num_classes)])


class TokenEmbedding(nn.Module):
    """Token ids -> word vectors (N, dim, L). The ids arrive as float32, the data contract's
    dtype (exact below 2**24), and are cast back to integers here; id 0 (padding) stays zero."""

    def __init__(self, vocab_size: int, dim: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding(x.long()).transpose(1, 2)


class ConvMaxPool(nn.Module):
    """Parallel 1-D convolutions of several widths over the word vectors, each max-pooled over
    time: one feature per filter, whatever the sentence length."""

    def __init__(self, dim: int, widths, channels: int):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(dim, channels, w) for w in widths)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.cat([F.relu(conv(h)).amax(dim=2) for conv in self.convs], dim=1)


def textcnn(
    input_shape,
    num_classes: int,
    vocab_size: int,
    dim: int | None = None,
    widths=(3, 4, 5),
    channels: int = 64,
    dropout: float = 0.5,
    word_vectors: str | None = None,
    vocab: str | None = None,
    freeze_vectors: bool = False,
) -> Staged:
    """Kim's sentence CNN on (L,) token ids. Stages: 0 embedding, 1 convolutions and max-pool,
    2 dropout and the dense layer; mixing at layer 1 mixes word vectors, at 2 pooled features.

    `word_vectors` ('glove-6b-50d') starts the embedding from pretrained vectors for the words of
    `vocab` (the run's vocab.json; set by the job for a text source) and `dim` is theirs; the
    other words start random at the vectors' scale. `freeze_vectors` keeps them fixed (Kim's
    CNN-static)."""
    (length,) = input_shape
    widths = list(widths)
    if not 1 <= vocab_size <= 2**24:
        raise ConfigError(
            f"model.kwargs.vocab_size: got {vocab_size}, expected in [1, 2**24] "
            f"(float32 holds the token ids exactly up to 2**24)"
        )
    if not widths or any(not 1 <= w <= length for w in widths):
        raise ConfigError(
            f"model.kwargs.widths: got {widths}, expected widths in [1, {length}] "
            f"(the token length)"
        )
    if not 0 <= dropout < 1:
        raise ConfigError(f"model.kwargs.dropout: got {dropout}, expected in [0, 1)")
    if word_vectors is None:
        embedding = TokenEmbedding(vocab_size, dim or 64)
    else:
        embedding = _pretrained_embedding(vocab_size, dim, word_vectors, vocab, freeze_vectors)
    dim = embedding.embedding.embedding_dim
    return Staged(
        [
            embedding,
            ConvMaxPool(dim, widths, channels),
            nn.Sequential(nn.Dropout(dropout), nn.Linear(len(widths) * channels, num_classes)),
        ]
    )


def _pretrained_embedding(
    vocab_size: int, dim: int | None, name: str, vocab: str | None, freeze: bool
) -> TokenEmbedding:
    from raysift.data.text import Vocabulary
    from raysift.training.word_vectors import align, load_table

    if vocab is None:
        raise ConfigError(
            "model.kwargs.vocab: word_vectors needs the run's vocab.json (a job "
            "with a text source sets it)"
        )
    words, table = load_table(name)
    if dim not in (None, table.shape[1]):
        raise ConfigError(
            f"model.kwargs.dim: got {dim}, but {name} has {table.shape[1]} dimensions"
        )
    try:
        vocab_words = Vocabulary.load(vocab).words
    except (OSError, ValueError, KeyError) as err:
        raise ConfigError(f"model.kwargs.vocab: cannot read {vocab}: {err}") from None
    if len(vocab_words) > vocab_size:
        raise ConfigError(
            f"model.kwargs.vocab_size: got {vocab_size}, but {vocab} holds {len(vocab_words)} words"
        )
    embedding = TokenEmbedding(vocab_size, table.shape[1])
    weight = embedding.embedding.weight
    init = weight.detach()[: len(vocab_words)].numpy() * float(np.std(table[:10000]))
    matrix, _ = align(vocab_words, words, table, init)
    with torch.no_grad():
        weight[: len(vocab_words)] = torch.from_numpy(matrix)
        weight[0] = 0  # <pad>
    weight.requires_grad_(not freeze)
    return embedding


BUILT_IN = {"mlp": mlp, "cnn1d": cnn1d, "cnn2d": cnn2d, "textcnn": textcnn}


def build_model(cfg: ModelConfig, input_shape, num_classes: int) -> nn.Module:
    """A built-in by name, or a user factory
    `package.module:function(input_shape, num_classes, **kwargs)`."""
    if cfg.name in BUILT_IN:
        factory = BUILT_IN[cfg.name]
    elif ":" in cfg.name:
        module_name, _, attr = cfg.name.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise ConfigError(f"model.name: cannot load factory '{cfg.name}': {err}") from err
    else:
        raise ConfigError(
            f"model.name: unknown model '{cfg.name}' "
            f"(built-in: {', '.join(BUILT_IN)}; or package.module:function)"
        )
    dims = len(input_shape)
    if cfg.name == "cnn1d" and dims != 2:
        raise ConfigError(
            f"model.name: cnn1d needs features of shape (C, L), got {tuple(input_shape)}"
        )
    if cfg.name == "cnn2d" and dims != 3:
        raise ConfigError(
            f"model.name: cnn2d needs features of shape (C, H, W), got {tuple(input_shape)}"
        )
    if cfg.name == "textcnn" and dims != 1:
        raise ConfigError(
            f"model.name: textcnn needs token ids of shape (L,), got {tuple(input_shape)}"
        )
    try:
        model = factory(tuple(input_shape), num_classes, **cfg.kwargs)
    except TypeError as err:
        raise ConfigError(f"model.kwargs: {err}") from err
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"model.name: '{cfg.name}' returned {type(model).__name__}, not a torch nn.Module"
        )
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper, or the model itself."""
    return getattr(model, "module", model)


def embed(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's embedding when it has one (built-ins do), else its logits."""
    model = unwrap(model)
    return model.embed(x) if hasattr(model, "embed") else model(x)
