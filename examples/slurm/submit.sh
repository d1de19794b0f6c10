#!/usr/bin/env bash
# Submit a sharded bneck extraction as a Slurm job array plus a merge job that runs after it.
#   examples/slurm/submit.sh DATA OUT.h5 N [bneck extract flags...]
# e.g.
#   examples/slurm/submit.sh /data/places365/train.txt /scratch/$USER/places_train.h5 64 \
#       --backbone vgg16 --weights imagenet --precision fp16 --categories /data/places365/categories.txt
# DATA and OUT must be on a filesystem every node sees. Environment knobs:
#   BNECK          the bneck command on the nodes (default: bneck on PATH)
#   MERGE_FLAGS    extra flags of `bneck merge` (e.g. --copy)
#   SBATCH_FLAGS   extra sbatch flags for both jobs (e.g. "--partition=gpu --account=proj")
#   MAX_PARALLEL   run at most this many array tasks at once (adds %MAX_PARALLEL to --array)
# Rerunning this script after a partial failure is safe: finished shards are skipped, interrupted
# ones resume from their committed chunks.
set -euo pipefail

if [ $# -lt 3 ]; then
  sed -n '2,13p' "$0" >&2
  exit 2
fi
DATA=$1 OUT=$2 N=$3
shift 3
here=$(cd "$(dirname "$0")" && pwd)
# Absolute paths: array tasks may start in another working directory.
case $DATA in /*) ;; *) DATA=$(pwd)/$DATA ;; esac
case $OUT in /*) ;; *) OUT=$(pwd)/$OUT ;; esac
mkdir -p "$(dirname "$OUT")"
read -r -a extra <<<"${SBATCH_FLAGS:-}"
read -r -a merge_flags <<<"${MERGE_FLAGS:-}"
array="0-$((N - 1))${MAX_PARALLEL:+%$MAX_PARALLEL}"

array_id=$(sbatch --parsable "${extra[@]}" --array="$array" --chdir="$(dirname "$OUT")" \
  "$here/extract_array.sbatch" "$DATA" "$OUT" "$N" "$@")
array_id=${array_id%%;*}   # --parsable prints JOBID or JOBID;CLUSTER
merge_id=$(sbatch --parsable "${extra[@]}" --dependency="afterok:$array_id" --kill-on-invalid-dep=yes \
  --chdir="$(dirname "$OUT")" "$here/merge.sbatch" "$OUT" "$N" "${merge_flags[@]}")
merge_id=${merge_id%%;*}
echo "submitted extraction array $array_id ($N shards) and merge job $merge_id -> $OUT"
echo "watch: squeue -j $array_id,$merge_id    logs: $(dirname "$OUT")/bneck-*.out"
