//! `spritedisk`: create, attach, inspect and check volumes whose durable
//! state lives in an object store.

mod attach;
mod checkpoints;
mod cli;
mod control;
mod daemon;
mod enginebench;
mod freeze;
mod inspect;
mod pool;
mod registry;
mod rm;
mod size;
mod storebench;
mod ublk;

use clap::Parser;

/// Buffers of a megabyte and more (write buffers, segments) are mmapped and
/// returned to the kernel when freed. glibc's default raises this threshold
/// after the first such free and then keeps freed segments in its arenas:
/// measured, a 4 GiB write left the daemon at 500+ MiB RSS instead of ~100.
const MMAP_THRESHOLD_BYTES: i32 = 1 << 20;

fn main() {
    // SAFETY: mallopt only tunes the allocator; called before any thread starts.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) };
    let args = cli::Cli::parse();
    let default_log = if args.cmd.is_daemon() { "info" } else { "warn" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SPRITEDISK_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_log)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(cli::run(args)) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            std::process::exit(1);
        }
    }
}

/// The error and its causes on one line, each cause once: our error types
/// often quote their source in their own message already.
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !out.contains(&c) {
            out.push_str(": ");
            out.push_str(&c);
        }
    }
    out
}
