#!/usr/bin/env bash
# A multi-host rehearsal on one machine: N local processes ("hosts") run the
# training entry point with the same arguments tpu/launch.sh uses (train_args
# in common.sh), joined by jax.distributed over a localhost coordinator
# (--coordinator/--num_processes/--process_id in place of --multihost), each
# with its own fake CPU devices, all sharing one workdir.
#
#   tpu/rehearse_local.sh --workdir DIR [--hosts 2] [--devices_per_host 4] \
#       [--config configs/siammae.py:tiny] [--kill_at_step K [--kill_host I]] \
#       [--port P] [--dry-run] [-- --config.train.steps=16 ...]
#
# --kill_at_step: once checkpoint K exists, SIGKILL host I (default the last),
# stop the others (as a preemption does), then relaunch all with the same
# command: they resume from the newest checkpoint. Logs: DIR/logs/host-I.log.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"

WORKDIR="" HOSTS=2 DEVICES=4 CONFIG=configs/siammae.py:tiny KILL_AT="" KILL_HOST=""
PORT="" EXTRA=()
parse_options --workdir=WORKDIR --hosts=HOSTS --devices_per_host=DEVICES --config=CONFIG --kill_at_step=KILL_AT --kill_host=KILL_HOST --port=PORT ... -- "$@"
[[ -n $WORKDIR ]] || die "give --workdir"
[[ $HOSTS =~ ^[1-9][0-9]*$ && $DEVICES =~ ^[1-9][0-9]*$ ]] || die "--hosts and --devices_per_host take numbers"
KILL_HOST=${KILL_HOST:-$((HOSTS - 1))}
cd "$TPU_DIR/.."
PYTHON=${PYTHON:-python3}
if [[ -z $PORT ]]; then
  PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi
train_args "$CONFIG" "$WORKDIR" "${EXTRA[@]+"${EXTRA[@]}"}"

PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]+"${PIDS[@]}"}"; do
    kill -KILL "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT

# Starts every host in the background; their pids go to PIDS.
start_hosts() {
  PIDS=()
  local i
  for ((i = 0; i < HOSTS; i++)); do
    local cmd=(env "XLA_FLAGS=--xla_force_host_platform_device_count=$DEVICES"
      JAX_PLATFORMS=cpu "$PYTHON" "${TRAIN_ARGS[@]}"
      --coordinator="127.0.0.1:$PORT" --num_processes="$HOSTS" --process_id="$i")
    if ((DRY_RUN)); then
      echo "$(quote_all "${cmd[@]}") >>$(quote "$WORKDIR/logs/host-$i.log") 2>&1 &"
    else
      echo "=== $(date -u +%FT%TZ) host $i of $HOSTS ===" >>"$WORKDIR/logs/host-$i.log"
      "${cmd[@]}" >>"$WORKDIR/logs/host-$i.log" 2>&1 &
      PIDS+=($!)
    fi
  done
}

wait_hosts() {
  local pid status=0
  for pid in "${PIDS[@]}"; do
    wait "$pid" || status=$?
  done
  PIDS=()
  return "$status"
}

((DRY_RUN)) || mkdir -p "$WORKDIR/logs"
start_hosts
if ((DRY_RUN)); then
  if [[ -n $KILL_AT ]]; then
    echo "# once $WORKDIR/checkpoints/$KILL_AT exists: kill -KILL host $KILL_HOST, stop the others, then again:"
    start_hosts
  fi
  exit 0
fi
echo "rehearsal: $HOSTS hosts x $DEVICES CPU devices, coordinator 127.0.0.1:$PORT, workdir $WORKDIR"
if [[ -n $KILL_AT ]]; then
  until [[ -d $WORKDIR/checkpoints/$KILL_AT ]]; do
    for pid in "${PIDS[@]}"; do
      kill -0 "$pid" 2>/dev/null || die "a host exited before checkpoint $KILL_AT (see $WORKDIR/logs)"
    done
    sleep 0.2
  done
  kill -KILL "${PIDS[$KILL_HOST]}"
  echo "rehearsal: killed host $KILL_HOST (pid ${PIDS[$KILL_HOST]}) at checkpoint $KILL_AT"
  # The others cannot go on without it; a preempted slice loses them all too.
  sleep 2
  for pid in "${PIDS[@]}"; do
    kill -KILL "$pid" 2>/dev/null || true
  done
  wait_hosts || true
  echo "rehearsal: relaunching all $HOSTS hosts (resume)"
  start_hosts
fi
if wait_hosts; then
  echo "rehearsal: done; metrics in $WORKDIR/metrics.jsonl, checkpoints in $WORKDIR/checkpoints"
else
  die "a host failed (see $WORKDIR/logs)"
fi
