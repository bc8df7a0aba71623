//! The taos app's core, without a window: everything the Tauri shell does that can be tested on
//! its own (and type-checked for Android). The shell's commands are thin wrappers over this.
//!
//! - [`net`]: the pinned transport (REST, chat WebSocket, live events).
//! - [`pairing`], [`session`], [`secrets`], [`hosts`]: pairing, tokens, the keychain, paired hosts.
//! - [`cache`], [`sync`], [`outbox`], [`engine`]: the offline cache and what keeps it in step.
//! - [`notify`]: which happenings become native notifications.
//! - [`approvals`]: answering a tool approval from a notification's Approve / Deny.

pub mod approvals;
pub mod cache;
pub mod engine;
pub mod hosts;
pub mod net;
pub mod notify;
pub mod outbox;
pub mod pairing;
pub mod secrets;
pub mod session;
pub mod sync;
