//! Commands, grouped by domain. Each is a thin wrapper over `taos-client` returning a typed,
//! serialisable error.

pub mod cache;
pub mod chat;
pub mod desktop;
pub mod host;
pub mod notify;
pub mod pairing;
