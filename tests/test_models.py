"""Built-in models: shapes, stages, embeddings, and the user-factory hook."""

import pytest
import torch

from raysift.config import ConfigError, ModelConfig
from raysift.training.models import build_model, embed


@pytest.mark.parametrize(
    "name, shape",
    [("mlp", (1, 8, 8)), ("cnn1d", (1, 40)), ("cnn2d", (1, 8, 8)), ("cnn2d", (3, 28, 28))],
)
def test_built_ins_give_logits_and_embeddings(name, shape):
    model = build_model(ModelConfig(name=name), shape, 7).eval()
    x = torch.randn(5, *shape)
    logits = model(x)
    assert logits.shape == (5, 7)
    emb = embed(model, x)
    head = model.stages[-1]  # the classifier head reads the embedding, one row per sample
    assert isinstance(head, torch.nn.Linear) and emb.shape == (5, head.in_features)
    torch.testing.assert_close(head(emb), logits)
    # In eval mode a sample's embedding and logits depend on that sample alone.
    torch.testing.assert_close(embed(model, x[3:4]), emb[3:4])
    torch.testing.assert_close(model(x[3:4]), logits[3:4])


def tiny_factory(input_shape, num_classes, width=3):
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(input_shape[-1], num_classes))


def test_user_factory_and_its_errors():
    model = build_model(ModelConfig(name="test_models:tiny_factory"), (1, 4), 2)
    assert model(torch.zeros(3, 1, 4)).shape == (3, 2)
    assert embed(model, torch.zeros(3, 1, 4)).shape == (3, 2)  # no stages: logits
    with pytest.raises(ConfigError, match="model.name"):
        build_model(ModelConfig(name="nowhere.module:fn"), (1, 4), 2)
    with pytest.raises(ConfigError, match="model.kwargs"):
        build_model(ModelConfig(name="test_models:tiny_factory", kwargs={"depth": 2}), (1, 4), 2)
    with pytest.raises(ConfigError, match="cnn1d needs"):
        build_model(ModelConfig(name="cnn1d"), (1, 8, 8), 2)
    with pytest.raises(ConfigError, match="unknown model"):
        build_model(ModelConfig(name="resnet"), (1, 8, 8), 2)
