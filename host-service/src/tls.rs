//! The host's TLS identity: a key made on first run, a self-signed certificate for it, and the
//! SPKI pin clients use instead of a CA.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use taos_pin::SpkiPin;

use crate::fsutil;

pub const TLS_DIR: &str = "tls";
pub const KEY_FILE: &str = "key.pem";
pub const CERT_FILE: &str = "cert.pem";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot make the TLS key or certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS file {path} is not valid PEM: {message}")]
    BadPem { path: PathBuf, message: String },
    #[error("cannot build the TLS server config: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The key, its certificate and its pin.
pub struct TlsIdentity {
    pub cert_der: CertificateDer<'static>,
    pub key_der: PrivatePkcs8KeyDer<'static>,
    pub pin: SpkiPin,
}

pub fn tls_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(TLS_DIR)
}

/// Names the certificate covers: the host name, `localhost`, and the machine's addresses.
/// Clients pin the key, so these only matter to browsers; they are there to be honest.
fn subject_alt_names(host_name: &str, addresses: &[IpAddr]) -> Vec<SanType> {
    let mut names = vec![host_name.to_string(), "localhost".to_string()];
    names.dedup();
    let mut sans: Vec<SanType> = names
        .into_iter()
        .filter_map(|name| name.try_into().ok().map(SanType::DnsName))
        .collect();
    let mut ips: Vec<IpAddr> = addresses.to_vec();
    for lo in [
        IpAddr::from([127, 0, 0, 1]),
        IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
    ] {
        if !ips.contains(&lo) {
            ips.push(lo);
        }
    }
    sans.extend(ips.into_iter().map(SanType::IpAddress));
    sans
}

fn issue_certificate(
    key: &KeyPair,
    host_name: &str,
    addresses: &[IpAddr],
) -> Result<String, TlsError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("taos host {host_name}"));
    dn.push(DnType::OrganizationName, "taos");
    params.distinguished_name = dn;
    params.subject_alt_names = subject_alt_names(host_name, addresses);
    // Clients pin the key, not the certificate, so a long validity costs nothing and spares
    // a Pi without a real-time clock from "certificate not yet valid" surprises.
    let year = chrono::Datelike::year(&chrono::Utc::now());
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + 20, 1, 1);
    Ok(params.self_signed(key)?.pem())
}

/// The host's certificate as PEM, for a person to install in their browser's trust store so the
/// browser trusts the host itself (service workers, offline reading: docs/install.md). It is
/// what every TLS handshake already shows, so it is no secret.
pub fn certificate_pem(data_dir: &Path) -> Result<String, TlsError> {
    let path = tls_dir(data_dir).join(CERT_FILE);
    std::fs::read_to_string(&path).map_err(|source| TlsError::Io { path, source })
}

/// Loads the host identity, creating the key and certificate on first run (both 0600).
/// The key is the identity: if the certificate is missing or was made for another key, a new
/// one is issued for the existing key, so the pin never changes behind a paired app's back.
pub fn load_or_create(
    data_dir: &Path,
    host_name: &str,
    addresses: &[IpAddr],
) -> Result<TlsIdentity, TlsError> {
    let dir = tls_dir(data_dir);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TlsError::Io { path, source }
    };
    fsutil::ensure_private_dir(&dir).map_err(io(&dir))?;
    let key_path = dir.join(KEY_FILE);
    let cert_path = dir.join(CERT_FILE);
    fsutil::remove_stale_temps(&key_path);
    fsutil::remove_stale_temps(&cert_path);

    let key = match std::fs::read_to_string(&key_path) {
        Ok(pem) => KeyPair::from_pem(&pem).map_err(|e| TlsError::BadPem {
            path: key_path.clone(),
            message: e.to_string(),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = KeyPair::generate()?;
            fsutil::create_new_atomic(&key_path, key.serialize_pem().as_bytes())
                .map_err(io(&key_path))?;
            key
        }
        Err(e) => return Err(io(&key_path)(e)),
    };
    let key_pin = SpkiPin::of_spki(&key.public_key_der());

    let existing_cert = match std::fs::read(&cert_path) {
        Ok(pem) => CertificateDer::from_pem_slice(&pem).ok(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io(&cert_path)(e)),
    };
    let cert_der = match existing_cert {
        Some(der) if SpkiPin::of_certificate(&der).ok() == Some(key_pin) => der,
        _ => {
            let pem = issue_certificate(&key, host_name, addresses)?;
            fsutil::write_atomic(&cert_path, pem.as_bytes()).map_err(io(&cert_path))?;
            CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| TlsError::BadPem {
                path: cert_path.clone(),
                message: e.to_string(),
            })?
        }
    };
    Ok(TlsIdentity {
        cert_der,
        key_der: PrivatePkcs8KeyDer::from(key.serialize_der()),
        pin: key_pin,
    })
}

/// Reads the pin without creating anything (for `taos-host fingerprint`).
pub fn read_pin(data_dir: &Path) -> Result<Option<SpkiPin>, TlsError> {
    let key_path = tls_dir(data_dir).join(KEY_FILE);
    match std::fs::read_to_string(&key_path) {
        Ok(pem) => {
            let key = KeyPair::from_pem(&pem).map_err(|e| TlsError::BadPem {
                path: key_path.clone(),
                message: e.to_string(),
            })?;
            Ok(Some(SpkiPin::of_spki(&key.public_key_der())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TlsError::Io {
            path: key_path,
            source,
        }),
    }
}

/// TLS 1.3 only, HTTP/2 and HTTP/1.1 by ALPN.
pub fn server_config(identity: &TlsIdentity) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(
            vec![identity.cert_der.clone()],
            PrivateKeyDer::Pkcs8(identity.key_der.clone_key()),
        )?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path(), "pi", &[]).unwrap();
        let key_path = tls_dir(dir.path()).join(KEY_FILE);
        let cert_path = tls_dir(dir.path()).join(CERT_FILE);
        assert_eq!(fsutil::mode_of(&key_path).unwrap(), 0o600);
        assert_eq!(fsutil::mode_of(&cert_path).unwrap(), 0o600);
        assert_eq!(fsutil::mode_of(&tls_dir(dir.path())).unwrap(), 0o700);
        let again = load_or_create(dir.path(), "pi", &[]).unwrap();
        assert_eq!(first.pin, again.pin);
        assert_eq!(first.cert_der, again.cert_der);
        assert_eq!(read_pin(dir.path()).unwrap(), Some(first.pin));
    }

    #[test]
    fn pin_from_certificate_matches_pin_from_key() {
        let dir = tempfile::tempdir().unwrap();
        let identity = load_or_create(dir.path(), "pi", &["192.0.2.7".parse().unwrap()]).unwrap();
        assert_eq!(
            SpkiPin::of_certificate(&identity.cert_der).unwrap(),
            identity.pin
        );
    }

    #[test]
    fn lost_certificate_is_reissued_for_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path(), "pi", &[]).unwrap();
        std::fs::remove_file(tls_dir(dir.path()).join(CERT_FILE)).unwrap();
        let second = load_or_create(dir.path(), "pi", &[]).unwrap();
        assert_eq!(first.pin, second.pin);
    }

    #[test]
    fn server_config_builds() {
        let dir = tempfile::tempdir().unwrap();
        let identity = load_or_create(dir.path(), "pi", &[]).unwrap();
        assert!(server_config(&identity).is_ok());
    }
}
