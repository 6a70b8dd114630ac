# shellcheck shell=bash disable=SC2034,SC2016
# (SC2034: the variables are used by the scripts that source this file;
# SC2016: $HOME in single quotes is expanded on the worker, not here.)
# Shared by the tpu/ scripts (sourced, not run): option defaults, quoting,
# --dry-run, gcloud / ssh wrappers and the training command line.

TPU_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=slices.sh
source "$TPU_DIR/slices.sh"

# Defaults come from the environment, so a session can `export TPU_NAME=...`.
NAME=${TPU_NAME:-}
ZONE=${TPU_ZONE:-}
PROJECT=${TPU_PROJECT:-}
ACCELERATOR=${TPU_ACCELERATOR:-}
DRY_RUN=0
REMOTE_REPO='$HOME/siammae_jax'     # expanded on the worker
REMOTE_PYTHON='$HOME/venv/bin/python'
REMOTE_LOGS='$HOME/siammae_logs'

die() {
  echo "error: $*" >&2
  exit 2
}

# Prints one word so that bash reads it back as it is (single quotes if needed).
quote() {
  local word=$1
  if [[ $word =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then
    printf '%s' "$word"
  else
    printf "'%s'" "${word//\'/\'\\\'\'}"
  fi
}

# All arguments, quoted and joined by spaces.
quote_all() {
  local out=() word
  for word in "$@"; do
    out+=("$(quote "$word")")
  done
  local IFS=' '
  printf '%s' "${out[*]}"
}

# Runs a command, or with --dry-run prints it (copy-pasteable) and runs nothing.
run() {
  if ((DRY_RUN)); then
    printf '%s\n' "$(quote_all "$@")"
  else
    "$@"
  fi
}

# Splits --flag=value into --flag value; the result is in ARGS.
split_args() {
  ARGS=()
  local arg
  for arg in "$@"; do
    if [[ $arg == --*=* && $arg != --config.* ]]; then
      ARGS+=("${arg%%=*}" "${arg#*=}")
    else
      ARGS+=("$arg")
    fi
  done
}

# The one option parser of the tpu/ scripts:
#
#   parse_options SPEC... -- "$@"
#
# Each SPEC names an option and where it goes: "--flag=VAR" takes a value,
# "--flag!VAR" is a switch (VAR=1), "--flag@ARRAY" appends "--flag=value" to
# ARRAY (flags passed through), and "..." lets the words after a `--` go to
# EXTRA. The options every script shares (common_option) are always known;
# --flag=value is read like --flag value; -h/--help prints the script's
# header comment.
parse_options() {
  local -A values=() switches=() appends=()
  local rest=0 spec
  while (($#)) && [[ $1 != -- ]]; do
    spec=$1
    case "$spec" in
      *=*) values[${spec%%=*}]=${spec#*=} ;;
      *!*) switches[${spec%%!*}]=${spec#*!} ;;
      *@*) appends[${spec%%@*}]=${spec#*@} ;;
      ...) rest=1 ;;
      *) die "parse_options: bad spec $spec" ;;
    esac
    shift
  done
  shift # the -- between the specs and the arguments
  EXTRA=()
  split_args "$@"
  set -- "${ARGS[@]+"${ARGS[@]}"}"
  while (($#)); do
    if [[ $1 == -- ]]; then
      ((rest)) || die "unexpected arguments after --: ${*:2}"
      shift && EXTRA=("$@") && break
    elif [[ $1 == -h || $1 == --help ]]; then
      usage && exit 0
    elif [[ -n ${values[$1]+x} ]]; then
      printf -v "${values[$1]}" '%s' "${2:?$1 needs a value}" && shift 2
    elif [[ -n ${switches[$1]+x} ]]; then
      printf -v "${switches[$1]}" '%s' 1 && shift
    elif [[ -n ${appends[$1]+x} ]]; then
      eval "${appends[$1]}+=(\"\$1=\${2:?\$1 needs a value}\")" && shift 2
    else
      common_option "$@"
      ((SHIFT)) || die "unknown option $1"
      shift "$SHIFT"
    fi
  done
}

# Prints the header comment of the running script (its usage).
usage() {
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
}

# Handles the options every script shares. Sets SHIFT to the words used
# (0: not a common option).
common_option() {
  SHIFT=2
  case "$1" in
    --name) NAME=${2:?--name needs a value} ;;
    --zone) ZONE=${2:?--zone needs a value} ;;
    --project) PROJECT=${2:?--project needs a value} ;;
    --accelerator) ACCELERATOR=${2:?--accelerator needs a value} ;;
    --dry-run) DRY_RUN=1 SHIFT=1 ;;
    *) SHIFT=0 ;;
  esac
}

require_tpu() {
  [[ -n $NAME ]] || die "give --name (or export TPU_NAME)"
  [[ -n $ZONE ]] || die "give --zone (or export TPU_ZONE)"
}

gcloud_flags() {
  GCLOUD_FLAGS=(--zone="$ZONE")
  if [[ -n $PROJECT ]]; then
    GCLOUD_FLAGS+=(--project="$PROJECT")
  fi
}

# tpu_ssh WORKER COMMAND: runs COMMAND (a bash string) on WORKER (a number or all).
tpu_ssh() {
  gcloud_flags
  run gcloud compute tpus tpu-vm ssh "$NAME" "${GCLOUD_FLAGS[@]}" \
    --worker="$1" --command="$2"
}

# train_args CONFIG WORKDIR [FLAG...]: the training entry point's arguments,
# shared by launch.sh (TPU) and rehearse_local.sh (local processes).
train_args() {
  TRAIN_ARGS=(-m siammae_jax.main --config="$1" --workdir="$2")
  shift 2
  TRAIN_ARGS+=("$@")
}
