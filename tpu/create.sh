#!/usr/bin/env bash
# Creates a TPU VM or pod slice.
#
#   tpu/create.sh --name NAME --zone ZONE --accelerator v4-32 \
#       [--version RUNTIME] [--spot] [--queued] [--project P] [--dry-run]
#
# --queued asks through queued resources (waits for capacity; the usual way to
# get spot or large slices); otherwise `tpu-vm create` is used directly.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"

VERSION="" SPOT=0 QUEUED=0
parse_options --version=VERSION --spot!SPOT --queued!QUEUED -- "$@"
require_tpu
[[ -n $ACCELERATOR ]] || die "give --accelerator (e.g. v4-32)"
slice_config "$ACCELERATOR"
VERSION=${VERSION:-$RUNTIME_VERSION}
gcloud_flags
EXTRA=()
if ((SPOT)); then
  EXTRA+=(--spot)
fi

if ((QUEUED)); then
  run gcloud compute tpus queued-resources create "$NAME" --node-id="$NAME" \
    "${GCLOUD_FLAGS[@]}" --accelerator-type="$ACCELERATOR" \
    --runtime-version="$VERSION" "${EXTRA[@]}"
  echo "# queued; watch with: gcloud compute tpus queued-resources describe $NAME --zone=$ZONE" >&2
else
  run gcloud compute tpus tpu-vm create "$NAME" "${GCLOUD_FLAGS[@]}" \
    --accelerator-type="$ACCELERATOR" --version="$VERSION" "${EXTRA[@]}"
fi
