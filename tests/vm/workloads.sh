#!/usr/bin/env bash
# Real workloads on /dev/ublkb0, each also run on the VM's scratch disk in
# the same run as the baseline. Runs as root in the VM rig, started by
# tests/tests/ublk.rs (database_and_build_workloads_on_ublk_in_the_vm).
#  1. PostgreSQL: initdb, pgbench -i, pgbench; `checkpoint --freeze` while
#     pgbench runs; more pgbench; stop, unmount, restore, mount, start: it
#     recovers, pg_amcheck is clean, the pgbench invariants hold and the
#     history table holds the transactions committed before the freeze.
#     Also pgbench with 16 clients (group commit: TPS grows with clients),
#     and on a volume attached with --durability local (docs/design/0014).
#  2. A build: the SQLite amalgamation and a program using it, built on the
#     volume; checkpoint --freeze; make clean; restore; the outputs are back.
# Prints "RESULT name value" lines for the benchmark notes (ratios only:
# the VM is emulated).
set -euo pipefail
B=${SPRITEDISK_BIN:-$PWD/target/debug/spritedisk}
SQLITE_SRC=${SPRITEDISK_SQLITE_SRC:?the directory holding sqlite3.c and sqlite3.h}
PGBENCH_SECS=${SPRITEDISK_PGBENCH_SECS:-10}
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
W=/tmp/scratch; [ -d $W ] || W=/tmp
export SPRITEDISK_LOG=info
fail() { echo "FAIL: $*"; tail -20 /tmp/pg.log 2>/dev/null || true; for l in $W/cache-*/daemon.log; do echo "--- $l"; tail -20 "$l"; done; exit 1; }
step() { echo "== $*"; }
now_us() { date +%s%6N; }
M=$W/mnt; mkdir -p $M
PG=(runuser -u postgres --)
PSQL=($PGBIN/psql -h /tmp -U postgres -d postgres -qAt)

pg_start() { # datadir
  "${PG[@]}" $PGBIN/pg_ctl -D "$1" -l /tmp/pg.log -w -t 300 \
    -o "-k /tmp -c listen_addresses='' -c shared_buffers=64MB" start >/dev/null || fail "postgres did not start"
}
pg_stop() { "${PG[@]}" $PGBIN/pg_ctl -D "$1" -w -t 300 stop -m fast >/dev/null || fail "postgres did not stop"; }
# pgbench -T SECS with CLIENTS (default 4), its per-transaction log in
# /tmp/pgb.*; prints the TPS.
pgbench_run() { # secs [clients]
  rm -f /tmp/pgb.*
  $PGBIN/pgbench -n -h /tmp -U postgres -c "${2:-4}" -T "$1" -l --log-prefix=/tmp/pgb postgres > /tmp/pgbench.out 2>&1 \
    || { cat /tmp/pgbench.out; fail "pgbench"; }
  sed -n 's/^tps = \([0-9.]*\).*/\1/p' /tmp/pgbench.out | head -n 1
}
# The pgbench invariant: every transaction adds the same delta to one
# account, teller and branch and logs it in history (runs use -n: without
# it pgbench truncates the history first).
invariants() {
  "${PSQL[@]}" -c "select (select sum(abalance) from pgbench_accounts) = (select coalesce(sum(delta),0) from pgbench_history)
      and (select sum(tbalance) from pgbench_tellers) = (select coalesce(sum(delta),0) from pgbench_history)
      and (select sum(bbalance) from pgbench_branches) = (select coalesce(sum(delta),0) from pgbench_history)"
}
sums() {
  "${PSQL[@]}" -c "select 'accounts ' || (select sum(abalance) from pgbench_accounts) || ', tellers ' || (select sum(tbalance) from pgbench_tellers)
      || ', branches ' || (select sum(bbalance) from pgbench_branches) || ', history ' || (select coalesce(sum(delta),0) from pgbench_history)"
}
# initdb -N: initdb's own fsyncs of its ~1000 files cost minutes on TCG and
# test nothing here (the checkpoint freezes the filesystem, which writes
# them back; pgbench's commits are synced as usual). Same on every disk.
pg_setup() { # dir
  mkdir -p "$1"; chown postgres "$1"
  "${PG[@]}" $PGBIN/initdb -N -D "$1/data" -A trust -U postgres >/dev/null || fail "initdb on $1"
  pg_start "$1/data"
  $PGBIN/pgbench -h /tmp -U postgres -i -s 1 -q postgres >/dev/null 2>&1 || fail "pgbench -i"
}

step "1a. PostgreSQL on the scratch disk (the baseline)"
pg_setup $W/pgbase
TPS_BASE=$(pgbench_run $PGBENCH_SECS)
pg_stop $W/pgbase/data
echo "RESULT pgbench_tps_scratch $TPS_BASE"

step "1b. PostgreSQL on /dev/ublkb0"
$B create file://$W/store/pg --size 8G >/dev/null
DEV=$($B attach file://$W/store/pg --cache-dir $W/cache-pg) || fail "attach"
mkfs.ext4 -q -F "$DEV"
mount "$DEV" $M
# A filesystem that is not on the volume's device is refused.
out=$($B checkpoint file://$W/store/pg wrong --cache-dir $W/cache-pg --freeze /tmp 2>&1) && fail "froze a filesystem on another device"
echo "$out" | grep -q "not on $DEV" || fail "the refusal does not name the device: $out"
pg_setup $M/pg
TPS_UBLK=$(pgbench_run $PGBENCH_SECS)
echo "RESULT pgbench_tps_ublk $TPS_UBLK"
[ "$(invariants)" = t ] || fail "the pgbench balances do not match the history before any checkpoint: $(sums)"
TPS_UBLK16=$(pgbench_run $PGBENCH_SECS 16)
echo "RESULT pgbench_tps_ublk_16_clients $TPS_UBLK16"

step "1c. checkpoint --freeze while pgbench runs"
rm -f /tmp/pgb.*
$PGBIN/pgbench -n -h /tmp -U postgres -c 4 -T 20 -l --log-prefix=/tmp/pgb postgres > /tmp/pgbench.out 2>&1 &
BENCH=$!
sleep 8
T_BEFORE=$(now_us)
$B checkpoint file://$W/store/pg during-pgbench --cache-dir $W/cache-pg --freeze $M > /tmp/ckpt.out 2>&1 || { cat /tmp/ckpt.out; fail "checkpoint --freeze"; }
T_AFTER=$(now_us)
grep -v INFO /tmp/ckpt.out
wait $BENCH || { cat /tmp/pgbench.out; fail "pgbench during the checkpoint"; }
echo "RESULT freeze_ms $(sed -n 's/.*frozen for \([0-9]*\) ms.*/\1/p' /tmp/ckpt.out)"
echo "RESULT pgbench_tps_during_checkpoint $(sed -n 's/^tps = \([0-9.]*\).*/\1/p' /tmp/pgbench.out | head -n 1)"
# pgbench's log: "client txno latency_us script epoch_s epoch_us" per transaction.
cat /tmp/pgb.* > /tmp/ckpt-run.log
ACKED_BEFORE=$(awk -v t=$T_BEFORE '{ if ($5 * 1000000 + $6 < t) n++ } END { print n + 0 }' /tmp/ckpt-run.log)
STARTED_BEFORE_THAW=$(awk -v t=$T_AFTER '{ if ($5 * 1000000 + $6 - $3 < t) n++ } END { print n + 0 }' /tmp/ckpt-run.log)
H_START=$("${PSQL[@]}" -c "select count(*) from pgbench_history")
echo "history rows: $H_START after the run; $ACKED_BEFORE committed before the freeze began, $STARTED_BEFORE_THAW begun before the thaw (this run)"
pgbench_run 5 >/dev/null
H_END=$("${PSQL[@]}" -c "select count(*) from pgbench_history")
pg_stop $M/pg/data
umount $M

step "1d. restore the checkpoint: PostgreSQL recovers to the moment of the freeze"
$B restore file://$W/store/pg during-pgbench --cache-dir $W/cache-pg || fail "restore"
mount "$DEV" $M
rm -f /tmp/pg.log
pg_start $M/pg/data
grep -q "database system was not properly shut down\|redo done\|redo starts" /tmp/pg.log || fail "postgres did not run crash recovery (the checkpoint should look like a power cut)"
$PGBIN/pg_amcheck -h /tmp -U postgres --install-missing --heapallindexed postgres > /tmp/amcheck.out 2>&1 || { cat /tmp/amcheck.out; fail "pg_amcheck"; }
[ "$(invariants)" = t ] || fail "the pgbench balances do not match the history: $(sums)"
H=$("${PSQL[@]}" -c "select count(*) from pgbench_history")
# Rows before this run's start: the earlier pgbench; the log covers this run.
H_PRIOR=$((H_START - $(wc -l < /tmp/ckpt-run.log)))
N=$((H - H_PRIOR))
echo "history after restore: $N rows of this run (committed before the freeze: $ACKED_BEFORE, begun before the thaw: $STARTED_BEFORE_THAW); $H_END rows before the restore"
[ "$N" -ge "$ACKED_BEFORE" ] || fail "transactions committed before the freeze are missing ($N < $ACKED_BEFORE)"
[ "$N" -le "$STARTED_BEFORE_THAW" ] || fail "the checkpoint holds transactions begun after the thaw ($N > $STARTED_BEFORE_THAW)"
[ "$H" -lt "$H_END" ] || fail "the restore did not go back in time ($H rows, $H_END before)"
pg_stop $M/pg/data
umount $M
$B detach "$DEV" >/dev/null

step "1e. PostgreSQL on /dev/ublkb0 attached with --durability local"
$B create file://$W/store/pgl --size 8G >/dev/null
DEV=$($B attach file://$W/store/pgl --cache-dir $W/cache-pgl --durability local) || fail "attach --durability local"
mkfs.ext4 -q -F "$DEV"
mount "$DEV" $M
pg_setup $M/pg
TPS_LOCAL=$(pgbench_run $PGBENCH_SECS)
echo "RESULT pgbench_tps_ublk_local $TPS_LOCAL"
[ "$(invariants)" = t ] || fail "the pgbench balances do not match the history (local durability): $(sums)"
SYNCS=$($B stats file://$W/store/pgl --cache-dir $W/cache-pgl --json | grep -o '"session_journal_syncs": *[0-9]*' | grep -o '[0-9]*$' | sort -n | tail -n 1)
[ "${SYNCS:-0}" -gt 0 ] || fail "no journal syncs: the volume is not in local durability"
pg_stop $M/pg/data
umount $M
$B detach "$DEV" >/dev/null
echo "ok 1"

step "2. build the SQLite amalgamation on the volume; checkpoint; make clean; restore"
SRC=/tmp/src; mkdir -p $SRC/sqlite-demo
cp "$SQLITE_SRC/sqlite3.c" "$SQLITE_SRC/sqlite3.h" $SRC/sqlite-demo/
cat > $SRC/sqlite-demo/main.c <<'EOF'
#include <stdio.h>
#include "sqlite3.h"
static int row(void *u, int n, char **v, char **c) { (void)u; (void)n; (void)c; printf("%s\n", v[0]); return 0; }
int main(void) {
  sqlite3 *db;
  if (sqlite3_open(":memory:", &db) != SQLITE_OK) return 1;
  return sqlite3_exec(db, "create table t(x); with recursive c(i) as (select 1 union all select i+1 from c where i<1000)"
                      " insert into t select i from c; select sum(x) || ' ' || sqlite_version() from t;", row, 0, 0) != SQLITE_OK;
}
EOF
cat > $SRC/sqlite-demo/Makefile <<'EOF'
CFLAGS = -O0 -DSQLITE_THREADSAFE=0 -DSQLITE_OMIT_LOAD_EXTENSION
demo: main.o libsqlite3.a
	$(CC) -o $@ main.o libsqlite3.a -lm
libsqlite3.a: sqlite3.o
	$(AR) rcs $@ $^
clean:
	rm -f *.o *.a demo
EOF
tar -C $SRC -czf /tmp/sqlite-demo.tar.gz sqlite-demo
build() { # dir: unpack and build there; prints the seconds
  local t0; t0=$(now_us)
  tar -C "$1" -xzf /tmp/sqlite-demo.tar.gz
  make -s -C "$1/sqlite-demo" >/dev/null || fail "make in $1"
  sync -f "$1"
  echo $(( ($(now_us) - t0) / 1000 ))
}
mkdir -p $W/buildbase
# Warm the compiler's binaries (read over 9p) so neither build pays for it.
echo 'int main(void) { return 0; }' > /tmp/warm.c && cc -O0 -c /tmp/warm.c -o /tmp/warm.o
MS_BASE=$(build $W/buildbase)
echo "RESULT build_ms_scratch $MS_BASE"
$B create file://$W/store/build --size 4G >/dev/null
DEV=$($B attach file://$W/store/build --cache-dir $W/cache-build) || fail "attach"
mkfs.ext4 -q -F "$DEV"
mount "$DEV" $M
MS_UBLK=$(build $M)
echo "RESULT build_ms_ublk $MS_UBLK"
[ "$($M/sqlite-demo/demo)" = "$($W/buildbase/sqlite-demo/demo)" ] || fail "the program built on the volume answers differently"
(cd $M/sqlite-demo && sha256sum demo main.o sqlite3.o libsqlite3.a) > /tmp/outputs.sum
$B checkpoint file://$W/store/build built --cache-dir $W/cache-build --freeze $M 2>/tmp/ckpt.err || { cat /tmp/ckpt.err; fail "checkpoint --freeze"; }
make -s -C $M/sqlite-demo clean
[ ! -e $M/sqlite-demo/demo ] || fail "make clean left the program"
umount $M
$B restore file://$W/store/build built --cache-dir $W/cache-build || fail "restore"
mount "$DEV" $M
(cd $M/sqlite-demo && sha256sum --quiet -c /tmp/outputs.sum) || fail "the build outputs are not back after the restore"
$M/sqlite-demo/demo | grep -q "^500500 " || fail "the restored program does not run"
umount $M
$B detach "$DEV" >/dev/null
echo "ok 2"
echo "ALL OK"
