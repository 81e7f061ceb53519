//! What starting a background daemon takes, for `attach` and `pool start`.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

/// Runs `cmd` in a new session: a hang-up of the caller's terminal does not
/// reach the daemon.
pub fn in_new_session(cmd: &mut Command) {
    // SAFETY: setsid is async-signal-safe, as a pre_exec hook must be.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
}

/// Prints the last `n` lines of a daemon's log to stderr: why it died,
/// next to the error that says it did.
pub fn print_log_tail(path: &Path, n: usize) {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().rev().take(n).collect();
    for l in lines.iter().rev() {
        eprintln!("{l}");
    }
}
