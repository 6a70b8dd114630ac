#!/usr/bin/env bash
# Starts training on every worker (--worker=all), detached (nohup), each worker
# logging to ~/siammae_logs/train.log (appended; see tpu/logs.sh).
#
#   tpu/launch.sh --name NAME --zone ZONE --accelerator v4-32 \
#       --workdir gs://B/runs/vits16 [--config configs/siammae.py:vits16] \
#       [--project P] [--dry-run] [-- --config.data.path=gs://B/shards ...]
#
# The slice (tpu/slices.sh) adds --multihost (more than one host), the global
# batch and the mesh; flags after `--` go to the trainer as they are and come
# last, so they win. The command resumes from the workdir's newest checkpoint,
# so relaunching is resuming (tpu/resume.sh).
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"

CONFIG=configs/siammae.py:vits16 WORKDIR="" EXTRA=()
parse_options --config=CONFIG --workdir=WORKDIR ... -- "$@"
require_tpu
[[ -n $ACCELERATOR ]] || die "give --accelerator (e.g. v4-32)"
[[ $WORKDIR == gs://* ]] || die "give --workdir gs://... (shared by all workers)"
slice_config "$ACCELERATOR"
train_args "$CONFIG" "$WORKDIR" "${SLICE_FLAGS[@]}" "${EXTRA[@]+"${EXTRA[@]}"}"

LOG=$REMOTE_LOGS/train.log PID=$REMOTE_LOGS/train.pid
REMOTE="set -euo pipefail
mkdir -p $REMOTE_LOGS
if [ -f $PID ] && kill -0 \"\$(cat $PID)\" 2>/dev/null; then
  echo \"\$(hostname): training already runs (pid \$(cat $PID)); tpu/stop.sh first\" >&2
  exit 1
fi
cd $REMOTE_REPO
echo \"=== \$(date -u +%FT%TZ) launch ===\" >>$LOG
nohup $REMOTE_PYTHON $(quote_all "${TRAIN_ARGS[@]}") >>$LOG 2>&1 </dev/null &
echo \$! >$PID
echo \"\$(hostname): training started (pid \$!), log $LOG\""
tpu_ssh all "$REMOTE"
