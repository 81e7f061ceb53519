//! The cache directory belongs to the daemon's user (review M8,
//! docs/design/0017). A daemon (often root) creates, truncates and writes
//! files in it by name: if another user could write in the directory, or
//! in a directory above it, they could plant a symbolic link named like one
//! of those files (or swap the directory for a link to one of theirs) and
//! have the daemon truncate or overwrite any file on the machine. So before
//! anything is opened in it:
//! - every directory above it (its real path) is owned by root or the
//!   daemon's user and writable by no one else, unless sticky (`/tmp`),
//!   where no one else can rename or delete what the daemon made;
//! - the directory is owned by the daemon's effective uid and writable by
//!   no one else (group-writable only when the group is the daemon's own);
//! - everything in it, and in its subdirectories, is owned by the daemon's
//!   user or root; a symbolic link in it is refused, except a link to a
//!   directory that passes the same check (a write log on another disk).
//!
//! The files the daemon writes are also opened with `O_NOFOLLOW` where it
//! can (the read cache, the write log, the daemon's log and stats), so a
//! link that appears later is refused, not followed.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::VolumeError;

/// Creates `dir` if it is missing and checks that only this process's user
/// (and root) can change what is in it or where it is; an error names the
/// cause and the fix, and nothing in the directory is changed.
pub fn ensure_private_dir(dir: &Path) -> Result<(), VolumeError> {
    // SAFETY: geteuid and getegid cannot fail and touch no memory.
    let who = Who {
        uid: unsafe { libc::geteuid() },
        gid: unsafe { libc::getegid() },
    };
    // The path as given (each directory that holds the next name, through
    // any link) and the real path both: whoever can write in either could
    // move the cache directory or re-point a link to it. Those that exist
    // are checked before anything is created.
    let given = if dir.is_relative() {
        let cwd = std::env::current_dir().map_err(|e| unreadable(dir, e))?;
        cwd.join(dir)
    } else {
        dir.to_path_buf()
    };
    for above in given.ancestors().skip(1).filter(|a| a.exists()) {
        check_above(above, who)?;
    }
    std::fs::create_dir_all(dir).map_err(|e| {
        VolumeError::BadConfig(format!(
            "cannot create cache directory {}: {e}",
            dir.display()
        ))
    })?;
    for above in given.ancestors().skip(1) {
        check_above(above, who)?;
    }
    check_real_path_above(dir, who)?;
    check_private(dir, who)?;
    check_entries(dir, who, 1)
}

#[derive(Clone, Copy)]
struct Who {
    uid: u32,
    gid: u32,
}

/// The entries of `dir`, and of its subdirectories `depth` levels down.
fn check_entries(dir: &Path, who: Who, depth: u32) -> Result<(), VolumeError> {
    let entries = std::fs::read_dir(dir).map_err(|e| unreadable(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| unreadable(dir, e))?;
        let path = entry.path();
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            // Gone since the listing (a file the daemon of a pool's other
            // slot deleted): nothing to check.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(unreadable(dir, e)),
        };
        if meta.file_type().is_symlink() {
            // The daemon's user may keep, say, the write log on another
            // disk: a link to a directory as private as this one is fine.
            match std::fs::metadata(&path) {
                Ok(target) if target.is_dir() => {
                    check_private(&path, who)?;
                    check_real_path_above(&path, who)?;
                    if depth > 0 {
                        check_entries(&path, who, depth - 1)?;
                    }
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(VolumeError::BadConfig(format!(
                        "{} is a symbolic link to {}, which does not exist (a disk not \
                         mounted?): mount it, or put what it should point to in its place; do \
                         not just delete the link: the write log may hold the only copy of \
                         recent writes",
                        path.display(),
                        std::fs::read_link(&path)
                            .map(|t| t.display().to_string())
                            .unwrap_or_else(|_| "?".into())
                    )))
                }
                _ => return Err(link_found(&path)),
            }
        }
        if meta.uid() != who.uid && meta.uid() != 0 {
            return Err(VolumeError::BadConfig(format!(
                "{} in the cache directory is owned by uid {}, not by this daemon's uid {} or root: \
                 someone else could change it; check where it came from, then chown it or choose \
                 another --cache-dir",
                path.display(),
                meta.uid(),
                who.uid
            )));
        }
        if meta.is_dir() {
            check_private_meta(&path, &meta, who, meta.uid())?;
            // A subdirectory root made for itself (lost+found of a mounted
            // filesystem, for a daemon that is not root) is not the daemon's.
            if depth > 0 && meta.uid() == who.uid {
                check_entries(&path, who, depth - 1)?;
            }
        }
    }
    Ok(())
}

fn unreadable(dir: &Path, e: std::io::Error) -> VolumeError {
    VolumeError::BadConfig(format!(
        "cannot read cache directory {}: {e}",
        dir.display()
    ))
}

fn link_found(path: &Path) -> VolumeError {
    VolumeError::BadConfig(format!(
        "{} is a symbolic link: the daemon follows no link inside its cache directory but one to \
         a directory as private as the cache directory (one planted there could make it \
         overwrite another file). Replace the link with what it points to (mv the target \
         there; do not just delete it: the write log may hold the only copy of recent writes), \
         or choose another --cache-dir",
        path.display()
    ))
}

/// Every directory above `dir`'s real path (links resolved).
fn check_real_path_above(dir: &Path, who: Who) -> Result<(), VolumeError> {
    let real = std::fs::canonicalize(dir).map_err(|e| unreadable(dir, e))?;
    real.ancestors()
        .skip(1)
        .try_for_each(|above| check_above(above, who))
}

/// A directory above the cache directory: owned by root or the daemon's
/// user, and writable by no one else unless sticky.
fn check_above(dir: &Path, who: Who) -> Result<(), VolumeError> {
    let meta = std::fs::metadata(dir).map_err(|e| unreadable(dir, e))?;
    if meta.uid() != 0 && meta.uid() != who.uid {
        return Err(VolumeError::BadConfig(format!(
            "{} (above the cache directory) is owned by uid {}: that user could move the cache \
             directory and put a link in its place; choose a --cache-dir under directories owned \
             by root or uid {}",
            dir.display(),
            meta.uid(),
            who.uid
        )));
    }
    let sticky = meta.mode() & 0o1000 != 0;
    if !sticky {
        check_private_meta(dir, &meta, who, meta.uid())?;
    }
    Ok(())
}

fn check_private(dir: &Path, who: Who) -> Result<(), VolumeError> {
    let meta = std::fs::metadata(dir).map_err(|e| unreadable(dir, e))?;
    if !meta.is_dir() {
        return Err(VolumeError::BadConfig(format!(
            "cache directory {} is not a directory",
            dir.display()
        )));
    }
    if meta.uid() != who.uid {
        return Err(VolumeError::BadConfig(format!(
            "cache directory {} is owned by uid {}, but this daemon runs as uid {}: \
             it writes only in a directory its own user owns (chown it, or choose another --cache-dir)",
            dir.display(),
            meta.uid(),
            who.uid
        )));
    }
    check_private_meta(dir, &meta, who, who.uid)
}

/// Writable by no one but `owner` (a group-writable directory only when
/// the group is the daemon's own: user-private groups with umask 002).
fn check_private_meta(
    dir: &Path,
    meta: &std::fs::Metadata,
    who: Who,
    owner: u32,
) -> Result<(), VolumeError> {
    let mode = meta.mode() & 0o7777;
    let others = mode & 0o002 != 0;
    let group = mode & 0o020 != 0 && meta.gid() != who.gid;
    if others || group {
        return Err(VolumeError::BadConfig(format!(
            "{} is writable by {} (mode {mode:o}) and owned by uid {owner}: another user could \
             plant links in it or move what is in it; `chmod go-w` it, or choose another --cache-dir",
            dir.display(),
            if others {
                "every user".to_string()
            } else {
                format!("group {}", meta.gid())
            },
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn err(dir: &Path) -> String {
        ensure_private_dir(dir).unwrap_err().to_string()
    }

    #[test]
    fn a_fresh_or_private_directory_is_accepted() {
        let t = tempfile::tempdir().unwrap();
        ensure_private_dir(&t.path().join("a/b")).unwrap();
        std::fs::create_dir(t.path().join("a/b/cache")).unwrap();
        std::fs::write(t.path().join("a/b/cache/cache.data"), b"x").unwrap();
        ensure_private_dir(&t.path().join("a/b")).unwrap();
        // Reached through a link: the target is what counts.
        std::os::unix::fs::symlink(t.path().join("a/b"), t.path().join("l")).unwrap();
        ensure_private_dir(&t.path().join("l")).unwrap();
    }

    #[test]
    fn writable_by_others_is_refused_with_the_fix() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("c");
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = err(&d);
        assert!(e.contains("writable by every user (mode 777)"), "{e}");
        assert!(e.contains("chmod go-w"), "{e}");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir(d.join("wlog")).unwrap();
        std::fs::set_permissions(d.join("wlog"), std::fs::Permissions::from_mode(0o1777)).unwrap();
        let e = err(&d);
        assert!(e.contains("wlog is writable by every user"), "{e}");
    }

    #[test]
    fn links_inside_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("c");
        std::fs::create_dir_all(d.join("cache")).unwrap();
        let victim = t.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        std::os::unix::fs::symlink(&victim, d.join("cache/cache.data")).unwrap();
        let e = err(&d);
        assert!(e.contains("cache.data is a symbolic link"), "{e}");
        std::fs::remove_file(d.join("cache/cache.data")).unwrap();
        std::os::unix::fs::symlink(&victim, d.join("meta.db")).unwrap();
        let e = err(&d);
        assert!(e.contains("meta.db is a symbolic link"), "{e}");
        // The fix it names never loses a write log kept elsewhere.
        assert!(e.contains("Replace the link with what it points to"), "{e}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    }

    #[test]
    fn a_link_to_a_private_directory_is_followed_and_checked() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("c");
        std::fs::create_dir(&d).unwrap();
        // The write log on "another disk".
        let elsewhere = t.path().join("nvme-wlog");
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("00000001.wlog"), b"x").unwrap();
        std::os::unix::fs::symlink(&elsewhere, d.join("wlog")).unwrap();
        ensure_private_dir(&d).unwrap();
        // Its target is held to the same rules.
        std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = err(&d);
        assert!(e.contains("wlog is writable by every user"), "{e}");
        std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink(t.path().join("victim"), elsewhere.join("00000002.wlog"))
            .unwrap();
        let e = err(&d);
        assert!(e.contains("00000002.wlog is a symbolic link"), "{e}");
    }

    #[test]
    fn a_directory_above_that_others_could_write_is_refused_unless_sticky() {
        let t = tempfile::tempdir().unwrap();
        let open = t.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = err(&open.join("c"));
        assert!(e.contains("open is writable by every user"), "{e}");
        // Sticky, like /tmp: no one else can move what the daemon made.
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        ensure_private_dir(&open.join("c")).unwrap();
        // Reached through a link that lives in an open directory: the
        // link could be re-pointed.
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let private = t.path().join("private");
        std::fs::create_dir(&private).unwrap();
        std::os::unix::fs::symlink(&private, open.join("l")).unwrap();
        let e = err(&open.join("l/c"));
        assert!(e.contains("open is writable by every user"), "{e}");
    }

    #[test]
    fn owned_by_another_user_is_refused() {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: chown needs root");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("c");
        std::fs::create_dir(&d).unwrap();
        std::os::unix::fs::chown(&d, Some(65534), None).unwrap();
        let e = err(&d);
        assert!(
            e.contains("owned by uid 65534, but this daemon runs as uid 0"),
            "{e}"
        );
        // A file someone else owns inside (planted while the directory was
        // open to them) is refused too.
        std::os::unix::fs::chown(&d, Some(0), None).unwrap();
        std::fs::write(d.join("meta.db"), b"theirs").unwrap();
        std::os::unix::fs::chown(d.join("meta.db"), Some(65534), None).unwrap();
        let e = err(&d);
        assert!(
            e.contains("meta.db in the cache directory is owned by uid 65534"),
            "{e}"
        );
        // And a directory above owned by someone else.
        std::fs::remove_file(d.join("meta.db")).unwrap();
        std::os::unix::fs::chown(&d, Some(65534), None).unwrap();
        let e = err(&d.join("inner"));
        assert!(
            e.contains("(above the cache directory) is owned by uid 65534"),
            "{e}"
        );
    }
}
