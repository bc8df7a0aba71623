//! SPKI pinning for taos clients.
//!
//! The host serves a self-signed certificate. Clients never trust it through a CA: they learn the
//! SHA-256 of its SubjectPublicKeyInfo once (from a pairing token, or `taos-host fingerprint`) and
//! from then on accept exactly that key. Pinning the key rather than the certificate lets the host
//! re-issue its certificate (new names, new expiry) without breaking paired apps.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Prefix of the printable pin form, `sha256/<base64>` (the HPKP notation).
pub const PIN_PREFIX: &str = "sha256/";

/// A SHA-256 digest of a DER SubjectPublicKeyInfo.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SpkiPin(pub [u8; 32]);

impl SpkiPin {
    /// The pin of a DER-encoded SubjectPublicKeyInfo.
    pub fn of_spki(spki_der: &[u8]) -> Self {
        SpkiPin(Sha256::digest(spki_der).into())
    }

    /// The pin of a DER-encoded X.509 certificate's public key.
    pub fn of_certificate(cert_der: &[u8]) -> Result<Self, PinError> {
        Ok(Self::of_spki(spki_of_certificate(cert_der)?))
    }

    /// Parses `sha256/<base64>` or the bare base64 digest.
    pub fn parse(text: &str) -> Result<Self, PinError> {
        let b64 = text.trim().strip_prefix(PIN_PREFIX).unwrap_or(text.trim());
        let bytes = STANDARD.decode(b64).map_err(|_| PinError::BadPin)?;
        let digest: [u8; 32] = bytes.try_into().map_err(|_| PinError::BadPin)?;
        Ok(SpkiPin(digest))
    }

    /// The bare base64 digest.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    fn matches(&self, other: &SpkiPin) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl std::fmt::Display for SpkiPin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{PIN_PREFIX}{}", self.to_base64())
    }
}

impl std::fmt::Debug for SpkiPin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SpkiPin({self})")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinError {
    /// The certificate is not DER we can walk to its SubjectPublicKeyInfo.
    MalformedCertificate,
    /// The pin text is not `sha256/` followed by 32 bytes of base64.
    BadPin,
}

impl std::fmt::Display for PinError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PinError::MalformedCertificate => f.write_str("malformed certificate"),
            PinError::BadPin => f.write_str("a pin is sha256/ followed by a base64 SHA-256 digest"),
        }
    }
}

impl std::error::Error for PinError {}

/// One DER element read off the front of a byte slice.
struct Tlv<'a> {
    tag: u8,
    /// Tag, length and content together.
    whole: &'a [u8],
    content: &'a [u8],
    rest: &'a [u8],
}

/// Reads one DER TLV at the start of `input`.
fn read_tlv(input: &[u8]) -> Result<Tlv<'_>, PinError> {
    let bad = PinError::MalformedCertificate;
    let (&tag, after_tag) = input.split_first().ok_or(bad.clone())?;
    let (&first_len, after_len_byte) = after_tag.split_first().ok_or(bad.clone())?;
    let (len, after_len) = if first_len < 0x80 {
        (usize::from(first_len), after_len_byte)
    } else {
        let count = usize::from(first_len & 0x7f);
        if count == 0 || count > 4 || after_len_byte.len() < count {
            return Err(bad);
        }
        let len = after_len_byte[..count]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &after_len_byte[count..])
    };
    if after_len.len() < len {
        return Err(bad);
    }
    let header_len = input.len() - after_len.len();
    let whole = &input[..header_len + len];
    Ok(Tlv {
        tag,
        whole,
        content: &after_len[..len],
        rest: &after_len[len..],
    })
}

const SEQUENCE: u8 = 0x30;
const VERSION_TAG: u8 = 0xa0;

/// The DER SubjectPublicKeyInfo inside an X.509 certificate.
///
/// Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber,
/// signature, issuer, validity, subject, subjectPublicKeyInfo, ... }, ... }
pub fn spki_of_certificate(cert_der: &[u8]) -> Result<&[u8], PinError> {
    let cert = read_tlv(cert_der)?;
    if cert.tag != SEQUENCE {
        return Err(PinError::MalformedCertificate);
    }
    let tbs = read_tlv(cert.content)?;
    if tbs.tag != SEQUENCE {
        return Err(PinError::MalformedCertificate);
    }
    let mut rest = tbs.content;
    let first = read_tlv(rest)?;
    if first.tag == VERSION_TAG {
        rest = first.rest;
    }
    // serialNumber, signature, issuer, validity, subject
    for _ in 0..5 {
        rest = read_tlv(rest)?.rest;
    }
    let spki = read_tlv(rest)?;
    if spki.tag != SEQUENCE {
        return Err(PinError::MalformedCertificate);
    }
    Ok(spki.whole)
}

/// A rustls verifier that accepts a server only if its certificate carries the pinned key, and
/// (through the handshake signature checks) only if the server proves it holds that key.
/// Names, issuers and dates are deliberately not checked: the pin is the whole trust decision.
#[derive(Debug)]
pub struct PinnedServerVerifier {
    pin: SpkiPin,
    provider: Arc<CryptoProvider>,
}

impl PinnedServerVerifier {
    pub fn new(pin: SpkiPin, provider: Arc<CryptoProvider>) -> Self {
        Self { pin, provider }
    }
}

impl ServerCertVerifier for PinnedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = SpkiPin::of_certificate(end_entity.as_ref())
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if presented.matches(&self.pin) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A TLS 1.3 client configuration that trusts exactly the server holding the pinned key.
pub fn pinned_client_config(pin: SpkiPin) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PinnedServerVerifier::new(pin, provider.clone()));
    #[allow(
        clippy::expect_used,
        reason = "ring always supports TLS 1.3: this can't fail at run time"
    )]
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("ring supports TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed() -> (rcgen::KeyPair, CertificateDer<'static>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["taos-host".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (key, cert.der().clone())
    }

    fn verify(
        pin: SpkiPin,
        cert: &CertificateDer<'_>,
        name: &str,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verifier =
            PinnedServerVerifier::new(pin, Arc::new(rustls::crypto::ring::default_provider()));
        verifier.verify_server_cert(
            cert,
            &[],
            &ServerName::try_from(name.to_string()).unwrap(),
            &[],
            UnixTime::now(),
        )
    }

    #[test]
    fn the_verifier_accepts_exactly_the_pinned_key() {
        let (key, cert) = self_signed();
        let pin = SpkiPin::of_spki(&key.public_key_der());
        assert!(verify(pin, &cert, "taos-host").is_ok());
        // Host names don't matter: a board's address changes.
        assert!(verify(pin, &cert, "192.168.1.20").is_ok());

        // Another self-signed key, even for the same name: refused.
        let (_, other) = self_signed();
        assert!(verify(pin, &other, "taos-host").is_err());

        // A certificate a CA signed for another key: refused, and pinning the CA's key doesn't
        // make the certificates it signs acceptable either (only the end entity's key counts).
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(vec![]).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["taos-host".into()])
            .unwrap()
            .signed_by(&leaf_key, &ca, &ca_key)
            .unwrap();
        assert!(verify(pin, leaf.der(), "taos-host").is_err());
        let ca_pin = SpkiPin::of_spki(&ca_key.public_key_der());
        assert!(verify(ca_pin, leaf.der(), "taos-host").is_err());
        assert!(verify(
            SpkiPin::of_spki(&leaf_key.public_key_der()),
            leaf.der(),
            "taos-host"
        )
        .is_ok());
    }

    #[test]
    fn pin_text_round_trips() {
        let pin = SpkiPin::of_spki(b"not really a key");
        let text = pin.to_string();
        assert!(text.starts_with("sha256/"));
        assert_eq!(SpkiPin::parse(&text).unwrap(), pin);
        assert_eq!(SpkiPin::parse(&pin.to_base64()).unwrap(), pin);
    }

    #[test]
    fn bad_pins_are_refused() {
        assert_eq!(SpkiPin::parse("sha256/!!"), Err(PinError::BadPin));
        assert_eq!(SpkiPin::parse("sha256/AAAA"), Err(PinError::BadPin));
    }

    #[test]
    fn truncated_certificates_are_refused() {
        assert!(spki_of_certificate(&[]).is_err());
        assert!(spki_of_certificate(&[0x30, 0x82, 0xff]).is_err());
        assert!(spki_of_certificate(&[0x30, 0x03, 0x02, 0x01, 0x01]).is_err());
    }
}
