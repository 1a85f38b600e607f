# Sourced by the scripts: build folder, CUDA on PATH, parallelism, MPI as root.
DISTMLA_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DISTMLA_BUILD="${DISTMLA_BUILD:-$DISTMLA_ROOT/build}"
export PATH="$PATH:/usr/local/cuda/bin"
DISTMLA_JOBS="${DISTMLA_JOBS:-$(nproc)}"
# OpenMPI refuses root without these; CI and the GPU machines run as root.
if [ "$(id -u)" -eq 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
export NCCL_NVLS_ENABLE=0  # NVLink multicast stays off on shared machines
distmla_configure() {
  cmake -S "$DISTMLA_ROOT" -B "$DISTMLA_BUILD" -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
}
