//! Request counters for `GET /metrics` (Prometheus text format). Plain atomics: a registry
//! crate would cost more memory than the handful of numbers a host on a Pi needs.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

#[derive(Default)]
pub struct Metrics {
    /// Responses by status class: 1xx..5xx.
    responses: [AtomicU64; 5],
    duration_micros_sum: AtomicU64,
    logins_failed: AtomicU64,
    logins_rate_limited: AtomicU64,
}

impl Metrics {
    pub fn record_response(&self, status: u16, started: Instant) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.responses[class].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.duration_micros_sum
            .fetch_add(micros, Ordering::Relaxed);
    }

    pub fn login_failed(&self) {
        self.logins_failed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn login_rate_limited(&self) {
        self.logins_rate_limited.fetch_add(1, Ordering::Relaxed);
    }

    /// Renders the exposition text; `extra` adds gauges owned by other modules.
    pub fn render(&self, started_at: Instant, extra: &[(&str, &str, f64)]) -> String {
        let mut out = String::new();
        // Writing to a String never fails.
        let _ = self.write_to(&mut out, started_at, extra);
        out
    }

    fn write_to(
        &self,
        out: &mut String,
        started_at: Instant,
        extra: &[(&str, &str, f64)],
    ) -> std::fmt::Result {
        let version = env!("CARGO_PKG_VERSION");
        writeln!(out, "# HELP taos_build_info Host build information.")?;
        writeln!(out, "# TYPE taos_build_info gauge")?;
        writeln!(out, "taos_build_info{{version=\"{version}\"}} 1")?;
        writeln!(
            out,
            "# HELP taos_http_responses_total HTTP responses by status class."
        )?;
        writeln!(out, "# TYPE taos_http_responses_total counter")?;
        let mut total = 0;
        for (i, counter) in self.responses.iter().enumerate() {
            let n = counter.load(Ordering::Relaxed);
            total += n;
            writeln!(
                out,
                "taos_http_responses_total{{class=\"{}xx\"}} {n}",
                i + 1
            )?;
        }
        writeln!(
            out,
            "# HELP taos_http_request_duration_seconds Time spent answering HTTP requests."
        )?;
        writeln!(out, "# TYPE taos_http_request_duration_seconds summary")?;
        writeln!(
            out,
            "taos_http_request_duration_seconds_sum {}",
            self.duration_micros_sum.load(Ordering::Relaxed) as f64 / 1e6
        )?;
        writeln!(out, "taos_http_request_duration_seconds_count {total}")?;
        writeln!(
            out,
            "# HELP taos_logins_failed_total Failed password logins."
        )?;
        writeln!(out, "# TYPE taos_logins_failed_total counter")?;
        writeln!(
            out,
            "taos_logins_failed_total {}",
            self.logins_failed.load(Ordering::Relaxed)
        )?;
        writeln!(
            out,
            "# HELP taos_logins_rate_limited_total Logins refused by the failed-login limiter."
        )?;
        writeln!(out, "# TYPE taos_logins_rate_limited_total counter")?;
        writeln!(
            out,
            "taos_logins_rate_limited_total {}",
            self.logins_rate_limited.load(Ordering::Relaxed)
        )?;
        writeln!(
            out,
            "# HELP taos_uptime_seconds Seconds since the host started."
        )?;
        writeln!(out, "# TYPE taos_uptime_seconds gauge")?;
        writeln!(
            out,
            "taos_uptime_seconds {}",
            started_at.elapsed().as_secs_f64()
        )?;
        if let Some(rss) = crate::sys::resident_memory_bytes() {
            writeln!(
                out,
                "# HELP taos_process_resident_memory_bytes Resident memory of the host process."
            )?;
            writeln!(out, "# TYPE taos_process_resident_memory_bytes gauge")?;
            writeln!(out, "taos_process_resident_memory_bytes {rss}")?;
        }
        for (name, help, value) in extra {
            writeln!(out, "# HELP {name} {help}")?;
            writeln!(out, "# TYPE {name} gauge")?;
            writeln!(out, "{name} {value}")?;
        }
        Ok(())
    }
}
