//! The cache directory belongs to the daemon's user (review M8,
//! docs/design/0017). A daemon (often root) creates, truncates and writes
//! files in it by name: if another user could write in the directory, they
//! could plant a symbolic link named like one of those files and have the
//! daemon truncate or overwrite any file on the machine. So before anything
//! is opened in it, the directory must be owned by the daemon's effective
//! uid and writable by no one else (a group-writable directory is allowed
//! only when the group is the daemon's own), and neither it nor its
//! subdirectories may hold a symbolic link. The files the daemon writes are
//! also opened with `O_NOFOLLOW` where it can (the read cache, the write
//! log, the daemon's log and stats), so a link that appears later is
//! refused, not followed.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::VolumeError;

/// Creates `dir` if it is missing and checks that only this process's user
/// can change what is in it; an error names the cause and the fix.
pub fn ensure_private_dir(dir: &Path) -> Result<(), VolumeError> {
    std::fs::create_dir_all(dir).map_err(|e| {
        VolumeError::BadConfig(format!(
            "cannot create cache directory {}: {e}",
            dir.display()
        ))
    })?;
    // SAFETY: geteuid and getegid cannot fail and touch no memory.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    // The directory itself may be reached through a link (a cache on
    // another disk): its target is what must be private.
    check_owner(dir, uid, gid)?;
    // One level down: the daemon's own subdirectories (read cache, write
    // log); the files in them are the daemon's and are checked by name
    // when opened (O_NOFOLLOW).
    for entry in read_dir(dir)? {
        let entry = entry.map_err(|e| unreadable(dir, e))?;
        let ty = entry.file_type().map_err(|e| unreadable(dir, e))?;
        if ty.is_symlink() {
            return Err(link_found(&entry.path()));
        }
        if ty.is_dir() {
            check_owner(&entry.path(), uid, gid)?;
            for inner in read_dir(&entry.path())? {
                let inner = inner.map_err(|e| unreadable(dir, e))?;
                if inner
                    .file_type()
                    .map_err(|e| unreadable(dir, e))?
                    .is_symlink()
                {
                    return Err(link_found(&inner.path()));
                }
            }
        }
    }
    Ok(())
}

fn read_dir(dir: &Path) -> Result<std::fs::ReadDir, VolumeError> {
    std::fs::read_dir(dir).map_err(|e| unreadable(dir, e))
}

fn unreadable(dir: &Path, e: std::io::Error) -> VolumeError {
    VolumeError::BadConfig(format!(
        "cannot read cache directory {}: {e}",
        dir.display()
    ))
}

fn link_found(path: &Path) -> VolumeError {
    VolumeError::BadConfig(format!(
        "{} is a symbolic link: the daemon never follows links inside its cache directory \
         (one planted there could make it overwrite another file); remove it",
        path.display()
    ))
}

fn check_owner(dir: &Path, uid: u32, gid: u32) -> Result<(), VolumeError> {
    let meta = std::fs::metadata(dir).map_err(|e| unreadable(dir, e))?;
    if !meta.is_dir() {
        return Err(VolumeError::BadConfig(format!(
            "cache directory {} is not a directory",
            dir.display()
        )));
    }
    let mode = meta.mode() & 0o7777;
    if meta.uid() != uid {
        return Err(VolumeError::BadConfig(format!(
            "cache directory {} is owned by uid {}, but this daemon runs as uid {uid}: \
             it writes only in a directory its own user owns (chown it, or choose another --cache-dir)",
            dir.display(),
            meta.uid()
        )));
    }
    let others = mode & 0o002 != 0;
    let group = mode & 0o020 != 0 && meta.gid() != gid;
    if others || group {
        return Err(VolumeError::BadConfig(format!(
            "cache directory {} is writable by {} (mode {mode:o}): another user could plant links \
             in it; `chmod go-w` it, or choose another --cache-dir",
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
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
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
    }
}
