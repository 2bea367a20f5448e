"""``backend="ray"``: a study run as Ray tasks on a local Ray cluster gives the local run's tables."""
from __future__ import annotations

import sys

import pandas as pd
import pytest

from advlens._checks import AdvlensError
from advlens.studies import layer_shift, mod_vid
from advlens.studies.runner import run_study
from advlens.studies.spec import load_spec

ray = pytest.importorskip("ray")
cloudpickle = pytest.importorskip("ray.cloudpickle")


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Bit-identical tables: the workers compute with the study's recorded thread count."""
    pd.testing.assert_frame_equal(a, b, check_exact=True)


class _KillOnce:
    """A unit's work that SIGKILLs its Ray worker the first time it runs (a marker file remembers)."""

    def __init__(self, run, marker: str) -> None:
        self.run, self.marker = run, marker

    def __call__(self, *shared):
        import os
        import signal
        from pathlib import Path

        if not Path(self.marker).exists():
            Path(self.marker).touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return self.run(*shared)


def test_ray_backend_gives_the_local_tables_and_resumes(tmp_path, digits_model, monkeypatch):
    spec = load_spec(preset="seed003", limit=12, batch_size=2, strengths=[0.05, 0.1],
                     models=[{"model": "small_vgg_digits", "data": "digits", "split": "test"}])
    run_study(spec, tmp_path / "local", progress=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    put = []
    monkeypatch.setattr(ray, "put", lambda obj, _put=ray.put: put.append(type(obj).__name__) or _put(obj))
    try:
        report = run_study(spec, tmp_path / "ray", progress=False, backend="ray")
        chunks = sorted((tmp_path / "ray" / "chunks" / "results").glob("*.parquet"))
        assert len(chunks) == 6  # 12 images in chunks of 2: six Ray tasks, more than the 4 kept in flight
        assert sorted(put) == ["ClassifierModel", "ImageBatch"]  # once each, not once per task
        chunks[1].unlink()  # a lost chunk is recomputed on the next run, nothing else
        kept = chunks[0].stat().st_mtime_ns
        run_study(spec, tmp_path / "ray", progress=False, backend="ray")
        assert chunks[1].is_file() and chunks[0].stat().st_mtime_ns == kept
    finally:
        ray.shutdown()
    assert report.is_file()
    for name in ("results", "images"):
        _same(pd.read_parquet(tmp_path / "local" / f"{name}.parquet"), pd.read_parquet(tmp_path / "ray" / f"{name}.parquet"))


def test_units_ship_small_closures_and_share_model_and_images(digits_model):
    """A task pickles only its closure (spec, slice, key); the model and the images travel as shared objects."""
    spec = load_spec(preset="seed003", limit=12, batch_size=4,
                     models=[{"model": "small_vgg_digits", "data": "digits", "split": "test"}])
    units = mod_vid.plan(spec)
    model, _, batch = units[0].shared
    assert len(units) == 3 and all(u.shared[0] is model and u.shared[2] is batch for u in units)
    big = len(cloudpickle.dumps((model, batch)))
    assert all(len(cloudpickle.dumps(u.run)) < min(64_000, big / 10) for u in units)


def test_unknown_backend_fails_clearly(tmp_path):
    with pytest.raises(AdvlensError, match="unknown backend 'dask'"):
        run_study(load_spec(preset="seed003"), tmp_path / "x", backend="dask")


def test_ray_equals_local_bit_for_bit_on_the_default_model_and_survives_a_killed_worker(tmp_path, monkeypatch):
    """seed 000's preset on EfficientNet-Lite0: the Ray tables equal the local ones exactly, also when a worker
    is SIGKILLed mid-study (Ray reruns its task)."""
    spec = load_spec(preset="seed000", limit=2, batch_size=1, strengths=[1.0], seed=11)
    run_study(spec, tmp_path / "local", progress=False)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    real_plan = layer_shift.plan
    marker = tmp_path / "killed-once"
    monkeypatch.setattr(layer_shift, "plan", lambda s: [
        type(u)(u.key, _KillOnce(u.run, str(marker)) if i == 1 else u.run, u.shared) for i, u in enumerate(real_plan(s))])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        run_study(spec, tmp_path / "ray", progress=False, backend="ray")
    finally:
        ray.shutdown()
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert marker.exists()  # a worker was killed, and its task ran again
    for name in ("results", "images"):
        _same(pd.read_parquet(tmp_path / "local" / f"{name}.parquet"), pd.read_parquet(tmp_path / "ray" / f"{name}.parquet"))
