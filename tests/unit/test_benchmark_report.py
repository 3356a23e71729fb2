"""The committed benchmark report is what the suite's report code makes of the committed results."""

from __future__ import annotations

from benchmarks import report
from tests.conftest import REPO_ROOT

RESULTS = REPO_ROOT / "docs" / "benchmarks"


def test_committed_markdown_matches_the_committed_results() -> None:
    results = report.load((RESULTS / "suite.json").read_text())
    results["targets"] = report.targets(results)
    assert report.markdown(results) == (RESULTS / "suite.md").read_text()


def test_every_target_is_a_ratio_from_the_run_with_a_verdict() -> None:
    results = report.load((RESULTS / "suite.json").read_text())
    targets = report.targets(results)
    assert len(targets) >= 12
    for target in targets:
        assert target["value"] == target["value"], target  # not NaN: every number was measured
        assert target["goal"].startswith(("<=", ">=", ">"))
        limit = float(target["goal"].split()[-1])
        expected = {
            "<=": target["value"] <= limit,
            ">=": target["value"] >= limit,
            ">": target["value"] > limit,
        }[target["goal"].split()[0]]
        assert target["met"] == expected, target
