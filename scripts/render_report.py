"""Render a report as its reader sees it: report.html in headless Chromium, to a PNG of the first screen and a PDF of
the printed report.

    python scripts/render_report.py runs/demo/report.html                 # -> runs/demo/report.png, report.pdf
    python scripts/render_report.py runs/demo/report.html --width 1280 --height 900

Needs Chromium (Debian: ``apt install chromium``; found as chromium, chromium-browser or google-chrome, or give
--browser). The PNG is the first screen a reader sees (the verdict block must be on it); the PDF shows the print styles
(no table cut across pages).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("html", help="a report.html")
    ap.add_argument("--browser", default=None, help="the Chromium executable (default: the first found on PATH)")
    ap.add_argument("--width", type=int, default=1200)
    ap.add_argument("--height", type=int, default=900, help="the first screen's height in pixels")
    args = ap.parse_args()
    html = Path(args.html).resolve()
    if not html.is_file():
        print(f"render_report: no report at {html}", file=sys.stderr)
        return 2
    browser = args.browser or next((b for b in BROWSERS if shutil.which(b)), None)
    if browser is None:
        print("render_report: no Chromium found; install Debian's package (apt install chromium) or pass --browser",
              file=sys.stderr)
        return 2
    common = [browser, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars"]
    png, pdf = html.with_suffix(".png"), html.with_suffix(".pdf")
    for extra in ([f"--screenshot={png}", f"--window-size={args.width},{args.height}"],
                  [f"--print-to-pdf={pdf}", "--no-pdf-header-footer"]):
        done = subprocess.run([*common, *extra, html.as_uri()], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            print(f"render_report: {browser} failed: {done.stderr.strip()[-300:]}", file=sys.stderr)
            return 1
    print(f"{png} (first screen) and {pdf} (printed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
