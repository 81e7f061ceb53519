//! Where blocking work (file I/O, SQLite) runs: on tokio's blocking pool,
//! or inline, on a thread that asked for it.
//!
//! Inline exists for the deterministic simulation (`volume/tests/dst.rs`):
//! it runs every task on one current-thread runtime with a paused clock,
//! and work on the blocking pool finishes in the host's own time, so the
//! order in which two tasks' blocking work came back (and what each then
//! saw) would be the host's scheduling, not the seed's. Run inline, the
//! work is part of the task's poll, and one thread runs everything in an
//! order the seed decides. Nothing else sets it: a daemon's blocking work
//! never runs on its async workers.
//!
//! Hand-written rather than a crate: it is tokio's `spawn_blocking` with
//! one thread-local check in front.

use std::cell::Cell;

thread_local! {
    static INLINE: Cell<bool> = const { Cell::new(false) };
}

/// While it lives, [`unblock`] runs its work inline on this thread.
pub struct InlineGuard {
    was: bool,
    // Bound to the thread that made it.
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Drop for InlineGuard {
    fn drop(&mut self) {
        INLINE.with(|i| i.set(self.was));
    }
}

/// Makes [`unblock`] run its work inline on this thread (for a
/// single-threaded simulation) until the guard drops.
pub fn run_inline_on_this_thread() -> InlineGuard {
    let was = INLINE.with(|i| i.replace(true));
    InlineGuard {
        was,
        _not_send: std::marker::PhantomData,
    }
}

/// Runs blocking `f`: on tokio's blocking pool, or inline where
/// [`run_inline_on_this_thread`] asked for it (then it never fails: a
/// panic in `f` unwinds through the caller).
pub async fn unblock<T, F>(f: F) -> Result<T, tokio::task::JoinError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    if INLINE.with(|i| i.get()) {
        return Ok(f());
    }
    tokio::task::spawn_blocking(f).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn inline_runs_on_the_callers_thread_and_only_while_asked() {
        let me = std::thread::current().id();
        let on = |t| t == me;
        assert!(!on(unblock(|| std::thread::current().id()).await.unwrap()));
        {
            let _inline = run_inline_on_this_thread();
            assert!(on(unblock(|| std::thread::current().id()).await.unwrap()));
        }
        assert!(!on(unblock(|| std::thread::current().id()).await.unwrap()));
    }
}
