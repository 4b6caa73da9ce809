"""Fetch the VADER movie-review sentences and write them as a CSV for the `text` source.

The sdist of vadersentiment 3.3.2 (MIT) carries `additional_resources/hutto_ICWSM_2014.tar.gz`
with 10,605 sentences from Pang & Lee's movie reviews, each rated by about 20 people from -4 to
+4. The label is the sign of the mean rating (1 positive, 0 negative); the 37 sentences rated
exactly 0 are dropped. pip fetches the sdist (`--no-binary :all:` so the archive is the source
one); nothing is installed.

    .venv/bin/python benchmarks/fetch_reviews.py [--cache DIR]
"""

from __future__ import annotations

import argparse
import csv
import io
import subprocess
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raysift.data.sources import cache_dir  # noqa: E402

PACKAGE = "vadersentiment==3.3.2"
SDIST = "vaderSentiment-3.3.2.tar.gz"
INNER = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
SENTENCES = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
EXPECTED_ROWS, EXPECTED_NEUTRAL = 10605, 37
CSV_NAME = "movie_reviews.csv"


def fetch_reviews(cache: Path | None = None) -> Path:
    """The CSV (id, label, rating, text), made once and kept in `cache`."""
    cache = Path(cache) if cache else cache_dir() / "vader"
    out = cache / CSV_NAME
    if out.exists():
        return out
    cache.mkdir(parents=True, exist_ok=True)
    if not (cache / SDIST).exists():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                ":all:",
                "--quiet",
                PACKAGE,
                "-d",
                str(cache),
            ],
            check=True,
        )
    rows = parse(_sentence_file(cache / SDIST))
    tmp = out.with_suffix(".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "label", "rating", "text"])
        writer.writerows(rows)
    tmp.replace(out)
    return out


def _sentence_file(sdist: Path) -> str:
    with tarfile.open(sdist) as outer:
        inner_bytes = outer.extractfile(INNER).read()
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        return inner.extractfile(SENTENCES).read().decode("utf-8")


def parse(text: str) -> list[tuple[int, int, float, str]]:
    """(id, label, rating, sentence) for every non-neutral line of the tab-separated file
    `id<TAB>mean rating<TAB>sentence`; a file of another shape is an error, not a guess."""
    rows, neutral = [], 0
    lines = text.splitlines()
    for number, line in enumerate(lines, 1):
        parts = line.split("\t")
        if len(parts) != 3:
            raise ValueError(
                f"{SENTENCES} line {number}: expected 3 tab-separated fields, got {len(parts)}"
            )
        rating = float(parts[1])
        if rating == 0:
            neutral += 1
            continue
        rows.append((int(parts[0]), int(rating > 0), rating, parts[2].strip()))
    if (len(lines), neutral) != (EXPECTED_ROWS, EXPECTED_NEUTRAL):
        raise ValueError(
            f"{SENTENCES}: {len(lines)} sentences, {neutral} rated 0; expected "
            f"{EXPECTED_ROWS} and {EXPECTED_NEUTRAL}"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="folder for the sdist and the CSV (default: ~/.cache/raysift/vader)",
    )
    path = fetch_reviews(parser.parse_args().cache)
    with open(path, encoding="utf-8") as f:
        labels = [row["label"] for row in csv.DictReader(f)]
    print(
        f"{path}: {len(labels)} sentences, {labels.count('1')} positive, "
        f"{labels.count('0')} negative"
    )


if __name__ == "__main__":
    main()
