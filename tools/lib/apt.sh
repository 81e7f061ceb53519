# Shared by tools/install-deps.sh and the VM rig (tests/vm/rig/run-in-vm.sh):
# apt with Debian 12's suites *and* bookworm-backports, from a source list and
# package lists of our own under $SPRITEDISK_APT_DIR (default
# /var/cache/spritedisk-apt). /etc/apt is never changed, and nothing is taken
# from backports unless a command names a version from there.
SPRITEDISK_APT_DIR=${SPRITEDISK_APT_DIR:-/var/cache/spritedisk-apt}
_sd_sudo=; [ "$(id -u)" = 0 ] || _sd_sudo=sudo

# apt_bpo ARGS...: apt-get with bookworm + bookworm-backports.
apt_bpo() {
  local d=$SPRITEDISK_APT_DIR
  if [ ! -f "$d/lists.stamp" ]; then
    $_sd_sudo mkdir -p "$d/lists/partial"
    $_sd_sudo tee "$d/sources.list" >/dev/null <<'LIST'
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-updates main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-backports main
LIST
    $_sd_sudo apt-get -o "Dir::Etc::sourcelist=$d/sources.list" -o Dir::Etc::sourceparts=- \
      -o "Dir::State::Lists=$d/lists" update -qq >/dev/null
    $_sd_sudo touch "$d/lists.stamp"
  fi
  $_sd_sudo env DEBIAN_FRONTEND=noninteractive apt-get -o "Dir::Etc::sourcelist=$d/sources.list" \
    -o Dir::Etc::sourceparts=- -o "Dir::State::Lists=$d/lists" "$@"
}

# installed_version PKG: the installed version of a Debian package, or nothing.
installed_version() {
  dpkg-query -W -f='${db:Status-Abbrev} ${Version}\n' "$1" 2>/dev/null | awk '$1 == "ii" { print $2 }'
}
