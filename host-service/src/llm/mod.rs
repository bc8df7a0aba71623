//! The LLM path: LiteLLM supervised by the host, the provider catalog, budgets, and the
//! per-agent gateway in front of LiteLLM.

pub mod budget;
pub mod gateway;
pub mod providers;
pub mod sandbox;
pub mod supervisor;
pub mod unit;
pub mod validate;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use taos_proto::llm::{ModelInfo, ProviderType};

use crate::db::Db;
use providers::{ProviderError, ProviderRecord};
use supervisor::{Desired, Supervisor};

pub struct Llm {
    pub supervisor: Supervisor,
    pub secrets: crate::secrets::SecretBox,
    db: Db,
    /// For LiteLLM on loopback and for provider discovery. It never follows a redirect: a
    /// provider (or whoever answers at its URL) could otherwise send the request, and the key
    /// in it, to another origin.
    pub client: reqwest::Client,
    discovery_cache: Mutex<HashMap<String, (Instant, Vec<String>)>>,
    cache_ttl: Duration,
    pub trace_content_bytes: usize,
    /// Calls in flight per agent, for budget and concurrency admission.
    pub ledger: std::sync::Arc<budget::Ledger>,
    /// The catalog's models as the gateway prices them, kept between calls (see
    /// [`Llm::catalog`]).
    catalog: Mutex<KeptCatalog>,
}

/// The catalog the gateway last read, and how many times it was forgotten: a read keeps what it
/// found only if the catalog was not forgotten since the read began, so a change that commits
/// during a read is never hidden by it.
#[derive(Default)]
struct KeptCatalog {
    forgotten: u64,
    models: Option<std::sync::Arc<Vec<providers::CatalogModel>>>,
}

impl Llm {
    pub fn new(
        db: Db,
        supervisor: Supervisor,
        secrets: crate::secrets::SecretBox,
        cache_ttl: Duration,
        trace_content_bytes: usize,
    ) -> Self {
        supervisor::ensure_crypto_provider();
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Llm {
            supervisor,
            secrets,
            db,
            client,
            discovery_cache: Mutex::new(HashMap::new()),
            cache_ttl,
            trace_content_bytes,
            ledger: Default::default(),
            catalog: Mutex::new(KeptCatalog::default()),
        }
    }

    fn kept_catalog(&self) -> std::sync::MutexGuard<'_, KeptCatalog> {
        // Only assignments under it: a panic can't leave it inconsistent.
        self.catalog.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The catalog's models (provider and the owner's prices), for the gateway: read once and
    /// kept until [`Llm::reload`], which every change to the providers table is followed by,
    /// forgets it. Per call it would be a database read and the JSON of every provider's models.
    pub async fn catalog(
        &self,
    ) -> Result<std::sync::Arc<Vec<providers::CatalogModel>>, ProviderError> {
        let forgotten = {
            let kept = self.kept_catalog();
            if let Some(models) = &kept.models {
                return Ok(models.clone());
            }
            kept.forgotten
        };
        let models =
            std::sync::Arc::new(providers::catalog_models(&providers::list(&self.db).await?));
        let mut kept = self.kept_catalog();
        if kept.forgotten == forgotten {
            kept.models = Some(models.clone());
        }
        Ok(models)
    }

    /// Regenerates LiteLLM's config from the catalog and hands it to the supervisor, which
    /// restarts LiteLLM only if it differs from what runs.
    pub async fn reload(&self) -> Result<(), ProviderError> {
        // The providers changed (or may have): the gateway reads them again.
        {
            let mut kept = self.kept_catalog();
            kept.forgotten += 1;
            kept.models = None;
        }
        let catalog = providers::list(&self.db).await?;
        let models = providers::catalog_models(&catalog)
            .into_iter()
            .map(|m| m.name)
            .collect();
        self.supervisor.apply(Desired {
            config: providers::litellm_config(&catalog),
            env: providers::litellm_env(&catalog, &self.secrets),
            models,
            idle_reason: providers::idle_reason(&catalog).to_string(),
        });
        Ok(())
    }

    /// Every model some enabled provider serves.
    pub async fn models(&self) -> Result<Vec<ModelInfo>, ProviderError> {
        let catalog = providers::list(&self.db).await?;
        Ok(providers::catalog_models(&catalog)
            .into_iter()
            .map(|m| ModelInfo {
                name: m.name,
                provider: m.provider,
                input_usd_per_mtok: m.input_usd_per_mtok,
                output_usd_per_mtok: m.output_usd_per_mtok,
            })
            .collect())
    }

    /// Lists the models a provider endpoint offers (`GET <url>/models`). Cached for the
    /// configured TTL unless `refresh`.
    pub async fn discover(
        &self,
        kind: ProviderType,
        url: &str,
        api_key: Option<&str>,
        refresh: bool,
    ) -> Result<(Vec<String>, u64), String> {
        let cache_key = format!(
            "{}|{url}|{}",
            kind.as_str(),
            api_key.map(crate::auth::hash_token).unwrap_or_default()
        );
        if !refresh {
            let cache = self
                .discovery_cache
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some((at, models)) = cache.get(&cache_key) {
                if at.elapsed() < self.cache_ttl {
                    return Ok((models.clone(), 0));
                }
            }
        }
        let started = Instant::now();
        let mut request = self
            .client
            .get(format!("{}/models", url.trim_end_matches('/')))
            .timeout(Duration::from_secs(10));
        if let Some(key) = api_key.filter(|k| !k.is_empty()) {
            request = match kind {
                ProviderType::Anthropic => request
                    .header("x-api-key", key)
                    .header("anthropic-version", "2023-06-01"),
                _ => request.bearer_auth(key),
            };
        }
        let response = request.send().await.map_err(|e| {
            if e.is_timeout() {
                "timed out".to_string()
            } else if e.is_connect() {
                "connection refused or unreachable".to_string()
            } else {
                "request failed".to_string()
            }
        })?;
        let elapsed = started.elapsed().as_millis() as u64;
        if !response.status().is_success() {
            return Err(format!("the provider answered {}", response.status()));
        }
        let body: serde_json::Value = response
            .json()
            .await
            .map_err(|_| "the provider's model list is not JSON".to_string())?;
        // OpenAI: {"data": [{"id"}]}; Ollama's native API: {"models": [{"name"}]}.
        let mut models: Vec<String> = body["data"]
            .as_array()
            .or_else(|| body["models"].as_array())
            .map(|list| {
                list.iter()
                    .filter_map(|m| m["id"].as_str().or_else(|| m["name"].as_str()))
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        models.sort();
        models.dedup();
        models.truncate(500);
        let mut cache = self
            .discovery_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        cache.insert(cache_key, (Instant::now(), models.clone()));
        Ok((models, elapsed))
    }

    pub async fn provider(&self, name: &str) -> Result<ProviderRecord, ProviderError> {
        providers::get(&self.db, name).await
    }
}
