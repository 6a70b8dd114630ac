#!/usr/bin/env bash
# Deletes a TPU VM or pod slice (and its queued resource with --queued).
#
#   tpu/delete.sh --name NAME --zone ZONE [--queued] [--project P] [--dry-run]
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"

QUEUED=0
parse_options --queued!QUEUED -- "$@"
require_tpu
gcloud_flags
if ((QUEUED)); then
  # --force deletes the TPU VM the queued resource holds, too.
  run gcloud compute tpus queued-resources delete "$NAME" "${GCLOUD_FLAGS[@]}" \
    --force --quiet
else
  run gcloud compute tpus tpu-vm delete "$NAME" "${GCLOUD_FLAGS[@]}" --quiet
fi
