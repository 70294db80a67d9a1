"""Start Debian's Chromium for Playwright, or say why browser tests cannot run here."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

CHROMIUM = os.environ.get("VETINH_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
MEDIA_ARGS = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]


@contextmanager
def chromium(*, media: bool = False) -> Iterator[Any]:
    """Yield a Playwright browser on Debian's Chromium; skip, saying why, when it is missing."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(reason=f"browser tests require Debian's chromium at {CHROMIUM}, which is missing")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS + (MEDIA_ARGS if media else []),
        )
        try:
            yield browser
        finally:
            browser.close()
