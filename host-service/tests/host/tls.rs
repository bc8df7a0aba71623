use reqwest::StatusCode;
use serde_json::Value;
use taos_e2e::{pinned_client, unpinned_client};
use taos_pin::SpkiPin;

use crate::start;

#[tokio::test]
async fn pinned_client_connects_with_tls13_and_unpinned_client_fails() {
    let host = start().await;
    let response = host
        .client()
        .get(host.url("/api/health"))
        .bearer_auth(host.local_token())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["subsystems"]["tls"], "ok");

    let err = unpinned_client()
        .get(host.url("/api/health"))
        .send()
        .await
        .expect_err("a client that does not pin must not trust the self-signed host");
    assert!(
        matches!(
            taos_e2e::tls_error(&err),
            Some(rustls::Error::InvalidCertificate(_))
        ),
        "refused for its certificate: {err:?}"
    );

    let wrong = SpkiPin::of_spki(b"some other key");
    let err = pinned_client(wrong)
        .get(host.url("/api/health"))
        .send()
        .await
        .expect_err("a pin for another key must refuse the host");
    assert!(
        matches!(
            taos_e2e::tls_error(&err),
            Some(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure
            ))
        ),
        "refused for its key: {err:?}"
    );
}

#[tokio::test]
async fn fingerprint_command_prints_the_served_pin() {
    let mut host = start().await;
    let out = host.cli(&["fingerprint"]);
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(SpkiPin::parse(printed.trim()).unwrap(), host.pin);
    assert!(printed.starts_with("sha256/"));

    // The key survives a restart, so paired apps keep working.
    host.terminate().await.unwrap();
    let again = taos_e2e::Host::start_with(
        crate::BIN,
        taos_e2e::HostOptions {
            data_dir: Some(host.data_dir.clone()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(again.pin, host.pin);
}

#[tokio::test]
async fn tls12_only_clients_are_refused() {
    let host = start().await;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let verifier = std::sync::Arc::new(taos_pin::PinnedServerVerifier::new(
        host.pin,
        provider.clone(),
    ));
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .build()
        .unwrap();
    let err = client
        .get(host.url("/api/health"))
        .send()
        .await
        .expect_err("TLS 1.2 is refused");
    assert!(
        matches!(
            taos_e2e::tls_error(&err),
            Some(rustls::Error::AlertReceived(
                rustls::AlertDescription::ProtocolVersion
            ))
        ),
        "refused for its TLS version: {err:?}"
    );
}

/// The certificate a person installs so their browser trusts the host (offline reading):
/// served without credentials, and it is the certificate of the pinned key.
#[tokio::test]
async fn the_certificate_download_is_the_pinned_key() {
    let host = start().await;
    let r = host
        .client()
        .get(host.url("/api/auth/certificate"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/x-pem-file");
    let pem = r.text().await.unwrap();
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("a PEM certificate");
    let status: Value = host
        .client()
        .get(host.url("/api/auth/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        SpkiPin::of_certificate(&der).unwrap().to_string(),
        status["fingerprint"].as_str().unwrap()
    );
}
