//! Admin prompts: markdown the owner can send an agent ("audit with agent"), compiled into the
//! binary from `host-service/prompts/`. Each starts with a small front matter block:
//! `name`, `summary`, `version`, `required_variables` (a `[a, b]` list).

pub use taos_proto::agents::{Prompt, PromptInfo};

const BUILT_IN: &[&str] = &[
    include_str!("../prompts/disk-audit.md"),
    include_str!("../prompts/memory-audit.md"),
    include_str!("../prompts/health-report.md"),
    include_str!("../prompts/weekly-summary.md"),
];

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PromptError {
    #[error("invalid prompt name")]
    BadName,
    #[error("no such prompt")]
    NotFound,
    #[error("missing variables: {0}")]
    MissingVariables(String),
}

fn parse(text: &str) -> Option<Prompt> {
    let rest = text.strip_prefix("---\n")?;
    let (front, body) = rest.split_once("\n---\n")?;
    let mut name = None;
    let mut summary = None;
    let mut version = None;
    let mut variables = Vec::new();
    for line in front.lines() {
        let (key, value) = line.split_once(':')?;
        let value = value.trim();
        match key.trim() {
            "name" => name = Some(value.to_string()),
            "summary" => summary = Some(value.to_string()),
            "version" => version = value.parse().ok(),
            "required_variables" => {
                variables = value
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .split(',')
                    .map(str::trim)
                    .filter(|v| !v.is_empty())
                    .map(String::from)
                    .collect();
            }
            _ => return None,
        }
    }
    Some(Prompt {
        info: PromptInfo {
            name: name?,
            summary: summary?,
            version: version?,
            required_variables: variables,
        },
        body: body.trim().to_string(),
    })
}

pub fn all() -> Vec<Prompt> {
    BUILT_IN.iter().filter_map(|t| parse(t)).collect()
}

/// A prompt by name. Names are `[a-z0-9-]`: anything else (a `/`, `..`) is refused before lookup.
pub fn get(name: &str) -> Result<Prompt, PromptError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok {
        return Err(PromptError::BadName);
    }
    all()
        .into_iter()
        .find(|p| p.info.name == name)
        .ok_or(PromptError::NotFound)
}

/// The body with `{{variable}}` filled in; every required variable must be given.
pub fn render(
    prompt: &Prompt,
    variables: &std::collections::BTreeMap<String, String>,
) -> Result<String, PromptError> {
    let missing: Vec<&str> = prompt
        .info
        .required_variables
        .iter()
        .filter(|v| variables.get(*v).is_none_or(|x| x.trim().is_empty()))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Err(PromptError::MissingVariables(missing.join(", ")));
    }
    let mut body = prompt.body.clone();
    for (k, v) in variables {
        body = body.replace(&format!("{{{{{k}}}}}"), v);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_built_in_prompt_parses_and_asks_for_confirmation() {
        let prompts = all();
        assert_eq!(prompts.len(), BUILT_IN.len(), "a prompt failed to parse");
        for p in &prompts {
            assert!(
                p.body.contains("date -u"),
                "{} checks the date first",
                p.info.name
            );
            assert!(
                p.body.to_lowercase().contains("confirm"),
                "{} waits for confirmation",
                p.info.name
            );
        }
        for name in [
            "disk-audit",
            "memory-audit",
            "health-report",
            "weekly-summary",
        ] {
            assert!(get(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn names_and_variables_are_checked() {
        assert_eq!(get("../etc/passwd"), Err(PromptError::BadName));
        assert_eq!(get("a/b"), Err(PromptError::BadName));
        assert_eq!(get("nope"), Err(PromptError::NotFound));
        let weekly = get("weekly-summary").unwrap();
        assert!(matches!(
            render(&weekly, &Default::default()),
            Err(PromptError::MissingVariables(_))
        ));
        let vars = std::collections::BTreeMap::from([(
            "since".to_string(),
            "2026-11-20T00:00:00Z".to_string(),
        )]);
        let text = render(&weekly, &vars).unwrap();
        assert!(text.contains("since=2026-11-20T00:00:00Z") && !text.contains("{{"));
    }
}
