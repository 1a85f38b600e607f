#!/usr/bin/env bash
# Installs the Debian packages distmla needs when they are missing (idempotent, quiet when all
# are there). The CUDA toolkit (nvcc, with NCCL) must already be installed: it is not a Debian
# package at the version needed.
set -euo pipefail
pkgs=(cmake g++ make libopenmpi-dev openmpi-bin libboost-dev googletest libgtest-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! command -v nvcc >/dev/null 2>&1; then
  if [ -x /usr/local/cuda/bin/nvcc ]; then
    echo "note: add /usr/local/cuda/bin to PATH (using it for this build)"
  else
    echo "error: the CUDA toolkit (nvcc 12.4+, with NCCL) is required: not found in PATH or /usr/local/cuda" >&2
    exit 1
  fi
fi
