//! Per-agent token buckets: how much an agent may send per second, with a burst allowance.
//!
//! One bucket per agent (agents are authenticated and few, so the map stays small), refilled
//! lazily from the clock when it is asked: a check is a map lookup and some arithmetic, O(1),
//! under a mutex held for nothing else. Used for trace ingest (one token per event) and for
//! bridge replies (one per reply).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RateError {
    /// Not enough tokens now; this many would be there after `retry_after`.
    #[error("rate limit reached; retry in {} s", retry_after.as_secs().max(1))]
    Limited { retry_after: Duration },
    /// More than the burst in one request: it could never pass.
    #[error("{asked} in one request is more than the limit of {burst}")]
    TooMany { asked: u64, burst: u64 },
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Token buckets keyed by agent id, all with the same rate and burst.
#[derive(Debug)]
pub struct RateLimiter {
    per_sec: f64,
    burst: u64,
    buckets: Mutex<HashMap<Uuid, Bucket>>,
}

impl RateLimiter {
    /// `per_sec` tokens a second, at most `burst` saved up (a new agent starts full). Both at
    /// least 1.
    pub fn new(per_sec: u64, burst: u64) -> RateLimiter {
        RateLimiter {
            per_sec: per_sec.max(1) as f64,
            burst: burst.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn burst(&self) -> u64 {
        self.burst
    }

    /// Takes `count` tokens from `agent`'s bucket, or none at all.
    pub fn take(&self, agent: Uuid, count: u64) -> Result<(), RateError> {
        self.take_at(agent, count, Instant::now())
    }

    fn take_at(&self, agent: Uuid, count: u64, now: Instant) -> Result<(), RateError> {
        if count > self.burst {
            return Err(RateError::TooMany {
                asked: count,
                burst: self.burst,
            });
        }
        let burst = self.burst as f64;
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let bucket = buckets.entry(agent).or_insert(Bucket {
            tokens: burst,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_sec).min(burst);
        bucket.updated = now;
        let wanted = count as f64;
        if bucket.tokens >= wanted {
            bucket.tokens -= wanted;
            Ok(())
        } else {
            let missing = wanted - bucket.tokens;
            Err(RateError::Limited {
                retry_after: Duration::from_secs_f64(missing / self.per_sec),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let limiter = RateLimiter::new(10, 5);
        let agent = Uuid::now_v7();
        let t0 = Instant::now();
        for _ in 0..5 {
            limiter.take_at(agent, 1, t0).unwrap();
        }
        let Err(RateError::Limited { retry_after }) = limiter.take_at(agent, 1, t0) else {
            panic!("the sixth must wait");
        };
        assert_eq!(retry_after, Duration::from_millis(100));
        // 300 ms later, three tokens are back.
        let later = t0 + Duration::from_millis(300);
        limiter.take_at(agent, 3, later).unwrap();
        assert!(limiter.take_at(agent, 1, later).is_err());
    }

    #[test]
    fn agents_have_their_own_buckets_and_a_batch_counts_its_events() {
        let limiter = RateLimiter::new(1, 100);
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let t0 = Instant::now();
        limiter.take_at(a, 100, t0).unwrap();
        assert!(limiter.take_at(a, 1, t0).is_err());
        limiter.take_at(b, 60, t0).unwrap();
        // A refused take takes nothing.
        assert!(limiter.take_at(b, 41, t0).is_err());
        limiter.take_at(b, 40, t0).unwrap();
        assert_eq!(
            limiter.take_at(a, 101, t0),
            Err(RateError::TooMany {
                asked: 101,
                burst: 100
            })
        );
    }

    #[test]
    fn idle_time_refills_only_up_to_the_burst() {
        let limiter = RateLimiter::new(1000, 10);
        let agent = Uuid::now_v7();
        let t0 = Instant::now();
        limiter.take_at(agent, 10, t0).unwrap();
        let much_later = t0 + Duration::from_secs(3600);
        limiter.take_at(agent, 10, much_later).unwrap();
        assert!(limiter.take_at(agent, 1, much_later).is_err());
    }
}
