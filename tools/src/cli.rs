//! Command-line definition and dispatch.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use spritedisk_volume::{create_volume, EngineOptions};

use crate::checkpoints::{self, Op};
use crate::size::{human, parse_size};

#[derive(Parser, Debug)]
#[command(
    name = "spritedisk",
    version,
    about = "A block device whose durable state is a URL"
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

impl Cmd {
    /// Whether the command runs a daemon (its log is its record: info by
    /// default); one-shot commands print their results and log only
    /// warnings and errors unless SPRITEDISK_LOG says otherwise.
    pub fn is_daemon(&self) -> bool {
        matches!(
            self,
            Cmd::Attach(_)
                | Cmd::Recover { .. }
                | Cmd::FreezeWatchdog { .. }
                | Cmd::Pool(PoolCmd::Start(_) | PoolCmd::Run(_) | PoolCmd::Standby { .. })
        )
    }
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Create an empty thin-provisioned volume at URL (file:///dir or s3://bucket/prefix).
    Create {
        url: String,
        /// Virtual size (K, M, G, T; binary units).
        #[arg(long, default_value = "100G", value_parser = parse_size)]
        size: u64,
    },
    /// Attach a volume as /dev/ublkbN (default; runs a daemon and prints the device) or over NBD (--nbd, foreground).
    Attach(AttachArgs),
    /// Flush, stop and delete an attached ublk device (by /dev/ublkbN or URL); its daemon exits.
    Detach { target: String },
    /// Show attached ublk devices, their volumes and daemon pids.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Restart the daemon of /dev/ublkbN after it died; the same device resumes.
    Recover { device: String },
    /// Show sizes, bytes written vs stored, segments and extents of a volume.
    Stats {
        url: String,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        cache_dir: Option<PathBuf>,
    },
    /// Check every extent of the map against its segment and crc32c.
    Verify {
        url: String,
        #[arg(long)]
        cache_dir: Option<PathBuf>,
    },
    /// Checkpoint the volume (durable when this returns; auto-named v1, v2… when NAME is omitted, a name never reused).
    Checkpoint {
        url: String,
        name: Option<String>,
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        /// Freeze the filesystem mounted here (on this volume's device) for the checkpoint, then thaw it: consistent without unmounting.
        #[arg(long, value_name = "MOUNTPOINT")]
        freeze: Option<PathBuf>,
        /// Longest the filesystem stays frozen, in seconds; no checkpoint is recorded after it.
        #[arg(long, default_value_t = 10.0, requires = "freeze")]
        freeze_timeout: f64,
    },
    /// Thaws MOUNTPOINT at the deadline its parent sends (see freeze.rs); started by `checkpoint --freeze`.
    #[command(hide = true)]
    FreezeWatchdog { mountpoint: PathBuf },
    /// List the volume's checkpoints.
    Checkpoints {
        url: String,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        cache_dir: Option<PathBuf>,
    },
    /// Make the volume's content a checkpoint's (unmount its filesystem first).
    Restore {
        url: String,
        name: String,
        #[arg(long)]
        cache_dir: Option<PathBuf>,
    },
    /// Delete a checkpoint (its data stays until nothing references it).
    DeleteCheckpoint {
        url: String,
        name: String,
        #[arg(long)]
        cache_dir: Option<PathBuf>,
    },
    /// Create NEWURL as a fork of checkpoint NAME of URL: it shares URL's
    /// segments (nothing is copied) and then diverges; URL keeps NAME while
    /// the fork exists.
    Fork {
        /// The parent and its checkpoint, as URL@NAME.
        source: String,
        new_url: String,
        /// The fork's cache directory (default: derived from NEWURL).
        #[arg(long)]
        cache_dir: Option<PathBuf>,
    },
    /// Delete segments no map references (live, checkpoints, forks), after
    /// compacting mostly-unreferenced ones; durable before it deletes.
    Gc {
        url: String,
        /// Report what would be done; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Compact segments less than this percent referenced (0: never).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(0..=100))]
        compact_below: u64,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        cache_dir: Option<PathBuf>,
    },
    /// Delete the volume at URL and every object under it (refused while it
    /// is attached or while forks read from it); a fork's pin in its parent
    /// is released. Also removes the leftovers of an interrupted rm.
    Rm {
        url: String,
        #[arg(long)]
        json: bool,
    },
    /// A warm pool of standby ublk devices, so that `attach --pool` only opens the volume.
    #[command(subcommand)]
    Pool(PoolCmd),
    /// Measure the raw object store (parallel PUT/GET of SIZE objects, small
    /// PUT latency, random ranged GETs of one piece) under URL/store-bench/,
    /// deleting what it wrote; JSON out.
    StoreBench {
        url: String,
        #[arg(long, default_value = "8M", value_parser = parse_size)]
        size: u64,
        #[arg(long, default_value_t = 32)]
        count: usize,
        #[arg(long, default_value_t = 8)]
        parallel: usize,
        /// Size of each random ranged GET (the engine's piece: what a cold
        /// 4 KiB read fetches), at most --size; 0 skips them.
        #[arg(long, default_value = "64K", value_parser = parse_size)]
        ranged_size: u64,
        /// How many random ranged GETs.
        #[arg(long, default_value_t = 2048)]
        ranged_count: usize,
        /// Random ranged GETs in flight at once.
        #[arg(long, default_value_t = 32)]
        ranged_parallel: usize,
    },
    /// Measure the engine alone (no frontend): warm 4 KiB random reads/s by
    /// number of concurrent readers, with lookup and lock-wait times, on a
    /// file:// volume created under DIR; JSON out.
    EngineBench {
        dir: PathBuf,
        #[arg(long, default_value = "256M", value_parser = parse_size)]
        size: u64,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
        readers: Vec<usize>,
        /// Look the map up on the writer's connection under its lock (the
        /// baseline: how reads ran before docs/design/0011).
        #[arg(long)]
        locked_lookups: bool,
        /// Look the map up for every read, never from the lookup memo (the
        /// baseline: how reads ran before docs/design/0018).
        #[arg(long)]
        no_lookup_memo: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum PoolCmd {
    /// Start N standby daemons, each with its ublk device (100 GiB) up and
    /// its store connection open; returns once they are ready.
    Start(crate::pool::PoolArgs),
    /// Show the pool's standby devices and the volumes they serve.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Retire the standby devices; devices serving volumes stay until detached.
    Stop,
    /// The pool's manager in the foreground (what `pool start` runs).
    #[command(hide = true)]
    Run(crate::pool::PoolArgs),
    /// One standby daemon (started by the manager).
    #[command(hide = true)]
    Standby {
        #[arg(long)]
        slot: u64,
        #[arg(long)]
        pool_cache_dir: PathBuf,
        #[arg(long)]
        store: Option<String>,
        #[arg(long, value_parser = parse_size)]
        cache_size: u64,
        #[arg(long)]
        queues: u16,
        #[arg(long)]
        queue_depth: u16,
        #[arg(long)]
        manager_pid: u32,
    },
}

#[derive(clap::Args, Debug, serde::Serialize, serde::Deserialize)]
pub struct AttachArgs {
    pub url: String,
    /// Serve over NBD on this Unix socket instead of ublk (foreground).
    #[arg(long, value_name = "SOCKET")]
    pub nbd: Option<PathBuf>,
    /// Serve over NBD on this TCP address instead (keep it on 127.0.0.1).
    #[arg(long, value_name = "ADDR")]
    pub nbd_tcp: Option<std::net::SocketAddr>,
    /// NBD: connections served at once; one more is closed before the
    /// greeting and logged. Each may hold up to 256 MiB of reads in flight.
    #[arg(long, default_value_t = nbd_max_connections_default(), value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..))]
    #[serde(default = "nbd_max_connections_default")] // args sent by an older CLI
    pub nbd_max_connections: u16,
    /// ublk: stay in the foreground instead of starting a daemon.
    #[arg(long)]
    pub foreground: bool,
    /// ublk: bind the volume to a ready device of the warm pool (`pool
    /// start`) instead of starting a daemon; attaches cold, saying why, when
    /// no pool runs or the volume is not the pool devices' 100 GiB. The
    /// device's queues and read cache are the pool's.
    #[arg(long, conflicts_with_all = ["nbd", "nbd_tcp", "foreground", "cache_dir", "recover_dev", "queues"])]
    pub pool: bool,
    /// With --pool: how long to wait for a standby when none is ready
    /// (the pool refills in the background) before attaching cold.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub pool_wait: f64,
    /// ublk: hardware queues (default: the number of CPUs).
    #[arg(long)]
    pub queues: Option<u16>,
    /// ublk: requests in flight per queue.
    #[arg(long, default_value_t = 64)]
    pub queue_depth: u16,
    /// ublk: take over the existing device N whose daemon died (what `recover` runs).
    #[arg(long, hide = true)]
    pub recover_dev: Option<u32>,
    /// Benchmarking aid: delay every GET this long, as a remote region would
    /// (a loopback store flatters read-ahead and cold reads).
    #[arg(long, hide = true, value_name = "MS")]
    pub simulate_get_latency_ms: Option<u64>,
    /// Testing aid: delay every PUT this long, as a slow or stalling store would.
    #[arg(long, hide = true, value_name = "MS")]
    pub simulate_put_latency_ms: Option<u64>,
    /// Testing aid (the crash loop): fail this fraction of store requests
    /// with a transient error, as a flaky S3 endpoint would (seeded by pid).
    #[arg(long, hide = true, value_name = "RATE")]
    pub simulate_store_errors: Option<f64>,
    /// Local cache directory (metadata database, write log, read cache). Only a cache: deleting it while detached is safe.
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Size of the local read cache (a sparse file in the cache directory; 0 turns it off).
    #[arg(long, default_value = "4G", value_parser = parse_size)]
    pub cache_size: u64,
    /// How far ahead of a sequential reader flushed data is fetched into the cache (0: off).
    #[arg(long, default_value = "4M", value_parser = parse_size)]
    pub prefetch_window: u64,
    /// Seal and upload a segment when this much data is buffered.
    #[arg(long, default_value = "8M", value_parser = parse_size)]
    pub segment_size: u64,
    /// Most data held in memory before writers wait.
    #[arg(long, default_value = "64M", value_parser = parse_size)]
    pub dirty_max: u64,
    /// Segment uploads in flight at once.
    #[arg(long, default_value_t = 4)]
    pub uploads: usize,
    /// A FLUSH that cannot reach the store for this many seconds fails with EIO.
    #[arg(long, default_value_t = 60.0)]
    pub flush_timeout: f64,
    /// Buffered writes older than this many seconds are uploaded without a FLUSH.
    #[arg(long, default_value_t = 5.0)]
    pub writeback_delay: f64,
    /// What a FLUSH waits for. `store`: the writes are in the object store
    /// (they survive losing the machine). `local`: they are in the local
    /// write journal, fdatasynced, and uploaded within --writeback-delay
    /// (they survive a daemon crash and a power cut, not losing the
    /// machine: at most --dirty-max of flushed writes). Checkpoints and
    /// detach upload everything in both. Needs the cache directory on a
    /// disk that honours fdatasync.
    #[arg(long, default_value = "store", value_parser = parse_durability, value_name = "store|local")]
    pub durability: spritedisk_volume::Durability,
    /// Take the volume over from a daemon that still holds it (another
    /// machine, a hung process): that daemon is fenced, its next flush fails.
    #[arg(long)]
    pub force: bool,
    /// A holder that has not renewed its lease for this many seconds is
    /// presumed dead, and its volume may be attached without --force.
    #[arg(long, default_value_t = 30.0)]
    pub lease_ttl: f64,
    /// No longer used: a FLUSH never reads the lease since the fenced chain
    /// (docs/design/0009). Accepted so that existing scripts keep working.
    #[arg(long, hide = true)]
    pub lease_ack_grace: Option<f64>,
}

fn nbd_max_connections_default() -> u16 {
    const _: () = assert!(spritedisk_nbd::CONNECTIONS_MAX_DEFAULT <= u16::MAX as usize);
    spritedisk_nbd::CONNECTIONS_MAX_DEFAULT as u16
}

impl AttachArgs {
    /// The defaults clap would give for `attach URL`.
    pub fn defaults(url: &str) -> AttachArgs {
        match Cli::parse_from(["spritedisk", "attach", url]).cmd {
            Cmd::Attach(a) => a,
            _ => unreachable!(),
        }
    }

    /// The volume's object store, with any simulated latency.
    pub fn open_store(&self) -> Result<std::sync::Arc<dyn spritedisk_store::ObjectStore>> {
        let store = spritedisk_store::open_url(&self.url)?;
        if self.simulate_get_latency_ms.is_none()
            && self.simulate_put_latency_ms.is_none()
            && self.simulate_store_errors.is_none()
        {
            return Ok(store);
        }
        let cfg = spritedisk_store::FaultConfig {
            get_delay: std::time::Duration::from_millis(self.simulate_get_latency_ms.unwrap_or(0)),
            put_delay: std::time::Duration::from_millis(self.simulate_put_latency_ms.unwrap_or(0)),
            error_rate: self.simulate_store_errors.unwrap_or(0.0).clamp(0.0, 0.9),
            ..Default::default()
        };
        let seed = std::process::id() as u64;
        Ok(std::sync::Arc::new(spritedisk_store::FaultStore::new(
            store, cfg, seed,
        )))
    }

    pub fn engine_options(&self) -> Result<EngineOptions> {
        anyhow::ensure!(
            self.segment_size >= 4096,
            "--segment-size must be at least 4K"
        );
        anyhow::ensure!(
            self.dirty_max >= 2 * self.segment_size,
            "--dirty-max must be at least twice --segment-size"
        );
        anyhow::ensure!(
            self.flush_timeout > 0.0
                && self.writeback_delay > 0.0
                && self.lease_ttl >= 1.0
                && self.lease_ttl <= spritedisk_volume::lease::LEASE_TTL_SECS_MAX as f64,
            "timeouts must be positive (and --lease-ttl between 1 s and an hour)"
        );
        if self.lease_ack_grace.is_some() {
            tracing::warn!("--lease-ack-grace is ignored: a FLUSH no longer reads the lease (docs/design/0009)");
        }
        Ok(EngineOptions {
            segment_bytes: self.segment_size,
            dirty_bytes_max: self.dirty_max,
            upload_inflight_max: self.uploads.max(1),
            flush_timeout: Duration::from_secs_f64(self.flush_timeout),
            writeback_delay: Duration::from_secs_f64(self.writeback_delay),
            cache_bytes: self.cache_size,
            prefetch_window_bytes: self.prefetch_window,
            seed: std::process::id() as u64,
            lease_ttl: Duration::from_secs_f64(self.lease_ttl),
            take_over: self.force,
            // Recovering a device whose daemon died takes its lease back as
            // any attach would (a holder certainly gone from this kernel),
            // never from a writer that attached since (D4 of the review).
            reclaim: self.recover_dev.is_some(),
            durability: self.durability,
            ..EngineOptions::default()
        })
    }
}

/// Where a volume's local state lives unless `--cache-dir` says otherwise:
/// `$SPRITEDISK_CACHE_DIR`, else `$XDG_CACHE_HOME/spritedisk`, else `~/.cache/spritedisk`;
/// one subdirectory per URL.
pub fn default_cache_dir(url: &str) -> PathBuf {
    let base = cache_base();
    let tail: String = url
        .rsplit('/')
        .find(|s| !s.is_empty())
        .unwrap_or("volume")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    base.join(format!("{tail}-{:08x}", fnv1a(url)))
}

/// `$SPRITEDISK_CACHE_DIR`, else `$XDG_CACHE_HOME/spritedisk`, else `~/.cache/spritedisk`.
pub fn cache_base() -> PathBuf {
    std::env::var_os("SPRITEDISK_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("spritedisk")))
        .or_else(|| std::env::var_os("HOME").map(|d| PathBuf::from(d).join(".cache/spritedisk")))
        .unwrap_or_else(|| PathBuf::from("/var/cache/spritedisk"))
}

/// The local state of `url`: `explicit` if given, else that of the daemon
/// serving it here (a pool device keeps it in its slot), else the default.
pub fn cache_dir_for(url: &str, explicit: Option<PathBuf>) -> PathBuf {
    explicit
        .or_else(|| {
            crate::registry::all()
                .into_iter()
                .find(|e| e.url == url && crate::registry::pid_alive(e.pid))
                .map(|e| e.cache_dir)
        })
        .unwrap_or_else(|| default_cache_dir(url))
}

fn fnv1a(s: &str) -> u32 {
    // A stable short name for the URL; collisions only cost a ForeignMetadata error.
    let mut h: u32 = 0x811c9dc5;
    for b in s.bytes() {
        h = (h ^ b as u32).wrapping_mul(0x01000193);
    }
    h
}

pub async fn run(cli: Cli) -> Result<i32> {
    match cli.cmd {
        Cmd::Create { url, size } => {
            anyhow::ensure!(
                size > 0 && size.is_multiple_of(4096),
                "--size must be a positive multiple of 4096 bytes"
            );
            let store = spritedisk_store::open_url(&url)?;
            let cfg = create_volume(&store, &url, size).await?;
            println!(
                "created {url}: {} ({} bytes), volume id {}",
                human(size),
                size,
                cfg.id
            );
            Ok(0)
        }
        Cmd::Attach(args) => crate::attach::attach(args).await,
        Cmd::Detach { target } => crate::ublk::detach(&target).await,
        Cmd::List { json } => crate::ublk::list(json),
        Cmd::Recover { device } => crate::ublk::recover(&device),
        Cmd::Stats {
            url,
            json,
            cache_dir,
        } => {
            let dir = cache_dir_for(&url, cache_dir);
            crate::inspect::stats(&url, &dir, json).await
        }
        Cmd::Checkpoint {
            url,
            name,
            cache_dir,
            freeze: None,
            ..
        } => checkpoints::run(&url, cache_dir, Op::Checkpoint(name.as_deref()), false).await,
        Cmd::Checkpoint {
            url,
            name,
            cache_dir,
            freeze: Some(mountpoint),
            freeze_timeout,
        } => {
            anyhow::ensure!(
                freeze_timeout > 0.0 && freeze_timeout <= 600.0,
                "--freeze-timeout must be between 0 and 600 seconds"
            );
            let timeout = Duration::from_secs_f64(freeze_timeout);
            checkpoints::run_frozen(&url, cache_dir, name.as_deref(), &mountpoint, timeout).await
        }
        Cmd::FreezeWatchdog { mountpoint } => crate::freeze::watchdog(&mountpoint),
        Cmd::Checkpoints {
            url,
            json,
            cache_dir,
        } => checkpoints::run(&url, cache_dir, Op::List, json).await,
        Cmd::Restore {
            url,
            name,
            cache_dir,
        } => checkpoints::run(&url, cache_dir, Op::Restore(&name), false).await,
        Cmd::DeleteCheckpoint {
            url,
            name,
            cache_dir,
        } => checkpoints::run(&url, cache_dir, Op::Delete(&name), false).await,
        Cmd::Fork {
            source,
            new_url,
            cache_dir,
        } => checkpoints::fork(&source, &new_url, cache_dir).await,
        Cmd::Gc {
            url,
            dry_run,
            compact_below,
            json,
            cache_dir,
        } => {
            let op = Op::Gc {
                dry_run,
                compact_below_percent: compact_below,
            };
            checkpoints::run(&url, cache_dir, op, json).await
        }
        Cmd::Rm { url, json } => crate::rm::rm(&url, json).await,
        Cmd::Pool(PoolCmd::Start(a)) => crate::pool::start(&a),
        Cmd::Pool(PoolCmd::Status { json }) => crate::pool::status(json),
        Cmd::Pool(PoolCmd::Stop) => crate::pool::stop().await,
        Cmd::Pool(PoolCmd::Run(a)) => crate::pool::manager::run(a).await,
        Cmd::Pool(PoolCmd::Standby {
            slot,
            pool_cache_dir,
            store,
            cache_size,
            queues,
            queue_depth,
            manager_pid,
        }) => {
            crate::pool::standby::run(crate::pool::standby::StandbyArgs {
                slot,
                pool_cache_dir,
                store,
                cache_bytes: cache_size,
                queues,
                queue_depth,
                manager_pid,
            })
            .await
        }
        Cmd::StoreBench {
            url,
            size,
            count,
            parallel,
            ranged_size,
            ranged_count,
            ranged_parallel,
        } => {
            let ranged = crate::storebench::Ranged {
                bytes: ranged_size,
                count: ranged_count,
                parallel: ranged_parallel.max(1),
            };
            crate::storebench::run(&url, size, count, parallel.max(1), ranged).await
        }
        Cmd::EngineBench {
            dir,
            size,
            seconds,
            readers,
            locked_lookups,
            no_lookup_memo,
        } => {
            let memo = !no_lookup_memo;
            crate::enginebench::run(&dir, size, seconds, &readers, locked_lookups, memo).await
        }
        Cmd::Verify { url, cache_dir } => {
            let dir = cache_dir_for(&url, cache_dir);
            crate::inspect::verify(&url, &dir).await.context("verify")
        }
    }
}

fn parse_durability(s: &str) -> Result<spritedisk_volume::Durability, String> {
    match s {
        "store" => Ok(spritedisk_volume::Durability::Store),
        "local" => Ok(spritedisk_volume::Durability::Local),
        other => Err(format!(
            "{other:?} is not a durability: `store` (a FLUSH waits for the object store) or `local` (for the local journal's fdatasync)"
        )),
    }
}
