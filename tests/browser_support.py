"""Headless Chromium for tests: render a local HTML file as a person would see it.

Chromium's own headless commands, no driver package: `--dump-dom` prints the DOM after the
page's scripts ran, `--screenshot` writes a PNG, and `--enable-logging=stderr --v=0` prints
every console message (console.* calls, uncaught exceptions, failed resource loads) as a
line with `:CONSOLE` in it. Every launch gets a new empty profile and the flags that keep
it off the network (no background requests, no component updates, no sync, no QUIC); the
page itself is a file:// URL. A launch that outlives its timeout is killed by its process
group id (the browser's own pid: it is started in a new session), then reaped.

The browser: $EV_CHROMIUM, else `chromium` / `chromium-browser` on PATH, else
/usr/bin/chromium. .ci/run installs Debian's `chromium` package when it is absent and sets
EV_REQUIRE_BROWSER=1, so that CI fails instead of skipping.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--mute-audio",
         "--hide-scrollbars", "--enable-logging=stderr", "--v=0"]
CONSOLE = re.compile(r":CONSOLE(?:\(\d+\)|:\d+)?\] (.*)$")
TIMEOUT = 90


def chromium() -> str:
    for c in (os.environ.get("EV_CHROMIUM"), shutil.which("chromium"),
              shutil.which("chromium-browser"), "/usr/bin/chromium"):
        if c and os.access(c, os.X_OK):
            return c
    if os.environ.get("EV_REQUIRE_BROWSER"):
        pytest.fail("no chromium: install it (apt-get install -y chromium) or set EV_CHROMIUM")
    pytest.skip("no headless chromium here (apt-get install -y chromium); CI installs it")


@dataclass
class Launch:
    returncode: int
    stdout: str
    console: list[str]  # the console messages, in order
    stderr: str


def launch(url: str, *args: str, timeout: float = TIMEOUT) -> Launch:
    """One headless chromium run on url; stopped by its pid if it outlives timeout."""
    with tempfile.TemporaryDirectory(prefix="ev-chromium-") as profile:
        proc = subprocess.Popen([chromium(), *FLAGS, f"--user-data-dir={profile}", *args, url],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the browser and its renderer/zygote children
            proc.communicate()
            raise AssertionError(f"chromium did not finish {url} in {timeout}s") from None
        finally:
            try:  # helpers the browser left behind in its session: same process group
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    console = [m.group(1) for line in err.splitlines() if (m := CONSOLE.search(line))]
    return Launch(proc.returncode, out, console, err)


def dump_dom(page: Path, fragment: str = "") -> Launch:
    """The DOM after the page's scripts ran (stdout), and its console messages."""
    url = page.resolve().as_uri() + (f"#{fragment}" if fragment else "")
    r = launch(url, "--dump-dom", "--virtual-time-budget=5000")
    assert r.returncode == 0, r.stderr[-2000:]
    return r


def screenshot(page: Path, out: Path, width: int = 1280, height: int = 2000) -> Launch:
    r = launch(page.resolve().as_uri(), f"--screenshot={out}", f"--window-size={width},{height}",
               "--virtual-time-budget=5000")
    assert r.returncode == 0 and out.is_file(), r.stderr[-2000:]
    return r


def blank_fraction(png: Path) -> tuple[float, int]:
    """(share of pixels that are the page background colour, number of distinct colours)."""
    from PIL import Image

    img = Image.open(io.BytesIO(png.read_bytes())).convert("RGB")
    colors = img.getcolors(1 << 24) or []
    top = max(colors)[0] if colors else 0
    return top / (img.width * img.height), len(colors)
