#!/usr/bin/env bash
# One call on the GPU machine for the classification pipeline: the GPU tests (TESTS, default
# "tests/inference tests/model"), then for ARCHS (default ssmamba_tiny and ssmamba_base) on one
# generated 30,000 x 24,000 slide the STEPS (default "pipeline decoders stages"; also
# "profile", "first"): bench_pipeline, compare_decoders, pipeline_stages, profile_pipeline,
# first_run. BASE, a copy of another tree (git archive REV src bench), also runs for an A/B in the
# same call: its compare_decoders, its cold first_run session and its pipeline_stages, as
# BASE_STEPS says (default "decoders first"). Wheels the machine lacks travel in .whl-bench (see
# docs/benchmarks.md); results go to $OUT, profiler traces as a tarball.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-bench/out}
TESTS=${TESTS-tests/inference tests/model}
STEPS=${STEPS:-pipeline decoders stages}
DECODERS=${DECODERS:---decoders nvjpeg --gathers triton,torch --first-batches 0,32,64 --growths 2}
BASE=${BASE:-}
BASE_STEPS=${BASE_STEPS:-decoders first}
ARCHS=${ARCHS:-ssmamba_tiny ssmamba_base}
mkdir -p "$OUT" /tmp/slides /tmp/traces
# the machine's own pytest and plugins: the carried pytest wheels are for machines without one
ls .whl-bench/*.whl | grep -v -e /pytest- -e /pluggy- -e /iniconfig- \
  | xargs python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site || exit 1
export PYTHONPATH=$PWD/src:/tmp/site
nvidia-smi -L
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
if ! python3 -c "from napari_ssmamba.inference import nvjpeg; print('libnvjpeg:', nvjpeg.library()._name)"; then
  # no libnvjpeg on the machine: the nvidia-nvjpeg wheel, carried in .whl-bench/extra
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl-bench/extra/nvidia_nvjpeg-*.whl
  python3 -c "from napari_ssmamba.inference import nvjpeg; print('libnvjpeg:', nvjpeg.library()._name)"
fi
if [ -n "$TESTS" ]; then
  # shellcheck disable=SC2086
  PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 timeout 150 python3 -m pytest -p pytest_timeout -p no:cacheprovider \
    -m gpu $TESTS -q -rs 2>&1 | tee "$OUT/gpu_tests.log" | tail -15
fi
start=$(date +%s)
timeout 200 python3 bench/make_big_slide.py /tmp/slides/big.tif --width 30000 --height 24000 2>&1 | tail -1
echo "slide written in $(( $(date +%s) - start )) s"
for arch in $ARCHS; do
  if [[ " $STEPS " == *" first "* ]]; then  # first: its first session is the model's first process
    base=""
    if [ -n "$BASE" ] && [[ " $BASE_STEPS " == *" first "* ]]; then base="--base $BASE/src"; fi
    # shellcheck disable=SC2086
    timeout 300 python3 bench/first_run.py /tmp/slides/big.tif --arch $arch $base \
      --out "$OUT/first_run_$arch.json" 2>&1 | tail -8
  fi
  if [[ " $STEPS " == *" pipeline "* ]]; then
    timeout 150 python3 bench/bench_pipeline.py --slide /tmp/slides/big.tif --arch $arch \
      --out "$OUT/pipeline_$arch.json" --whole-slide --repeats 2 2>&1 | grep -v -e ' round ' -e 'click to result'
  fi
  if [[ " $STEPS " == *" decoders "* ]]; then
    # shellcheck disable=SC2086
    timeout 150 python3 bench/compare_decoders.py /tmp/slides/big.tif --arch $arch $DECODERS \
      --out "$OUT/decoders_$arch.json" 2>&1 | grep -v '^{' | cut -c1-3000
    if [ -n "$BASE" ] && [[ " $BASE_STEPS " == *" decoders "* ]]; then
      PYTHONPATH=$BASE/src:/tmp/site timeout 150 python3 "$BASE/bench/compare_decoders.py" \
        /tmp/slides/big.tif --arch $arch $DECODERS --out "$OUT/decoders_base_$arch.json" 2>&1 | grep -v '^{' | cut -c1-3000
    fi
  fi
  if [[ " $STEPS " == *" stages "* ]]; then
    timeout 100 python3 bench/pipeline_stages.py /tmp/slides/big.tif --arch $arch \
      --out "$OUT/stages_$arch.json" 2>&1 | grep -v -e '^ ' -e '^$'
    if [ -n "$BASE" ] && [[ " $BASE_STEPS " == *" stages "* ]]; then
      PYTHONPATH=$BASE/src:/tmp/site timeout 100 python3 "$BASE/bench/pipeline_stages.py" \
        /tmp/slides/big.tif --arch $arch --out "$OUT/stages_base_$arch.json" 2>&1 | grep -v -e '^ ' -e '^$'
    fi
  fi
  if [[ " $STEPS " == *" profile "* ]]; then
    timeout 120 python3 bench/profile_pipeline.py /tmp/slides/big.tif --arch $arch \
      --out "$OUT/profile_$arch.json" --traces /tmp/traces/$arch 2>&1 | cut -c1-600
  fi
done
if [[ " $STEPS " == *" pipeline "* ]]; then python3 bench/bench_pipeline.py --render "$OUT"/pipeline_*.json; fi
if [[ " $STEPS " == *" profile "* ]]; then tar -czf "$OUT/traces.tar.gz" -C /tmp/traces .; fi
ls -la "$OUT"
