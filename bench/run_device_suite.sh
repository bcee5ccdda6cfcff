#!/usr/bin/env bash
# One call on the GPU machine: pipeline, batch and training benchmarks side by side on one generated
# slide. Wheels the machine lacks travel in .whl-bench (see docs/benchmarks.md); results go to $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-bench/out}
mkdir -p "$OUT" /tmp/slides
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl-bench/*.whl || exit 1
export PYTHONPATH=$PWD/src:/tmp/site
nvidia-smi -L
start=$(date +%s)
timeout 200 python3 bench/make_big_slide.py /tmp/slides/big.tif --width "${WIDTH:-30000}" --height "${HEIGHT:-24000}" 2>&1 | tail -3
echo "slide written in $(( $(date +%s) - start )) s"
timeout 170 python3 bench/bench_pipeline.py --slide /tmp/slides/big.tif --out "$OUT/pipeline.json" --whole-slide 2>&1 | tee "$OUT/pipeline.log" | tail -25
timeout 140 python3 bench/bench_batch.py --slides /tmp/slides --out "$OUT/batch.json" --repeats 2 2>&1 | tee "$OUT/batch.log" | tail -20
timeout 90 python3 bench/bench_training.py --out "$OUT/training.json" 2>&1 | tee "$OUT/training.log" | tail -12
