//! The framework catalog: what a deploy can install, from TOML manifests.
//!
//! The manifests in the repository's `manifests/` folder are compiled into the binary, so a
//! host always knows its frameworks; a deploy naming another one is refused with the list.

pub use taos_proto::agents::{Install, Manifest, Requires};

const BUILT_IN: &[&str] = &[
    include_str!("../../../manifests/direct/manifest.toml"),
    include_str!("../../../manifests/tools/manifest.toml"),
];

/// The sidecar modes a manifest may name (see `taos_agent::config::Mode`).
pub const AGENT_MODES: &[&str] = &["direct", "tools"];

/// The sidecar mode of an agent deployed with `framework` (`direct` when unknown).
pub fn agent_mode_of(framework: Option<&str>) -> String {
    framework
        .and_then(get)
        .map_or_else(|| "direct".to_string(), |m| m.agent_mode().to_string())
}

/// Every known framework. A manifest that doesn't parse is a build-time bug, caught by a test.
pub fn all() -> Vec<Manifest> {
    BUILT_IN
        .iter()
        .filter_map(|text| toml::from_str(text).ok())
        .collect()
}

pub fn get(id: &str) -> Option<Manifest> {
    all().into_iter().find(|m| m.id == id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_built_in_manifest_parses_and_is_sane() {
        assert_eq!(all().len(), BUILT_IN.len(), "a manifest failed to parse");
        for m in all() {
            assert!(["beta", "alpha", "broken"].contains(&m.verification.as_str()));
            assert!(["none", "script"].contains(&m.install.method.as_str()));
            assert!(!m.image.is_empty());
            assert!(AGENT_MODES.contains(&m.agent_mode()), "{}", m.id);
            // They become container limits when a deploy sets none.
            assert!(m.requires.ram_mb >= 32 && m.requires.cpus >= 1, "{}", m.id);
        }
        assert!(get("direct").is_some());
        assert_eq!(
            get("tools").map(|m| m.agent_mode().to_string()).as_deref(),
            Some("tools")
        );
        assert_eq!(agent_mode_of(Some("direct")), "direct");
        assert_eq!(agent_mode_of(None), "direct");
        assert!(get("nope").is_none());
    }
}
