"""Built-in models: shapes, stages, embeddings, and the user-factory hook."""
import pytest
import torch

from pipelines.config import ConfigError, ModelConfig
from pipelines.models import build_model, embed


@pytest.mark.parametrize("name, shape", [("mlp", (1, 8, 8)), ("cnn1d", (1, 40)),
                                         ("cnn2d", (1, 8, 8)), ("cnn2d", (3, 28, 28))])
def test_built_ins_give_logits_and_embeddings(name, shape):
    model = build_model(ModelConfig(name=name), shape, 7).eval()
    x = torch.randn(5, *shape)
    logits = model(x)
    assert logits.shape == (5, 7)
    h = x
    for stage in model.stages:  # the stages compose to the model
        h = stage(h)
    torch.testing.assert_close(h, logits)
    emb = embed(model, x)
    assert emb.ndim == 2 and len(emb) == 5
    torch.testing.assert_close(model.stages[-1](emb), logits)


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
