#!/usr/bin/env bash
# Installs the real clients the tests drive (fio with its nbd engine,
# qemu-io) when they are missing. Debian/Ubuntu; needs root for apt-get.
set -euo pipefail
need=()
command -v fio >/dev/null || need+=(fio)
command -v qemu-io >/dev/null || need+=(qemu-utils)
[ ${#need[@]} -eq 0 ] && exit 0
SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq "${need[@]}"
