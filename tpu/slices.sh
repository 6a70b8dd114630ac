# shellcheck shell=bash disable=SC2034  # used by the scripts that source it
# Common TPU slices: hosts, chips, runtime version, and the training flags that
# set the mesh and the batch. Sourced by common.sh.
#
# The batch is chosen per host (pairs of frames per host per step); the global
# --config.batch_size is PER_HOST_BATCH x HOSTS (the loader gives each host
# batch_size / hosts). The learning rate follows the batch (base_lr x batch / 256).
# These are starting points for ViT-S/16 at 224 px (bfloat16), sized by HBM per
# chip; no TPU throughput has been measured for this package yet.
#
#   slice          hosts chips/host  HBM/chip  per-host batch  mesh (data x fsdp)
#   v4-8               1     4        32 GiB     512           4 x 1
#   v4-32              4     4        32 GiB     512          16 x 1
#   v5litepod-16       4     4        16 GiB     256           4 x 4
#   v5p-8              1     4        95 GiB     512           4 x 1
#   v6e-8              1     8        32 GiB     512           8 x 1

# slice_config ACCELERATOR: sets HOSTS, CHIPS_PER_HOST, RUNTIME_VERSION,
# PER_HOST_BATCH, MESH_DATA, MESH_FSDP and SLICE_FLAGS.
slice_config() {
  local accel=$1
  case "$accel" in
    v4-8) set -- 1 4 tpu-ubuntu2204-base 512 4 1 ;;
    v4-32) set -- 4 4 tpu-ubuntu2204-base 512 16 1 ;;
    v5litepod-16 | v5e-16) accel=v5litepod-16 && set -- 4 4 v2-alpha-tpuv5-lite 256 4 4 ;;
    v5p-8) set -- 1 4 v2-alpha-tpuv5 512 4 1 ;;
    v6e-8) set -- 1 8 v2-alpha-tpuv6e 512 8 1 ;;
    *)
      echo "error: unknown slice '$accel' (known: v4-8 v4-32 v5litepod-16 v5e-16 v5p-8 v6e-8)" >&2
      return 2
      ;;
  esac
  ACCELERATOR=$accel
  HOSTS=$1 CHIPS_PER_HOST=$2 RUNTIME_VERSION=$3
  PER_HOST_BATCH=$4 MESH_DATA=$5 MESH_FSDP=$6
  SLICE_FLAGS=(
    --config.batch_size=$((PER_HOST_BATCH * HOSTS))
    --config.mesh.data="$MESH_DATA"
    --config.mesh.fsdp="$MESH_FSDP"
  )
  if ((HOSTS > 1)); then
    SLICE_FLAGS=(--multihost "${SLICE_FLAGS[@]}")
  fi
}
