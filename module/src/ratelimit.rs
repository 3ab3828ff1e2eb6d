//! Per-queue rate limits (`VT.RATELIMIT`): a token bucket stored with the queue.
//!
//! At most `limit` tasks start per `per_ms` milliseconds (plus a `burst` of saved-up tokens):
//! `VT.FETCHBATCH` leases no more tasks than the bucket holds, and a fetch left short of tokens
//! asks the timer to wake blocked fetchers when the next token is there (no client polls).
//!
//! The bucket is integer arithmetic on explicit times, so the primary's fetch effects
//! (`VT._FX FETCH`, which carries `now` and the leased ids) consume exactly the same tokens on a
//! replica or in an AOF replay. One token is `per_ms` units of credit; the bucket gains `limit`
//! units per millisecond, up to `burst * per_ms`.

use crate::commands::int_in;
use crate::queue::Queue;
use crate::server::*;

pub use vtasks_protocol::limits::{MAX_RATE_PERIOD_MS as MAX_PER_MS, MAX_RATE_TOKENS as MAX_TOKENS};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Tasks per period.
    pub limit: i64,
    /// The period, ms.
    pub per_ms: i64,
    /// Bucket capacity, tokens.
    pub burst: i64,
    /// Credit at time `at` (one token = `per_ms` units).
    pub credit: i64,
    pub at: i64,
}

impl RateLimit {
    /// A full bucket at `now`.
    pub fn new(limit: i64, per_ms: i64, burst: i64, now: i64) -> RateLimit {
        RateLimit { limit, per_ms, burst, credit: burst * per_ms, at: now }
    }

    fn cap(&self) -> i64 {
        self.burst * self.per_ms
    }

    /// Whether the fields are in range (a loaded record must be).
    pub fn valid(&self) -> bool {
        (1..=MAX_TOKENS).contains(&self.limit)
            && (1..=MAX_PER_MS).contains(&self.per_ms)
            && (1..=MAX_TOKENS).contains(&self.burst)
            && (0..=self.cap()).contains(&self.credit)
    }

    /// Credit at `now` (a clock that went back refills nothing).
    fn level(&self, now: i64) -> i64 {
        let dt = now.saturating_sub(self.at).max(0) as i128;
        let l = self.credit as i128 + dt * self.limit as i128;
        l.min(self.cap() as i128) as i64
    }

    /// Whole tokens at `now`.
    pub fn available(&self, now: i64) -> usize {
        (self.level(now) / self.per_ms) as usize
    }

    /// Takes `n` tokens at `now` (never more than `available(now)` on a primary; a replica
    /// applies the primary's count, so the same state results).
    pub fn take(&mut self, now: i64, n: usize) {
        let l = self.level(now);
        self.credit = l.saturating_sub((n as i64).saturating_mul(self.per_ms)).max(0);
        self.at = self.at.max(now);
    }

    /// When the next whole token is there (`now` if one is).
    pub fn next_token_at(&self, now: i64) -> i64 {
        let l = self.level(now);
        if l >= self.per_ms {
            return now;
        }
        let need = self.per_ms - l;
        now.max(self.at).saturating_add((need + self.limit - 1) / self.limit)
    }

    /// The same limit with other settings, keeping the tokens there are at `now` (up to the new
    /// burst), so re-applying a configuration never hands out a fresh burst.
    pub fn reconfigured(&self, limit: i64, per_ms: i64, burst: i64, now: i64) -> RateLimit {
        let tokens = (self.available(now) as i64).min(burst);
        RateLimit { limit, per_ms, burst, credit: tokens * per_ms, at: now.max(self.at) }
    }
}

impl Queue {
    /// Tokens a fetch at `now` may use (unlimited without a rate limit).
    pub fn rate_allowance(&self, now: i64) -> usize {
        self.rate.as_ref().map_or(usize::MAX, |r| r.available(now))
    }

    /// Consumes `n` tokens at `now` (no-op without a rate limit).
    pub fn rate_take(&mut self, now: i64, n: usize) {
        if let Some(r) = self.rate.as_mut() {
            if n > 0 {
                r.take(now, n);
                self.modified = true;
            }
        }
    }

    /// Sets (or replaces) the limit; false when it was already exactly this.
    pub fn rate_set(&mut self, limit: i64, per_ms: i64, burst: i64, now: i64) -> bool {
        let new = match &self.rate {
            Some(r) if (r.limit, r.per_ms, r.burst) == (limit, per_ms, burst) => return false,
            Some(r) => r.reconfigured(limit, per_ms, burst, now),
            None => RateLimit::new(limit, per_ms, burst, now),
        };
        self.rate = Some(new);
        self.rate_wake = None;
        self.modified = true;
        // fetchers blocked for lack of tokens may go now
        self.became_ready |= self.sizes().ready > 0;
        true
    }

    /// Installs a bucket exactly as the primary replicated it.
    pub fn rate_put(&mut self, r: Option<RateLimit>) {
        let lifted = self.rate.is_some() && r.is_none();
        self.rate = r;
        self.rate_wake = None;
        self.modified = true;
        self.became_ready |= lifted && self.sizes().ready > 0;
    }
}

#[cfg(test)]
impl Queue {
    fn available_for_test(&self, now: i64) -> usize {
        self.rate_allowance(now)
    }
}

// ============================================================ VT.RATELIMIT

/// Parses `VT.RATELIMIT SET <queue> <limit> PER <ms> [BURST <tokens>]`: (limit, per_ms, burst).
pub fn parse_set(a: &[&[u8]]) -> Result<(i64, i64, i64), Reply> {
    if (a.len() != 6 && a.len() != 8) || !a[4].eq_ignore_ascii_case(b"PER") {
        return err("ERR syntax: VT.RATELIMIT SET <queue> <limit> PER <ms> [BURST <tokens>]");
    }
    let limit = int_in(a[3], "limit", 1, MAX_TOKENS)?;
    let per_ms = int_in(a[5], "PER", 1, MAX_PER_MS)?;
    let burst = if a.len() == 8 {
        if !a[6].eq_ignore_ascii_case(b"BURST") {
            return err(format!("ERR unknown option '{}'", String::from_utf8_lossy(a[6])));
        }
        int_in(a[7], "BURST", 1, MAX_TOKENS)?
    } else {
        limit
    };
    Ok((limit, per_ms, burst))
}

/// Validates any `VT.RATELIMIT` argument vector as the handlers do.
pub fn parse(a: &[&[u8]]) -> Result<(), Reply> {
    let sub = a.get(1).copied().unwrap_or_default();
    if sub.eq_ignore_ascii_case(b"SET") {
        parse_set(a).map(|_| ())
    } else if (sub.eq_ignore_ascii_case(b"OFF") || sub.eq_ignore_ascii_case(b"GET")) && a.len() == 3 {
        Ok(())
    } else {
        err("ERR unknown subcommand or wrong number of arguments (SET, OFF, GET)")
    }
}

/// The effect that installs `r` on a replica: `VT._FX <queue> RATE <limit> <per> <burst>
/// <credit> <at>` (all zero: no limit).
fn replicate_bucket(ctx: Ctx, queue: &[u8], r: Option<RateLimit>) {
    let r = r.map_or([0; 5], |r| [r.limit, r.per_ms, r.burst, r.credit, r.at]);
    let v: Vec<String> = r.iter().map(|x| x.to_string()).collect();
    let mut args: Vec<&[u8]> = vec![queue, b"RATE"];
    args.extend(v.iter().map(|s| s.as_bytes()));
    replicate(ctx, "VT._FX", &args);
}

/// Decodes the arguments of a `RATE` effect (after the op).
pub fn fx_args(r: &[&[u8]]) -> Result<Option<RateLimit>, Reply> {
    let bad = || Reply::Error("ERR malformed VT._FX RATE".into());
    if r.len() != 5 {
        return Err(bad());
    }
    let mut v = [0i64; 5];
    for (x, b) in v.iter_mut().zip(r) {
        *x = std::str::from_utf8(b).ok().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    }
    if v[0] == 0 {
        return Ok(None);
    }
    let rl = RateLimit { limit: v[0], per_ms: v[1], burst: v[2], credit: v[3], at: v[4] };
    if !rl.valid() {
        return Err(bad());
    }
    Ok(Some(rl))
}

/// `VT.RATELIMIT SET <queue> <limit> PER <ms> [BURST <tokens>]`: 1 when set or changed, 0 when
/// the queue already had exactly this limit (its tokens are kept: safe to apply at every start).
pub fn set(ctx: Ctx, argv: &[RStr], a: &[&[u8]]) -> Result<Reply, Reply> {
    let (limit, per_ms, burst) = parse_set(a)?;
    let now = now_ms();
    let r = with_queue(ctx, argv[2], true, |q| q.rate_set(limit, per_ms, burst, now).then_some(q.rate))?.flatten();
    match r {
        Some(bucket) => {
            replicate_bucket(ctx, a[2], bucket);
            Ok(Reply::Int(1))
        }
        None => Ok(Reply::Int(0)),
    }
}

/// `VT.RATELIMIT OFF <queue>`: 1 when a limit was removed.
pub fn off(ctx: Ctx, argv: &[RStr], a: &[&[u8]]) -> Result<Reply, Reply> {
    parse(a)?;
    let had = with_queue(ctx, argv[2], false, |q| {
        let had = q.rate.is_some();
        if had {
            q.rate_put(None);
        }
        had
    })?
    .unwrap_or(false);
    if had {
        replicate_bucket(ctx, a[2], None);
    }
    Ok(Reply::Int(had as i64))
}

/// `VT.RATELIMIT GET <queue>`: `limit`, `per_ms`, `burst`, `tokens` (now), or nil.
pub fn get(ctx: Ctx, argv: &[RStr], a: &[&[u8]]) -> Result<Reply, Reply> {
    parse(a)?;
    let now = now_ms();
    let r = read_queue(ctx, argv[2], |q| q.rate)?.flatten();
    Ok(match r {
        None => Reply::Nil,
        Some(r) => Reply::Map(vec![
            ("limit", Reply::Int(r.limit)),
            ("per_ms", Reply::Int(r.per_ms)),
            ("burst", Reply::Int(r.burst)),
            ("tokens", Reply::Int(r.available(now) as i64)),
        ]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refills_at_the_rate_and_caps_at_the_burst() {
        let mut r = RateLimit::new(20, 1000, 5, 0);
        assert_eq!(r.available(0), 5);
        r.take(0, 5);
        assert_eq!(r.available(0), 0);
        assert_eq!(r.next_token_at(0), 50);
        assert_eq!(r.available(49), 0);
        assert_eq!(r.available(50), 1);
        assert_eq!(r.available(10_000), 5);
        // a clock that goes back refills nothing and takes nothing twice
        r.take(100, 2);
        assert_eq!(r.available(90), 0);
        assert!(r.valid());
    }

    #[test]
    fn fetch_hands_out_at_most_the_tokens_and_asks_for_a_wake_up() {
        use crate::queue::EnqOpts;
        let mut q = Queue::default();
        let o = EnqOpts { now: 0, priority: 0, run_at: 0, max_attempts: 3, unique: None };
        q.enqueue(&o, (0..10).map(|i| (format!("t{i}").into_bytes(), b"p".to_vec())).collect());
        assert!(q.rate_set(2, 1000, 3, 0));
        assert!(!q.rate_set(2, 1000, 3, 0), "the same limit again changes nothing");
        let mut tok = || 7u64;
        assert_eq!(q.fetch(0, b"w", 10, 30_000, &mut tok).len(), 3);
        assert_eq!(q.rate_wake, Some(500));
        assert_eq!(q.next_due(), Some(500));
        assert!(q.fetch(499, b"w", 10, 30_000, &mut tok).is_empty());
        assert_eq!(q.fetch(500, b"w", 10, 30_000, &mut tok).len(), 1);
        // the bucket survives a save and load
        let enc = crate::fuzzing::encode_queue(&q);
        let q2 = crate::fuzzing::decode(crate::ENCVER, &enc).unwrap();
        assert_eq!(q2.rate, q.rate);
        assert_eq!(q2.available_for_test(1500), 2);
    }

    #[test]
    fn reconfigure_keeps_tokens() {
        let mut r = RateLimit::new(10, 1000, 10, 0);
        r.take(0, 7);
        let r2 = r.reconfigured(100, 1000, 50, 0);
        assert_eq!(r2.available(0), 3);
    }
}
