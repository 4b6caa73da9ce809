"""The report of a comparison over several seeds: each strategy's mean ± std, and bands.

One seed's numbers are within run-to-run noise of the target (the demo's M2 met the 0.5-point
bar on some runs and missed it on others), so `raysift compare --seeds 0,1,2` runs every
strategy once per seed and this module puts the seeds together. Ratios against `full` are taken
per seed, against that seed's `full` (same data split, same start), and then averaged. Built from
the runs' summaries tagged with their `seed` (`seeds.json`), so `raysift report RUN_DIR`
rebuilds it.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from raysift.operators.contract import DataError
from raysift.report.comparison import (
    COMPUTE,
    REACH_POINTS,
    SECONDS,
    _markdown_table,
    _png,
    aligned,
    compute_to_reach,
    curve_points,
    final_test_marker,
)
from raysift.run_state import atomic_write_bytes

SEEDS_JSON = "seeds.json"
SEEDS_REPORT = "comparison.md"
SEEDS_PNG = "accuracy.png"
_GRID = 60  # points of the common axis a band is drawn on


@dataclass
class Spread:
    """A quantity over the seeds that have it: mean, sample std (0 for one seed), how many."""

    mean: float | None
    std: float | None
    n: int
    of: int  # seeds the strategy ran with

    def format(self, digits: int) -> str:
        if self.mean is None:
            return "-"
        text = f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"
        return text if self.n == self.of else f"{text} ({self.n}/{self.of})"


def spread(values: list, of: int | None = None) -> Spread:
    """The mean and sample standard deviation of the values that are not None."""
    got = [float(v) for v in values if v is not None]
    of = len(values) if of is None else of
    if not got:
        return Spread(None, None, 0, of)
    return Spread(
        statistics.fmean(got), statistics.stdev(got) if len(got) > 1 else 0.0, len(got), of
    )


def by_strategy(summaries: list[dict]) -> dict[str, dict[int, dict]]:
    """strategy -> seed -> summary, strategies in the order they first appear."""
    out: dict[str, dict[int, dict]] = {}
    for s in summaries:
        out.setdefault(s["strategy"], {})[s["seed"]] = s
    return out


def per_seed(summary: dict, full: dict | None) -> dict:
    """One run's numbers, with its ratios against `full` of the same seed (None without it):
    compute and wall time, the compute and wall time to come within REACH_POINTS of full's
    validation accuracy (None: never), and test accuracy less full's, in points."""
    out = {
        "test_accuracy": summary["test_accuracy"],
        "test_balanced_accuracy": summary["test_balanced_accuracy"],
        "val_accuracy": summary["val_accuracy"],
        "compute": summary["compute"],
        "wall": summary["wall_seconds"]["total"],
        "compute_ratio": None,
        "wall_ratio": None,
        "reach": None,
        "reach_wall": None,
        "points_vs_full": None,
    }
    if full is None or not full["compute"]:
        return out
    target = full["val_accuracy"] - REACH_POINTS / 100
    reach = compute_to_reach(summary, target)
    reach_wall = compute_to_reach(summary, target, axis=SECONDS)
    wall = full["wall_seconds"]["total"]
    out.update(
        compute_ratio=summary["compute"] / full["compute"],
        wall_ratio=out["wall"] / wall if wall else None,
        reach=None if reach is None else reach / full["compute"],
        reach_wall=None if reach_wall is None or not wall else reach_wall / wall,
        points_vs_full=100 * (summary["test_accuracy"] - full["test_accuracy"]),
    )
    return out


# (column, per_seed key, digits)
COLUMNS = (
    ("test acc", "test_accuracy", 4),
    ("test bal acc", "test_balanced_accuracy", 4),
    ("val acc", "val_accuracy", 4),
    ("points vs full", "points_vs_full", 2),
    ("compute vs full", "compute_ratio", 3),
    ("reach", "reach", 3),
    ("wall vs full", "wall_ratio", 2),
    ("reach wall", "reach_wall", 2),
)


@dataclass
class StrategySeeds:
    """One strategy over its seeds."""

    seeds: list[int]
    spreads: dict[str, Spread]  # per_seed key -> its spread over the seeds
    worst_points: float | None  # the lowest seed's test accuracy less its full's, in points


def aggregate(summaries: list[dict]) -> dict[str, StrategySeeds]:
    """strategy -> its seeds put together, in the order the strategies first appear."""
    groups = by_strategy(summaries)
    fulls = groups.get("full", {})
    out = {}
    for name, seeds in groups.items():
        rows = [per_seed(s, fulls.get(seed)) for seed, s in seeds.items()]
        points = [r["points_vs_full"] for r in rows if r["points_vs_full"] is not None]
        out[name] = StrategySeeds(
            list(seeds),
            {key: spread([r[key] for r in rows]) for _, key, _ in COLUMNS},
            min(points) if points else None,
        )
    return out


def seeds_table(summaries: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Header and one row per strategy: its seeds, then mean ± std of each column."""
    head = ["strategy", "seeds", *(c for c, _, _ in COLUMNS), "worst seed vs full"]
    rows = [
        [
            name,
            ",".join(map(str, agg.seeds)),
            *(agg.spreads[key].format(d) for _, key, d in COLUMNS),
            "-" if agg.worst_points is None else f"{agg.worst_points:.2f}",
        ]
        for name, agg in aggregate(summaries).items()
    ]
    return head, rows


def seeds_text(summaries: list[dict]) -> str:
    return aligned(*seeds_table(summaries))


def seeds_markdown(title: str, summaries: list[dict]) -> str:
    head, rows = seeds_table(summaries)
    seeds = sorted({s["seed"] for s in summaries})
    return "\n".join(
        [
            f"# Comparison over seeds {', '.join(map(str, seeds))}: {title}",
            "",
            'Each cell is the mean ± sample standard deviation over the seeds ("(k/n)": only k of '
            "the n seeds have a value, e.g. reached the target). Ratios are taken against `full` "
            "of the same seed, then averaged. `points vs full`: test accuracy less `full`'s, in "
            f"points; `worst seed vs full` the lowest of them. `reach`: the compute, relative to "
            f"`full`'s, at which validation accuracy first came within {REACH_POINTS} points of "
            "`full`'s final one; `reach wall` the same on the wall clock. Each seed's own report "
            "is in `seed<k>/comparison.md`.",
            "",
            *_markdown_table(head, rows),
            "",
            "## Accuracy against compute and wall time",
            "",
            "The mean over the seeds (line) and ± one standard deviation (band), on the span every "
            "seed's curve covers (thin lines: each seed, where the spans do not overlap); stars: "
            "the mean final test value at the mean total.",
            "",
            f"![accuracy over seeds]({SEEDS_PNG})",
            "",
        ]
    )


def band(
    curves: list[list[tuple[float, float]]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(x, mean, std) of the seeds' curves, each interpolated linearly onto a common grid over
    the span they all cover; None when a seed has no points or the spans do not overlap."""
    if not curves or any(len(c) == 0 for c in curves):
        return None
    lo = max(c[0][0] for c in curves)
    hi = min(c[-1][0] for c in curves)
    if lo > hi:
        return None
    x = np.linspace(lo, hi, _GRID) if hi > lo else np.array([lo])
    ys = np.stack([np.interp(x, *map(np.asarray, zip(*c))) for c in curves])
    return x, ys.mean(0), ys.std(0, ddof=1) if len(curves) > 1 else np.zeros(len(x))


def seeds_figure(summaries: list[dict]) -> Figure:
    """Accuracy (left) and balanced accuracy (right) against compute (top) and wall seconds
    (bottom): per strategy the seeds' mean curve with a ± std band, the mean test value a star."""
    fig = Figure(figsize=(13, 9.5), layout="constrained")
    panels = fig.subplots(2, 2)
    groups = by_strategy(summaries)
    axes = (
        (COMPUTE, "compute (sample-passes: train + infer / 3)", lambda s: s["compute"]),
        (
            SECONDS,
            "wall seconds (the run's clock, start-up included)",
            lambda s: s["wall_seconds"]["total"],
        ),
    )
    for row, (axis, xlabel, total) in zip(panels, axes):
        for ax, key in zip(row, ("accuracy", "balanced_accuracy")):
            for i, (name, seeds) in enumerate(groups.items()):
                runs = list(seeds.values())
                curves = [curve_points(s, f"val_{key}", axis) for s in runs]
                got = band(curves)
                if got is not None:
                    x, mean, std = got
                    ax.plot(x, mean, color=f"C{i}", label=name)
                    ax.fill_between(
                        x, mean - std, mean + std, color=f"C{i}", alpha=0.2, linewidth=0
                    )
                else:  # spans that do not overlap (wall clocks of unequal runs): each seed
                    for j, c in enumerate(c for c in curves if c):
                        ax.plot(
                            *zip(*c),
                            color=f"C{i}",
                            alpha=0.6,
                            linewidth=1,
                            label=name if j == 0 else "_nolegend_",
                        )
                ax.scatter(
                    [statistics.fmean(total(s) for s in runs)],
                    [statistics.fmean(s[f"test_{key}"] for s in runs)],
                    marker="*",
                    s=160,
                    color=f"C{i}",
                    edgecolors="black",
                    linewidths=0.5,
                    zorder=3,
                )
            ax.set(title=key.replace("_", " "), xlabel=xlabel, ylabel=key.replace("_", " "))
            ax.grid(alpha=0.3)
    star = final_test_marker("mean final test")
    lines = [line for line in panels[0][0].get_lines() if not line.get_label().startswith("_")]
    panels[0][0].legend(handles=[*lines, star], loc="lower right")
    return fig


def write_seeds_report(root: str | Path, summaries: list[dict]) -> Path:
    root = Path(root)
    atomic_write_bytes(root / SEEDS_PNG, _png(seeds_figure(summaries)))
    atomic_write_bytes(root / SEEDS_REPORT, seeds_markdown(root.name, summaries).encode())
    return root / SEEDS_REPORT


def rebuild_seeds_report(root: str | Path) -> tuple[list[dict], Path]:
    path = Path(root) / SEEDS_JSON
    try:
        summaries = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: cannot read the seeds' summaries ({err})") from None
    if (
        not isinstance(summaries, list)
        or not summaries
        or not all(isinstance(s, dict) and "seed" in s and "strategy" in s for s in summaries)
    ):
        raise DataError(f"{path}: expected a non-empty list of run summaries with a seed each")
    return summaries, write_seeds_report(root, summaries)
