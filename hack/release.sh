#!/usr/bin/env bash
# Static release binaries (musl, no shared libraries) for the node plugin's two architectures:
#   target/release-static/keyvault-csi-linux-amd64, target/release-static/keyvault-csi-linux-arm64
# Installs what it needs: the Rust musl targets (rustup) and the C toolchains aws-lc needs (apt).
# RELEASE_ARCHES=amd64 builds one architecture. RELEASE_EMULATOR=1 also builds kv-emulator (for `make e2e`,
# which runs it in the cluster; it never ships in the driver's image).
set -euo pipefail
cd "$(dirname "$0")/.."

arches=${RELEASE_ARCHES:-"amd64 arm64"}
apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if ((${#missing[@]})); then
    local sudo=""; [[ $(id -u) -eq 0 ]] || sudo=sudo
    $sudo apt-get update -qq && $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

out=target/release-static
mkdir -p "$out"
for arch in $arches; do
  case $arch in
    amd64)
      target=x86_64-unknown-linux-musl
      apt_install musl-tools
      export CC_x86_64_unknown_linux_musl=musl-gcc
      ;;
    arm64)
      target=aarch64-unknown-linux-musl
      # aws-lc's C code is compiled with the GNU cross compiler; Rust links against its own bundled
      # musl (self-contained crt objects), so the result is still fully static.
      apt_install gcc-aarch64-linux-gnu
      export CC_aarch64_unknown_linux_musl=aarch64-linux-gnu-gcc
      export AR_aarch64_unknown_linux_musl=aarch64-linux-gnu-ar
      export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=aarch64-linux-gnu-gcc
      ;;
    *) echo "unknown architecture $arch (amd64, arm64)" >&2; exit 2 ;;
  esac
  rustup target list --installed | grep -qx "$target" || rustup target add "$target"
  if [ -n "${RELEASE_EMULATOR:-}" ]; then
    cargo build --release --locked --target "$target" --bin keyvault-csi --bin kv-emulator
    cp "target/$target/release/kv-emulator" "$out/kv-emulator-linux-$arch"
  else
    cargo build --release --locked --target "$target" --bin keyvault-csi
  fi
  cp "target/$target/release/keyvault-csi" "$out/keyvault-csi-linux-$arch"
  file "$out/keyvault-csi-linux-$arch" 2>/dev/null || true
  printf '%s: %s bytes\n' "$out/keyvault-csi-linux-$arch" "$(stat -c %s "$out/keyvault-csi-linux-$arch")"
done
