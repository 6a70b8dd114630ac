#!/usr/bin/env bash
# Stops training on every worker: SIGTERM (the trainer saves a checkpoint at
# the next step and exits), then SIGKILL after --wait seconds.
#
#   tpu/stop.sh --name NAME --zone ZONE [--wait 300] [--project P] [--dry-run]
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"

WAIT=300
parse_options --wait=WAIT -- "$@"
require_tpu
[[ $WAIT =~ ^[0-9]+$ ]] || die "--wait takes seconds"

PID=$REMOTE_LOGS/train.pid
REMOTE="if ! { [ -f $PID ] && kill -0 \"\$(cat $PID)\" 2>/dev/null; }; then
  echo \"\$(hostname): not running\"; exit 0
fi
pid=\$(cat $PID)
kill -TERM \"\$pid\"
for _ in \$(seq $WAIT); do kill -0 \"\$pid\" 2>/dev/null || break; sleep 1; done
if kill -0 \"\$pid\" 2>/dev/null; then
  kill -KILL \"\$pid\"; echo \"\$(hostname): killed pid \$pid after ${WAIT}s\"
else
  echo \"\$(hostname): stopped pid \$pid\"
fi"
tpu_ssh all "$REMOTE"
