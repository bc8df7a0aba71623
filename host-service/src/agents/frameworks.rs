//! The framework catalog: what a deploy can install, from TOML manifests.
//!
//! The manifests in the repository's `manifests/` folder are compiled into the binary, so a
//! host always knows its frameworks; a deploy naming another one is refused with the list.

pub use taos_proto::agents::{Install, Manifest, Requires};

const BUILT_IN: &[&str] = &[
    include_str!("../../../manifests/openclaw/manifest.toml"),
    include_str!("../../../manifests/direct/manifest.toml"),
    include_str!("../../../manifests/tools/manifest.toml"),
    include_str!("../../../manifests/opencode/manifest.toml"),
];

/// The sidecar modes a manifest may name (see `taos_agent::config::Mode`).
pub const AGENT_MODES: &[&str] = &["direct", "tools", "openclaw", "acp"];

/// The sidecar mode of an agent deployed with `framework` (`direct` when unknown).
pub fn agent_mode_of(framework: Option<&str>) -> String {
    framework
        .and_then(get)
        .map_or_else(|| "direct".to_string(), |m| m.agent_mode().to_string())
}

/// Every known framework, in the picker's order (each manifest's `order`, then its id). A
/// manifest that doesn't parse or validate is a build-time bug, caught by a test; it is left
/// out, so a deploy naming it is refused as unknown.
pub fn all() -> Vec<Manifest> {
    let mut all: Vec<Manifest> = BUILT_IN
        .iter()
        .filter_map(|text| toml::from_str::<Manifest>(text).ok())
        .filter(|m| m.validate().is_ok())
        .collect();
    all.sort_by(|a, b| a.order.cmp(&b.order).then_with(|| a.id.cmp(&b.id)));
    all
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
            assert_eq!(m.validate(), Ok(()));
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

    #[test]
    fn openclaw_comes_first_in_the_picker_and_orders_are_unique() {
        let ids: Vec<String> = all().into_iter().map(|m| m.id).collect();
        assert_eq!(ids, ["openclaw", "direct", "tools", "opencode"]);
        let mut orders: Vec<u32> = all().iter().map(|m| m.order).collect();
        orders.dedup();
        assert_eq!(orders.len(), BUILT_IN.len(), "two manifests share an order");
    }

    #[test]
    fn openclaw_runs_in_its_own_image_with_its_measured_needs() {
        let m = get("openclaw").expect("the openclaw manifest");
        assert_eq!(m.verification, "beta");
        assert_eq!(m.image, "taos-openclaw");
        assert_eq!(m.service, "taos-agent");
        assert_eq!(m.agent_mode(), "openclaw");
        assert_eq!(agent_mode_of(Some("openclaw")), "openclaw");
        // Its gateway peaks at ~1.35 GB plus workers: less would be killed by its own limit.
        assert!(m.requires.ram_mb >= 1500, "{}", m.requires.ram_mb);
        // The image alone is 1.1 GB unpacked.
        assert!(m.requires.disk_mb >= 1500, "{}", m.requires.disk_mb);
    }

    #[test]
    fn an_acp_manifest_needs_a_command_and_only_acp_has_one() {
        let manifest = |extra: &str| -> Manifest {
            toml::from_str(&format!(
                "id = \"x\"\nname = \"X\"\ndescription = \"d\"\nverification = \"alpha\"\norder = 99\n\
                 image = \"taos-agent\"\nservice = \"taos-agent\"\n{extra}\n\
                 [install]\nmethod = \"none\"\n[requires]\nram_mb = 64\ndisk_mb = 1\ncpus = 1\n"
            ))
            .unwrap()
        };
        let good = manifest(
            "agent_mode = \"acp\"\n[acp]\ncommand = [\"opencode\", \"acp\"]\nenv = { KEY = \"${OPENAI_API_KEY}\" }",
        );
        assert_eq!(good.validate(), Ok(()));
        for (extra, says) in [
            ("agent_mode = \"acp\"", "needs an [acp] table"),
            (
                "agent_mode = \"acp\"\n[acp]\ncommand = []",
                "command is empty",
            ),
            (
                "agent_mode = \"acp\"\n[acp]\ncommand = [\"a\", \"\"]",
                "non-empty",
            ),
            (
                "agent_mode = \"acp\"\n[acp]\ncommand = [\"a\"]\nenv = { lower = \"x\" }",
                "A-Z",
            ),
            (
                "agent_mode = \"tools\"\n[acp]\ncommand = [\"a\"]",
                "needs agent_mode",
            ),
        ] {
            let err = manifest(extra).validate().unwrap_err();
            assert!(err.contains(says), "{extra}: {err}");
        }
        // A shell string is not a command: the table takes argv only.
        assert!(toml::from_str::<Manifest>(
            "agent_mode = \"acp\"\n[acp]\ncommand = \"opencode acp\""
        )
        .is_err());
    }

    #[test]
    fn opencode_is_an_acp_agent_on_the_agents_own_gateway_that_phones_nobody() {
        let m = get("opencode").expect("the opencode manifest");
        assert_eq!(m.verification, "alpha");
        assert_eq!(m.image, "taos-opencode");
        assert_eq!(m.agent_mode(), "acp");
        // opencode alone is ~0.6 GB resident; the container peaked at 735-753 MiB.
        assert!(m.requires.ram_mb >= 1024, "{}", m.requires.ram_mb);
        let acp = m.acp.expect("an [acp] table");
        assert_eq!(acp.command, ["/opt/opencode/bin/opencode", "acp", "--pure"]);
        // Its configuration is JSON once the sidecar fills in the placeholders: one provider,
        // the agent's gateway with its key and model.
        let config = acp.env["OPENCODE_CONFIG_CONTENT"]
            .replace("${OPENAI_BASE_URL:json}", "http://127.0.0.1:1/v1")
            .replace("${OPENAI_API_KEY:json}", "sk-key")
            .replace("${TAOS_MODEL:json}", "some/model");
        let config: serde_json::Value = serde_json::from_str(&config).expect("JSON");
        assert_eq!(config["enabled_providers"], serde_json::json!(["taos"]));
        let provider = &config["provider"]["taos"];
        assert_eq!(provider["options"]["baseURL"], "http://127.0.0.1:1/v1");
        assert_eq!(provider["options"]["apiKey"], "sk-key");
        assert_eq!(config["model"], "taos/some/model");
        assert_eq!(config["autoupdate"], false);
        assert_eq!(config["share"], "disabled");
        // Whatever changes things asks, so the host's tool policy decides.
        for tool in ["edit", "bash", "webfetch"] {
            assert_eq!(config["permission"][tool], "ask", "{tool}");
        }
        for off in [
            "OPENCODE_DISABLE_AUTOUPDATE",
            "OPENCODE_DISABLE_MODELS_FETCH",
            "OPENCODE_DISABLE_LSP_DOWNLOAD",
            "OPENCODE_DISABLE_SHARE",
            "OPENCODE_DISABLE_DEFAULT_PLUGINS",
        ] {
            assert_eq!(acp.env.get(off).map(String::as_str), Some("1"), "{off}");
        }
    }
}
