#!/usr/bin/env bash
# Stage one on a Ray cluster: start (or join) Ray, run `bneck extract --engine ray`, check the result.
#   examples/ray/extract_on_cluster.sh DATA OUT.h5 [bneck extract flags...]
# On the head node, once:        ray start --head --port=6379
# On every other node:           ray start --address=HEAD_IP:6379
# (bneck and its [ray] extra installed on every node; DATA and OUT's directory on a filesystem
#  every node sees at the same path.)
# Environment knobs:
#   RAY_ADDRESS     cluster to join: auto (default: the cluster this machine belongs to), HEAD_IP:6379,
#                   or ray://HEAD_IP:10001 (Ray Client, from a machine outside the cluster)
#   NUM_WORKERS     backbone actors (default: one per GPU, else one per 8 CPUs)
#   GPUS_PER_WORKER GPUs per actor (default: 1 if the cluster has GPUs, else 0; 0.5 = two per GPU)
#   BNECK           the bneck command (default: bneck on PATH)
# Rerunning after a failure resumes: finished shards in OUT.h5.ray/ are kept.
set -euo pipefail

if [ $# -lt 2 ]; then
  sed -n '2,15p' "$0" >&2
  exit 2
fi
DATA=$1 OUT=$2
shift 2
BNECK=${BNECK:-bneck}
# Ray >= 2.59 protects clusters with a token (~/.ray/auth_token on the head, or $RAY_AUTH_TOKEN);
# a driver joining by address must opt in as well.
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}

args=(--engine ray --ray-address "${RAY_ADDRESS:-auto}")
[ -n "${NUM_WORKERS:-}" ] && args+=(--num-workers "$NUM_WORKERS")
[ -n "${GPUS_PER_WORKER:-}" ] && args+=(--num-gpus-per-worker "$GPUS_PER_WORKER")

command -v ray >/dev/null && ray status || echo "note: \`ray status\` unavailable here; joining ${RAY_ADDRESS:-auto}" >&2
$BNECK extract "$DATA" -o "$OUT" "${args[@]}" "$@"
$BNECK info "$OUT"
