"""Study folders under faults: locked while written, nothing recorded for a spec that fails, stale
temporaries cleaned, and SIGKILL at any point (also mid-merge) followed by a rerun gives the uninterrupted table."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest
from filelock import FileLock

import advlens as al
from advlens.studies.runner import LOCK, run_study
from advlens.studies.spec import load_spec

SPEC = """
study = "layer_shift"
model = "small_vgg_digits"
data = "digits"
split = "test"
strengths = [0.5, 2]
explainers = ["gradcam"]
metrics = ["cosine"]
batch_size = 2
limit = 8
[attack]
method = "fgsm"
eps = 0.05
"""


@pytest.fixture
def spec_file(tmp_path, digits_model):
    path = tmp_path / "spec.toml"
    path.write_text(SPEC)
    return path


@pytest.fixture
def reference(tmp_path, spec_file) -> pd.DataFrame:
    run_study(load_spec(spec_file), tmp_path / "ref", progress=False)
    return pd.read_parquet(tmp_path / "ref" / "results.parquet")


def _cli(spec_file, out) -> list[str]:
    return [sys.executable, "-m", "advlens.cli", "study", str(spec_file), "--out", str(out), "--quiet"]


def test_a_folder_being_written_is_refused_and_the_lock_dies_with_its_process(tmp_path, spec_file):
    out = tmp_path / "s"
    out.mkdir()
    with FileLock(str(out / LOCK)):  # another run holds the folder
        with pytest.raises(al.AdvlensError, match="being written by another advlens run"):
            run_study(load_spec(spec_file), out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == [LOCK]  # nothing written beside the lock
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from filelock import FileLock
        lock = FileLock({str(out / LOCK)!r})
        lock.acquire()
        print("locked", flush=True)
        time.sleep(600)""")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(al.AdvlensError, match="being written by another advlens run"):
            run_study(load_spec(spec_file), out, progress=False)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    run_study(load_spec(spec_file), out, progress=False)  # the OS released the dead process's lock
    assert (out / "results.parquet").is_file()


def test_a_spec_that_fails_leaves_nothing_and_its_correction_runs_in_the_same_folder(tmp_path, spec_file):
    out = tmp_path / "s"
    bad = load_spec(spec_file, attack={"method": "fgsm", "eps": -1.0})  # refused by the attack, in the first unit
    with pytest.raises(al.AdvlensError, match="eps"):
        run_study(bad, out, progress=False)
    assert not out.exists()  # no spec.json left behind to refuse the corrected spec
    run_study(load_spec(spec_file), out, progress=False)
    assert (out / "results.parquet").is_file()


def test_stale_temporaries_are_removed_on_resume(tmp_path, spec_file, reference):
    out = tmp_path / "ref"
    stale = [out / ".results.parquet.k3j2.tmp", out / "chunks" / "results" / ".00000.parquet.x1.tmp"]
    for p in stale:
        p.write_bytes(b"")  # what a SIGKILL mid-write leaves
    run_study(load_spec(spec_file), out, progress=False)
    assert not any(p.exists() for p in stale)
    pd.testing.assert_frame_equal(pd.read_parquet(out / "results.parquet"), reference)


def test_sigkill_during_the_final_merge_then_rerun_gives_the_table(tmp_path, spec_file, reference):
    out = tmp_path / "merge"
    script = textwrap.dedent(f"""
        import os, signal, sys
        import advlens._io as io
        from advlens.studies import runner
        real = io.atomic_write
        def dying(path, write):
            if str(path).endswith("merge/results.parquet"):  # the merged table: die half-way through writing it
                def half(f):
                    f.write(b"PAR1 half a table")
                    f.flush()
                    os.kill(os.getpid(), signal.SIGKILL)
                return real(path, half)
            return real(path, write)
        runner.write_parquet = lambda df, p: dying(p, lambda f: df.to_parquet(f, engine="pyarrow", index=False))
        from advlens.cli import main
        sys.exit(main(["study", {str(spec_file)!r}, "--out", {str(out)!r}, "--quiet"]))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL
    assert list(out.glob(".results.parquet.*.tmp")) and not (out / "results.parquet").exists()
    assert subprocess.run(_cli(spec_file, out), capture_output=True, timeout=300).returncode == 0
    assert not list(out.rglob("*.tmp"))
    pd.testing.assert_frame_equal(pd.read_parquet(out / "results.parquet"), reference)


def test_sigkill_at_random_points_then_rerun_gives_the_table(tmp_path, spec_file, reference):
    out = tmp_path / "random"
    rng = random.Random(15)
    for _ in range(3):  # three kills at random moments of the same study
        proc = subprocess.Popen(_cli(spec_file, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(2.0, 8.0))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert subprocess.run(_cli(spec_file, out), capture_output=True, timeout=300).returncode == 0
    pd.testing.assert_frame_equal(pd.read_parquet(out / "results.parquet"), reference)
