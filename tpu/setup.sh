#!/usr/bin/env bash
# Installs the package on every worker (--worker=all) at a given commit, with
# JAX's TPU extra, into ~/venv; the repository is cloned to ~/siammae_jax.
#
#   tpu/setup.sh --name NAME --zone ZONE --repo URL [--commit SHA] \
#       [--python 3.11] [--project P] [--dry-run]
#
# --repo defaults to this checkout's `origin` and --commit to its HEAD.
# The TPU images ship Python 3.10 and jax>=0.10 needs 3.11+, so the venv is
# made by uv with a standalone Python (--python).
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"

REPO="" COMMIT="" PYVER=3.11
parse_options --repo=REPO --commit=COMMIT --python=PYVER -- "$@"
require_tpu
ROOT=$(cd "$TPU_DIR/.." && pwd)
REPO=${REPO:-$(git -C "$ROOT" remote get-url origin 2>/dev/null || true)}
COMMIT=${COMMIT:-$(git -C "$ROOT" rev-parse HEAD)}
[[ -n $REPO ]] || die "give --repo (this checkout has no origin remote)"

# shellcheck disable=SC2016  # expanded on the worker
UV='$HOME/.local/bin/uv'
REMOTE="set -euo pipefail
if [ ! -d $REMOTE_REPO/.git ]; then git clone --quiet $(quote "$REPO") $REMOTE_REPO; fi
cd $REMOTE_REPO
git fetch --quiet origin
git checkout --quiet --detach $(quote "$COMMIT")
python3 -m pip install --quiet --user --upgrade uv
$UV venv --quiet --allow-existing --python $(quote "$PYVER") \$HOME/venv
$UV pip install --quiet --python $REMOTE_PYTHON -e . 'jax[tpu]'
$REMOTE_PYTHON -c 'import jax, siammae_jax; print(\"jax\", jax.__version__, \"siammae_jax\", siammae_jax.__version__)'
echo \"\$(hostname): siammae_jax at \$(git rev-parse --short HEAD)\""
tpu_ssh all "$REMOTE"
