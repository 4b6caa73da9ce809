"""Job files: defaults, overrides, and each kind of mistake named by its field."""

import pytest

from raysift.config import ConfigError, from_dict, load_job


def test_defaults_and_int_to_float():
    job = from_dict({"strategy": {"initial_ratio": 1}})
    assert job.strategy.initial_ratio == 1.0 and isinstance(job.strategy.initial_ratio, float)
    assert job.train.num_workers == 2


@pytest.mark.parametrize(
    "raw, names",
    [
        ({"strategy": {"hard_per_rnd": 3}}, "strategy.hard_per_rnd"),
        ({"trian": {}}, "trian"),
        ({"train": {"num_workers": "two"}}, "train.num_workers"),
        ({"train": {"use_gpu": "yes"}}, "train.use_gpu"),
        ({"source": {"shape": [1, "a"]}}, "source.shape[1]"),
        ({"strategy": {"initial_ratio": 0}}, "strategy.initial_ratio"),
        ({"strategy": {"initial_ratio": 1.5}}, "strategy.initial_ratio"),
        ({"strategy": {"name": "m3"}}, "strategy.name"),
        ({"strategy": {"reps_dedup": 0}}, "strategy.reps_dedup: got 0.0, expected > 0 or null"),
        (
            {"strategy": {"reps_pick": "core"}},
            "strategy.reps_pick: got 'core', expected one of spread, nearest",
        ),
        ({"train": {"num_workers": 0}}, "train.num_workers"),
        ({"model": {"kwargs": [1]}}, "model.kwargs"),
    ],
)
def test_mistakes_name_the_field(raw, names):
    with pytest.raises(ConfigError, match=names.replace("[", r"\[").replace("]", r"\]")):
        from_dict(raw)


def test_load_job_with_overrides(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("name: x\nstrategy:\n  max_rounds: 5\n")
    job = load_job(path, {"strategy.max_rounds": 2, "train.lr": 0.1})
    assert job.strategy.max_rounds == 2 and job.train.lr == 0.1 and job.name == "x"


def test_missing_job_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_job(tmp_path / "nope.yaml")
