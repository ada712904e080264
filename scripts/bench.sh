#!/usr/bin/env bash
# The benchmark report, from a fresh Debian 12 machine: installs missing packages, builds the
# suite in Release, runs it with repetitions, and writes bench-report/REPORT.md (every case with
# its ratio to the same-run floor and its shared/DESIGN.md target, met / short) and
# bench-report/read_path.png. Prints the Markdown tables. Nothing in the report is typed by hand.
#
#   scripts/bench.sh                          3 repetitions, each figure the median
#   BENCH_REPETITIONS=5 scripts/bench.sh      more repetitions
#   BENCH_FILTER='Resolve/framekit' scripts/bench.sh   a subset (--benchmark_filter)
#
# The figures are only as quiet as the machine: the report records the load average, and every
# target is also read as a multiple of the floor measured in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
framekit_install_deps

repetitions=${BENCH_REPETITIONS:-3}
filter=${BENCH_FILTER:-}
build_dir=${BENCH_BUILD_DIR:-build/bench-release}
out_dir=bench-report

if ! gnuplot -e "set terminal pngcairo" 2> /dev/null; then
  echo "bench: gnuplot has no pngcairo terminal; install a gnuplot package that has it" >&2
  exit 1
fi

framekit_configure_build "$build_dir" -DCMAKE_BUILD_TYPE=Release -DFRAMEKIT_BUILD_TESTS=OFF \
  -DFRAMEKIT_BUILD_EXAMPLES=OFF >&2

mkdir -p "$out_dir"
rm -f "$out_dir"/bench.json "$out_dir"/REPORT.md "$out_dir"/read_path.*
commit=$(git rev-parse --short HEAD 2> /dev/null || echo unknown)
if [[ -n $(git status --porcelain 2> /dev/null) ]]; then commit="$commit (with local changes)"; fi
bench_version=$(dpkg-query -W -f='${Version}' libbenchmark-dev 2> /dev/null || echo unknown)
compiler=$(c++ --version | head -n 1)

args=(
  --benchmark_format=json
  --benchmark_out="$out_dir/bench.json"
  --benchmark_repetitions="$repetitions"
  --benchmark_report_aggregates_only=true
  --benchmark_context="framekit_commit=$commit"
  --benchmark_context=framekit_build_type=Release
  --benchmark_context="benchmark_version=libbenchmark-dev $bench_version"
  --benchmark_context="compiler=$compiler"
)
if [[ -n $filter ]]; then args+=(--benchmark_filter="$filter"); fi

echo "bench: running the suite, $repetitions repetitions per case (load average: $(cut -d' ' -f1-3 /proc/loadavg))" >&2
"$build_dir/bench/framekit_bench" "${args[@]}" > /dev/null

python3 scripts/bench_report.py --json "$out_dir/bench.json" --out-dir "$out_dir"
if [[ -f $out_dir/read_path.gp ]]; then (cd "$out_dir" && gnuplot read_path.gp); fi
echo >&2
echo "bench: wrote $out_dir/REPORT.md and $out_dir/read_path.png" >&2
