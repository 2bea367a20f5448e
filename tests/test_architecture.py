"""The architecture is a checked contract: import-linter's layers (cli > studies > defend > detect > attacks >
metrics > explain > models > data | report > _io > _checks | _rng), independent CLI command groups and no import
cycles between sibling modules (pyproject.toml, [tool.importlinter])."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "3 kept, 0 broken" in proc.stdout, proc.stdout[-2000:]


def test_cli_command_modules_share_only_the_argument_helpers():
    """Each ``advlens.cli`` command module registers its commands through ``add_parsers(sub)``."""
    import advlens.cli as cli

    for group in cli._GROUPS:
        assert callable(group.add_parsers), group.__name__
    names = {a.dest: a for a in cli._parser()._actions}["command"].choices
    assert {"models", "demo", "explain", "attack", "study", "report", "train", "detect", "defend"} <= set(names)


def test_modules_stay_readable_in_one_sitting():
    """One concept per module, under ~400 lines (STYLE.md): a module growing past it is split by concept (as
    the studies' tables and reports were split from what they run)."""
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "advlens").rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 400}
    assert not long, long
