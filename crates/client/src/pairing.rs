//! Pairing: the token the host shows names its addresses and its key; the app connects to each
//! address in turn, trusting only that key, and trades the token for device credentials.

use std::sync::Arc;

use reqwest::Method;
use taos_pin::SpkiPin;
use taos_proto::auth::{DeviceTokens, PairRequest, PairingPayload, PairingTokenError};

use crate::hosts::PairedHost;
use crate::net::{Link, NetError, Trust};
use crate::secrets::{refresh_key, SecretError, SecretStore};

#[derive(Debug, thiserror::Error)]
pub enum PairError {
    #[error(transparent)]
    Token(#[from] PairingTokenError),
    #[error("this pairing code has expired; ask the host for a new one")]
    Expired,
    #[error(
        "a host answered at {0}, but it is not the one that made this code (its key differs); \
         check you are on the right network and ask that host for a new code"
    )]
    WrongKey(String),
    #[error("the host refused this code: it was already used, has expired, or was mistyped")]
    Refused,
    #[error("could not reach the host at any of its addresses ({0})")]
    Unreachable(String),
    #[error(transparent)]
    Secrets(#[from] SecretError),
    #[error("{0}")]
    BadInput(String),
    #[error("{0}")]
    Other(String),
}

/// The result of pairing: where the host is, and tokens (the refresh token is already in the
/// keychain; the access token is handed to the session).
pub struct Paired {
    pub host: PairedHost,
    pub tokens: DeviceTokens,
    /// The address that answered.
    pub address: String,
}

pub async fn pair(
    token: &str,
    device_name: &str,
    platform: &str,
    secrets: Arc<dyn SecretStore>,
) -> Result<Paired, PairError> {
    taos_proto::auth::check_device_name(device_name).map_err(PairError::BadInput)?;
    let device_name = device_name.trim();
    let payload = PairingPayload::decode(token)?;
    if payload.is_expired(chrono::Utc::now()) {
        return Err(PairError::Expired);
    }
    let pin = SpkiPin::parse(&payload.spki_sha256).map_err(|_| PairingTokenError::Malformed)?;
    // Before spending the single-use token: can we keep what it buys?
    secrets.probe()?;
    let request = PairRequest {
        token: token.trim().to_string(),
        device_name: device_name.to_string(),
        platform: platform.to_string(),
    };
    let mut wrong_key = None;
    let mut unreachable = Vec::new();
    for address in &payload.addresses {
        let link =
            Link::new(address, Trust::Pinned(pin)).map_err(|e| PairError::Other(e.to_string()))?;
        match link
            .json::<DeviceTokens, _>(Method::POST, "/api/devices/pair", None, Some(&request))
            .await
        {
            Ok(tokens) => {
                let device_id = tokens.device_id.to_string();
                secrets.set(&refresh_key(&device_id), &tokens.refresh_token)?;
                let mut addresses = payload.addresses.clone();
                addresses.retain(|a| a != address);
                addresses.insert(0, address.clone());
                return Ok(Paired {
                    host: PairedHost {
                        device_id,
                        host_name: payload.host_name.clone(),
                        addresses,
                        trust: Trust::Pinned(pin),
                        paired_at: chrono::Utc::now(),
                    },
                    tokens,
                    address: address.clone(),
                });
            }
            Err(NetError::WrongKey(at)) => wrong_key = Some(at),
            Err(NetError::Unreachable { address, .. }) => unreachable.push(address),
            Err(NetError::Unauthorized) => return Err(PairError::Refused),
            Err(e) => return Err(PairError::Other(e.to_string())),
        }
    }
    match wrong_key {
        Some(at) => Err(PairError::WrongKey(at)),
        None => Err(PairError::Unreachable(unreachable.join(", "))),
    }
}
