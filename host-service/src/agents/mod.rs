//! The agent lifecycle, one file per part:
//!
//! - `records`: agent rows, slugs, agent tokens and LLM keys (re-exported here, so
//!   `agents::get_by_slug` reads as before);
//! - `deploy`: the deploy state machine (steps, progress events, rollback, recovery at start);
//! - `archive`: archive, restore, purge and the `agent_ops` journal they share;
//! - `quota`: the disk quota monitor;
//! - `recycle`: the recycle bin inside agents;
//! - `frameworks`: the framework catalog compiled into the binary.

pub mod archive;
pub mod deploy;
pub mod frameworks;
pub mod quota;
pub mod records;
pub mod recycle;

// The records are what most of the host means by "agents"; the glob keeps their paths short.
pub use records::*;
