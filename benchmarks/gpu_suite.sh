#!/usr/bin/env bash
# GPU benchmark suite (issue 20): every speed / memory target in ONE call of at most 8 minutes; everything
# lands in $OUT: gpu_suite.json, gpu_suite.md (paste-ready table), gpu_suite.log (3 files).
# See benchmarks/README.md and `python benchmarks/gpu_suite.py --help` for the steps.
#
# 1. Prepare HERE (a machine with pip and network), once, in the repo root (build/ is git-ignored):
#
#      bash benchmarks/gpu_suite.sh --prepare
#
#    It builds build/gpu/wheels (~10 MB: what advlens and the anchors need beyond the GPU image's packages,
#    pinned below; pure-Python ones with `pip wheel --no-deps`, the two compiled ones downloaded for CPython
#    3.12 manylinux x86_64) and build/gpu/home (the trained digits VGG that onepixel and detect load, so the
#    device does not train it). Nothing is downloaded on the device: it has no network.
#
# 2. Run on the device (the `run` tool; ~8 min of the 15-minute device budget, plus the machine's start):
#
#      run(command="bash benchmarks/gpu_suite.sh", carry=["build/gpu"], timeout_s=540)
#
#    then read $OUT's files where the tool puts them (files_at). Extra arguments go to gpu_suite.py, e.g.
#    `bash benchmarks/gpu_suite.sh --only gradcam,pgd` or `--set study_images=1000 --budget 500`.
#
# Here, on a CPU: `bash benchmarks/gpu_suite.sh --smoke` (tiny sizes, steps in one process, OUT defaults to
# build/gpu-suite-out) and `bash benchmarks/gpu_suite.sh --plan` (steps and caps, runs nothing).
set -u -o pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
PREP=build/gpu
# Versions pinned to the project's tested environment (pyproject's test extras); one version of each.
PURE="grad-cam==1.5.7 ttach==0.0.3 torchattacks==3.5.1 kornia==0.9.0 zennit==0.5.1 pydantic==2.14.4
      annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0"
COMPILED="kornia_rs==0.2.0 pydantic-core==2.50.5"

if [ "${1:-}" = "--prepare" ]; then
  set -e
  mkdir -p "$PREP/wheels" "$PREP/home/models"
  # shellcheck disable=SC2086
  "$PYTHON" -m pip wheel -q --no-deps -w "$PREP/wheels" $PURE
  # shellcheck disable=SC2086
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$PREP/wheels" $COMPILED
  # the trained digits VGG: copied from this machine's advlens cache when there, else trained (~1 min)
  cp -n "${ADVLENS_HOME:-$HOME/.cache/advlens}"/models/small_vgg-*-digits-seed0.safetensors "$PREP/home/models/" \
    2>/dev/null || true
  ADVLENS_HOME="$PREP/home" "$PYTHON" -c "import advlens as al; al.load_model('small_vgg_digits')"
  ls -l "$PREP/wheels" "$PREP/home/models"
  du -sh "$PREP"
  exit 0
fi

export OUT="${OUT:-$PWD/build/gpu-suite-out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
NEEDED="import pytorch_grad_cam, torchattacks, kornia, zennit, pydantic"
if ! "$PYTHON" -c "$NEEDED" 2>/dev/null && compgen -G "$PREP/wheels/*.whl" >/dev/null; then
  # the device: install the carried wheels (no index, no network) where the packages are missing
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$PREP"/wheels/*.whl && export PYTHONPATH="/tmp/site:$PYTHONPATH" \
    || echo "gpu_suite.sh: wheel install failed; steps that need those packages will fail" >&2
fi
if [ -d "$PREP/home" ]; then  # a writable copy of the carried advlens cache (trained digits VGG)
  mkdir -p /tmp/advlens-home && cp -r "$PREP/home/." /tmp/advlens-home/ && export ADVLENS_HOME=/tmp/advlens-home
fi
# The steps' budget (gpu_suite.py --budget, 420 s) plus install and report stay under 8 minutes; this outer
# limit only guards against a hang outside the steps (results are written after every step).
timeout -k 5 450 "$PYTHON" benchmarks/gpu_suite.py --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_suite.log"
