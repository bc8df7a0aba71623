//! Who gets a message: the routing rules, as a pure function plus the cooldown clock.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use taos_proto::chat::{AuthorType, ChannelSettings, ChannelType, ResponseMode};

/// One agent that should receive a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    pub slug: String,
    /// Named (or a DM): the agent should answer, and the cooldown doesn't apply.
    pub forced: bool,
}

/// `@slug` mentions in `text`, lowercased. A mention starts after a non-word character.
pub fn mentions(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let starts =
            chars[i] == '@' && (i == 0 || !(chars[i - 1].is_alphanumeric() || chars[i - 1] == '_'));
        if starts {
            let mut j = i + 1;
            while j < chars.len()
                && (chars[j].is_ascii_alphanumeric() || chars[j] == '-' || chars[j] == '_')
            {
                j += 1;
            }
            let name: String = chars[i + 1..j].iter().collect::<String>().to_lowercase();
            let name = name.trim_end_matches('-').to_string();
            if !name.is_empty() && !found.contains(&name) {
                found.push(name);
            }
            i = j;
        } else {
            i += 1;
        }
    }
    found
}

/// Which agent members get a message, before cooldown and hop checks.
///
/// - DM: the agent, forced.
/// - group/topic: agents named by `@slug` (forced), everyone on `@all` (forced), everyone
///   when the channel is lively (not forced).
pub fn candidates(
    channel_type: ChannelType,
    settings: &ChannelSettings,
    agent_members: &[String],
    author: &str,
    text: &str,
) -> Vec<Recipient> {
    let others: Vec<&String> = agent_members.iter().filter(|m| *m != author).collect();
    if channel_type == ChannelType::Dm {
        return others
            .into_iter()
            .map(|slug| Recipient {
                slug: slug.clone(),
                forced: true,
            })
            .collect();
    }
    let named = mentions(text);
    let all = named.iter().any(|n| n == "all");
    others
        .into_iter()
        .filter_map(|slug| {
            let forced = all || named.contains(slug);
            let lively = settings.response_mode == ResponseMode::Lively;
            (forced || lively).then(|| Recipient {
                slug: slug.clone(),
                forced,
            })
        })
        .collect()
}

/// Whether a message may be routed on at all: user messages always; agent messages only while
/// `hops_since_user < max_hops` (so agents can't bounce replies off each other forever, even
/// by naming each other); system messages never.
pub fn may_route(
    author_type: AuthorType,
    hops_since_user: u32,
    settings: &ChannelSettings,
) -> bool {
    match author_type {
        AuthorType::User => true,
        AuthorType::Agent => hops_since_user < settings.max_hops,
        AuthorType::System => false,
    }
}

/// When each agent was last addressed in each channel.
#[derive(Default)]
pub struct Cooldowns {
    last: Mutex<HashMap<(String, String), Instant>>,
}

impl Cooldowns {
    /// Whether `slug` may be addressed in `channel` now; records it if so. Forced recipients
    /// always pass and reset the clock.
    pub fn try_address(
        &self,
        channel: &str,
        slug: &str,
        forced: bool,
        cooldown: Duration,
        now: Instant,
    ) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let key = (channel.to_string(), slug.to_string());
        let allowed = forced
            || cooldown.is_zero()
            || last
                .get(&key)
                .is_none_or(|t| now.duration_since(*t) >= cooldown);
        if allowed {
            if last.len() > 50_000 {
                last.retain(|_, t| now.duration_since(*t) < Duration::from_secs(60));
            }
            last.insert(key, now);
        }
        allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(mode: ResponseMode) -> ChannelSettings {
        ChannelSettings {
            response_mode: mode,
            ..ChannelSettings::default()
        }
    }

    fn slugs(r: &[Recipient]) -> Vec<(&str, bool)> {
        r.iter().map(|r| (r.slug.as_str(), r.forced)).collect()
    }

    #[test]
    fn mentions_are_found_at_word_starts() {
        assert_eq!(mentions("hi @Helper and @all!"), ["helper", "all"]);
        assert_eq!(mentions("mail me at jay@example.com"), Vec::<String>::new());
        assert_eq!(mentions("@a-b, @a-b again"), ["a-b"]);
        assert_eq!(mentions("(@bot)"), ["bot"]);
    }

    #[test]
    fn dm_goes_to_the_agent() {
        let agents = vec!["helper".to_string()];
        let r = candidates(
            ChannelType::Dm,
            &settings(ResponseMode::Quiet),
            &agents,
            "user:owner",
            "hello",
        );
        assert_eq!(slugs(&r), [("helper", true)]);
    }

    #[test]
    fn quiet_group_needs_a_mention() {
        let agents = vec!["a".to_string(), "b".to_string()];
        let s = settings(ResponseMode::Quiet);
        assert!(candidates(ChannelType::Group, &s, &agents, "user:owner", "hello").is_empty());
        assert_eq!(
            slugs(&candidates(
                ChannelType::Group,
                &s,
                &agents,
                "user:owner",
                "hey @b"
            )),
            [("b", true)]
        );
        assert_eq!(
            slugs(&candidates(
                ChannelType::Group,
                &s,
                &agents,
                "user:owner",
                "@all go"
            )),
            [("a", true), ("b", true)]
        );
        // Mentioning someone who isn't a member addresses nobody.
        assert!(candidates(ChannelType::Group, &s, &agents, "user:owner", "@c").is_empty());
    }

    #[test]
    fn lively_group_goes_to_everyone_but_the_author() {
        let agents = vec!["a".to_string(), "b".to_string()];
        let s = settings(ResponseMode::Lively);
        assert_eq!(
            slugs(&candidates(
                ChannelType::Group,
                &s,
                &agents,
                "a",
                "thoughts?"
            )),
            [("b", false)]
        );
        assert_eq!(
            slugs(&candidates(
                ChannelType::Group,
                &s,
                &agents,
                "user:owner",
                "@a x"
            )),
            [("a", true), ("b", false)]
        );
    }

    #[test]
    fn hop_cap_stops_agent_chains() {
        let s = ChannelSettings {
            max_hops: 2,
            ..ChannelSettings::default()
        };
        assert!(may_route(AuthorType::User, 0, &s));
        assert!(may_route(AuthorType::Agent, 1, &s));
        assert!(!may_route(AuthorType::Agent, 2, &s));
        assert!(!may_route(AuthorType::System, 0, &s));
    }

    #[test]
    fn cooldown_skips_unnamed_agents_only() {
        let c = Cooldowns::default();
        let t0 = Instant::now();
        let cd = Duration::from_secs(5);
        assert!(c.try_address("ch", "a", false, cd, t0));
        assert!(!c.try_address("ch", "a", false, cd, t0 + Duration::from_secs(1)));
        assert!(
            c.try_address("ch", "a", true, cd, t0 + Duration::from_secs(2)),
            "named agents always pass"
        );
        assert!(
            c.try_address("other", "a", false, cd, t0 + Duration::from_secs(2)),
            "per channel"
        );
        assert!(c.try_address("ch", "a", false, cd, t0 + Duration::from_secs(8)));
        assert!(c.try_address("ch", "b", false, Duration::ZERO, t0));
        assert!(c.try_address("ch", "b", false, Duration::ZERO, t0));
    }
}
