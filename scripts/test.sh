#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine: installs missing packages, then builds
# and runs every GoogleTest suite in three builds (plain, ThreadSanitizer, AddressSanitizer +
# UndefinedBehaviorSanitizer), the benchmarks once in smoke mode, the find_package consumer,
# and each libFuzzer target briefly (clang, ASan + UBSan).
#
#   scripts/test.sh              everything
#   FUZZ_SECONDS=60 scripts/test.sh   longer fuzz runs
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
framekit_install_deps

fuzz_seconds=${FUZZ_SECONDS:-15}
export TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 ${TSAN_OPTIONS:-}"
export ASAN_OPTIONS="detect_leaks=1 ${ASAN_OPTIONS:-}"
export UBSAN_OPTIONS="print_stacktrace=1 halt_on_error=1 ${UBSAN_OPTIONS:-}"

step() { printf '\n==== %s\n' "$*"; }

# The sanitizer builds keep line tables only (-g1, enough for symbolised stack traces; a fifth
# less compile time than -g). ASan and the fuzzers also compile at -O1, as their documentation
# suggests (two fifths less than -O2 -g). TSan stays at -O2: at -O1 the test binaries export
# instrumented out-of-line copies of std::string members that gRPC's uninstrumented library
# then calls, so gRPC's own metadata copies would read as races in framekit's binary.
asan_flags=(-DCMAKE_BUILD_TYPE=RelWithDebInfo "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g1 -DNDEBUG")
tsan_flags=(-DCMAKE_BUILD_TYPE=RelWithDebInfo "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O2 -g1 -DNDEBUG")

step "plain build (g++, RelWithDebInfo)"
framekit_configure_build build/plain -DCMAKE_BUILD_TYPE=RelWithDebInfo
ctest --test-dir build/plain --output-on-failure -j 2

step "ThreadSanitizer build"
framekit_configure_build build/tsan "${tsan_flags[@]}" \
  -DFRAMEKIT_SANITIZE=thread -DFRAMEKIT_BUILD_BENCH=OFF -DFRAMEKIT_BUILD_EXAMPLES=OFF
ctest --test-dir build/tsan --output-on-failure -j 2

step "AddressSanitizer + UndefinedBehaviorSanitizer build"
framekit_configure_build build/asan "${asan_flags[@]}" \
  -DFRAMEKIT_SANITIZE=address -DFRAMEKIT_BUILD_BENCH=OFF
ctest --test-dir build/asan --output-on-failure -j 2

step "find_package consumer against the installed package"
rm -rf build/install build/consumer
cmake --install build/plain --prefix build/install > /dev/null
cmake -S tests/find_package -B build/consumer -G Ninja -DCMAKE_PREFIX_PATH="$PWD/build/install"
cmake --build build/consumer
./build/consumer/framekit_consumer

step "libFuzzer targets (clang, ASan + UBSan), ${fuzz_seconds}s each"
CXX=clang++ framekit_configure_build build/fuzz "${asan_flags[@]}" \
  -DFRAMEKIT_SANITIZE=address -DFRAMEKIT_BUILD_FUZZERS=ON -DFRAMEKIT_BUILD_TESTS=OFF \
  -DFRAMEKIT_BUILD_BENCH=OFF -DFRAMEKIT_BUILD_EXAMPLES=OFF -DFRAMEKIT_INSTALL=OFF
fuzzers=0
for corpus in tests/fuzz/corpus/*/; do
  name=$(basename "$corpus")
  work=build/fuzz/corpus-$name
  rm -rf "$work" && mkdir -p "$work" && cp "$corpus"* "$work"/
  echo "fuzzing $name"
  if ! "./build/fuzz/tests/fuzz/$name" -max_total_time="$fuzz_seconds" -print_final_stats=1 \
      "$work" > "build/fuzz/$name.log" 2>&1; then
    tail -n 60 "build/fuzz/$name.log"
    echo "fuzzer $name failed (log above; reproducer in build/fuzz)"
    exit 1
  fi
  grep -E '^(stat::number_of_executed_units|stat::new_units_added|Done)' "build/fuzz/$name.log" || true
  fuzzers=$((fuzzers + 1))
done

step "summary"
echo "$fuzzers fuzzers ran clean for ${fuzz_seconds}s each"
echo "all builds passed"
