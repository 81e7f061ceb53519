//! What a pool daemon does to its own /dev/ublkbN around a bind and an
//! unbind, so that nothing of one volume is readable through the device
//! once the next is bound: keep everyone else out (an exclusive open, and
//! no other process holding the device), drop the kernel's page cache of
//! the device, and re-read its partition table.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// `_IO(0x12, 97)`: sync the device's page cache, then drop it. (Neither
/// request is in the libc crate: linux/fs.h values.)
const BLKFLSBUF: libc::c_ulong = 0x1261;
/// `_IO(0x12, 95)`: re-read the partition table.
const BLKRRPART: libc::c_ulong = 0x125f;

/// An exclusive open of a block device: while it is held nobody can mount
/// it or open it exclusively (and we open it only when nobody has).
pub struct Claim {
    file: File,
    path: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BdevError {
    #[error("{path} is in use ({why}): unmount it and close it first")]
    Busy { path: String, why: String },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl Claim {
    /// Opens `path` exclusively; fails when it or one of its partitions is
    /// mounted, held (by an exclusive opener, or a device stacked on it),
    /// or open in any other process.
    pub fn take(path: &str) -> Result<Claim, BdevError> {
        let busy = |why: String| BdevError::Busy {
            path: path.to_string(),
            why,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_EXCL)
            .open(path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::EBUSY) => {
                    busy(in_use(path).unwrap_or_else(|| "held open exclusively".into()))
                }
                _ => BdevError::Io {
                    op: "opening",
                    path: path.to_string(),
                    source: e,
                },
            })?;
        if let Some(why) = in_use(path) {
            return Err(busy(why));
        }
        Ok(Claim {
            file,
            path: path.to_string(),
        })
    }

    /// Writes the page cache's dirty pages to the device (so they land in
    /// the volume still bound) and drops every cached page.
    pub fn flush_page_cache(&self) -> Result<(), BdevError> {
        self.ioctl(BLKFLSBUF, "flushing the page cache of")
    }

    /// Makes the kernel read the partition table of what is bound now:
    /// the partitions of the previous volume go, those of the new one come.
    pub fn reread_partitions(&self) -> Result<(), BdevError> {
        self.ioctl(BLKRRPART, "re-reading the partition table of")
    }

    fn ioctl(&self, req: libc::c_ulong, op: &'static str) -> Result<(), BdevError> {
        // SAFETY: both requests take no argument; the fd is open.
        let r = unsafe { libc::ioctl(self.file.as_raw_fd(), req as _, 0) };
        if r < 0 {
            return Err(BdevError::Io {
                op,
                path: self.path.clone(),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}

/// Why `path` (a whole disk) cannot be taken: it or a partition of it is
/// mounted, has a device stacked on it, or is open in another process.
pub fn in_use(path: &str) -> Option<String> {
    let devs = disk_and_partitions(path);
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for (name, majmin) in &devs {
        let mounted = info.lines().find_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.get(2) == Some(&majmin.as_str())).then(|| f.get(4).unwrap_or(&"?").to_string())
        });
        if let Some(m) = mounted {
            return Some(format!("{name} mounted at {m}"));
        }
        let holders = std::fs::read_dir(format!("/sys/class/block/{name}/holders"))
            .map(|d| d.count())
            .unwrap_or(0);
        if holders > 0 {
            return Some(format!("{name} held by a device stacked on it"));
        }
    }
    let pids = openers(&devs);
    (!pids.is_empty()).then(|| format!("open in process {}", pids.join(", ")))
}

/// The disk of `path` and its partitions: (name, "major:minor") from sysfs.
fn disk_and_partitions(path: &str) -> Vec<(String, String)> {
    let name = Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let dev = |n: &str| {
        std::fs::read_to_string(format!("/sys/class/block/{n}/dev"))
            .ok()
            .map(|d| d.trim().to_string())
    };
    let mut out: Vec<(String, String)> =
        dev(&name).map(|d| (name.clone(), d)).into_iter().collect();
    for e in std::fs::read_dir(format!("/sys/class/block/{name}"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let part = e.file_name().to_string_lossy().to_string();
        if part.starts_with(&name) && part != name {
            if let Some(d) = dev(&part) {
                out.push((part, d));
            }
        }
    }
    out
}

/// Pids (as strings) of other processes with one of `devs` open, found as
/// `fuser` does: through /proc/*/fd.
fn openers(devs: &[(String, String)]) -> Vec<String> {
    let rdevs: Vec<u64> = devs
        .iter()
        .filter_map(|(_, d)| {
            let (ma, mi) = d.split_once(':')?;
            Some(libc::makedev(ma.parse().ok()?, mi.parse().ok()?))
        })
        .collect();
    let me = std::process::id().to_string();
    let mut out = vec![];
    for p in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = p.file_name().to_string_lossy().to_string();
        if pid == me || !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::metadata(fd.path()).is_ok_and(|m| {
                use std::os::unix::fs::FileTypeExt;
                m.file_type().is_block_device() && rdevs.contains(&m.rdev())
            })
        });
        if holds {
            out.push(pid);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_device_is_named_in_the_error() {
        let e = Claim::take("/dev/ublkb-no-such").err().unwrap().to_string();
        assert!(e.contains("/dev/ublkb-no-such"), "{e}");
    }
}
