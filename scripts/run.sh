#!/usr/bin/env bash
# The project's main job, from a fresh Debian 12 machine: installs missing packages, builds,
# and runs the example host.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
framekit_install_deps
framekit_configure_build build/plain -DCMAKE_BUILD_TYPE=RelWithDebInfo > /dev/null
exec ./build/plain/examples/boot_example/framekit_boot_example "$@"
