"""docs/tour.md stays true: its ```python blocks run, in order, in one namespace."""

import os
import re

import pytest

from cogcore.cli import DEFAULT_MODEL

TOUR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "tour.md")


@pytest.mark.skipif(not os.path.isdir(DEFAULT_MODEL), reason="the shipped model is not in weights/")
def test_tour_code_blocks_run(tmp_path, monkeypatch):
    with open(TOUR, encoding="utf-8") as f:
        blocks = re.findall(r"^```python\n(.*?)^```$", f.read(), flags=re.S | re.M)
    assert len(blocks) >= 5
    monkeypatch.chdir(tmp_path)                    # the exercise variants are written here
    namespace = {}
    for i, code in enumerate(blocks):
        exec(compile(code, f"docs/tour.md python block {i}", "exec"), namespace)


def test_tour_figures_exist():
    with open(TOUR, encoding="utf-8") as f:
        figures = re.findall(r"\]\((tour/[^)]+\.png)\)", f.read())
    assert figures
    for figure in figures:
        assert os.path.isfile(os.path.join(os.path.dirname(TOUR), figure)), figure


def test_tour_code_excerpts_are_in_the_files_they_quote():
    """Each ```text excerpt follows a line naming `cogcore/...py`; every line of it is in that file."""
    root = os.path.dirname(os.path.dirname(TOUR))
    with open(TOUR, encoding="utf-8") as f:
        excerpts = re.findall(r"`(cogcore/[\w/]+\.py)`[^\n]*\n+```text\n(.*?)^```$", f.read(), flags=re.S | re.M)
    assert len(excerpts) >= 4
    for path, excerpt in excerpts:
        with open(os.path.join(root, path), encoding="utf-8") as f:
            source = {line.strip() for line in f}
        for line in excerpt.strip().splitlines():
            assert line.strip() in source, f"docs/tour.md quotes {path}: {line.strip()!r} is not there"
