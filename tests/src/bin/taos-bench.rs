//! Measures a release `taos-host`: time from exec to the first 200 on `/api/health` (fresh and
//! existing data dir), and idle RSS. Prints one JSON object; `scripts/bench.sh` adds wrk's
//! request rate and writes docs/benchmarks.md.
//!
//! Usage: taos-bench <path to taos-host> <runs>

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark that can't measure stops with the reason"
)]

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

/// A `/proc/<pid>/status` memory line in KiB (`VmRSS:`, `RssAnon:`, `RssFile:`).
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Starts the host on `data_dir`, returns (ms to first 200, child). The caller stops the child.
#[allow(clippy::zombie_processes)] // the child is returned and waited for by `stop`
async fn start(bin: &str, data_dir: &std::path::Path) -> (f64, std::process::Child, u16) {
    let port = free_port();
    let agent_port = free_port();
    // The pin isn't known before the first run, so the probe client trusts any certificate
    // here: this measures time to ready, not trust.
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(insecure_tls())
        .build()
        .expect("client");
    let url = format!("https://127.0.0.1:{port}/api/health");
    let started = Instant::now();
    let mut child = Command::new(bin)
        .arg("--data-dir")
        .arg(data_dir)
        .arg("serve")
        .env("TAOS_SERVER__BIND", format!("127.0.0.1:{port}"))
        .env("TAOS_SERVER__AGENT_BIND", format!("127.0.0.1:{agent_port}"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn host");
    loop {
        if let Ok(r) = client.get(&url).send().await {
            if r.status().is_success() {
                return (started.elapsed().as_secs_f64() * 1000.0, child, port);
            }
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("host never became ready");
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
}

fn stop(mut child: std::process::Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bin = args.get(1).expect("usage: taos-bench <taos-host> [runs]");
    let runs: usize = args.get(2).and_then(|r| r.parse().ok()).unwrap_or(7);
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    let mut idle_rss = 0;
    // The parts of the largest idle RSS: the heap and stacks (anonymous) and the binary's and
    // libraries' pages (file-backed, clean: the kernel can drop them under pressure).
    let (mut idle_anon, mut idle_file) = (0, 0);
    for _ in 0..runs {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let (ms, child, _) = start(bin, &data).await;
        cold.push(ms);
        stop(child);
        let (ms, child, _) = start(bin, &data).await;
        warm.push(ms);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss = rss_kib(child.id()).unwrap_or(0);
        if rss >= idle_rss {
            idle_rss = rss;
            idle_anon = status_kib(child.id(), "RssAnon:").unwrap_or(0);
            idle_file = status_kib(child.id(), "RssFile:").unwrap_or(0);
        }
        stop(child);
    }
    println!(
        "{}",
        serde_json::json!({
            "runs": runs,
            "ready_ms_first_run_median": (median(cold.clone()) * 10.0).round() / 10.0,
            "ready_ms_first_run_max": (cold.iter().cloned().fold(0.0, f64::max) * 10.0).round() / 10.0,
            "ready_ms_median": (median(warm.clone()) * 10.0).round() / 10.0,
            "ready_ms_max": (warm.iter().cloned().fold(0.0, f64::max) * 10.0).round() / 10.0,
            "idle_rss_kib_max": idle_rss,
            "idle_rss_anon_kib": idle_anon,
            "idle_rss_file_kib": idle_file,
        })
    );
}

fn insecure_tls() -> rustls::ClientConfig {
    #[derive(Debug)]
    struct AcceptAny(std::sync::Arc<rustls::crypto::CryptoProvider>);
    impl rustls::client::danger::ServerCertVerifier for AcceptAny {
        fn verify_server_cert(
            &self,
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &rustls::pki_types::CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &rustls::pki_types::CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(AcceptAny(provider)))
        .with_no_client_auth()
}
