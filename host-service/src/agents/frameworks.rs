//! The framework catalog: what a deploy can install, from TOML manifests.
//!
//! The manifests in the repository's `manifests/` folder are compiled into the binary, so a
//! host always knows its frameworks; a deploy naming another one is refused with the list.

pub use taos_proto::agents::{Install, Manifest, Requires};

const BUILT_IN: &[&str] = &[include_str!("../../../manifests/direct/manifest.toml")];

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
            // They become container limits when a deploy sets none.
            assert!(m.requires.ram_mb >= 32 && m.requires.cpus >= 1, "{}", m.id);
        }
        assert!(get("direct").is_some());
        assert!(get("nope").is_none());
    }
}
