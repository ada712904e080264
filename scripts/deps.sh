# Sourced by the scripts: installs the Debian 12 packages framekit needs, if any is missing.
# Needs root (apt-get), as on a fresh machine.
FRAMEKIT_PACKAGES=(
  build-essential cmake ninja-build clang libclang-rt-14-dev
  libabsl-dev libboost-dev libspdlog-dev libfmt-dev libyaml-cpp-dev libcli11-dev
  libgtest-dev libgmock-dev libbenchmark-dev libcurl4-openssl-dev nlohmann-json3-dev
  liblua5.4-dev pkg-config python3
  libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc libseccomp-dev
  microsocks gnuplot-nox
)

framekit_install_deps() {
  local missing=()
  local pkg
  for pkg in "${FRAMEKIT_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
      missing+=("$pkg")
    fi
  done
  if ((${#missing[@]} == 0)); then
    return 0
  fi
  echo "framekit: installing missing packages: ${missing[*]}"
  local sudo=""
  if [[ $(id -u) != 0 ]]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# framekit_configure_build DIR [cmake args...]: configures (Ninja) and builds DIR.
framekit_configure_build() {
  local dir=$1
  shift
  cmake -S . -B "$dir" -G Ninja "$@"
  cmake --build "$dir" -j "$(nproc)"
}
