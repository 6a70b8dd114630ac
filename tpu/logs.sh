#!/usr/bin/env bash
# Shows the training logs of the workers, each line prefixed by its host.
#
#   tpu/logs.sh --name NAME --zone ZONE [--worker all|0|1...] [--lines 20] \
#       [--follow] [--project P] [--dry-run]
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"

WORKER=all LINES=20 FOLLOW=0
parse_options --worker=WORKER --lines=LINES --follow!FOLLOW -- "$@"
require_tpu
[[ $LINES =~ ^[0-9]+$ ]] || die "--lines takes a number"
tpu_ssh "$WORKER" "tail -n $LINES $( ((FOLLOW)) && echo -F) $REMOTE_LOGS/train.log | sed \"s/^/[\$(hostname)] /\""
