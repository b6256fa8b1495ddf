"""Screenshot an HTML page (the rotatable 3-D latent view) with headless Chromium, to check that it renders.

    python tools/screenshot.py runs/default/eval/latent_3d.html                   # writes latent_3d_page.png
    python tools/screenshot.py runs/default/eval/latent_3d.html --out /tmp/page.png

The default name ends in _page.png, so it never takes the name of a figure evaluate.py wrote beside the page
(latent_3d.png is one); an existing file is kept unless --force is given.

Needs Debian's `chromium` package (`apt-get install -y chromium`) or another Chromium / Chrome on PATH.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def find_browser() -> str | None:
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


def output_path(page: str, out: str | None = None, force: bool = False) -> str:
    """The PNG to write for `page`: `out`, else the page's name with _page.png (latent_3d.html ->
    latent_3d_page.png: the page's name with .png was evaluate.py's latent_3d.png, and replaced it). Raises
    UsageError where that file exists and `force` is not set: a screenshot never overwrites a result."""
    from jaxae.config import UsageError

    path = os.path.abspath(out or os.path.splitext(page)[0] + "_page.png")
    if os.path.exists(path) and not force:
        raise UsageError(f"{path} exists: give another --out, or --force to replace it")
    return path


def main(argv=None) -> int:
    from jaxae.config import UsageError

    from jaxae.cli import ArgumentParser  # one-line flag mistakes, as the other scripts
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("page", help="the HTML file to render")
    parser.add_argument("--out", default=None, help="PNG to write (default: the page's name with _page.png, "
                        "e.g. latent_3d_page.png)")
    parser.add_argument("--force", action="store_true", help="replace the PNG if it exists (default: refuse)")
    parser.add_argument("--pin", type=int, default=None, help="test image index to pin, so the screenshot "
                        "shows its tooltip (class, coordinates, thumbnail)")
    parser.add_argument("--size", default="1200,900", help="window width,height in pixels (default 1200,900)")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.page):
        raise UsageError(f"{args.page}: no such file; give the latent_3d.html that evaluate.py wrote")
    out = output_path(args.page, args.out, args.force)
    browser = find_browser()
    if browser is None:
        raise UsageError(f"no headless browser found (looked for {', '.join(BROWSERS)} on PATH): install "
                         f"Debian's chromium with `apt-get install -y chromium`")
    with tempfile.TemporaryDirectory() as profile:  # a throwaway profile: no state shared with a user's browser
        # shot into the profile first, so a failed run leaves a --force'd file as it was and is seen as failed
        shot = os.path.join(profile, "screenshot.png")
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--user-data-dir={profile}", f"--window-size={args.size}", "--virtual-time-budget=10000",
               f"--screenshot={shot}", "file://" + os.path.abspath(args.page)
               + (f"#pin={args.pin}" if args.pin is not None else "")]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0 or not os.path.exists(shot):
            print(f"error: {os.path.basename(browser)} failed (exit {proc.returncode}): "
                  f"{proc.stderr.strip().splitlines()[-1:] or ''}", file=sys.stderr)
            return 1
        shutil.move(shot, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from jaxae.cli import run_main
    run_main(main)
