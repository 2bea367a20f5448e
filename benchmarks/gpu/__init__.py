"""The GPU benchmark suite's measurement steps (:mod:`.steps`) and its targets and tables (:mod:`.report`);
run by ``benchmarks/gpu_suite.py`` (see ``benchmarks/gpu_suite.sh`` for the device call)."""
