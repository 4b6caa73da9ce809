"""The README and docs/ link only to files inside the repository, and those links resolve.

docs/methods.md names the code of each method by link, so a moved module shows up here.
"""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def heading_anchors(text: str) -> set[str]:
    """The anchors a Markdown renderer (GitHub's rule) gives the headings of `text`."""
    anchors, seen = set(), {}
    for line in text.splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return anchors


def test_heading_anchors_follow_the_renderer():
    text = (
        "# M1, InfoBatch and `raysift compare` (issue 4)\n## A person's check\n## A person's check"
    )
    assert heading_anchors(text) == {
        "m1-infobatch-and-raysift-compare-issue-4",
        "a-persons-check",
        "a-persons-check-1",
    }


def test_docs_exist_and_the_readme_links_them():
    readme = (ROOT / "README.md").read_text()
    for page in ("docs/methods.md", "docs/data.md"):
        assert (ROOT / page).is_file()
        assert f"]({page})" in readme


def test_every_link_resolves_inside_the_repository():
    problems = []
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            path, _, anchor = target.partition("#")
            if re.match(r"[a-z]+:", target):
                problems.append(f"{page.name}: {target} leaves the repository")
                continue
            dest = (page.parent / path).resolve() if path else page
            if not dest.is_relative_to(ROOT) or not dest.exists():
                problems.append(f"{page.name}: {target} is not a file of the repository")
            elif anchor and anchor not in heading_anchors(dest.read_text()):
                problems.append(f"{page.name}: {path or page.name} has no heading #{anchor}")
    assert problems == []


def test_nothing_points_outside_the_repository():
    outside = re.compile(r"\.\./shared|METHODS\.md|DESIGN\.md")
    assert [p.name for p in PAGES if outside.search(p.read_text())] == []
