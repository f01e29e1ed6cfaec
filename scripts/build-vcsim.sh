#!/usr/bin/env bash
# Build the vSphere API simulator used by the vSphere provider's tests, offline, from
# Debian's govmomi source (apt: golang-go golang-github-vmware-govmomi-dev).
#
# Source: tests/servers/vcsim/main.go. Output: $VCSIM_CACHE (default .cache/vcsim in
# the repository, gitignored)/vcsim, rebuilt only when main.go or the Go toolchain /
# govmomi package version changed (a stamp file records what the binary was built
# from). Prints the binary's path on stdout.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="$repo/tests/servers/vcsim/main.go"
cache="${VCSIM_CACHE:-$repo/.cache/vcsim}"
pkg="virtrigaud.test/vcsim"
binary="$cache/vcsim"

for tool in go dpkg-query sha256sum; do
  command -v "$tool" >/dev/null || { echo "build-vcsim: $tool not found (scripts/install-system-deps.sh installs golang-go)" >&2; exit 1; }
done
if [[ ! -d /usr/share/gocode/src/github.com/vmware/govmomi/simulator ]]; then
  echo "build-vcsim: govmomi source missing (apt: golang-github-vmware-govmomi-dev)" >&2
  exit 1
fi

mkdir -p "$cache"
exec 9>"$cache/lock"
flock 9 # one build at a time (parallel test sessions)

# No cgo (no C compiler needed, a static binary), no user Go config, no network.
build_env=(GO111MODULE=off GOPROXY=off GOFLAGS= GOENV=off CGO_ENABLED=0)

stamp="$(
  echo "${build_env[*]}"
  sha256sum "$src" | cut -d' ' -f1
  go version
  dpkg-query -W -f='${Version}\n' golang-github-vmware-govmomi-dev 2>/dev/null || true
)"
if [[ -x "$binary" && -f "$cache/stamp" && "$(cat "$cache/stamp")" == "$stamp" ]]; then
  echo "$binary"
  exit 0
fi

mkdir -p "$cache/src/$pkg" "$cache/gocache"
cp "$src" "$cache/src/$pkg/main.go"
# GOPATH mode against the Debian source tree.
env "${build_env[@]}" GOPATH="$cache:/usr/share/gocode" GOCACHE="$cache/gocache" \
  go build -o "$binary.tmp" "$pkg" >&2
mv "$binary.tmp" "$binary"
printf '%s' "$stamp" >"$cache/stamp"
echo "$binary"
