//! Failed-login limiter: more than 5 failures from one client within 60 s lock that client out
//! until the oldest failure ages out of the window.
//!
//! A client is an IPv4 address or an IPv6 /64 (`peer::group`). Attempts still being checked
//! count against the budget too, so a client can never have more password checks running than
//! it has failures left: the limit holds *before* the expensive hash, not after it. When the
//! table of clients is full (a flood from very many addresses), new clients are refused rather
//! than let through untracked.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const MAX_FAILURES: usize = 5;
pub const WINDOW: Duration = Duration::from_secs(60);
/// Bound on tracked clients, so a flood from many addresses can't grow memory without limit.
const MAX_TRACKED: usize = 10_000;

/// Why an attempt may not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// This client's failures (and attempts in flight) used up the window's budget.
    Locked { retry_after: Duration },
    /// Too many clients are tracked to take on another one.
    TableFull { retry_after: Duration },
}

impl Refused {
    pub fn retry_after(self) -> Duration {
        match self {
            Refused::Locked { retry_after } | Refused::TableFull { retry_after } => retry_after,
        }
    }
}

#[derive(Default)]
struct Client {
    failures: VecDeque<Instant>,
    in_flight: usize,
}

impl Client {
    fn forget_old(&mut self, now: Instant) {
        while self
            .failures
            .front()
            .is_some_and(|t| now.duration_since(*t) >= WINDOW)
        {
            self.failures.pop_front();
        }
    }

    fn is_idle(&self) -> bool {
        self.failures.is_empty() && self.in_flight == 0
    }
}

pub struct LoginLimiter {
    clients: Mutex<HashMap<IpAddr, Client>>,
    capacity: usize,
}

impl Default for LoginLimiter {
    fn default() -> Self {
        LoginLimiter::with_capacity(MAX_TRACKED)
    }
}

/// One login attempt in flight. Settle it with [`Attempt::failed`], [`Attempt::succeeded`] or
/// [`Attempt::not_checked`]; dropped unsettled (the request was cancelled mid-check), it
/// counts as a failure, so hanging up can't buy free guesses.
pub struct Attempt<'a> {
    limiter: &'a LoginLimiter,
    key: IpAddr,
    settled: bool,
}

impl LoginLimiter {
    pub fn with_capacity(capacity: usize) -> Self {
        LoginLimiter {
            clients: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Client>> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts an attempt from `addr`, or says why it may not start and for how long.
    pub fn begin(&self, addr: IpAddr, now: Instant) -> Result<Attempt<'_>, Refused> {
        let key = crate::peer::group(addr);
        let mut clients = self.lock();
        if !clients.contains_key(&key) && clients.len() >= self.capacity {
            clients.retain(|_, c| {
                c.forget_old(now);
                !c.is_idle()
            });
            if clients.len() >= self.capacity {
                // Fail closed: an untracked client would have no limit at all.
                return Err(Refused::TableFull {
                    retry_after: Duration::from_secs(10),
                });
            }
        }
        let client = clients.entry(key).or_default();
        client.forget_old(now);
        if client.failures.len() + client.in_flight >= MAX_FAILURES {
            // With failures on record, the lock ends when the oldest ages out; with only
            // attempts in flight, as soon as one of them is answered.
            let retry_after = match client.failures.front() {
                Some(oldest) => WINDOW.saturating_sub(now.duration_since(*oldest)),
                None => Duration::from_secs(1),
            };
            return Err(Refused::Locked {
                retry_after: retry_after.max(Duration::from_secs(1)),
            });
        }
        client.in_flight += 1;
        Ok(Attempt {
            limiter: self,
            key,
            settled: false,
        })
    }

    fn settle(&self, key: IpAddr, failed_at: Option<Instant>, clear: bool) {
        let mut clients = self.lock();
        let Some(client) = clients.get_mut(&key) else {
            return;
        };
        client.in_flight = client.in_flight.saturating_sub(1);
        if clear {
            client.failures.clear();
        }
        if let Some(at) = failed_at {
            client.failures.push_back(at);
            while client.failures.len() > MAX_FAILURES {
                client.failures.pop_front();
            }
        }
        if client.is_idle() {
            clients.remove(&key);
        }
    }

    /// How many clients are tracked (for tests).
    pub fn tracked(&self) -> usize {
        self.lock().len()
    }
}

impl Attempt<'_> {
    /// Wrong username or password: one failure on the client's record.
    pub fn failed(mut self, now: Instant) {
        self.settled = true;
        self.limiter.settle(self.key, Some(now), false);
    }

    /// The right password: the client's failures are forgiven.
    pub fn succeeded(mut self) {
        self.settled = true;
        self.limiter.settle(self.key, None, true);
    }

    /// The password was never checked (the hashing worker was busy): no failure.
    pub fn not_checked(mut self) {
        self.settled = true;
        self.limiter.settle(self.key, None, false);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.limiter.settle(self.key, Some(Instant::now()), false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn five_failures_lock_the_address_for_the_window() {
        let limiter = LoginLimiter::default();
        let a = ip("192.0.2.1");
        let t0 = Instant::now();
        for i in 0..5 {
            let attempt = limiter
                .begin(a, t0)
                .unwrap_or_else(|e| panic!("{i}: {e:?}"));
            attempt.failed(t0 + Duration::from_secs(i));
        }
        let refused = limiter
            .begin(a, t0 + Duration::from_secs(10))
            .err()
            .unwrap();
        assert_eq!(
            refused,
            Refused::Locked {
                retry_after: Duration::from_secs(50)
            }
        );
        assert!(
            limiter.begin(ip("192.0.2.2"), t0).is_ok(),
            "other addresses are unaffected"
        );
        assert!(limiter.begin(a, t0 + Duration::from_secs(61)).is_ok());
    }

    #[test]
    fn attempts_in_flight_count_before_any_of_them_fails() {
        let limiter = LoginLimiter::default();
        let a = ip("192.0.2.1");
        let t0 = Instant::now();
        let running: Vec<_> = (0..5).map(|_| limiter.begin(a, t0).unwrap()).collect();
        assert!(matches!(
            limiter.begin(a, t0).err(),
            Some(Refused::Locked { .. })
        ));
        // Answered without failing (the worker was busy): the budget comes back.
        for attempt in running {
            attempt.not_checked();
        }
        assert!(limiter.begin(a, t0).is_ok());
    }

    #[test]
    fn a_dropped_attempt_counts_as_a_failure() {
        let limiter = LoginLimiter::default();
        let a = ip("192.0.2.1");
        let t0 = Instant::now();
        for _ in 0..5 {
            drop(limiter.begin(a, t0).unwrap());
        }
        assert!(limiter.begin(a, Instant::now()).is_err());
    }

    #[test]
    fn success_clears_failures() {
        let limiter = LoginLimiter::default();
        let a = ip("192.0.2.1");
        let t0 = Instant::now();
        for _ in 0..4 {
            limiter.begin(a, t0).unwrap().failed(t0);
        }
        limiter.begin(a, t0).unwrap().succeeded();
        assert_eq!(limiter.tracked(), 0);
        limiter.begin(a, t0).unwrap().failed(t0);
        assert!(limiter.begin(a, t0).is_ok());
    }

    #[test]
    fn ipv6_addresses_in_one_slash_64_share_a_budget() {
        let limiter = LoginLimiter::default();
        let t0 = Instant::now();
        for i in 1..=5 {
            limiter
                .begin(ip(&format!("2001:db8:0:1::{i:x}")), t0)
                .unwrap()
                .failed(t0);
        }
        assert!(limiter.begin(ip("2001:db8:0:1:ffff::9"), t0).is_err());
        assert!(limiter.begin(ip("2001:db8:0:2::1"), t0).is_ok());
    }

    #[test]
    fn a_full_table_refuses_new_clients_until_entries_age_out() {
        let limiter = LoginLimiter::with_capacity(3);
        let t0 = Instant::now();
        for i in 1..=3 {
            limiter
                .begin(ip(&format!("192.0.2.{i}")), t0)
                .unwrap()
                .failed(t0);
        }
        assert!(matches!(
            limiter.begin(ip("192.0.2.9"), t0).err(),
            Some(Refused::TableFull { .. })
        ));
        // Known clients are still judged on their own record.
        assert!(limiter.begin(ip("192.0.2.1"), t0).is_ok());
        // Once the failures age out, there is room again.
        assert!(limiter.begin(ip("192.0.2.9"), t0 + WINDOW).is_ok());
    }
}
