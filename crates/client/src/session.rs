//! A signed-in device: finds the host at one of its addresses, keeps a fresh access token
//! (refreshing a minute before expiry, one refresh at a time, because a refresh token used
//! twice revokes the device), and notices when the device was revoked.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Method;
use taos_proto::auth::{DeviceTokens, RefreshRequest};
use tokio::sync::Mutex;

use crate::hosts::PairedHost;
use crate::net::{Link, NetError};
use crate::secrets::{refresh_key, SecretError, SecretStore};

/// Refresh when less than this is left.
const REFRESH_MARGIN: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The host revoked this device (or its refresh token was used twice): pair again.
    #[error("this device was signed out by the host; pair it again")]
    Revoked,
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Secrets(#[from] SecretError),
}

impl SessionError {
    pub fn is_offline(&self) -> bool {
        matches!(self, SessionError::Net(e) if e.is_offline())
    }
}

struct Access {
    token: String,
    valid_until: Instant,
}

pub struct Session {
    pub host: PairedHost,
    secrets: Arc<dyn SecretStore>,
    link: Mutex<Option<Link>>,
    access: Mutex<Option<Access>>,
}

impl Session {
    pub fn new(host: PairedHost, secrets: Arc<dyn SecretStore>) -> Session {
        Session {
            host,
            secrets,
            link: Mutex::new(None),
            access: Mutex::new(None),
        }
    }

    /// A session straight after pairing, with the access token pairing returned.
    pub fn after_pairing(
        host: PairedHost,
        secrets: Arc<dyn SecretStore>,
        tokens: &DeviceTokens,
        link: Link,
    ) -> Session {
        Session {
            host,
            secrets,
            link: Mutex::new(Some(link)),
            access: Mutex::new(Some(Access {
                token: tokens.access_token.clone(),
                valid_until: Instant::now() + Duration::from_secs(tokens.expires_in),
            })),
        }
    }

    /// A link to whichever address answers, trying the last good one first.
    pub async fn link(&self) -> Result<Link, NetError> {
        if let Some(link) = self.link.lock().await.clone() {
            return Ok(link);
        }
        let mut last = None;
        for address in &self.host.addresses {
            let link = Link::new(address, self.host.trust)?;
            match link
                .send::<()>(Method::GET, "/api/health", None, None)
                .await
            {
                Ok(_) => {
                    *self.link.lock().await = Some(link.clone());
                    return Ok(link);
                }
                Err(e @ NetError::WrongKey(_)) => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(NetError::Unreachable {
            address: "(none)".into(),
            reason: "the host has no addresses".into(),
        }))
    }

    /// Forgets the current address (after a network error) so the next call looks again.
    pub async fn reset_link(&self) {
        *self.link.lock().await = None;
    }

    /// A valid access token, refreshed if it is about to expire.
    pub async fn access_token(&self) -> Result<String, SessionError> {
        let mut access = self.access.lock().await;
        if let Some(a) = access.as_ref() {
            if a.valid_until > Instant::now() + REFRESH_MARGIN {
                return Ok(a.token.clone());
            }
        }
        let key = refresh_key(&self.host.device_id);
        let refresh_token = self.secrets.get(&key)?.ok_or(SessionError::Revoked)?;
        let link = self.link().await?;
        // The host rotates the refresh token as it answers: the exchange and storing the new
        // token run as a task of their own, so a caller that gives up (the app switching hosts,
        // the engine stopping) can't drop the new token after the old one was spent.
        let secrets = self.secrets.clone();
        let exchange = tokio::spawn(async move {
            let tokens = link
                .json::<DeviceTokens, _>(
                    Method::POST,
                    "/api/auth/refresh",
                    None,
                    Some(&RefreshRequest { refresh_token }),
                )
                .await?;
            secrets
                .set(&key, &tokens.refresh_token)
                .map_err(|e| NetError::Protocol(e.to_string()))?;
            Ok::<_, NetError>(tokens)
        });
        let answer = exchange
            .await
            .unwrap_or_else(|e| Err(NetError::Protocol(e.to_string())));
        let tokens = match answer {
            Ok(tokens) => tokens,
            Err(NetError::Unauthorized) => {
                if let Err(e) = self.secrets.delete(&refresh_key(&self.host.device_id)) {
                    tracing::warn!("could not forget a refused refresh token: {e}");
                }
                *access = None;
                return Err(SessionError::Revoked);
            }
            Err(e) => {
                if e.is_offline() {
                    self.reset_link().await;
                }
                return Err(e.into());
            }
        };
        let token = tokens.access_token.clone();
        *access = Some(Access {
            token: tokens.access_token,
            valid_until: Instant::now() + Duration::from_secs(tokens.expires_in),
        });
        Ok(token)
    }

    /// Drops the access token, as if it had expired (tests; and after the host said 401).
    pub async fn expire_access(&self) {
        *self.access.lock().await = None;
    }

    /// Drops `token` if it is still the current access token: the host ended it (a socket
    /// closed with 4001). A token another task already replaced is kept, so two connections
    /// told at once cause one refresh, not two.
    pub async fn forget_token(&self, token: &str) {
        let mut access = self.access.lock().await;
        if access.as_ref().is_some_and(|a| a.token == token) {
            *access = None;
        }
    }

    /// Any call, answered as JSON when the body is JSON, as a string when it is text, and
    /// `null` when empty (204): what the UI's generic request needs.
    pub async fn call_value(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, SessionError> {
        for attempt in 0..2 {
            let token = self.access_token().await?;
            let link = self.link().await?;
            match link.send(method.clone(), path, Some(&token), body).await {
                Err(NetError::Unauthorized) if attempt == 0 => self.expire_access().await,
                Err(e) => {
                    if e.is_offline() {
                        self.reset_link().await;
                    }
                    return Err(e.into());
                }
                Ok((_, bytes)) if bytes.is_empty() => return Ok(serde_json::Value::Null),
                Ok((_, bytes)) => {
                    return Ok(serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                        serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
                    }))
                }
            }
        }
        Err(SessionError::Revoked)
    }

    /// A JSON call with the device's token; a 401 (access token revoked with the device)
    /// is reported as `Revoked` once a refresh fails too.
    pub async fn call<T: serde::de::DeserializeOwned, B: serde::Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, SessionError> {
        for attempt in 0..2 {
            let token = self.access_token().await?;
            let link = self.link().await?;
            match link.json(method.clone(), path, Some(&token), body).await {
                Err(NetError::Unauthorized) if attempt == 0 => self.expire_access().await,
                Err(e) => {
                    if e.is_offline() {
                        self.reset_link().await;
                    }
                    return Err(e.into());
                }
                Ok(value) => return Ok(value),
            }
        }
        Err(SessionError::Revoked)
    }
}
