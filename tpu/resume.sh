#!/usr/bin/env bash
# Resumes training after a stop or a preemption: the same command as
# tpu/launch.sh (same options), which restarts from the newest complete
# checkpoint in the workdir. After a spot / queued-resource preemption the
# slice is gone: tpu/create.sh and tpu/setup.sh first, then this.
#
#   tpu/resume.sh --name NAME --zone ZONE --accelerator v4-32 \
#       --workdir gs://B/runs/vits16 [--config ...] [--dry-run] [-- FLAGS]
set -euo pipefail
exec "$(dirname "$0")/launch.sh" "$@"
