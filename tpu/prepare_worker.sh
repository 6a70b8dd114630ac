#!/usr/bin/env bash
# Runs ON A WORKER (started by tpu/prepare_data.sh): packs this worker's slice
# of a bucket of videos into array_record shards under OUT/worker-INDEX.
#
#   tpu/prepare_worker.sh INDEX COUNT gs://BUCKET/videos gs://BUCKET/shards \
#       [prepare flags, e.g. --short_side 256 --shard_size 64]
#
# `siammae_jax.data.prepare` packs one folder, so the worker lists the bucket,
# keeps every COUNT-th video (sorted order, starting at INDEX), copies those to
# local disk keeping their relative paths, and runs prepare on that folder.
# Training reads all workers' shards: ArrayRecordSource searches OUT
# recursively. Re-running resumes (prepare skips finished shards).
set -euo pipefail
(($# >= 4)) || {
  sed -n '5,6p' "$0" >&2
  exit 2
}
INDEX=$1 COUNT=$2 VIDEOS=${3%/} OUT=${4%/}
shift 4
PYTHON=${PYTHON:-$HOME/venv/bin/python}
WORK=${PREPARE_TMP:-/tmp/siammae_prepare}/worker-$(printf '%03d' "$INDEX")
mkdir -p "$WORK/videos"
cd "$WORK"

# Every file, not a suffix list: prepare tells videos from other files and
# lists the others, with why, in its manifest.
gcloud storage ls "$VIDEOS/**" | grep -v '/$' | LC_ALL=C sort >all.txt
awk -v n="$COUNT" -v i="$INDEX" '(NR - 1) % n == i' all.txt >mine.txt
echo "$(hostname): worker $INDEX of $COUNT packs $(wc -l <mine.txt) of $(wc -l <all.txt) files"

# One parallel copy per source folder, so relative paths are kept.
sed "s|^$VIDEOS/||" mine.txt | while read -r rel; do dirname "$rel"; done |
  LC_ALL=C sort -u >dirs.txt
while read -r dir; do
  prefix=$VIDEOS/$dir/
  [[ $dir == . ]] && prefix=$VIDEOS/
  mkdir -p "videos/$dir"
  awk -v p="$prefix" 'index($0, p) == 1 && index(substr($0, length(p) + 1), "/") == 0' \
    mine.txt | gcloud storage cp --no-clobber -I "videos/$dir/"
done <dirs.txt

"$PYTHON" -m siammae_jax.data.prepare --videos "$WORK/videos" \
  --out "$OUT/worker-$(printf '%03d' "$INDEX")" --format video "$@"
