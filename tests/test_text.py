"""Text: tokenizer and vocabulary, the `text` source through ingest, and the textcnn model."""

from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from raysift.config import ConfigError, ModelConfig, SourceConfig, from_dict
from raysift.data.ingest import VOCAB, ingest
from raysift.data.text import Vocabulary, tokenize
from raysift.operators.contract import DataError
from raysift.training import word_vectors
from raysift.training.loss import batch_loss
from raysift.training.models import build_model, embed
from raysift.training.word_vectors import align


def shards(folder):
    """(ids, labels, x) of one split's shards, read with pyarrow alone."""
    t = pq.read_table(sorted(str(p) for p in folder.iterdir()))
    x = np.concatenate([c.to_numpy() for c in t.column("x").chunks])
    return t.column("id").to_numpy().tolist(), t.column("label").to_numpy().tolist(), x


def test_tokens_vocabulary_order_and_encoding(tmp_path):
    assert tokenize("It's GREAT, isn't it! We'll") == [
        "it",
        "'s",
        "great",
        ",",
        "is",
        "n't",
        "it",
        "!",
        "we",
        "'ll",
    ]
    counts = Counter({"b": 3, "a": 3, "c": 5, "rare": 1})
    vocab = Vocabulary.build(counts, max_size=5, min_count=2)
    assert vocab.words == ["<pad>", "<unk>", "c", "a", "b"]  # ties: alphabetical
    assert Vocabulary.build(counts, max_size=4).words == ["<pad>", "<unk>", "c", "a"]
    x = vocab.encode(["B c zzz", "a a a a a"], max_len=4)
    assert x.dtype == np.float32
    assert x.tolist() == [[4, 2, 1, 0], [3, 3, 3, 3]]  # unknown -> 1, pad 0, truncated
    vocab.save(tmp_path / "v.json")
    assert Vocabulary.load(tmp_path / "v.json").words == vocab.words
    with pytest.raises(ValueError, match="max_size"):
        Vocabulary.build(counts, max_size=2)


def test_csv_ingest_builds_the_vocabulary_on_train_rows_only(tmp_path):
    (tmp_path / "reviews.csv").write_text(
        "id,label,split,text\n"
        '7,1,train,"Great fun, great cast"\n'
        '3,0,train,"dull and\nlong"\n'  # a newline inside quotes
        '9,0,val,"long dull unseen"\n'
        '4,1,test,"great secret"\n'
    )
    cfg = SourceConfig(kind="text", path=str(tmp_path / "reviews.csv"), max_len=5)
    info = ingest(cfg, 0, tmp_path / "out", chunk_rows=2)

    vocab = Vocabulary.load(tmp_path / "out" / VOCAB)
    assert vocab.words == ["<pad>", "<unk>", "great", ",", "and", "cast", "dull", "fun", "long"]
    assert info.x_shape == (5,) and info.counts == {"train": 2, "val": 1, "test": 1}
    ids, labels, x = shards(tmp_path / "out" / "train")
    assert ids == [7, 3] and labels == [1, 0]
    assert x.tolist() == [[2, 7, 3, 2, 5], [6, 4, 8, 0, 0]]
    assert shards(tmp_path / "out" / "val")[2].tolist() == [[8, 6, 1, 0, 0]]
    assert shards(tmp_path / "out" / "test")[2].tolist() == [[2, 1, 0, 0, 0]]


def test_parquet_text_with_hashed_splits(tmp_path):
    texts = [f"word{i} common" for i in range(30)]
    pq.write_table(
        pa.table({"sentence": texts, "y": [i % 2 for i in range(30)]}), tmp_path / "t.parquet"
    )
    cfg = SourceConfig(
        kind="text",
        path=str(tmp_path),
        text_column="sentence",
        label_column="y",
        max_len=3,
        val_fraction=0.2,
        test_fraction=0.3,
    )
    ingest(cfg, 5, tmp_path / "out", chunk_rows=4)

    train_ids, _, train_x = shards(tmp_path / "out" / "train")
    vocab = Vocabulary.load(tmp_path / "out" / VOCAB)
    assert sorted(vocab.words[2:]) == sorted(["common"] + [f"word{i}" for i in train_ids])
    assert 0 < len(train_ids) < 30
    held_out = (
        shards(tmp_path / "out" / "val")[2].tolist() + shards(tmp_path / "out" / "test")[2].tolist()
    )
    assert held_out == [[1, 2, 0]] * (30 - len(train_ids))  # their own word is unknown
    assert train_x[:, 1].tolist() == [2] * len(train_ids)


def test_text_mistakes_are_named(tmp_path):
    (tmp_path / "a.csv").write_text("label,body\n1,hello\n")
    with pytest.raises(DataError, match="source.text_column"):
        ingest(SourceConfig(kind="text", path=str(tmp_path / "a.csv")), 0, tmp_path / "o1")
    (tmp_path / "b.csv").write_text("label,text\n1,2\n")
    with pytest.raises(DataError, match="source.text_column 'text' must hold strings"):
        ingest(SourceConfig(kind="text", path=str(tmp_path / "b.csv")), 0, tmp_path / "o2")
    pq.write_table(pa.table({"label": [0, 1, 0], "text": ["a", None, "b"]}), tmp_path / "c.parquet")
    with pytest.raises(DataError, match="null.* at row 1"):
        ingest(SourceConfig(kind="text", path=str(tmp_path / "c.parquet")), 0, tmp_path / "o3")
    with pytest.raises(ConfigError, match="source.max_vocab"):
        from_dict({"source": {"kind": "text", "max_vocab": 2}})


def test_textcnn_stages_embedding_and_hidden_layer_mixing():
    job = from_dict(
        {
            "source": {"kind": "text", "path": "x.csv", "max_len": 6, "max_vocab": 50},
            "model": {"name": "textcnn", "kwargs": {"dim": 4, "widths": [2, 3], "channels": 5}},
            "mixup": {"kind": "adversarial", "layer": 1, "gamma": 1.0},
        }
    )
    assert job.model.kwargs["vocab_size"] == 50  # sized from source.max_vocab
    torch.manual_seed(0)
    model = build_model(job.model, (6,), 2).eval()
    x = torch.tensor([[5, 9, 2, 0, 0, 0], [49, 1, 3, 3, 7, 0]], dtype=torch.float32)
    h = model.stages[0](x)
    assert h.shape == (2, 4, 6)
    torch.testing.assert_close(h, model.stages[0].embedding(x.long()).transpose(1, 2))
    assert h[0, :, 3:].abs().sum() == 0  # padding embeds to zero
    assert embed(model, x).shape == (2, 10)
    torch.testing.assert_close(model.stages[2](model.stages[1](h)), model(x))

    model.train()
    loss = batch_loss(model, x, torch.tensor([0, 1]), 2, job, torch.Generator().manual_seed(1))
    loss.backward()
    assert loss.item() > 0 and model.stages[0].embedding.weight.grad[49].abs().sum() > 0


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"mixup": {"kind": "mixup"}}, "mixup.layer: got 0, expected >= 1 for textcnn"),
        (
            {"mixup": {"kind": "cutmix"}},
            "mixup.kind: got 'cutmix', expected mixup, adversarial or moex",
        ),
        ({"augment": {"transforms": [{"name": "noise"}]}}, "augment.transforms: textcnn"),
        (
            {"model": {"name": "textcnn", "kwargs": {"vocab_size": 10}}},
            "model.kwargs.vocab_size: got 10, expected an integer >= source.max_vocab",
        ),
    ],
)
def test_textcnn_job_mistakes_are_named(raw, message):
    base = {
        "source": {"kind": "text", "path": "x.csv", "max_vocab": 100},
        "model": {"name": "textcnn"},
    }
    with pytest.raises(ConfigError, match=message):
        from_dict({**base, **raw})


def test_textcnn_widths_longer_than_the_text_are_named():
    with pytest.raises(ConfigError, match="model.kwargs.widths"):
        build_model(ModelConfig(name="textcnn", kwargs={"vocab_size": 9}), (3,), 2)
    with pytest.raises(ConfigError, match="textcnn needs token ids"):
        build_model(ModelConfig(name="textcnn", kwargs={"vocab_size": 9}), (1, 8), 2)


def test_word_vectors_go_to_the_words_the_table_has():
    table_words = ["the", "good", "bad"]
    table = np.array([[1, 1], [2, 2], [3, 3]], dtype=np.float32)
    vocab = ["<pad>", "<unk>", "bad", "plot", "the"]
    init = -np.ones((5, 2), np.float32)
    matrix, found = align(vocab, table_words, table, init)
    assert found == 2  # <pad> and <unk> never take a table row
    assert matrix.tolist() == [[-1, -1], [-1, -1], [3, 3], [-1, -1], [1, 1]]


def test_textcnn_starts_from_the_vectors_of_its_vocabulary(tmp_path, monkeypatch):
    Vocabulary(["<pad>", "<unk>", "good", "zzz"]).save(tmp_path / "vocab.json")
    table = np.array([[0.5, -0.5, 1.0], [9, 9, 9]], dtype=np.float32)
    monkeypatch.setattr(word_vectors, "load_table", lambda name: (["good", "other"], table))
    kwargs = {
        "vocab_size": 6,
        "word_vectors": "glove-6b-50d",
        "freeze_vectors": True,
        "vocab": str(tmp_path / "vocab.json"),
        "widths": [2],
    }
    model = build_model(ModelConfig(name="textcnn", kwargs=kwargs), (4,), 2)
    weight = model.stages[0].embedding.weight
    assert weight.shape == (6, 3) and not weight.requires_grad  # dim from the table, frozen
    assert weight[2].tolist() == [0.5, -0.5, 1.0] and weight[0].tolist() == [0, 0, 0]
    with pytest.raises(ConfigError, match="model.kwargs.dim: got 8, but glove-6b-50d has 3"):
        build_model(ModelConfig(name="textcnn", kwargs={**kwargs, "dim": 8}), (4,), 2)
    with pytest.raises(ConfigError, match="model.kwargs.vocab: cannot read"):
        build_model(
            ModelConfig(name="textcnn", kwargs={**kwargs, "vocab": "nowhere.json"}), (4,), 2
        )


def test_a_text_job_points_the_vectors_at_its_own_vocabulary(tmp_path):
    job = from_dict(
        {
            "run_dir": str(tmp_path / "run"),
            "source": {"kind": "text", "path": "r.csv"},
            "model": {"name": "textcnn", "kwargs": {"word_vectors": "glove-6b-50d"}},
        }
    )
    assert job.model.kwargs["vocab"] == str((tmp_path / "run" / "data" / "vocab.json").resolve())
