//! Agents: records, slugs, and agent tokens.
//!
//! An agent token (`taos_ag_…`) is the agent's only credential. It is shown once, stored as a
//! hash, accepted only on the agent listener, and only for that agent's own resources.

use std::collections::BTreeMap;

use sqlx::Row;
use taos_proto::agents::{Agent, AgentKind, AgentNetwork, AgentPatch, AgentStatus, NewAgent};
use taos_proto::approvals::ToolPolicy;
use uuid::Uuid;

use crate::auth::{hash_token, new_secret};
use crate::db::{from_ms, now_ms, Db};

pub const AGENT_TOKEN_PREFIX: &str = "taos_ag_";
/// The agent's key for the LLM gateway. Separate from the bridge token, so a framework that
/// only needs models never holds the bridge credential.
pub const LLM_KEY_PREFIX: &str = "taos_llm_";
/// incus instance names are at most 63 characters and agent containers are `taos-<slug>`.
pub const MAX_SLUG_LEN: usize = 58;
pub const MAX_NAME_CHARS: usize = 64;
/// Slugs that would collide with fixed routes under `/api/agents/`.
const ROUTE_WORDS: &[&str] = &["deploy", "archived", "containers"];

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    BadInput(String),
    #[error("no such agent")]
    NotFound,
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("bad stored data: {0}")]
    Decode(String),
}

/// Whether `slug` is a valid agent slug. Runs before a slug touches a path or a container name.
pub fn is_valid_slug(slug: &str) -> bool {
    let bytes = slug.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_SLUG_LEN
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

/// The container of an agent with this slug (under both runtimes).
pub fn container_name(slug: &str) -> String {
    format!("taos-{slug}")
}

/// The `n`th slug tried for `base` when it is taken: `base`, `base-2`, `base-3`…
pub fn slug_candidate(base: &str, n: u32) -> String {
    if n <= 1 {
        base.to_string()
    } else {
        format!("{base}-{n}")
    }
}

/// Lowercase; runs of anything else become one `-`; trimmed; cut to fit.
pub fn slugify(name: &str) -> String {
    let mut slug = String::new();
    let mut dash = false;
    for c in name.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            if dash && !slug.is_empty() {
                slug.push('-');
            }
            dash = false;
            slug.push(c);
        } else {
            dash = true;
        }
    }
    // Leave room for a "-NN" collision suffix.
    slug.truncate(MAX_SLUG_LEN - 4);
    slug.trim_end_matches('-').to_string()
}

fn validate_display(name: &str, emoji: &str, color: &str) -> Result<(), AgentError> {
    let bad = |m: &str| Err(AgentError::BadInput(m.to_string()));
    if name.trim().is_empty()
        || name.chars().count() > MAX_NAME_CHARS
        || name.chars().any(char::is_control)
    {
        return bad("name must be 1-64 printable characters");
    }
    if emoji.chars().count() > 16 || emoji.chars().any(char::is_control) {
        return bad("emoji must be at most 16 characters");
    }
    let color_ok = color.is_empty()
        || (color.len() == 7
            && color.starts_with('#')
            && color[1..].chars().all(|c| c.is_ascii_hexdigit()));
    if !color_ok {
        return bad("color must be #rrggbb");
    }
    Ok(())
}

fn validate_model(model: &str) -> Result<(), AgentError> {
    if model.is_empty()
        || model.len() > 200
        || model.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(AgentError::BadInput(
            "model names are 1-200 characters without spaces".to_string(),
        ));
    }
    Ok(())
}

/// The internal view of an agent, with what the bridge needs.
#[derive(Debug, Clone)]
pub struct AgentRecord {
    pub id: Uuid,
    pub slug: String,
    pub display_name: String,
    pub emoji: String,
    pub color: String,
    pub kind: AgentKind,
    pub status: AgentStatus,
    pub model: Option<String>,
    pub fallback_models: Vec<String>,
    pub created_at: i64,
    pub paused: bool,
    /// For container agents: the container's current name.
    pub container: Option<String>,
    pub framework: Option<String>,
    /// For container agents: what its network may reach.
    pub network: AgentNetwork,
    /// What happens when it wants to run a tool, and per-tool exceptions.
    pub tool_policy: ToolPolicy,
    pub tool_overrides: BTreeMap<String, ToolPolicy>,
}

impl AgentRecord {
    pub fn to_api(&self, connected: bool, dm_channel_id: Option<String>) -> Agent {
        Agent {
            id: self.id,
            slug: self.slug.clone(),
            display_name: self.display_name.clone(),
            emoji: self.emoji.clone(),
            color: self.color.clone(),
            kind: self.kind,
            status: self.status,
            model: self.model.clone(),
            fallback_models: self.fallback_models.clone(),
            created_at: from_ms(self.created_at),
            paused: self.paused,
            connected,
            dm_channel_id,
            network: (self.kind == AgentKind::Container).then_some(self.network),
            tool_policy: self.tool_policy,
            tool_overrides: self.tool_overrides.clone(),
        }
    }

    /// The policy for one tool: its override, else the agent's.
    pub fn policy_for(&self, tool: &str) -> ToolPolicy {
        self.tool_overrides
            .get(tool)
            .copied()
            .unwrap_or(self.tool_policy)
    }
}

/// At most this many per-tool overrides per agent.
pub const MAX_TOOL_OVERRIDES: usize = 32;

/// A tool name as agents and overrides spell it: 1-64 of `a-z 0-9 _ -`.
pub fn is_valid_tool_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn validate_overrides(overrides: &BTreeMap<String, ToolPolicy>) -> Result<(), AgentError> {
    if overrides.len() > MAX_TOOL_OVERRIDES {
        return Err(AgentError::BadInput(format!(
            "at most {MAX_TOOL_OVERRIDES} tool overrides"
        )));
    }
    if let Some(bad) = overrides.keys().find(|k| !is_valid_tool_name(k)) {
        return Err(AgentError::BadInput(format!(
            "tool override {bad:?}: tool names are 1-64 characters of a-z, 0-9, _ and -"
        )));
    }
    Ok(())
}

fn overrides_json(overrides: &BTreeMap<String, ToolPolicy>) -> String {
    serde_json::to_string(overrides).unwrap_or_else(|_| "{}".into())
}

const COLUMNS: &str = "id, slug, display_name, emoji, color, kind, status, model, \
                       fallback_models, created_at, paused, container, framework, network, \
                       tool_policy, tool_overrides";

fn from_row(row: &sqlx::sqlite::SqliteRow) -> Result<AgentRecord, AgentError> {
    let id: String = row.try_get("id")?;
    let kind: String = row.try_get("kind")?;
    let fallback: String = row.try_get("fallback_models")?;
    let network: String = row.try_get("network")?;
    Ok(AgentRecord {
        id: Uuid::parse_str(&id).map_err(|e| AgentError::Decode(e.to_string()))?,
        slug: row.try_get("slug")?,
        display_name: row.try_get("display_name")?,
        emoji: row.try_get("emoji")?,
        color: row.try_get("color")?,
        kind: if kind == "container" {
            AgentKind::Container
        } else {
            AgentKind::External
        },
        status: row.try_get::<String, _>("status")?.parse().map_err(
            |e: taos_proto::text_enum::UnknownVariant| AgentError::Decode(e.to_string()),
        )?,
        model: row.try_get("model")?,
        fallback_models: serde_json::from_str(&fallback)
            .map_err(|e| AgentError::Decode(e.to_string()))?,
        created_at: row.try_get("created_at")?,
        paused: row.try_get("paused")?,
        container: row.try_get("container")?,
        framework: row.try_get("framework")?,
        network: AgentNetwork::parse(&network)
            .ok_or_else(|| AgentError::Decode(format!("network {network:?}")))?,
        tool_policy: row.try_get::<String, _>("tool_policy")?.parse().map_err(
            |e: taos_proto::text_enum::UnknownVariant| AgentError::Decode(e.to_string()),
        )?,
        tool_overrides: serde_json::from_str(&row.try_get::<String, _>("tool_overrides")?)
            .map_err(|e| AgentError::Decode(format!("tool_overrides: {e}")))?,
    })
}

/// Creates an external agent with a fresh token. Returns the record, the agent token and the
/// LLM key (both shown once). The caller creates the agent's DM channel in the same transaction.
pub async fn create(
    tx: &mut sqlx::SqliteConnection,
    new: &NewAgent,
) -> Result<(AgentRecord, String, String), AgentError> {
    create_with(tx, new, &NewKind::External, &[]).await
}

/// What kind of agent `create_with` makes.
pub enum NewKind {
    External,
    /// A container agent, status `deploying`, whose container will be `taos-<slug>`.
    Container {
        framework: String,
        network: AgentNetwork,
    },
}

/// Creates an agent. `reserved` slugs are skipped like taken ones (their containers exist).
pub async fn create_with(
    tx: &mut sqlx::SqliteConnection,
    new: &NewAgent,
    kind: &NewKind,
    reserved: &[String],
) -> Result<(AgentRecord, String, String), AgentError> {
    let emoji = new.emoji.clone().unwrap_or_default();
    let color = new.color.clone().unwrap_or_default();
    validate_display(&new.name, &emoji, &color)?;
    if let Some(model) = &new.model {
        validate_model(model)?;
    }
    let fallback = new.fallback_models.clone().unwrap_or_default();
    if fallback.len() > 8 {
        return Err(AgentError::BadInput(
            "at most 8 fallback models".to_string(),
        ));
    }
    for model in &fallback {
        validate_model(model)?;
    }
    let tool_policy = new.tool_policy.unwrap_or_default();
    let tool_overrides = new.tool_overrides.clone().unwrap_or_default();
    validate_overrides(&tool_overrides)?;
    // Take SQLite's write lock first: concurrent creators then queue (busy timeout) instead
    // of picking the same free slug from stale snapshots and failing on commit.
    sqlx::query("UPDATE agents SET delivery_seq = delivery_seq WHERE 0")
        .execute(&mut *tx)
        .await?;
    let base = slugify(&new.name);
    if base.is_empty() {
        return Err(AgentError::BadInput(
            "name must contain a letter or digit (it becomes the agent's slug)".to_string(),
        ));
    }
    let mut slug = base.clone();
    let mut n: u32 = 2;
    while reserved.contains(&slug)
        || ROUTE_WORDS.contains(&slug.as_str())
        || sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM agents WHERE slug = ?")
            .bind(&slug)
            .fetch_one(&mut *tx)
            .await?
            > 0
    {
        slug = slug_candidate(&base, n);
        n += 1;
    }
    let token = new_secret(AGENT_TOKEN_PREFIX);
    let llm_key = new_secret(LLM_KEY_PREFIX);
    let id = Uuid::new_v4();
    let now = now_ms();
    let (kind_text, status, framework, container, network) = match kind {
        NewKind::External => (
            "external",
            AgentStatus::Ready,
            None,
            None,
            AgentNetwork::default(),
        ),
        NewKind::Container { framework, network } => (
            "container",
            AgentStatus::Deploying,
            Some(framework.clone()),
            Some(container_name(&slug)),
            *network,
        ),
    };
    sqlx::query(
        "INSERT INTO agents (id, slug, display_name, emoji, color, kind, status, model, \
         fallback_models, created_at, token_hash, llm_key_hash, framework, container, network, \
         tool_policy, tool_overrides) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(id.to_string())
    .bind(&slug)
    .bind(new.name.trim())
    .bind(&emoji)
    .bind(&color)
    .bind(kind_text)
    .bind(status.as_str())
    .bind(&new.model)
    .bind(serde_json::to_string(&fallback).unwrap_or_else(|_| "[]".into()))
    .bind(now)
    .bind(hash_token(&token))
    .bind(hash_token(&llm_key))
    .bind(&framework)
    .bind(&container)
    .bind(network.as_str())
    .bind(tool_policy.as_str())
    .bind(overrides_json(&tool_overrides))
    .execute(&mut *tx)
    .await?;
    let record = AgentRecord {
        id,
        slug,
        display_name: new.name.trim().to_string(),
        emoji,
        color,
        kind: if kind_text == "container" {
            AgentKind::Container
        } else {
            AgentKind::External
        },
        status,
        model: new.model.clone(),
        fallback_models: fallback,
        created_at: now,
        paused: false,
        container,
        framework,
        network,
        tool_policy,
        tool_overrides,
    };
    Ok((record, token, llm_key))
}

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// Another creation kept taking the slug (or the write lock) until the last try.
    #[error("agent name race; retry")]
    Race,
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error(transparent)]
    Chat(#[from] crate::chat::ChatError),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

/// How many times `create_with_dm` tries before it gives up with `CreateError::Race`.
const CREATE_TRIES: u32 = 5;

/// Creates an external agent and its DM channel with `owner_member`, in one transaction.
/// Returns the record, its agent token and its LLM key. Two creations with the same name race
/// for the same slug; the loser tries again and gets the next free one.
pub async fn create_with_dm(
    db: &Db,
    new: &NewAgent,
    owner_member: &str,
) -> Result<(AgentRecord, String, String), CreateError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match create_with_dm_once(db, new, owner_member).await {
            Err(CreateError::Race) if attempt < CREATE_TRIES => continue,
            other => return other,
        }
    }
}

/// Whether a failed statement lost a race with another writer (so trying again can succeed).
fn lost_a_race(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            db.is_unique_violation()
                || db.message().contains("locked")
                || db.message().contains("busy")
        }
        _ => false,
    }
}

async fn create_with_dm_once(
    db: &Db,
    new: &NewAgent,
    owner_member: &str,
) -> Result<(AgentRecord, String, String), CreateError> {
    let mut tx = db.begin().await?;
    let (record, token, llm_key) = match create(&mut tx, new).await {
        Err(AgentError::Db(e)) if lost_a_race(&e) => return Err(CreateError::Race),
        other => other?,
    };
    match crate::chat::create_dm(&mut tx, &record, owner_member).await {
        Err(crate::chat::ChatError::Db(e)) if lost_a_race(&e) => return Err(CreateError::Race),
        other => other?,
    };
    match tx.commit().await {
        Err(e) if lost_a_race(&e) => Err(CreateError::Race),
        Err(e) => Err(e.into()),
        Ok(()) => Ok((record, token, llm_key)),
    }
}

pub async fn list(db: &Db) -> Result<Vec<AgentRecord>, AgentError> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM agents WHERE status != 'archived' ORDER BY created_at"
    ))
    .fetch_all(db)
    .await?;
    rows.iter().map(from_row).collect()
}

/// The live (not archived) agent with this slug, read with `db` (the pool, or a connection a
/// caller reads several things on).
pub async fn get_by_slug<'e>(
    db: impl sqlx::SqliteExecutor<'e>,
    slug: &str,
) -> Result<AgentRecord, AgentError> {
    if !is_valid_slug(slug) {
        return Err(AgentError::NotFound);
    }
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM agents WHERE slug = ? AND status != 'archived'"
    ))
    .bind(slug)
    .fetch_optional(db)
    .await?
    .ok_or(AgentError::NotFound)?;
    from_row(&row)
}

pub async fn get_by_id(db: &Db, id: Uuid) -> Result<AgentRecord, AgentError> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM agents WHERE id = ?"))
        .bind(id.to_string())
        .fetch_optional(db)
        .await?
        .ok_or(AgentError::NotFound)?;
    from_row(&row)
}

/// The agent a token belongs to, if any.
pub async fn authenticate(db: &Db, token: &str) -> Result<Option<AgentRecord>, AgentError> {
    if !token.starts_with(AGENT_TOKEN_PREFIX) || token.len() > 128 {
        return Ok(None);
    }
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM agents WHERE token_hash = ?"
    ))
    .bind(hash_token(token))
    .fetch_optional(db)
    .await?;
    row.as_ref().map(from_row).transpose()
}

pub async fn update(db: &Db, slug: &str, patch: &AgentPatch) -> Result<AgentRecord, AgentError> {
    let current = get_by_slug(db, slug).await?;
    let name = patch
        .display_name
        .clone()
        .unwrap_or(current.display_name.clone());
    let emoji = patch.emoji.clone().unwrap_or(current.emoji.clone());
    let color = patch.color.clone().unwrap_or(current.color.clone());
    validate_display(&name, &emoji, &color)?;
    let paused = patch.paused.unwrap_or(current.paused);
    let model = match &patch.model {
        Some(m) if m.is_empty() => None,
        Some(m) => {
            validate_model(m)?;
            Some(m.clone())
        }
        None => current.model.clone(),
    };
    let fallback = patch
        .fallback_models
        .clone()
        .unwrap_or(current.fallback_models.clone());
    if fallback.len() > 8 {
        return Err(AgentError::BadInput(
            "at most 8 fallback models".to_string(),
        ));
    }
    for m in &fallback {
        validate_model(m)?;
    }
    let tool_policy = patch.tool_policy.unwrap_or(current.tool_policy);
    let tool_overrides = patch
        .tool_overrides
        .clone()
        .unwrap_or(current.tool_overrides.clone());
    validate_overrides(&tool_overrides)?;
    sqlx::query(
        "UPDATE agents SET display_name = ?, emoji = ?, color = ?, paused = ?, model = ?, \
         fallback_models = ?, tool_policy = ?, tool_overrides = ? WHERE id = ?",
    )
    .bind(name.trim())
    .bind(&emoji)
    .bind(&color)
    .bind(paused)
    .bind(&model)
    .bind(serde_json::to_string(&fallback).unwrap_or_else(|_| "[]".into()))
    .bind(tool_policy.as_str())
    .bind(overrides_json(&tool_overrides))
    .bind(current.id.to_string())
    .execute(db)
    .await?;
    get_by_slug(db, slug).await
}

/// The agent an LLM key belongs to, if any.
pub async fn authenticate_llm(db: &Db, key: &str) -> Result<Option<AgentRecord>, AgentError> {
    if !key.starts_with(LLM_KEY_PREFIX) || key.len() > 128 {
        return Ok(None);
    }
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM agents WHERE llm_key_hash = ?"
    ))
    .bind(hash_token(key))
    .fetch_optional(db)
    .await?;
    row.as_ref().map(from_row).transpose()
}

/// Whether each LLM key hash still belongs to an agent: `Valid` (no expiry) or `Revoked`
/// (rotated, archived, removed).
pub async fn llm_key_states(
    db: &Db,
    key_hashes: &[&str],
) -> Result<std::collections::HashMap<String, crate::auth::live::TokenState>, sqlx::Error> {
    use crate::auth::live::{placeholders, TokenState, BATCH};
    let mut current = std::collections::HashSet::new();
    for chunk in key_hashes.chunks(BATCH) {
        let sql = format!(
            "SELECT llm_key_hash FROM agents WHERE llm_key_hash IN ({})",
            placeholders(chunk.len())
        );
        let mut query = sqlx::query_scalar::<_, String>(&sql);
        for hash in chunk {
            query = query.bind(*hash);
        }
        current.extend(query.fetch_all(db).await?);
    }
    Ok(key_hashes
        .iter()
        .map(|h| {
            let state = if current.contains(*h) {
                TokenState::Valid { until_ms: None }
            } else {
                TokenState::Revoked
            };
            (h.to_string(), state)
        })
        .collect())
}

/// Replaces the agent's LLM key; the old one stops working at once. The caller ends the
/// gateway calls made with it (`live::Live::revoke_agent_llm`).
pub async fn rotate_llm_key(db: &Db, slug: &str) -> Result<(AgentRecord, String), AgentError> {
    let agent = get_by_slug(db, slug).await?;
    let key = new_secret(LLM_KEY_PREFIX);
    sqlx::query("UPDATE agents SET llm_key_hash = ? WHERE id = ?")
        .bind(hash_token(&key))
        .bind(agent.id.to_string())
        .execute(db)
        .await?;
    Ok((agent, key))
}

/// Replaces the agent's token; the old one stops working at once.
pub async fn rotate_token(db: &Db, slug: &str) -> Result<(AgentRecord, String), AgentError> {
    let agent = get_by_slug(db, slug).await?;
    let token = new_secret(AGENT_TOKEN_PREFIX);
    sqlx::query("UPDATE agents SET token_hash = ? WHERE id = ?")
        .bind(hash_token(&token))
        .bind(agent.id.to_string())
        .execute(db)
        .await?;
    Ok((agent, token))
}

pub async fn set_status(db: &Db, id: Uuid, status: AgentStatus) -> Result<(), AgentError> {
    sqlx::query("UPDATE agents SET status = ? WHERE id = ?")
        .bind(status.as_str())
        .bind(id.to_string())
        .execute(db)
        .await?;
    Ok(())
}

/// Whether any agent, archived ones included, has this slug.
pub async fn slug_taken(db: &Db, slug: &str) -> Result<bool, sqlx::Error> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM agents WHERE slug = ?")
        .bind(slug)
        .fetch_one(db)
        .await?;
    Ok(n > 0)
}

/// The containers agents have (archived ones keep theirs under its archived name).
pub async fn containers(db: &Db) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT container FROM agents WHERE container IS NOT NULL")
        .fetch_all(db)
        .await
}

/// Marks an agent archived, in the caller's transaction (the archive's commit): it gives up
/// its slug for `placeholder`, its token for `token_hash` (a secret nobody has), its LLM key,
/// and its container's name for `container` (`None` when it has none).
pub async fn mark_archived(
    conn: &mut sqlx::SqliteConnection,
    id: Uuid,
    placeholder: &str,
    token_hash: &str,
    container: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE agents SET slug = ?, status = 'archived', token_hash = ?, llm_key_hash = NULL, \
         container = ? WHERE id = ?",
    )
    .bind(placeholder)
    .bind(token_hash)
    .bind(container)
    .bind(id.to_string())
    .execute(conn)
    .await?;
    Ok(())
}

/// Brings an archived agent back under `slug`, in the caller's transaction (the restore's
/// commit), with its status and container.
pub async fn mark_restored(
    conn: &mut sqlx::SqliteConnection,
    id: Uuid,
    slug: &str,
    status: AgentStatus,
    container: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE agents SET slug = ?, status = ?, container = ? WHERE id = ?")
        .bind(slug)
        .bind(status.as_str())
        .bind(container)
        .bind(id.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

/// Gives an agent new credentials (hashes of a new token and LLM key); the old ones stop
/// working at once.
pub async fn set_credentials(
    db: &Db,
    id: Uuid,
    token_hash: &str,
    llm_key_hash: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE agents SET token_hash = ?, llm_key_hash = ? WHERE id = ?")
        .bind(token_hash)
        .bind(llm_key_hash)
        .bind(id.to_string())
        .execute(db)
        .await?;
    Ok(())
}

/// The newest delivery sequence number given to the agent (0 if none, or no such agent). The
/// counter lives on the agent's row so that it goes with the agent.
pub async fn delivery_seq(db: &Db, id: Uuid) -> Result<i64, sqlx::Error> {
    Ok(
        sqlx::query_scalar("SELECT delivery_seq FROM agents WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(db)
            .await?
            .unwrap_or(0),
    )
}

/// The statement that takes agent `?1`'s next delivery sequence number, for a caller that
/// sends it together with the statement that stores the delivery (which reads the number back
/// as `agents.delivery_seq`), in one transaction: one round trip to SQLite instead of two.
pub const TAKE_DELIVERY_SEQ: &str =
    "UPDATE agents SET delivery_seq = delivery_seq + 1 WHERE id = ?1";

/// Takes the agent's next delivery sequence number, in the caller's transaction (the one that
/// stores the delivery, so a number is never given twice or lost).
pub async fn next_delivery_seq(
    conn: &mut sqlx::SqliteConnection,
    id: Uuid,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE agents SET delivery_seq = delivery_seq + 1 WHERE id = ? RETURNING delivery_seq",
    )
    .bind(id.to_string())
    .fetch_one(conn)
    .await
}

/// Removes an agent row and everything that hangs off it (deliveries, usage, budgets by
/// cascade; its DM channels explicitly), for a deploy that is rolled back.
pub async fn remove(db: &Db, id: Uuid) -> Result<(), AgentError> {
    let mut tx = db.begin().await?;
    crate::chat::delete_dm_channels(&mut tx, id).await?;
    sqlx::query("DELETE FROM agents WHERE id = ?")
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// In a backup's copy of the database (a connection of its own): the live (not archived)
/// agent with this slug, as its id and display name.
pub async fn find_live_in(
    conn: &mut sqlx::SqliteConnection,
    slug: &str,
) -> Result<Option<(String, String)>, sqlx::Error> {
    sqlx::query_as("SELECT id, display_name FROM agents WHERE slug = ? AND status != 'archived'")
        .bind(slug)
        .fetch_optional(conn)
        .await
}

/// In a backup's copy: an agent's slug and container, if it is there.
pub async fn slug_and_container_in(
    conn: &mut sqlx::SqliteConnection,
    id: &str,
) -> Result<Option<(String, Option<String>)>, sqlx::Error> {
    sqlx::query_as("SELECT slug, container FROM agents WHERE id = ?")
        .bind(id)
        .fetch_optional(conn)
        .await
}

/// In a backup's copy: how many agents it holds.
pub async fn count_in(conn: &mut sqlx::SqliteConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM agents")
        .fetch_one(conn)
        .await
}

/// Copies an agent's row from the database attached as `bk` (a backup's copy of the same
/// schema) into this one, under `placeholder` (its slug may be taken here), in the caller's
/// transaction. The copy is changed too: it is a throwaway file.
pub async fn copy_from_attached(
    conn: &mut sqlx::SqliteConnection,
    id: Uuid,
    placeholder: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE bk.agents SET slug = ? WHERE id = ?")
        .bind(placeholder)
        .bind(id.to_string())
        .execute(&mut *conn)
        .await?;
    sqlx::query("INSERT INTO agents SELECT * FROM bk.agents WHERE id = ?")
        .bind(id.to_string())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_made_from_names() {
        assert_eq!(slugify("Research Helper"), "research-helper");
        assert_eq!(slugify("  Ünïcode!! Bot  "), "n-code-bot");
        assert_eq!(slugify("a--b__c"), "a-b-c");
        assert_eq!(slugify("!!!"), "");
        assert!(slugify(&"x".repeat(100)).len() <= MAX_SLUG_LEN - 4);
        assert!(is_valid_slug(&slugify("Research Helper")));
    }

    #[test]
    fn taken_slugs_get_a_number_and_every_slug_names_a_container_incus_accepts() {
        assert_eq!(slug_candidate("ada", 1), "ada");
        assert_eq!(slug_candidate("ada", 2), "ada-2");
        assert_eq!(slug_candidate("ada", 17), "ada-17");
        assert_eq!(container_name("ada-2"), "taos-ada-2");
        // incus instance names are at most 63 characters.
        assert!(container_name(&"x".repeat(MAX_SLUG_LEN)).len() <= 63);
    }

    #[test]
    fn slug_validation_rejects_path_tricks() {
        for bad in [
            "",
            "..",
            ".",
            "a/b",
            "%2e%2e",
            "a\0b",
            "A",
            "-a",
            "a b",
            &"a".repeat(59),
        ] {
            assert!(!is_valid_slug(bad), "{bad:?}");
        }
        assert!(is_valid_slug("a"));
        assert!(is_valid_slug(&"a".repeat(58)));
    }
}
