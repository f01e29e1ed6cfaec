#!/usr/bin/env bash
# Build chart-render (tests/charts/render/main.go), the `helm template` stand-in the
# chart tests use, offline from Debian's Go packages (apt: golang-go
# golang-github-masterminds-sprig-dev golang-k8s-sigs-yaml-dev; scripts/install-system-deps.sh).
#
# Output: $CHART_RENDER_CACHE (default .cache/chart-render in the repository,
# gitignored)/chart-render, rebuilt only when main.go, the Go toolchain or the Debian
# package versions changed. Prints the binary's path on stdout.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
src="$repo/tests/charts/render/main.go"
cache="${CHART_RENDER_CACHE:-$repo/.cache/chart-render}"
pkg="virtrigaud.test/chartrender"
binary="$cache/chart-render"
debs=(golang-github-masterminds-sprig-dev golang-k8s-sigs-yaml-dev)

for tool in go dpkg-query sha256sum flock; do
  command -v "$tool" >/dev/null || { echo "build-renderer: $tool not found (scripts/install-system-deps.sh installs golang-go)" >&2; exit 1; }
done
for dir in github.com/Masterminds/sprig sigs.k8s.io/yaml; do
  if [[ ! -d "/usr/share/gocode/src/$dir" ]]; then
    echo "build-renderer: Go source $dir missing (apt: ${debs[*]})" >&2
    exit 1
  fi
done

mkdir -p "$cache"
exec 9>"$cache/lock"
flock 9 # one build at a time (parallel test sessions)

stamp="$(
  sha256sum "$src" | cut -d' ' -f1
  go version
  dpkg-query -W -f='${Package} ${Version}\n' "${debs[@]}" 2>/dev/null || true
)"
if [[ -x "$binary" && -f "$cache/stamp" && "$(cat "$cache/stamp")" == "$stamp" ]]; then
  echo "$binary"
  exit 0
fi

mkdir -p "$cache/src/$pkg" "$cache/gocache"
cp "$src" "$cache/src/$pkg/main.go"
# GOPATH mode against the Debian source tree: no module proxy, no network.
GO111MODULE=off GOPROXY=off GOFLAGS= GOPATH="$cache:/usr/share/gocode" \
  GOCACHE="$cache/gocache" go build -o "$binary.tmp" "$pkg" >&2
mv "$binary.tmp" "$binary"
printf '%s' "$stamp" >"$cache/stamp"
echo "$binary"
