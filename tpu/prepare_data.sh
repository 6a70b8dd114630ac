#!/usr/bin/env bash
# Packs a bucket of videos into array_record shards on GCS, in parallel over
# the workers: worker i packs every N-th video (tpu/prepare_worker.sh) into
# OUT/worker-00i; train with --config.data.path=OUT.
#
#   tpu/prepare_data.sh --name NAME --zone ZONE --accelerator v4-32 \
#       --videos gs://B/videos --out gs://B/shards [--short_side 256] \
#       [--shard_size 64] [--project P] [--dry-run]
#
# Each worker copies its share to local disk (/tmp) before packing: make sure
# it fits (total size / workers), or use more workers.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"

VIDEOS="" OUT="" PREPARE_FLAGS=()
parse_options --videos=VIDEOS --out=OUT --short_side@PREPARE_FLAGS --shard_size@PREPARE_FLAGS --quality@PREPARE_FLAGS -- "$@"
require_tpu
[[ -n $ACCELERATOR ]] || die "give --accelerator (the slice, for its number of workers)"
[[ $VIDEOS == gs://* && $OUT == gs://* ]] || die "give --videos gs://... and --out gs://..."
slice_config "$ACCELERATOR"

pids=()
for ((i = 0; i < HOSTS; i++)); do
  command="cd $REMOTE_REPO && bash tpu/prepare_worker.sh $(quote_all "$i" "$HOSTS" "$VIDEOS" "$OUT" "${PREPARE_FLAGS[@]}")"
  if ((DRY_RUN)); then
    tpu_ssh "$i" "$command"
  else
    (tpu_ssh "$i" "$command" 2>&1 | sed "s/^/[worker $i] /") &
    pids+=($!)
  fi
done
status=0
for pid in "${pids[@]+"${pids[@]}"}"; do
  wait "$pid" || status=1
done
((DRY_RUN)) || echo "shards under $OUT (train with --config.data.path=$OUT)" >&2
exit "$status"
