"""Debian's Chromium as the status-page test and benchmark drive it, through Playwright."""

CHROMIUM = "/usr/bin/chromium"
# Without these, Chromium on a closed network waits on services it cannot reach.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
