#!/usr/bin/env bash
# One call on the GPU machine for the classification pipeline: the GPU tests, then bench_pipeline
# (ssmamba_base and the default ssmamba_tiny) on one generated 30,000 x 24,000 slide.
# Wheels the machine lacks travel in .whl-bench (see docs/benchmarks.md); results go to $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-bench/out}
mkdir -p "$OUT" /tmp/slides
# the machine's own pytest and plugins: the carried pytest wheels are for machines without one
ls .whl-bench/*.whl | grep -v -e /pytest- -e /pluggy- -e /iniconfig- \
  | xargs python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site || exit 1
export PYTHONPATH=$PWD/src:/tmp/site
nvidia-smi -L
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 timeout 150 python3 -m pytest -p pytest_timeout -p no:cacheprovider \
  -m gpu tests/inference tests/model -q -rs 2>&1 | tee "$OUT/gpu_tests.log" | tail -15
start=$(date +%s)
timeout 200 python3 bench/make_big_slide.py /tmp/slides/big.tif --width 30000 --height 24000 2>&1 | tail -1
echo "slide written in $(( $(date +%s) - start )) s"
for arch in ssmamba_base ssmamba_tiny; do
  timeout 150 python3 bench/bench_pipeline.py --slide /tmp/slides/big.tif --arch $arch \
    --out "$OUT/pipeline_$arch.json" --whole-slide --repeats 2 2>&1 | tee "$OUT/pipeline_$arch.log" | tail -4
done
python3 bench/bench_pipeline.py --render "$OUT"/pipeline_*.json
timeout 90 python3 bench/profile_pipeline.py /tmp/slides/big.tif --out "$OUT/profile_ssmamba_base.json" 2>&1 | tail -30
