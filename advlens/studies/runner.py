"""Resumable study runner: a study is a list of units (image chunks), each written atomically.

``run_study`` executes the units a study plans, skipping those whose chunk files already exist,
so a killed run continues where it stopped with no lost or duplicated rows. Every unit writes
its tables to ``DIR/chunks/<table>/<key>.parquet`` (temp file + rename), ``results`` last: a
unit is done exactly when its ``results`` chunk exists. Units are deterministic (their seeds
derive from the spec's seed and the unit's key), so a resumed run equals an uninterrupted one.
At the end the chunks are merged into ``DIR/<table>.parquet`` and the figures and
``report.html`` are built from those files alone (``advlens report DIR`` rebuilds them).

With ``backend="ray"`` the units run as Ray tasks (scale-out over a cluster, one GPU per task on CUDA);
the driver still writes every chunk and merges them in plan order, so the result is the same folder.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from .._checks import AdvlensError, unknown_name
from .._io import (atomic_write, check_not_inside, check_writable, read_manifest, remove_stale_temporaries, versions,
                   write_json, write_parquet)
from ._common import Unit, entries
from .spec import StudySpec, list_studies

__all__ = ["Unit", "run_study", "build_report", "derived_tables", "read_tables", "report_folder", "runtime"]

log = logging.getLogger(__name__)

Tables = dict[str, Any]  # table name -> DataFrame, or "examples" -> dict[str, Tensor]


def _module(study: str):
    return importlib.import_module(f"advlens.studies.{study}")


def _read_spec_file(out: Path, spec: StudySpec) -> dict[str, Any] | None:
    """The folder's ``spec.json`` (None if new); fails if it belongs to a different spec."""
    path = out / "spec.json"
    if not path.exists():
        return None
    try:
        old = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise AdvlensError(f"{path} is corrupt; remove it or use another --out") from None
    if not isinstance(old, dict) or old.get("identity") != json.loads(json.dumps(spec.identity())):
        raise AdvlensError(f"{out} holds results of a different study spec; use another --out folder")
    return old


def _check_out(out: Path, spec: StudySpec) -> None:
    """Before any work: ``out`` is a new or empty folder, or a study folder (``spec.json``), outside the
    inputs and writable. A study never writes into a folder it does not own."""
    if out.exists() and not out.is_dir():
        raise AdvlensError(f"--out {out} is an existing file, not a folder; choose another --out")
    inputs = [p for e in entries(spec) for p in (e.get("data"), e.get("weights")) if isinstance(p, str)]
    check_not_inside(out, [*inputs, *([spec.weights] if spec.weights else [])], "--out")
    if out.is_dir() and any(p.name != LOCK for p in out.iterdir()) and not (out / "spec.json").exists():
        meta = read_manifest(out)
        what = f"holds the output of `advlens {meta.get('command')}`" if meta else "is not empty and not an advlens study folder"
        raise AdvlensError(f"--out {out} {what}; choose a new or empty folder for the study")
    check_writable(out, "--out")


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """Hold ``out/.advlens.lock`` (an OS file lock: released when the process dies) while a run writes
    ``out``; a second run on the same folder is refused with one line. A folder created here is removed
    again if the run fails before writing anything but the lock."""
    from filelock import FileLock, Timeout

    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(out / LOCK), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise AdvlensError(f"--out {out} is being written by another advlens run (lock {out / LOCK}); "
                           f"wait for it to finish or choose another --out") from None
    ok = False
    try:
        yield
        ok = True
    finally:
        lock.release()
        if created and not ok and [p.name for p in out.iterdir()] == [LOCK]:
            (out / LOCK).unlink()
            out.rmdir()


LOCK = ".advlens.lock"


@contextlib.contextmanager
def runtime(threads: int, device: str) -> Iterator[None]:
    """Apply a study's recorded compute settings (restored after): the intra-op thread count, and on CUDA
    cuDNN's deterministic kernels without autotuning, so local, resumed and Ray runs give identical tables."""
    before = (torch.get_num_threads(), torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.set_num_threads(threads)
    if str(device).startswith("cuda"):
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[1:]


def _chunk_size(spec: StudySpec, old: dict[str, Any] | None) -> int:
    """``spec.batch_size``; for ``"auto"`` the size a first run chose (kept in ``spec.json``), else the
    largest power of two whose all-layer pass fits the device's free memory for the first model."""
    if spec.batch_size != "auto":
        return int(spec.batch_size)
    if old is not None and isinstance(old.get("batch_size"), int):
        return old["batch_size"]
    from ..explain.batching import auto_batch_size
    from ._common import entries, load_entry

    model, _ = load_entry(entries(spec)[0], spec, limit=1)
    return auto_batch_size(model, max_batch=256)  # a chunk is also the unit of resuming and progress


BACKENDS = ("local", "ray")


def _execute(units: list[Unit], backend: str, device: str, threads: int) -> Iterator[tuple[Unit, Tables]]:
    """Run ``units`` and yield ``(unit, tables)`` as each finishes: in order (``local``), or as Ray tasks
    (``ray``: one CPU each, one GPU each when the spec's device is CUDA) in the order they complete.
    Every unit runs under :func:`runtime` ``(threads, device)`` wherever it runs."""
    if backend == "local":
        for unit in units:
            yield unit, _run_unit(unit.run, threads, device, *unit.shared)
        return
    import ray

    if not ray.is_initialized():  # RAY_ADDRESS joins a running cluster; without it a local one starts
        ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)
    gpu = str(device).startswith("cuda")
    task = ray.remote(num_cpus=1, num_gpus=1 if gpu else 0)(_run_unit)
    slots = ray.cluster_resources().get("GPU" if gpu else "CPU", 1)
    window = max(2, 2 * int(slots))  # tasks in flight: enough to keep every slot busy, not every chunk pickled at once
    refs: dict[int, Any] = {}  # id(shared object) -> its ObjectRef: each model / image set is put once

    def put(obj: Any) -> Any:
        if obj is None:
            return None
        if id(obj) not in refs:
            refs[id(obj)] = ray.put(obj)
        return refs[id(obj)]

    queue, pending = list(units), {}
    while queue or pending:
        while queue and len(pending) < window:
            unit = queue.pop(0)
            pending[task.remote(unit.run, threads, device, *(put(o) for o in unit.shared))] = unit
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            yield pending.pop(ref), ray.get(ref)


def _run_unit(run: Callable[..., Tables], threads: int, device: str, *shared: Any) -> Tables:
    """A unit's work under the study's :func:`runtime` (in a Ray worker, Ray resolves the shared objects'
    refs); example tensors come back on the CPU."""
    with runtime(threads, device):
        tables = run(*shared)
    if "examples" in tables:
        tables["examples"] = {k: v.detach().cpu() for k, v in tables["examples"].items()}
    return tables


def run_study(spec: StudySpec, out: str | Path, progress: bool = True, backend: str = "local") -> Path:
    """Run (or resume) ``spec`` into ``out``; return the path of ``report.html``.

    Args:
        backend: ``local`` (units one after another in this process) or ``ray`` (units as Ray tasks on the
            cluster at ``$RAY_ADDRESS``, else a local one; the driver writes every chunk, so the folder layout,
            resuming and the merged tables are the same).
    """
    if backend not in BACKENDS:
        raise unknown_name("backend", backend, BACKENDS)
    out = Path(out).expanduser()
    _check_out(out, spec)
    old = _read_spec_file(out, spec) if out.is_dir() else None
    size = _chunk_size(spec, old)
    units = _module(spec.study).plan(spec.model_copy(update={"batch_size": size}))  # validates models/data before writing
    with _locked(out):
        if (_read_spec_file(out, spec) is None) != (old is None):  # another run started the folder meanwhile
            raise AdvlensError(f"--out {out} was started by another advlens run meanwhile; run the command again")
        removed = remove_stale_temporaries(out)  # left by a run killed mid-write
        if removed:
            log.info("removed %d stale temporary files in %s", removed, out)
        threads = old["threads"] if old is not None and isinstance(old.get("threads"), int) else torch.get_num_threads()
        record = None if old is not None else {"spec": spec.to_dict(), "identity": spec.identity(), "batch_size": size,
                                                "threads": threads, "versions": versions()}
        _run_units(out, spec, units, backend, threads, record, progress)
        _merge(out, [u.key for u in units])
        return build_report(out)


def _run_units(out: Path, spec: StudySpec, units: list[Unit], backend: str, threads: int,
               record: dict[str, Any] | None, progress: bool) -> None:
    """Run the units without a ``results`` chunk and write their chunks. A new study's ``record`` becomes
    ``spec.json`` once its first unit succeeded, so a spec that fails is never recorded."""
    chunks = out / "chunks"
    done = {p.stem for p in (chunks / "results").glob("*.parquet")} if chunks.exists() else set()
    todo = [u for u in units if u.key not in done]
    from tqdm.auto import tqdm

    bar = tqdm(total=len(units), initial=len(units) - len(todo), desc=f"study {spec.study}", unit="chunk",
               disable=not progress)
    start = time.perf_counter()
    try:
        for unit, tables in _execute(todo, backend, spec.device, threads):
            bar.set_postfix_str(unit.key)
            if "results" not in tables:
                raise RuntimeError(f"study unit {unit.key} produced no results table")
            if record is not None:
                write_json(record, out / "spec.json")
                record = None
            for name, table in sorted(tables.items(), key=lambda kv: kv[0] == "results"):
                if name == "examples":
                    from safetensors.torch import save

                    data = {k: v.detach().cpu().contiguous() for k, v in table.items()}
                    atomic_write(chunks / "examples" / f"{unit.key}.safetensors", lambda f, d=data: f.write(save(d)))
                else:
                    write_parquet(table, chunks / name / f"{unit.key}.parquet")
            bar.update()
    finally:
        bar.close()
    if record is not None:  # nothing to run (no units)
        write_json(record, out / "spec.json")
    log.info("ran %d of %d units in %.1f s", len(todo), len(units), time.perf_counter() - start)


def _merge(out: Path, keys: list[str]) -> None:
    """Concatenate every table's chunks in plan order into ``out/<table>.parquet``."""
    for folder in sorted(p for p in (out / "chunks").iterdir() if p.is_dir() and p.name != "examples"):
        parts = [pd.read_parquet(folder / f"{k}.parquet") for k in keys if (folder / f"{k}.parquet").exists()]
        if parts:
            write_parquet(pd.concat(parts, ignore_index=True), out / f"{folder.name}.parquet")


def read_tables(out: str | Path) -> tuple[dict[str, Any], dict[str, pd.DataFrame], dict[str, torch.Tensor]]:
    """Read ``spec.json``, every ``<table>.parquet`` and the example maps of a study folder.

    Raises:
        AdvlensError: not a finished study folder, or a file in it that cannot be read (one line naming it).
    """
    out = Path(out)
    if not (out / "spec.json").is_file() or not (out / "results.parquet").is_file():
        raise AdvlensError(f"{out} is not a finished study folder (needs spec.json and results.parquet)")
    try:
        meta = json.loads((out / "spec.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AdvlensError(f"cannot read {out / 'spec.json'}: {type(e).__name__}: {e}") from None
    if not isinstance(meta, dict):
        raise AdvlensError(f"{out / 'spec.json'} is not a study record (a JSON object)")
    if meta.get("study") == "demo":  # the demo before it became a study (no 'spec' record)
        raise AdvlensError(f"{out} was written by an older `advlens demo`; run `advlens demo` into a new folder")
    study = meta.get("spec", {}).get("study") if isinstance(meta.get("spec"), dict) else None
    if study not in list_studies():
        raise unknown_name(f"study in {out / 'spec.json'}:", study, list_studies())
    tables: dict[str, pd.DataFrame] = {}
    for p in sorted(out.glob("*.parquet")):
        try:
            tables[p.stem] = pd.read_parquet(p)
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise AdvlensError(f"cannot read {p}: {type(e).__name__}: {' '.join(str(e).split())[:200]}") from None
    examples: dict[str, torch.Tensor] = {}
    ex_dir = out / "chunks" / "examples"
    if ex_dir.is_dir():
        from safetensors.torch import load_file

        for p in sorted(ex_dir.glob("*.safetensors")):
            try:
                examples.update(load_file(str(p)))
            except Exception as e:  # SafetensorError, OSError
                raise AdvlensError(f"cannot read {p}: {type(e).__name__}: {e}") from None
    return meta, tables, examples


def derived_tables(meta: dict[str, Any], tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The study's derived tables (every number its report shows: compromise probabilities, TPR/AUC per
    strength, MOD/VID, Table 1, ...), computed from the merged tables by the study module's ``derived``."""
    derive = getattr(_module(meta["spec"]["study"]), "derived", None)
    return derive(meta, tables) if derive is not None else {}


def build_report(out: str | Path) -> Path:
    """Write the derived tables as ``<name>.parquet`` beside ``results.parquet``, then rebuild ``figures/``
    and ``report.html`` from the folder's files alone; the report reads the derived tables it shows."""
    out = Path(out)
    meta, tables, examples = read_tables(out)
    for name, df in derived_tables(meta, tables).items():
        write_parquet(df, out / f"{name}.parquet")
        tables[name] = df
    return _module(meta["spec"]["study"]).report(out, meta, tables, examples)


def report_folder(out: str | Path) -> Path:
    """``advlens report DIR``: :func:`build_report` while holding the folder's lock (not during a run)."""
    out = Path(out).expanduser()
    read_tables(out)  # a finished study folder, or one line saying why not
    with _locked(out):
        return build_report(out)
