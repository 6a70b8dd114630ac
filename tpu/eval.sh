#!/usr/bin/env bash
# Runs an evaluator (python -m siammae_jax.eval) on a training checkpoint, on
# one worker (default 0); stop training first, it holds the TPU.
#
#   tpu/eval.sh --name NAME --zone ZONE --accelerator v4-32 \
#       --task davis|jhmdb|vip|attention --checkpoint gs://B/runs/vits16[/checkpoints/STEP] \
#       --data gs://B/DAVIS [--out gs://B/runs/vits16/eval/davis] [--worker 0] \
#       [--cpu] [--project P] [--dry-run] [-- --config.davis.topk=7 ...]
#
# --data is the benchmark root (for attention: a video, frame folder or image).
# On a multi-host slice the evaluator runs as one process on that worker's
# chips only (TPU_PROCESS_BOUNDS=1,1,1 ...; not yet tried on a TPU here);
# --cpu runs it on the worker's CPUs instead.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"

TASK="" CHECKPOINT="" DATA="" OUT="" WORKER=0 CPU=0 EXTRA=()
parse_options --task=TASK --checkpoint=CHECKPOINT --data=DATA --out=OUT --worker=WORKER --cpu!CPU ... -- "$@"
require_tpu
[[ $TASK =~ ^(davis|jhmdb|vip|attention)$ ]] || die "give --task davis|jhmdb|vip|attention"
[[ -n $CHECKPOINT && -n $DATA ]] || die "give --checkpoint and --data"
[[ -n $ACCELERATOR ]] || die "give --accelerator (e.g. v4-32)"
slice_config "$ACCELERATOR"
OUT=${OUT:-${CHECKPOINT%/}/eval/$TASK}

ENV=()
if ((CPU)); then
  ENV=(JAX_PLATFORMS=cpu)
elif ((HOSTS > 1)); then
  # One process on this host's 4 chips, without waiting for the other hosts.
  ENV=("TPU_PROCESS_BOUNDS=1,1,1" "TPU_CHIPS_PER_PROCESS_BOUNDS=2,2,1" "TPU_VISIBLE_CHIPS=0,1,2,3")
fi
ARGV=(-m siammae_jax.eval "$TASK" --checkpoint="$CHECKPOINT")
if [[ $TASK == attention ]]; then
  ARGV+=(--video="$DATA")
else
  ARGV+=(--data="$DATA")
fi
ARGV+=(--out="$OUT" "${EXTRA[@]+"${EXTRA[@]}"}")
PREFIX=""
if ((${#ENV[@]})); then
  PREFIX="env $(quote_all "${ENV[@]}") "
fi
tpu_ssh "$WORKER" "cd $REMOTE_REPO && $PREFIX$REMOTE_PYTHON $(quote_all "${ARGV[@]}")"
