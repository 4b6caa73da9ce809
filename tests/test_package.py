"""What `pip install` puts into site-packages: one package, raysift, and nothing named plain
`operators` or `pipelines` that another project's modules could collide with."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_holds_one_raysift_namespace(tmp_path):
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__")
    for folder in ("pipelines", "operators"):
        shutil.copytree(ROOT / folder, src / folder, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
        + ["-w", str(tmp_path / "dist"), str(src)],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("raysift-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {
        "raysift",
        wheel.name.split("-py")[0] + ".dist-info",
    }
    # every module of both folders, under raysift
    expected = {
        "raysift/" + str(p.relative_to(src / "pipelines"))
        for p in (src / "pipelines").rglob("*.py")
    } | {
        "raysift/operators/" + str(p.relative_to(src / "operators"))
        for p in (src / "operators").rglob("*.py")
    }
    assert expected <= set(names)
    assert "raysift/training/saved.py" in expected and "raysift/operators/keys.py" in expected
    entry = zipfile.ZipFile(wheel).read(wheel.name.split("-py")[0] + ".dist-info/entry_points.txt")
    assert b"raysift = raysift.cli:main" in entry
