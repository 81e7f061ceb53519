//! What a pool daemon does to its own /dev/ublkbN around a bind and an
//! unbind, so that nothing of one volume is readable through the device
//! once the next is bound: keep everyone else out (an exclusive open, and
//! no other process holding the device), drop the kernel's page cache of
//! the device, and re-read its partition table.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// `_IO(0x12, 97)`: sync the device's page cache, then drop it.
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
    /// Opens `path` exclusively; fails when it is mounted, held by another
    /// exclusive opener, or open in any other process.
    pub fn take(path: &str) -> Result<Claim, BdevError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_EXCL)
            .open(path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::EBUSY) => BdevError::Busy {
                    path: path.to_string(),
                    why: match mountpoint_of(path) {
                        Some(m) => format!("mounted at {m}"),
                        None => "held open exclusively".into(),
                    },
                },
                _ => BdevError::Io {
                    op: "opening",
                    path: path.to_string(),
                    source: e,
                },
            })?;
        let others = openers(path);
        if !others.is_empty() {
            return Err(BdevError::Busy {
                path: path.to_string(),
                why: format!("open in process {}", others.join(", ")),
            });
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

/// Pids (as strings) of other processes with `path` open, found as `fuser`
/// does: through /proc/*/fd.
pub fn openers(path: &str) -> Vec<String> {
    let Ok(rdev) = std::fs::metadata(path).map(|m| m.rdev()) else {
        return vec![];
    };
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
                m.file_type().is_block_device() && m.rdev() == rdev
            })
        });
        if holds {
            out.push(pid);
        }
    }
    out
}

/// Where `path` (a block device) is mounted, from /proc/self/mountinfo.
fn mountpoint_of(path: &str) -> Option<String> {
    let rdev = std::fs::metadata(path).ok()?.rdev();
    let want = format!("{}:{}", libc::major(rdev), libc::minor(rdev));
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.get(2) == Some(&want.as_str())).then(|| f.get(4).unwrap_or(&"?").to_string())
    })
}

/// True when `path` exists and is a block device.
pub fn is_block_device(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device())
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
