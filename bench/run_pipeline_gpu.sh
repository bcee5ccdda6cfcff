#!/usr/bin/env bash
# One call on the GPU machine for the classification pipeline: the GPU tests (TESTS, default
# "tests/inference tests/model"), then for ARCHS (default ssmamba_tiny and ssmamba_base) on each
# generated slide of SLIDES (WIDTHxHEIGHT, default "30000x24000"; 60000x50000 is the size of
# ../shared/bench's big slide) the STEPS (default "pipeline decoders stages"; also "profile",
# "first"): bench_pipeline, compare_decoders, pipeline_stages, profile_pipeline, first_run. The
# slides are written while the tests run; results for a slide other than the first are named
# with its size. BASE, a copy of another tree (git archive REV src bench), also runs for an A/B in the
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
SLIDES=${SLIDES:-30000x24000}
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
start=$(date +%s)
for size in $SLIDES; do  # written beside the tests, which are not timed
  timeout 400 python3 bench/make_big_slide.py "/tmp/slides/big_$size.tif" --width "${size%x*}" \
    --height "${size#*x}" > "/tmp/slides/big_$size.log" 2>&1 &
done
if [ -n "$TESTS" ]; then
  # shellcheck disable=SC2086
  PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 timeout 150 python3 -m pytest -p pytest_timeout -p no:cacheprovider \
    -m gpu $TESTS -q -rs 2>&1 | tee "$OUT/gpu_tests.log" | tail -15
fi
wait
for size in $SLIDES; do tail -1 "/tmp/slides/big_$size.log"; done
echo "slides written in $(( $(date +%s) - start )) s"
first_slide=${SLIDES%% *}
for size in $SLIDES; do
  slide=/tmp/slides/big_$size.tif
  suffix=$([ "$size" = "$first_slide" ] || echo "_$size")
  echo "== slide $size"
  for arch in $ARCHS; do
    if [[ " $STEPS " == *" first "* ]]; then  # first: its first session is the model's first process
      base=""
      if [ -n "$BASE" ] && [[ " $BASE_STEPS " == *" first "* ]]; then base="--base $BASE/src"; fi
      # shellcheck disable=SC2086
      timeout 300 python3 bench/first_run.py $slide --arch $arch $base \
        --out "$OUT/first_run_$arch$suffix.json" 2>&1 | tail -8
    fi
    if [[ " $STEPS " == *" pipeline "* ]]; then
      timeout 150 python3 bench/bench_pipeline.py --slide $slide --arch $arch \
        --out "$OUT/pipeline_$arch$suffix.json" --whole-slide --repeats 2 2>&1 | grep -v -e ' round ' -e 'click to result'
    fi
    if [[ " $STEPS " == *" decoders "* ]]; then
      # shellcheck disable=SC2086
      timeout 150 python3 bench/compare_decoders.py $slide --arch $arch $DECODERS \
        --out "$OUT/decoders_$arch$suffix.json" 2>&1 | grep -v '^{' | cut -c1-3000
      if [ -n "$BASE" ] && [[ " $BASE_STEPS " == *" decoders "* ]]; then
        PYTHONPATH=$BASE/src:/tmp/site timeout 150 python3 "$BASE/bench/compare_decoders.py" \
          $slide --arch $arch $DECODERS --out "$OUT/decoders_base_$arch$suffix.json" 2>&1 | grep -v '^{' | cut -c1-3000
      fi
    fi
    if [[ " $STEPS " == *" stages "* ]]; then
      timeout 100 python3 bench/pipeline_stages.py $slide --arch $arch \
        --out "$OUT/stages_$arch$suffix.json" 2>&1 | grep -v -e '^ ' -e '^$'
      if [ -n "$BASE" ] && [[ " $BASE_STEPS " == *" stages "* ]]; then
        PYTHONPATH=$BASE/src:/tmp/site timeout 100 python3 "$BASE/bench/pipeline_stages.py" \
          $slide --arch $arch --out "$OUT/stages_base_$arch$suffix.json" 2>&1 | grep -v -e '^ ' -e '^$'
      fi
    fi
    if [[ " $STEPS " == *" profile "* ]]; then
      timeout 120 python3 bench/profile_pipeline.py $slide --arch $arch \
        --out "$OUT/profile_$arch$suffix.json" --traces /tmp/traces/$arch$suffix 2>&1 | cut -c1-600
    fi
  done
done
if [[ " $STEPS " == *" pipeline "* ]]; then python3 bench/bench_pipeline.py --render "$OUT"/pipeline_*.json; fi
if [[ " $STEPS " == *" profile "* ]]; then tar -czf "$OUT/traces.tar.gz" -C /tmp/traces .; fi
ls -la "$OUT"
