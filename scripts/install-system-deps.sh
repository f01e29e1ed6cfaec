#!/usr/bin/env bash
# Install the Debian packages the tests and the demo need, if any are missing.
# Idempotent and quick when everything is present; uses sudo when not root.
set -euo pipefail

PACKAGES=(
  qemu-utils                 # qemu-img (convert, info, map, compare), qemu-io
  nginx libnginx-mod-http-dav-ext   # HTTP (WebDAV) intermediate storage in tests
  libvirt-dev pkg-config gcc # to build libvirt-python
  # a real libvirtd + QEMU for the libvirt provider (tests start the daemons themselves)
  libvirt-daemon-system libvirt-daemon-system-sysv libvirt-daemon-driver-qemu qemu-system-x86
  openssh-server             # a real sshd on loopback: the Proxmox provider's "node" in tests
  # vcsim (vSphere API simulator) for the vSphere provider: built offline from Debian's
  # govmomi source by scripts/build-vcsim.sh
  golang-go golang-github-vmware-govmomi-dev
  # chart-render (the `helm template` stand-in of tests/charts): Go text/template with
  # Helm's function library and YAML package, built offline by tests/charts/build-renderer.sh
  golang-github-masterminds-sprig-dev golang-k8s-sigs-yaml-dev
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  [[ "$pkg" == \#* ]] && continue
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]} == 0)); then
  exit 0
fi
echo "installing Debian packages: ${missing[*]}"
SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
