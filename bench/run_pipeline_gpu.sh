#!/usr/bin/env bash
# One call on the GPU machine for the classification pipeline: the GPU tests (TESTS, default
# "tests/inference tests/model"), then bench_pipeline and compare_decoders (and profile_pipeline
# with PROFILE=1) for the default ssmamba_tiny and ssmamba_base on one generated 30,000 x 24,000
# slide. Wheels the machine lacks travel in .whl-bench (see docs/benchmarks.md); results go to
# $OUT, the profiler traces as one tarball.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-bench/out}
TESTS=${TESTS:-tests/inference tests/model}
PROFILE=${PROFILE:-0}
mkdir -p "$OUT" /tmp/slides /tmp/traces
# the machine's own pytest and plugins: the carried pytest wheels are for machines without one
ls .whl-bench/*.whl | grep -v -e /pytest- -e /pluggy- -e /iniconfig- \
  | xargs python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site || exit 1
export PYTHONPATH=$PWD/src:/tmp/site
nvidia-smi -L
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
# shellcheck disable=SC2086
PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 timeout 150 python3 -m pytest -p pytest_timeout -p no:cacheprovider \
  -m gpu $TESTS -q -rs 2>&1 | tee "$OUT/gpu_tests.log" | tail -15
start=$(date +%s)
timeout 200 python3 bench/make_big_slide.py /tmp/slides/big.tif --width 30000 --height 24000 2>&1 | tail -1
echo "slide written in $(( $(date +%s) - start )) s"
for arch in ssmamba_tiny ssmamba_base; do
  timeout 150 python3 bench/bench_pipeline.py --slide /tmp/slides/big.tif --arch $arch \
    --out "$OUT/pipeline_$arch.json" --whole-slide --repeats 2 2>&1 | grep -v -e ' round ' -e 'click to result'
  timeout 100 python3 bench/compare_decoders.py /tmp/slides/big.tif --arch $arch \
    --batch-sizes 64,128,256 --out "$OUT/decoders_$arch.json" 2>&1 | tail -4 | cut -c1-600
  if [ "$PROFILE" = 1 ]; then
    timeout 120 python3 bench/profile_pipeline.py /tmp/slides/big.tif --arch $arch \
      --out "$OUT/profile_$arch.json" --traces /tmp/traces/$arch 2>&1 | cut -c1-600
  fi
done
python3 bench/bench_pipeline.py --render "$OUT"/pipeline_*.json
if [ "$PROFILE" = 1 ]; then tar -czf "$OUT/traces.tar.gz" -C /tmp/traces .; fi
ls -la "$OUT"
