#!/usr/bin/env bash
# The project's main job, from a fresh Debian 12 machine: installs missing packages, builds, and
# runs the demo host (framekit-host) on its built-in configuration. Arguments go to the host,
# e.g. scripts/run.sh --json, scripts/run.sh --calls 2000 --threads 8, scripts/run.sh --help.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
framekit_install_deps
echo "framekit: building (first run takes a few minutes)..." >&2
mkdir -p build
# Only the host and what it links: the test command builds the rest.
{
  cmake -S . -B build/plain -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo &&
    cmake --build build/plain -j "$(nproc)" --target framekit-host
} > build/run.log 2>&1 || {
  tail -n 40 build/run.log >&2
  exit 1
}
exec ./build/plain/examples/host/framekit-host "$@"
