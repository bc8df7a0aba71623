//! The provider catalog: where models come from, with their keys and prices.

use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::db::{from_ms, now_ms, Db};
use crate::secrets::SecretBox;
use taos_proto::llm::{NewProvider, Provider, ProviderModel, ProviderPatch, ProviderType};

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("{0}")]
    BadInput(String),
    #[error("no such provider")]
    NotFound,
    #[error("a provider named {0} already exists")]
    Exists(String),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("bad stored data: {0}")]
    Decode(String),
}

/// Everything about a provider, secret included. Never serialized to clients.
#[derive(Debug, Clone)]
pub struct ProviderRecord {
    pub name: String,
    pub kind: ProviderType,
    pub url: String,
    /// The API key as stored: sealed (see `secrets`). Open it with [`ProviderRecord::api_key`].
    pub sealed_key: Option<String>,
    pub models: Vec<ProviderModel>,
    pub enabled: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

impl ProviderRecord {
    pub fn to_api(&self) -> Provider {
        Provider {
            name: self.name.clone(),
            kind: self.kind,
            url: self.url.clone(),
            has_api_key: self.sealed_key.is_some(),
            models: self.models.clone(),
            enabled: self.enabled,
            created_at: from_ms(self.created_at),
            updated_at: from_ms(self.updated_at),
        }
    }

    /// The plain API key, if there is one and it can be opened.
    pub fn api_key(&self, secrets: &SecretBox) -> Option<String> {
        let sealed = self.sealed_key.as_deref()?;
        match secrets.open(sealed) {
            Ok(key) => Some(key),
            Err(e) => {
                tracing::error!(provider = %self.name, error = %e, "cannot open the provider key");
                None
            }
        }
    }

    /// The environment variable that carries this provider's key to LiteLLM.
    pub fn key_env_var(&self) -> String {
        format!(
            "TAOS_PROVIDER_KEY_{}",
            self.name.to_ascii_uppercase().replace('-', "_")
        )
    }
}

/// The URL a provider type uses when none is given, and whether one must be given.
pub fn default_url(kind: ProviderType) -> Option<&'static str> {
    match kind {
        ProviderType::Openai => Some("https://api.openai.com/v1"),
        ProviderType::Anthropic => Some("https://api.anthropic.com/v1"),
        ProviderType::Openrouter => Some("https://openrouter.ai/api/v1"),
        ProviderType::Kilocode => Some("https://api.kilocode.ai/api/openrouter"),
        ProviderType::Ollama => Some("http://127.0.0.1:11434/v1"),
        ProviderType::LlamaCpp => Some("http://127.0.0.1:8080/v1"),
        ProviderType::Vllm => Some("http://127.0.0.1:8000/v1"),
        ProviderType::OpenaiCompatible => None,
    }
}

/// LiteLLM's provider prefix for a model id of this type.
pub fn litellm_prefix(kind: ProviderType) -> &'static str {
    match kind {
        ProviderType::Anthropic => "anthropic/",
        ProviderType::Openrouter => "openrouter/",
        // Everything else speaks the OpenAI API at its URL.
        _ => "openai/",
    }
}

pub fn validate_name(name: &str) -> Result<(), ProviderError> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name.as_bytes()[0].is_ascii_lowercase()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ProviderError::BadInput(
            "provider name must be 1-32 characters of a-z, 0-9 and '-', starting with a letter"
                .into(),
        ))
    }
}

pub fn validate_url(url: &str) -> Result<(), ProviderError> {
    let ok = (url.starts_with("http://") || url.starts_with("https://"))
        && url.len() <= 500
        && !url.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(ProviderError::BadInput(
            "url must be an http:// or https:// URL".into(),
        ))
    }
}

pub fn validate_models(models: &[ProviderModel]) -> Result<(), ProviderError> {
    if models.len() > 500 {
        return Err(ProviderError::BadInput("at most 500 models".into()));
    }
    for m in models {
        let id_ok = !m.id.is_empty()
            && m.id.len() <= 200
            && !m
                .id
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '"');
        if !id_ok {
            return Err(ProviderError::BadInput(format!("bad model id {:?}", m.id)));
        }
        for price in [m.input_usd_per_mtok, m.output_usd_per_mtok]
            .into_iter()
            .flatten()
        {
            if !price.is_finite() || price < 0.0 {
                return Err(ProviderError::BadInput("prices must be >= 0".into()));
            }
        }
    }
    Ok(())
}

fn validate_key(key: &str) -> Result<(), ProviderError> {
    if key.len() > 1000 || key.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(ProviderError::BadInput(
            "api_key has invalid characters".into(),
        ));
    }
    Ok(())
}

fn from_row(row: &sqlx::sqlite::SqliteRow) -> Result<ProviderRecord, ProviderError> {
    let kind: String = row.try_get("type")?;
    let models: String = row.try_get("models")?;
    Ok(ProviderRecord {
        name: row.try_get("name")?,
        kind: serde_json::from_value(serde_json::Value::String(kind))
            .map_err(|e| ProviderError::Decode(e.to_string()))?,
        url: row.try_get("url")?,
        sealed_key: row.try_get("api_key")?,
        models: serde_json::from_str(&models).map_err(|e| ProviderError::Decode(e.to_string()))?,
        enabled: row.try_get("enabled")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

pub async fn list(db: &Db) -> Result<Vec<ProviderRecord>, ProviderError> {
    let rows = sqlx::query("SELECT * FROM providers ORDER BY created_at, name")
        .fetch_all(db)
        .await?;
    rows.iter().map(from_row).collect()
}

pub async fn get(db: &Db, name: &str) -> Result<ProviderRecord, ProviderError> {
    validate_name(name).map_err(|_| ProviderError::NotFound)?;
    let row = sqlx::query("SELECT * FROM providers WHERE name = ?")
        .bind(name)
        .fetch_optional(db)
        .await?
        .ok_or(ProviderError::NotFound)?;
    from_row(&row)
}

/// The URL a new provider will use: given, or the type's default.
pub fn resolve_url(kind: ProviderType, url: Option<&str>) -> Result<String, ProviderError> {
    let url = match url.map(str::trim).filter(|u| !u.is_empty()) {
        Some(url) => url.trim_end_matches('/').to_string(),
        None => default_url(kind)
            .ok_or_else(|| ProviderError::BadInput("url is required for this type".into()))?
            .to_string(),
    };
    validate_url(&url)?;
    Ok(url)
}

pub async fn create(
    db: &Db,
    secrets: &SecretBox,
    new: &NewProvider,
    discovered: Vec<ProviderModel>,
) -> Result<ProviderRecord, ProviderError> {
    validate_name(&new.name)?;
    let url = resolve_url(new.kind, new.url.as_deref())?;
    if let Some(key) = &new.api_key {
        validate_key(key)?;
    }
    let models = new.models.clone().unwrap_or(discovered);
    validate_models(&models)?;
    let now = now_ms();
    let result = sqlx::query(
        "INSERT INTO providers (name, type, url, api_key, models, created_at, updated_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&new.name)
    .bind(new.kind.as_str())
    .bind(&url)
    .bind(
        new.api_key
            .as_deref()
            .filter(|k| !k.is_empty())
            .map(|k| secrets.seal(k)),
    )
    .bind(serde_json::to_string(&models).unwrap_or_else(|_| "[]".into()))
    .bind(now)
    .bind(now)
    .execute(db)
    .await;
    match result {
        Ok(_) => get(db, &new.name).await,
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            Err(ProviderError::Exists(new.name.clone()))
        }
        Err(e) => Err(e.into()),
    }
}

/// `(scheme, host, port)`: where a request to `url` really goes. `None` for a URL that does
/// not parse (never stored: URLs are validated first).
pub fn origin(url: &str) -> Option<(String, String, u16)> {
    let url = reqwest::Url::parse(url).ok()?;
    Some((
        url.scheme().to_string(),
        url.host_str()?.to_ascii_lowercase(),
        url.port_or_known_default()?,
    ))
}

/// Changes a provider. A key was given for one origin: if the URL moves to another origin
/// (scheme, host or port) and the same patch sets no new key, the stored key is dropped, so
/// whoever can change the URL can't send the key somewhere else.
pub async fn update(
    db: &Db,
    secrets: &SecretBox,
    name: &str,
    patch: &ProviderPatch,
) -> Result<ProviderRecord, ProviderError> {
    let current = get(db, name).await?;
    let url = match &patch.url {
        Some(url) => resolve_url(current.kind, Some(url))?,
        None => current.url.clone(),
    };
    let moved = origin(&url) != origin(&current.url);
    let api_key = match &patch.api_key {
        Some(key) if key.is_empty() => None,
        Some(key) => {
            validate_key(key)?;
            Some(secrets.seal(key))
        }
        None if moved => {
            if current.sealed_key.is_some() {
                tracing::warn!(provider = %name, "provider URL moved to another origin; its API key was dropped");
            }
            None
        }
        None => current.sealed_key.clone(),
    };
    let models = patch.models.clone().unwrap_or(current.models.clone());
    validate_models(&models)?;
    let enabled = patch.enabled.unwrap_or(current.enabled);
    sqlx::query(
        "UPDATE providers SET url = ?, api_key = ?, models = ?, enabled = ?, updated_at = ? WHERE name = ?",
    )
    .bind(&url)
    .bind(&api_key)
    .bind(serde_json::to_string(&models).unwrap_or_else(|_| "[]".into()))
    .bind(enabled)
    .bind(now_ms())
    .bind(name)
    .execute(db)
    .await?;
    get(db, name).await
}

pub async fn delete(db: &Db, name: &str) -> Result<(), ProviderError> {
    validate_name(name).map_err(|_| ProviderError::NotFound)?;
    let done = sqlx::query("DELETE FROM providers WHERE name = ?")
        .bind(name)
        .execute(db)
        .await?;
    if done.rows_affected() == 0 {
        return Err(ProviderError::NotFound);
    }
    Ok(())
}

/// One model as the gateway and LiteLLM know it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatalogModel {
    /// The name agents ask for (LiteLLM's model_name).
    pub name: String,
    pub provider: String,
    pub input_usd_per_mtok: Option<f64>,
    pub output_usd_per_mtok: Option<f64>,
}

/// Why the catalog offers no model, for the Providers screen (only meaningful when it offers
/// none): a provider may exist and still offer nothing.
pub fn idle_reason(providers: &[ProviderRecord]) -> &'static str {
    if providers.is_empty() {
        super::supervisor::NO_PROVIDER
    } else if !providers.iter().any(|p| p.enabled) {
        "no models: every provider is disabled; enable one"
    } else {
        "no models: the enabled providers list none; rediscover their models or add model names"
    }
}

/// Models of enabled providers, first provider wins on a name clash.
pub fn catalog_models(providers: &[ProviderRecord]) -> Vec<CatalogModel> {
    let mut out: Vec<CatalogModel> = Vec::new();
    for p in providers.iter().filter(|p| p.enabled) {
        for m in &p.models {
            if !out.iter().any(|o| o.name == m.id) {
                out.push(CatalogModel {
                    name: m.id.clone(),
                    provider: p.name.clone(),
                    input_usd_per_mtok: m.input_usd_per_mtok,
                    output_usd_per_mtok: m.output_usd_per_mtok,
                });
            }
        }
    }
    out
}

/// LiteLLM's config for the catalog. Keys appear only as `os.environ/NAME` references; the
/// values travel in the process environment ([`litellm_env`]).
pub fn litellm_config(providers: &[ProviderRecord]) -> serde_json::Value {
    let mut model_list = Vec::new();
    // One deployment per name, the first provider's, as in `catalog_models`: LiteLLM would
    // otherwise balance a name across providers (and their prices) at random.
    let mut seen = std::collections::HashSet::new();
    for p in providers.iter().filter(|p| p.enabled) {
        for m in &p.models {
            if !seen.insert(m.id.clone()) {
                continue;
            }
            let mut params = serde_json::json!({
                "model": format!("{}{}", litellm_prefix(p.kind), m.id),
                "api_base": p.url,
            });
            params["api_key"] = if p.sealed_key.is_some() {
                serde_json::Value::String(format!("os.environ/{}", p.key_env_var()))
            } else {
                // The OpenAI client insists on some key; local servers ignore it.
                serde_json::Value::String("no-key".into())
            };
            model_list.push(serde_json::json!({"model_name": m.id, "litellm_params": params}));
        }
    }
    serde_json::json!({
        "model_list": model_list,
        "litellm_settings": {"drop_params": true, "request_timeout": 600},
        "general_settings": {"master_key": "os.environ/TAOS_LITELLM_MASTER_KEY"},
    })
}

/// The provider keys as environment variables for LiteLLM's process.
pub fn litellm_env(providers: &[ProviderRecord], secrets: &SecretBox) -> Vec<(String, String)> {
    providers
        .iter()
        .filter(|p| p.enabled)
        .filter_map(|p| p.api_key(secrets).map(|k| (p.key_env_var(), k)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(name: &str, key: Option<&str>, models: &[&str]) -> ProviderRecord {
        let dir = tempfile::tempdir().unwrap();
        let secrets = SecretBox::load_or_create(dir.path()).unwrap();
        provider_with(&secrets, name, key, models)
    }

    fn provider_with(
        secrets: &SecretBox,
        name: &str,
        key: Option<&str>,
        models: &[&str],
    ) -> ProviderRecord {
        ProviderRecord {
            name: name.into(),
            kind: ProviderType::OpenaiCompatible,
            url: "http://127.0.0.1:9/v1".into(),
            sealed_key: key.map(|k| secrets.seal(k)),
            models: models
                .iter()
                .map(|m| ProviderModel {
                    id: m.to_string(),
                    input_usd_per_mtok: None,
                    output_usd_per_mtok: None,
                })
                .collect(),
            enabled: true,
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn config_references_keys_by_env_var_only() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = SecretBox::load_or_create(dir.path()).unwrap();
        let providers = vec![provider_with(
            &secrets,
            "local-ai",
            Some("sk-secret-123"),
            &["m1", "m2"],
        )];
        let text = litellm_config(&providers).to_string();
        assert!(!text.contains("sk-secret-123"));
        assert!(text.contains("os.environ/TAOS_PROVIDER_KEY_LOCAL_AI"));
        assert!(text.contains("os.environ/TAOS_LITELLM_MASTER_KEY"));
        assert_eq!(
            litellm_env(&providers, &secrets),
            vec![(
                "TAOS_PROVIDER_KEY_LOCAL_AI".to_string(),
                "sk-secret-123".to_string()
            )]
        );
    }

    #[test]
    fn first_provider_wins_a_model_name() {
        let providers = vec![
            provider("a", None, &["m"]),
            provider("b", None, &["m", "n"]),
        ];
        let names: Vec<(String, String)> = catalog_models(&providers)
            .into_iter()
            .map(|m| (m.name, m.provider))
            .collect();
        assert_eq!(
            names,
            [
                ("m".to_string(), "a".to_string()),
                ("n".to_string(), "b".to_string())
            ]
        );
    }

    #[test]
    fn origins_compare_scheme_host_and_port() {
        let o = |u: &str| origin(u).unwrap();
        assert_eq!(
            o("https://api.openai.com/v1"),
            o("https://API.openai.com:443/other")
        );
        assert_ne!(
            o("https://api.openai.com/v1"),
            o("http://api.openai.com/v1")
        );
        assert_ne!(
            o("https://api.openai.com/v1"),
            o("https://api.openai.com:8443/v1")
        );
        assert_ne!(o("https://api.openai.com/v1"), o("https://evil.example/v1"));
        assert_ne!(o("http://127.0.0.1:8000/v1"), o("http://127.0.0.1:8001/v1"));
    }

    #[test]
    fn names_urls_and_models_are_checked() {
        assert!(validate_name("local-ai").is_ok());
        for bad in ["", "A", "1a", "a b", "../x", &"a".repeat(33)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
        assert!(resolve_url(ProviderType::OpenaiCompatible, None).is_err());
        assert_eq!(
            resolve_url(ProviderType::Openai, None).unwrap(),
            "https://api.openai.com/v1"
        );
        assert!(resolve_url(ProviderType::Ollama, Some("file:///etc/passwd")).is_err());
        assert!(validate_models(&[ProviderModel {
            id: "a b".into(),
            input_usd_per_mtok: None,
            output_usd_per_mtok: None
        }])
        .is_err());
        assert!(validate_models(&[ProviderModel {
            id: "m".into(),
            input_usd_per_mtok: Some(-1.0),
            output_usd_per_mtok: None
        }])
        .is_err());
    }
}
