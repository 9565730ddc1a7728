#!/usr/bin/env bash
# Installs the test tools that come from Debian packages. Idempotent: does
# nothing when every tool is already on PATH.
#
# The tests start their own servers from these binaries (loopback, a temp dir)
# and never use a system service: if a package's postinst starts one, it is
# simply unused.
#
# To add a tool, append "<command>:<debian package>" to DEBIAN_TOOLS.
set -euo pipefail

DEBIAN_TOOLS=(
    "redis-server:redis-server"
    "openssl:openssl"
    "promtool:prometheus"
    "prometheus:prometheus"
)

missing=()
for tool in "${DEBIAN_TOOLS[@]}"; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || missing+=("${tool#*:}")
done
[ "${#missing[@]}" -eq 0 ] && exit 0

fail() {
    echo "install-tools.sh: $*" >&2
    echo "  install these Debian packages by hand: ${missing[*]}" >&2
    exit 1
}
command -v apt-get >/dev/null 2>&1 || fail "apt-get not found (not a Debian/Ubuntu host)"
if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo)
else
    fail "not root and sudo is not installed"
fi

echo "install-tools.sh: installing ${missing[*]}" >&2
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

for tool in "${DEBIAN_TOOLS[@]}"; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || fail "${tool%%:*} still missing after installing ${tool#*:}"
done
