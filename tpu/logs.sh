#!/usr/bin/env bash
# Shows the training logs of the workers, each line prefixed by its host.
#
#   tpu/logs.sh --name NAME --zone ZONE [--worker all|0|1...] [--lines 20] \
#       [--follow] [--project P] [--dry-run]
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"

WORKER=all LINES=20 FOLLOW=""
split_args "$@"
set -- "${ARGS[@]}"
while (($#)); do
  case "$1" in
    --worker) WORKER=${2:?--worker needs a value} && shift 2 ;;
    --lines) LINES=${2:?--lines needs a value} && shift 2 ;;
    --follow) FOLLOW=-F && shift ;;
    -h | --help) sed -n '2,5p' "$0" && exit 0 ;;
    *)
      common_option "$@"
      ((SHIFT)) || die "unknown option $1"
      shift "$SHIFT"
      ;;
  esac
done
require_tpu
[[ $LINES =~ ^[0-9]+$ ]] || die "--lines takes a number"
tpu_ssh "$WORKER" "tail -n $LINES $FOLLOW $REMOTE_LOGS/train.log | sed \"s/^/[\$(hostname)] /\""
