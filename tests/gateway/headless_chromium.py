"""Debian's chromium, headless, driven by Playwright; tests skip with a message without it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

INSTALL_HINT = "apt-get install chromium (.ci/run does)"


@contextmanager
def headless_chromium() -> Iterator[Any]:
    """A Playwright Browser on the system's chromium (Playwright's own download is not used)."""
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.skip(f"no chromium on this machine: {INSTALL_HINT}")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    with sync_api.sync_playwright() as playwright:
        # Root in a container has no user namespaces for chromium's sandbox.
        browser = playwright.chromium.launch(
            executable_path=executable, headless=True, args=["--no-sandbox"]
        )
        try:
            yield browser
        finally:
            browser.close()
