#!/usr/bin/env bash
# bneck set-up and demo driver.
#   ./run_all.sh                          create .venv, install, run the whole demo on embedded data
#   ./run_all.sh test                     install the test extras and run the test suite (what CI runs)
#   ./run_all.sh test-slow                the slow tests only
#   ./run_all.sh lint                     ruff over the code (CI runs it too)
#   ./run_all.sh DATA OUTDIR [extract options]   the same batch job on your own images
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)
VENV=${BNECK_VENV:-$ROOT/.venv}
PY=${PYTHON:-python3}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}

install() {  # $1 = extras, e.g. "test,plots"
  if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
  fi
  local stamp="$VENV/.bneck-installed-$1"
  if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ]; then
    "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
    "$VENV/bin/python" -m pip install -q -e ".[$1]"
    touch "$stamp"
  fi
}

bneck() { "$VENV/bin/bneck" "$@"; }

demo() {
  local data=${BNECK_DEMO_DATA:-$ROOT/demo_data} out=${BNECK_DEMO_OUT:-$ROOT/demo_out}
  mkdir -p "$out"
  "$VENV/bin/python" -m pipeline.tools.demo "$data"
  # Offline machines have no ImageNet weights: --weights auto falls back to seeded random
  # weights and says so loudly. Batch jobs should use --weights imagenet or a file.
  # The runtime is pinned: `./run_all.sh test` installs [openvino], and with --runtime auto a rerun of
  # the demo would then find its earlier features made by another runtime and (rightly) refuse them.
  local common=(--weights auto --backbone "${BNECK_DEMO_BACKBONE:-vgg16}" --runtime "${BNECK_DEMO_RUNTIME:-tensorflow}")
  bneck extract "$data/digits/train" -o "$out/digits_train.h5" "${common[@]}" --input-size 64 --layer block4_pool
  # The test split comes as 4 webdataset tars too, as img2dataset writes them: each --shard I/N is one job
  # (a SLURM array task, a machine) that reads only its own tars, and the merge equals one run over all of them.
  local shard
  for shard in 0/2 1/2; do
    bneck extract "$data/digits/test-tars" -o "$out/digits_test.h5" "${common[@]}" --input-size 64 --layer block4_pool \
      --shard "$shard"
  done
  bneck merge "$out"/digits_test.shard-0000[01]-of-00002.h5 -o "$out/digits_test.h5" --overwrite
  bneck extract "$data/keypoints/training.csv" -o "$out/faces_train.h5" "${common[@]}" --input-size 96 --layer block4_pool
  bneck extract "$data/keypoints/validation.csv" -o "$out/faces_val.h5" "${common[@]}" --input-size 96 --layer block4_pool
  bneck info "$out/faces_train.h5"
  # Digits are not mirror-symmetric (a mirrored 3 is no 3): train them without the flipped rows.
  bneck train "$out/digits_train.h5" -o "$out/m_svm" --head svm --pooling avg --no-flipped --grid C=0.01,0.1,1 --jobs 2 --overwrite
  bneck train "$out/digits_train.h5" -o "$out/m_logreg" --head logreg --pooling avg --no-flipped --overwrite
  bneck train "$out/digits_train.h5" -o "$out/m_dense" --head dense --no-flipped --epochs 30 --overwrite
  bneck train "$out/faces_train.h5" -o "$out/m_specialists" --head specialists --val "$out/faces_val.h5" --jobs 2 --overwrite
  bneck train "$out/faces_train.h5" -o "$out/m_faces_dense" --head dense --val "$out/faces_val.h5" --epochs 40 --overwrite
  local three seven
  three=$(find "$data/digits/test/3" -name '*.png' | sort | sed -n 1p)
  seven=$(find "$data/digits/test/7" -name '*.png' | sort | sed -n 1p)
  bneck predict "$out/m_svm" "$three" "$seven" --top-k 3
  # A page per model (card, curves, confusion matrix, wrong images, keypoints on faces) and all five side by side.
  local page
  page=$(bneck report "$out/m_svm" "$out/m_logreg" "$out/m_dense" "$out/digits_test.h5" \
    "$out/m_specialists" "$out/m_faces_dense" "$out/faces_val.h5" -o "$out/report" --no-progress)
  echo "the models side by side: $page"
}

case "${1:-demo}" in
  demo)
    install "plots"
    demo
    ;;
  test)
    install "test,plots,openvino,int8,video,ray,parquet,fsspec,hub"
    shift
    "$VENV/bin/python" -m pytest -q "$@"
    ;;
  test-slow)
    install "test,plots,openvino,int8,video,ray,parquet,fsspec,hub"
    shift
    "$VENV/bin/python" -m pytest -q -m "slow and not cluster" "$@"
    ;;
  lint)
    install "lint"
    "$VENV/bin/ruff" check .
    ;;
  -h|--help|help)
    sed -n '2,7p' "$0"
    ;;
  *)
    [ $# -ge 2 ] || { echo "usage: ./run_all.sh DATA OUTDIR [extract options]" >&2; exit 2; }
    install "plots"
    data=$1 out=$2; shift 2
    mkdir -p "$out"
    bneck extract "$data" -o "$out/features.h5" "$@"
    bneck info "$out/features.h5"
    ;;
esac
