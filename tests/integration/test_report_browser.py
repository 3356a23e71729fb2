"""The evaluation report opened in a real headless Chromium: every image loads, no errors, nothing fetched.

Needs Chromium (``make test`` installs it with apt-get where it runs as root). Without it the tests skip,
except with CI=true, where they fail.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.browser import PageReport, chromium_binary, open_page
from tests.unit.test_report import build_inputs, report, subset

NO_CHROMIUM = "Chromium is not installed: `make test` installs it (apt-get install chromium) where it runs as root"
TITLE = "Brick <PaDiM> & friends"


def require_chromium() -> str:
    """The Chromium binary; skips without one, except with CI=true, where the test fails."""
    binary = chromium_binary()
    if binary is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(NO_CHROMIUM)
        pytest.skip(NO_CHROMIUM)
    return binary


def assert_clean(page: PageReport) -> None:
    assert page.console_errors == ()
    assert page.console_warnings == ()
    assert page.exceptions == ()
    assert page.log_errors == ()


def test_the_report_loads_completely_without_errors(tmp_path: Path) -> None:
    chromium = require_chromium()
    html = report(build_inputs(tmp_path / "images"), tmp_path / "report.html", title=TITLE)
    page = open_page(tmp_path / "report.html", binary=chromium)
    assert page.image_count == html.count("<img") > 0
    assert page.unloaded_images == 0
    assert_clean(page)
    assert page.title == TITLE
    assert page.text_length > 1000


def test_a_report_of_good_images_only_without_masks_or_a_readable_image_loads_too(tmp_path: Path) -> None:
    chromium = require_chromium()
    inputs = build_inputs(tmp_path / "images")
    good = ~inputs.predictions.labels
    paths = tuple(p for p, keep in zip(inputs.predictions.paths, good, strict=True) if keep)
    degenerate = subset(inputs, good, masks=None, paths=(str(tmp_path / "missing.png"), *paths[1:]))
    html = report(degenerate, tmp_path / "report.html", title=TITLE)
    assert "image unreadable: grey placeholder" in html and "no mask" in html
    page = open_page(tmp_path / "report.html", binary=chromium)
    assert page.image_count == html.count("<img") > 0
    assert page.unloaded_images == 0
    assert_clean(page)


def test_the_harness_sees_a_broken_image_and_a_console_error(tmp_path: Path) -> None:
    chromium = require_chromium()
    broken = tmp_path / "broken.html"
    broken.write_text(
        "<!DOCTYPE html><html><head><title>broken</title></head><body><p>text</p>"
        '<img src="data:image/png;base64,AAAA"><script>console.error("boom")</script></body></html>'
    )
    page = open_page(broken, binary=chromium)
    assert (page.image_count, page.unloaded_images) == (1, 1)
    assert page.console_errors == ("boom",)
    assert page.title == "broken"


def test_the_harness_sees_a_corrupt_report_image_and_a_blocked_fetch(tmp_path: Path) -> None:
    chromium = require_chromium()
    html = report(build_inputs(tmp_path / "images"), tmp_path / "report.html", title=TITLE)
    marker = 'src="data:image/png;base64,'
    start = html.index(marker) + len(marker)
    corrupt = html[:start] + "AAAA" + html[start + 4 :]  # the PNG signature's first bytes
    corrupt = corrupt.replace("</body>", '<img src="https://example.invalid/x.png"></body>')
    (tmp_path / "corrupt.html").write_text(corrupt, encoding="utf-8")
    page = open_page(tmp_path / "corrupt.html", binary=chromium)
    assert page.image_count == html.count("<img") + 1
    assert page.unloaded_images == 2
    assert len(page.log_errors) == 1 and "Content Security Policy" in page.log_errors[0]
