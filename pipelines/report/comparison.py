"""The report of a comparison: a table, accuracy against compute, and the class balance per round.

Everything is rebuilt from the runs' summaries (`comparison.json`) and each run's manifest and
training labels, so `raysift report RUN_DIR` can redo it after a crash or from a notebook.
Figures are built on `matplotlib.figure.Figure` (Agg, no pyplot): headless and no global state.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from raysift.data.ingest import load_info
from raysift.manifest import DROPPED, MANIFEST, read_manifest
from raysift.operators.contract import ID, LABEL, DataError
from raysift.run_state import atomic_write_bytes, compute_totals

COMPARISON = "comparison.json"
REPORT = "comparison.md"
ACCURACY_PNG = "accuracy.png"  # against compute and against wall time
BALANCE_PNG = "class_balance.png"
_NEEDED = (
    "strategy",
    "rounds",
    "subset_size",
    "test_accuracy",
    "test_balanced_accuracy",
    "val_accuracy",
    "train_sample_passes",
    "infer_sample_passes",
    "compute",
    "wall_seconds",
    "per_round",
)
_COMPUTE = "compute (sample-passes: train + infer / 3)"
REACH_POINTS = 0.5  # the "reach" column: within this many points of full's validation accuracy
COMPUTE, SECONDS = "compute", "seconds"  # the two axes a run's validations are placed on


def write_report(root: str | Path, summaries: list[dict]) -> Path:
    """Write the Markdown report and its two plots under `root`; returns the report's path."""
    root = Path(root)
    atomic_write_bytes(root / ACCURACY_PNG, _png(accuracy_figure(summaries)))
    atomic_write_bytes(root / BALANCE_PNG, _png(class_balance_figure(root, summaries)))
    atomic_write_bytes(root / REPORT, markdown(root.name, summaries).encode())
    return root / REPORT


def rebuild_report(root: str | Path) -> tuple[list[dict], Path]:
    """The summaries in `root/comparison.json` and the report rebuilt from them."""
    path = Path(root) / COMPARISON
    if not path.exists():
        raise DataError(f"{path} does not exist: run `raysift compare JOB.yaml` first")
    try:
        summaries = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(summaries, list) or not summaries:
        raise DataError(f"{path}: expected a non-empty list of run summaries")
    for i, s in enumerate(summaries):
        missing = [k for k in _NEEDED if not isinstance(s, dict) or k not in s]
        if missing:
            raise DataError(f"{path}: entry {i} lacks {', '.join(missing)}")
    return summaries, write_report(root, summaries)


def table(summaries: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Header and one row of cells per run. When `full` ran, compute is also given relative to
    it, and `reach` is the compute (relative to full's) at which a run's validation accuracy
    first came within `REACH_POINTS` of full's final one: equal-accuracy cost, "-" if never.
    Validation balanced accuracy shows "-" for runs that predate it."""
    full = next((s for s in summaries if s["strategy"] == "full"), None)
    scale = full["compute"] if full and full["compute"] else None
    target = full["val_accuracy"] - REACH_POINTS / 100 if scale else None
    head = [
        "strategy",
        "rounds",
        "subset",
        "test acc",
        "test bal acc",
        "val acc",
        "val bal acc",
        "train passes",
        "infer passes",
        "compute",
        "vs full",
        "reach",
        "wall s",
        "wall vs full",
        "reach wall",
    ]
    wall = full["wall_seconds"]["total"] if full else None
    rows = []
    for s in summaries:
        reach = reach_wall = None
        if scale:
            reach = compute_to_reach(s, target)
            reach_wall = compute_to_reach(s, target, axis=SECONDS)
        rows.append(
            [
                s["strategy"],
                str(s["rounds"]),
                subset_cell(s),
                _acc(s["test_accuracy"]),
                _acc(s["test_balanced_accuracy"]),
                _acc(s["val_accuracy"]),
                _acc(s.get("val_balanced_accuracy")),
                str(s["train_sample_passes"]),
                str(s["infer_sample_passes"]),
                f"{s['compute']:.0f}",
                f"{s['compute'] / scale:.3f}" if scale else "-",
                "-" if reach is None else f"{reach / scale:.3f}",
                f"{s['wall_seconds']['total']:.0f}",
                f"{s['wall_seconds']['total'] / wall:.2f}" if wall else "-",
                "-" if reach_wall is None or not wall else f"{reach_wall / wall:.2f}",
            ]
        )
    return head, rows


def subset_cell(summary: dict) -> str:
    """The subset's size, and how many of its rows are generated (offline augmentation)."""
    made = summary.get("subset_synthetic", 0)
    size = summary["subset_size"]
    return f"{size} ({size - made} real + {made} synthetic)" if made else str(size)


def saving_sentence(summaries: list[dict]) -> str | None:
    """What M2 reached, at what share of `full`'s compute and of its wall time, and how much
    of both wall times no strategy can save; None unless both ran."""
    by = {s["strategy"]: s for s in summaries}
    if not {"m2", "full"} <= set(by):
        return None
    m2, full = by["m2"], by["full"]
    sentence = (
        f"M2 reached test accuracy {m2['test_accuracy']:.4f} against full's "
        f"{full['test_accuracy']:.4f}, at {m2['compute'] / full['compute']:.0%} of full's "
        f"compute and {m2['wall_seconds']['total'] / full['wall_seconds']['total']:.0%} "
        f"of its wall time."
    )
    outside = [s["wall_seconds"].get("outside_phases") for s in (m2, full)]
    if None in outside:  # a summary from before the runs recorded it
        return sentence
    return sentence + (
        f" Of those wall times, {outside[0]:.0f} s and {outside[1]:.0f} s went to the "
        f"start-up, the ingest and the test, which every strategy pays."
    )


def compute_to_reach(
    summary: dict, target: float, key: str = "val_accuracy", axis: str = COMPUTE
) -> float | None:
    """The cumulative compute (or with `axis` SECONDS the run's wall clock) at the run's first
    validation with `key` >= `target`, or None."""
    return next((at for at, value in curve_points(summary, key, axis) if value >= target), None)


def value_at(summary: dict, compute: float, key: str) -> float | None:
    """`key` at the run's last validation done within `compute` (None before its first): what
    the run had reached for a given spend, for comparisons at equal compute."""
    return next((v for at, v in reversed(curve_points(summary, key)) if at <= compute), None)


def equal_compute_table(summaries: list[dict]) -> tuple[float, list[list[str]]]:
    """The cheapest run's total compute, and per run its validation accuracy and balanced
    accuracy at that spend."""
    budget = min(s["compute"] for s in summaries)
    return budget, [
        [
            s["strategy"],
            _acc(value_at(s, budget, "val_accuracy")),
            _acc(value_at(s, budget, "val_balanced_accuracy")),
        ]
        for s in summaries
    ]


def comparison_table(summaries: list[dict]) -> str:
    """The table as aligned plain text."""
    return aligned(*table(summaries))


def aligned(head: list[str], rows: list[list[str]]) -> str:
    """A table as plain text: the first column left, the numbers right, a rule under the head."""
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def line(cells):
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
        )

    return "\n".join([line(head), "-" * len(line(head)), *map(line, rows)])


def markdown(title: str, summaries: list[dict]) -> str:
    """The report: the table, both plots, and why each run stopped."""
    head, rows = table(summaries)
    stops = [f"- `{s['strategy']}`: {s.get('stop_reason') or '-'}" for s in summaries]
    budget, equal = equal_compute_table(summaries)
    return "\n".join(
        [
            f"# Comparison: {title}",
            "",
            "`test` columns are on the test split, `val` on the validation split at the end; "
            "balanced accuracy (`bal`) is the mean per-class recall. Compute is in sample-passes "
            "(train + infer / 3); `vs full` divides it by the `full` run's. `reach` is the "
            "compute, relative to `full`'s, at which a run's validation accuracy first came "
            f'within {REACH_POINTS} points of `full`\'s final one ("-": never); `reach wall` is '
            "the same on the wall clock, relative to `full`'s total wall seconds. Wall seconds "
            "count the whole run: ingest, start-up, training, scoring, validation and "
            "checkpoints.",
            "",
            *_markdown_table(head, rows),
            "",
            "## At equal compute",
            "",
            f"Each run's last validation within {budget:.0f} sample-passes, the cheapest run's "
            'total ("-": none by then).',
            "",
            *_markdown_table(["strategy", "val acc", "val bal acc"], equal),
            "",
            "## Accuracy against compute and wall time",
            "",
            "Accuracy (left) and balanced accuracy (right), against compute (top) and the run's "
            "wall clock (bottom). Lines: validation as the run went on; stars: the final model on "
            "the test split.",
            "",
            f"![accuracy against compute and wall time]({ACCURACY_PNG})",
            "",
            "## Class balance of each strategy's subset per round",
            "",
            f"![class balance per round]({BALANCE_PNG})",
            "",
            "## Why each run stopped",
            "",
            *stops,
            "",
        ]
    )


def _markdown_table(head: list[str], rows: list[list[str]]) -> list[str]:
    """Lines of a Markdown table: the first column left-aligned, the numbers right."""
    rule = ["---"] + ["---:"] * (len(head) - 1)
    return ["| " + " | ".join(cells) + " |" for cells in [head, rule, *rows]]


def curve_points(
    summary: dict, key: str = "val_accuracy", axis: str = COMPUTE
) -> list[tuple[float, float]]:
    """(cumulative compute, `key`) at each validation: per epoch where a round kept a `curve`,
    else once per round, at the compute that round ended with (its scoring included). With
    `axis` SECONDS, the run's wall clock at each validation instead (start-up included; runs
    from before the clock was kept have no such points)."""
    points, done = [], []
    for record in summary["per_round"]:
        for p in record.get("curve") or [
            {
                **record,
                "val_sample_passes": record["infer_sample_passes"],
                "seconds_at": record.get("seconds_end"),
            }
        ]:
            if p.get(key) is None:
                continue
            if axis == SECONDS:
                if p.get("seconds_at") is not None:
                    points.append((p["seconds_at"], p[key]))
                continue
            at = {
                "train_sample_passes": p["train_sample_passes"],
                "infer_sample_passes": p["val_sample_passes"],
            }
            points.append((compute_totals(done + [at])["compute"], p[key]))
        done.append(record)
    return points


def final_test_marker(label: str) -> Line2D:
    """The legend's entry for the star a panel puts at a run's final test accuracy."""
    return Line2D(
        [],
        [],
        marker="*",
        markersize=11,
        linestyle="none",
        color="gray",
        markeredgecolor="black",
        label=label,
    )


def accuracy_figure(summaries: list[dict]) -> Figure:
    """Accuracy (left) and balanced accuracy (right) against cumulative compute (top) and
    against the run's wall clock (bottom): one line per strategy through its validations (a run
    without balanced values or without a clock has none in those panels), and the final test
    value as a star at the run's total."""
    fig = Figure(figsize=(13, 9.5), layout="constrained")
    panels = fig.subplots(2, 2)
    metrics = (
        ("accuracy", "accuracy", "accuracy"),
        ("balanced_accuracy", "balanced accuracy", "balanced accuracy (mean per-class recall)"),
    )
    axes = (
        (COMPUTE, _COMPUTE, lambda s: s["compute"]),
        (
            SECONDS,
            "wall seconds (the run's clock, start-up included)",
            lambda s: s["wall_seconds"]["total"],
        ),
    )
    for row, (axis, xlabel, total) in zip(panels, axes):
        for ax, (key, label, title) in zip(row, metrics):
            for i, s in enumerate(summaries):
                color = f"C{i}"
                points = curve_points(s, f"val_{key}", axis)
                if points:
                    ax.plot(
                        *zip(*points), marker="o", markersize=3, color=color, label=s["strategy"]
                    )
                ax.scatter(
                    [total(s)],
                    [s[f"test_{key}"]],
                    marker="*",
                    s=160,
                    color=color,
                    edgecolors="black",
                    linewidths=0.5,
                    zorder=3,
                )
            ax.set(title=title, xlabel=xlabel, ylabel=label)
            ax.grid(alpha=0.3)
            if not ax.get_lines():
                ax.text(
                    0.5,
                    0.5,
                    f"no validation {label} in these runs",
                    transform=ax.transAxes,
                    ha="center",
                    color="gray",
                )
    star = final_test_marker("final test")
    panels[0][0].legend(handles=[*panels[0][0].get_lines(), star], loc="lower right")
    return fig


def subset_class_counts(run_dir: str | Path, rounds: list[int]) -> np.ndarray:
    """Rows per class of a run's training subset after each of `rounds` (rounds x classes): the
    manifest ids that joined by then, less those dropped from the pool (never trained on)."""
    run_dir = Path(run_dir)
    if not (run_dir / MANIFEST).exists():
        raise DataError(f"{run_dir}: no {MANIFEST}: did this run start?")
    info = load_info(run_dir / "data")
    manifest = read_manifest(run_dir)
    labels = _labels(run_dir / "data" / "train", manifest["id"], run_dir / MANIFEST)
    joined, kept = manifest["round"], manifest["reason"] != DROPPED
    return np.stack(
        [np.bincount(labels[kept & (joined <= r)], minlength=info.num_classes) for r in rounds]
    )


def class_balance_figure(root: str | Path, summaries: list[dict]) -> Figure:
    """One panel per strategy (titled by it): per round, a bar of its subset stacked by class."""
    ncols = min(3, len(summaries))
    nrows = math.ceil(len(summaries) / ncols)
    fig = Figure(figsize=(4.6 * ncols + 1.6, 3.6 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    names = None
    for ax, s in zip(axes, summaries):
        run_dir = Path(root) / s["strategy"]
        rounds = [r["round"] for r in s["per_round"] if r["phase"] == "round"]
        counts = subset_class_counts(run_dir, rounds)
        names = (
            names
            or load_info(run_dir / "data").class_names
            or [str(c) for c in range(counts.shape[1])]
        )
        colors = _class_colors(counts.shape[1])
        bottom = np.zeros(len(rounds))
        for c in range(counts.shape[1]):
            ax.bar(rounds, counts[:, c], bottom=bottom, color=colors[c], label=names[c], width=0.8)
            bottom += counts[:, c]
        ax.set(title=s["strategy"], xlabel="round", ylabel="samples in the subset", xticks=rounds)
    for ax in axes[len(summaries) :]:
        ax.set_axis_off()
    fig.legend(handles=axes[0].containers, labels=names, title="class", loc="outside right upper")
    return fig


def _labels(folder: Path, ids: np.ndarray, manifest: Path) -> np.ndarray:
    """The labels of `ids` in the training split; reads only the id and label columns."""
    if not any(folder.glob("*.parquet")):
        raise DataError(f"{folder}: no Parquet shards (was the data ingested?)")
    t = pq.read_table(folder, columns=[ID, LABEL])
    order = np.argsort(t[ID].to_numpy())
    train_ids, train_labels = t[ID].to_numpy()[order], t[LABEL].to_numpy()[order]
    pos = np.searchsorted(train_ids, ids)
    found = pos < len(train_ids)
    found[found] = train_ids[pos[found]] == ids[found]
    if not found.all():
        raise DataError(
            f"{manifest}: id {ids[np.argmin(found)]} is not in the training split {folder}"
        )
    return train_labels[pos]


def _class_colors(n: int) -> list:
    """Distinct colors while they last (tab10, tab20), then evenly spaced on viridis."""
    if n <= 20:
        cmap = colormaps["tab10" if n <= 10 else "tab20"]
        return [cmap(c) for c in range(n)]
    return [colormaps["viridis"](c / (n - 1)) for c in range(n)]


def _acc(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()
