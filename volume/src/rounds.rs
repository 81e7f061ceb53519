//! Group commit's rounds (docs/design/0013): the FLUSH round in flight,
//! and whether the next one waits a moment for the FLUSHes the last one
//! released (docs/design/0016). Only when to seal is decided here; what a
//! FLUSH waits for, and so what it makes durable, is 0013's and does not
//! change.
//!
//! Clients that FLUSH at once (a database's committing backends, fio jobs)
//! are released at once when their round is applied, and come back within
//! a few hundred microseconds. Without gathering, the first one back found
//! no round in flight and sealed alone; the others waited that round out
//! and then their own: two PUTs per FLUSH at p50 on a remote store. Now
//! the round after one that carried K FLUSHes is sealed once K FLUSHes
//! have begun since that round's seal, or after a bounded wait, whichever
//! comes first. A lone FLUSH (K = 1) seals at once, as before.

use std::time::Duration;

use tokio::time::Instant;

/// The longest a round waits for the FLUSHes the last one carried.
pub(crate) const GATHER_WAIT_MAX: Duration = Duration::from_millis(2);
/// ... and at most this share of the last round's duration (seal to
/// applied): a round on a local store takes ~1 ms, one to a region 20+.
pub(crate) const GATHER_WAIT_SHARE_OF_ROUND: u32 = 4;
/// No gathering for less: tokio's timer rounds a wait up to its next
/// millisecond, so a shorter bound would not be kept (found by the review
/// of 0016). Rounds shorter than 4 ms seal at once, as before.
pub(crate) const GATHER_WAIT_MIN: Duration = Duration::from_millis(1);

#[derive(Debug, Default)]
pub(crate) struct Rounds {
    /// The segment the last FLUSH round sealed: while it is not applied,
    /// later FLUSHes gather for the next round.
    pub in_flight: Option<u64>,
    /// FLUSHes begun since the last round was sealed.
    since_seal: u64,
    /// The FLUSHes the last round carried: those begun between its seal
    /// and the one before.
    carried: u64,
    sealed_at: Option<Instant>,
    /// The last applied round's time from seal to applied.
    last_took: Duration,
    /// Set by the first FLUSH that waits to gather: when the next round
    /// is sealed even if not all came back.
    gather_until: Option<Instant>,
}

/// What a FLUSH that would seal the next round does.
pub(crate) enum Next {
    Seal,
    /// Waits until then (or until another FLUSH seals), then asks again.
    Gather(Instant),
}

impl Rounds {
    /// A FLUSH begins (counted once).
    pub fn begin(&mut self) {
        self.since_seal += 1;
    }

    /// No round in flight, writes to seal: seal now, or gather first
    /// (never past the asking FLUSH's `deadline`: found by the review of
    /// 0016, a FLUSH gathering past it spun).
    pub fn next(&mut self, now: Instant, deadline: Instant) -> Next {
        let back = self.since_seal;
        let wait = GATHER_WAIT_MAX.min(self.last_took / GATHER_WAIT_SHARE_OF_ROUND);
        if back >= self.carried || wait < GATHER_WAIT_MIN {
            return Next::Seal;
        }
        let until = *self.gather_until.get_or_insert(now + wait);
        match now >= until || until >= deadline {
            true => Next::Seal,
            false => Next::Gather(until),
        }
    }

    /// A FLUSH sealed segment `seq` as the next round.
    pub fn sealed(&mut self, seq: u64, now: Instant) {
        self.in_flight = Some(seq);
        self.carried = std::mem::take(&mut self.since_seal);
        self.sealed_at = Some(now);
    }

    /// A position in the history was taken (any seal: a FLUSH's, the
    /// writeback's, a full buffer's, a barrier's, a copy's). Returns
    /// whether FLUSHes were gathering: they are to be woken, and find a
    /// seal since they began (0013 step 1).
    pub fn position_taken(&mut self) -> bool {
        self.gather_until.take().is_some()
    }

    /// Segment `seq` is applied.
    pub fn applied(&mut self, seq: u64, now: Instant) {
        if self.in_flight == Some(seq) {
            if let Some(t) = self.sealed_at.take() {
                self.last_took = now - t;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// A FLUSH's deadline far away.
    fn far(t: Instant) -> Instant {
        t + Duration::from_secs(60)
    }

    #[test]
    fn a_lone_flush_never_gathers() {
        let mut r = Rounds::default();
        let t = Instant::now();
        for seq in 1..5 {
            r.begin();
            assert!(matches!(r.next(t, far(t)), Next::Seal));
            r.sealed(seq, t);
            r.applied(seq, t + 20 * MS);
        }
    }

    /// Round 1 carried one FLUSH, round 2 sixteen; each took 20 ms.
    fn after_sixteen(t: Instant) -> Rounds {
        let mut r = Rounds::default();
        r.begin();
        r.sealed(1, t);
        for _ in 0..16 {
            r.begin();
        }
        r.applied(1, t + 20 * MS);
        r.sealed(2, t + 20 * MS);
        r.applied(2, t + 40 * MS);
        r
    }

    #[test]
    fn the_round_after_sixteen_waits_for_sixteen() {
        let t = Instant::now();
        let mut r = after_sixteen(t);
        r.begin();
        let Next::Gather(until) = r.next(t + 40 * MS, far(t)) else {
            panic!("sealed alone");
        };
        assert_eq!(until, t + 42 * MS, "2 ms at most");
        for _ in 0..14 {
            r.begin();
        }
        assert!(matches!(r.next(t + 41 * MS, far(t)), Next::Gather(_)));
        r.begin();
        assert!(matches!(r.next(t + 41 * MS, far(t)), Next::Seal));
        assert!(r.position_taken(), "the gatherers are woken");
        r.sealed(3, t + 41 * MS);
        assert!(!r.position_taken(), "nobody gathers any more");
    }

    #[test]
    fn fewer_come_back_the_round_seals_at_its_bound() {
        let t = Instant::now();
        let mut r = after_sixteen(t);
        r.begin();
        assert!(matches!(r.next(t + 40 * MS, far(t)), Next::Gather(_)));
        assert!(matches!(r.next(t + 41 * MS, far(t)), Next::Gather(_)));
        assert!(matches!(r.next(t + 42 * MS, far(t)), Next::Seal));
    }

    #[test]
    fn never_past_the_flush_deadline() {
        let t = Instant::now();
        let mut r = after_sixteen(t);
        r.begin();
        assert!(matches!(r.next(t + 40 * MS, t + 41 * MS), Next::Seal));
    }

    /// Another seal (the writeback's, a barrier's) ends a gathering, and
    /// wakes the gatherers.
    #[test]
    fn any_seal_ends_a_gathering() {
        let t = Instant::now();
        let mut r = after_sixteen(t);
        r.begin();
        assert!(matches!(r.next(t + 40 * MS, far(t)), Next::Gather(_)));
        assert!(r.position_taken());
        assert!(!r.position_taken());
    }

    /// Rounds shorter than 4 ms (a quarter under the timer's millisecond),
    /// and the first rounds (no duration yet), never gather.
    #[test]
    fn short_rounds_never_gather() {
        let t = Instant::now();
        let mut r = Rounds::default();
        r.begin();
        r.sealed(1, t);
        for _ in 0..16 {
            r.begin();
        }
        r.sealed(2, t);
        r.begin();
        assert!(
            matches!(r.next(t, far(t)), Next::Seal),
            "no round applied yet"
        );
        r.applied(2, t + 3 * MS);
        r.sealed(3, t + 3 * MS);
        assert!(
            matches!(r.next(t + 3 * MS, far(t)), Next::Seal),
            "a 3 ms round"
        );
        // Not the round in flight: its duration is not taken.
        r.applied(2, t + 100 * MS);
        assert!(matches!(r.next(t + 3 * MS, far(t)), Next::Seal));
    }
}
