"""Open advlens reports in headless Chromium (Debian ``chromium``) and count the images that decoded."""
from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

# Injected into a *test copy* of the report only: after `load`, count the images that decoded.
CHECK_JS = (
    "window.addEventListener('load',function(){var n=0;for(var i=0;i<document.images.length;i++){"
    "var im=document.images[i];if(im.complete&&im.naturalWidth>0)n++;}"
    "var d=document.createElement('div');d.id='imgcheck';d.textContent=n+'/'+document.images.length+'/'"
    "+document.querySelectorAll('table').length;document.body.appendChild(d);});"
)


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        pytest.skip("headless Chromium not found on PATH (Debian: apt-get install chromium)")
    return exe


def with_check(report: Path, dest: Path, allow_script: bool = True) -> Path:
    """Copy ``report`` with CHECK_JS appended; allow exactly that script (by hash) in the page's CSP."""
    text = report.read_text(encoding="utf-8")
    if allow_script:
        digest = base64.b64encode(hashlib.sha256(CHECK_JS.encode()).digest()).decode()
        assert "script-src 'none'" in text
        text = text.replace("script-src 'none'", f"script-src 'sha256-{digest}'")
    dest.write_text(text.replace("</body>", f"<script>{CHECK_JS}</script></body>"), encoding="utf-8")
    return dest


def imgcheck(exe: str, page: Path, profile: Path) -> tuple[int, int, int] | None:
    """Open ``page`` in headless Chromium and return (loaded images, images, tables), or None if no result."""
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom", page.resolve().as_uri()]
    env = {**os.environ, "HOME": str(profile)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "</html>" in proc.stdout, proc.stderr[-2000:]
    found = re.search(r'<div id="imgcheck">(\d+)/(\d+)/(\d+)</div>', proc.stdout)
    return None if found is None else tuple(int(g) for g in found.groups())  # type: ignore[return-value]


