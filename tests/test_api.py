"""The notebook API: jobs from files or dicts, checked as the CLI checks them, and comparisons
read back as DataFrames keyed by strategy and seed. (A real run's tables: test_rounds.py.)"""

import json

import pytest
from test_report import _fake_run
from test_seed_report import SUMMARIES

import raysift
from raysift.config import ConfigError
from raysift.job import compare as compare_module

DEMO = "configs/demo_mnist1d.yaml"


def test_the_package_names_its_api_and_loads_it_on_first_use():
    assert set(raysift.__all__) == {"load_job", "run", "compare", "Run", "Comparison"}
    assert raysift.load_job.__module__ == "raysift.api"
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        raysift.nothing  # noqa: B018


def test_load_job_from_a_file_or_a_dict_with_dotted_overrides():
    from_file = raysift.load_job(DEMO, {"strategy.max_rounds": 3, "train.lr": 0.5})
    assert (from_file.strategy.max_rounds, from_file.train.lr) == (3, 0.5)
    sections = {"name": "nb", "strategy": {"name": "random"}}
    job = raysift.load_job(sections, {"strategy.initial_ratio": 0.2, "source.kind": "digits"})
    assert (job.name, job.strategy.name, job.strategy.initial_ratio) == ("nb", "random", 0.2)
    assert job.source.kind == "digits"
    assert sections == {"name": "nb", "strategy": {"name": "random"}}  # the caller's dict as given


@pytest.mark.parametrize(
    "sections, field",
    [
        ({"strategy": {"norm": "l7"}}, r"strategy.norm: got 'l7', expected one of pixel_"),
        ({"augment": {"transforms": [{"name": "spin"}]}}, r"augment.transforms\[0\].name"),
        ({"strategy": {"epochs": -1}}, r"strategy.epochs: got -1"),
        ({"strategy": {"colour": 1}}, r"unknown key 'strategy.colour'"),
    ],
)
def test_load_job_names_the_bad_field_as_the_cli_does(sections, field):
    """Names only the implementations list (norm kinds, transforms) are checked here too."""
    with pytest.raises(ConfigError, match=field):
        raysift.load_job(sections)


def test_compare_reads_every_run_back_keyed_by_strategy_and_seed(tmp_path, monkeypatch):
    def fake_run_job(job, **_):
        summary = next(
            s for s in SUMMARIES if s["seed"] == job.seed and s["strategy"] == job.strategy.name
        )
        run_dir = tmp_path / job.run_dir
        _fake_run(run_dir, job.strategy.name)
        (run_dir / "summary.json").write_text(json.dumps(summary))
        (run_dir / "rounds.json").write_text(json.dumps(summary["per_round"]))
        return summary

    monkeypatch.setattr(compare_module, "run_job", fake_run_job)
    monkeypatch.setattr(compare_module, "init_ray", lambda: None)  # no Ray: the runs are fakes
    monkeypatch.chdir(tmp_path)
    job = raysift.load_job({"seed": 9, "run_dir": "cmp"})
    cmp = raysift.compare(job, ["full", "m2"], seeds=[0, 2])

    summary = cmp.summary
    assert list(summary.columns[:2]) == ["strategy", "seed"]
    assert list(zip(summary["strategy"], summary["seed"])) == [
        ("full", 0),
        ("m2", 0),
        ("full", 2),
        ("m2", 2),
    ]
    assert list(summary["test_accuracy"]) == [0.90, 0.89, 0.70, 0.68]
    assert list(summary["wall_seconds.total"]) == [50, 20, 40, 20]
    assert "per_round" not in summary.columns
    rounds = cmp.rounds
    assert len(rounds) == 4 and list(rounds["train_sample_passes"]) == [100, 30, 100, 40]
    assert cmp.run("m2", seed=2).summary_dict["test_accuracy"] == 0.68
    assert cmp.report.name == "comparison.md" and cmp.report.is_file()
    with pytest.raises(KeyError, match="no run of 'm2', seed 1"):
        cmp.run("m2", seed=1)
    assert raysift.Comparison.load("cmp").runs.keys() == cmp.runs.keys()


def test_a_folder_without_a_finished_run_is_named(tmp_path):
    with pytest.raises(Exception, match=f"{tmp_path}/summary.json does not exist"):
        raysift.Run.load(tmp_path)
    with pytest.raises(Exception, match="no comparison.json or seeds.json"):
        raysift.Comparison.load(tmp_path)
