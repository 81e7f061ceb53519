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

#[derive(Debug, Default)]
pub(crate) struct Rounds {
    /// The segment the last FLUSH round sealed: while it is not applied,
    /// later FLUSHes gather for the next round.
    pub in_flight: Option<u64>,
    /// FLUSHes begun (store mode), ever.
    began: u64,
    /// `began` when the last round was sealed.
    began_at_seal: u64,
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
        self.began += 1;
    }

    /// No round in flight, writes to seal: seal now, or gather first.
    pub fn next(&mut self, now: Instant) -> Next {
        let back = self.began - self.began_at_seal;
        if back >= self.carried {
            return Next::Seal;
        }
        let wait = GATHER_WAIT_MAX.min(self.last_took / GATHER_WAIT_SHARE_OF_ROUND);
        let until = *self.gather_until.get_or_insert(now + wait);
        match now >= until {
            true => Next::Seal,
            false => Next::Gather(until),
        }
    }

    /// A FLUSH sealed segment `seq` as the next round. Returns whether
    /// FLUSHes were gathering (they are to be woken).
    pub fn sealed(&mut self, seq: u64, now: Instant) -> bool {
        self.in_flight = Some(seq);
        self.carried = self.began - self.began_at_seal;
        self.began_at_seal = self.began;
        self.sealed_at = Some(now);
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

    #[test]
    fn a_lone_flush_never_gathers() {
        let mut r = Rounds::default();
        let t = Instant::now();
        for seq in 1..5 {
            r.begin();
            assert!(matches!(r.next(t), Next::Seal));
            r.sealed(seq, t);
            r.applied(seq, t + Duration::from_millis(20));
        }
    }

    #[test]
    fn the_round_after_sixteen_waits_for_sixteen_or_its_bound() {
        let mut r = Rounds::default();
        let t = Instant::now();
        r.begin();
        r.sealed(1, t);
        for _ in 0..16 {
            r.begin();
        }
        r.applied(1, t + Duration::from_millis(20));
        r.sealed(2, t + Duration::from_millis(20));
        r.applied(2, t + Duration::from_millis(40));
        // Round 2 carried 16: the first back gathers, the 16th seals.
        r.begin();
        let Next::Gather(until) = r.next(t + Duration::from_millis(40)) else {
            panic!("sealed alone");
        };
        assert_eq!(until, t + Duration::from_millis(42), "2 ms at most");
        for _ in 0..14 {
            r.begin();
        }
        assert!(matches!(
            r.next(t + Duration::from_millis(41)),
            Next::Gather(_)
        ));
        r.begin();
        assert!(matches!(r.next(t + Duration::from_millis(41)), Next::Seal));
        // Or fewer come back: sealed at the bound.
        assert!(r.sealed(3, t + Duration::from_millis(41)));
        r.applied(3, t + Duration::from_millis(42));
        r.begin();
        let Next::Gather(until) = r.next(t + Duration::from_millis(42)) else {
            panic!("sealed alone");
        };
        assert_eq!(
            until,
            t + Duration::from_micros(42_250),
            "a quarter of a 1 ms round"
        );
        assert!(matches!(r.next(until), Next::Seal));
    }
}
