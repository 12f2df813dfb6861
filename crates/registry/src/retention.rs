//! Retention: which tags a policy lets go. A pure function over tags and a rule, so every
//! combination is unit-tested without a registry.

use std::time::Duration;

use globset::{Glob, GlobMatcher};
use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::metadata::TagInfo;
use berth_units::HumanDuration;

/// A retention rule as written in the config file (`[[registry.retention]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Repositories it applies to (glob; `*` also matches `/`).
    pub repositories: String,
    /// Keep the N most recently pushed tags.
    pub keep_last: Option<usize>,
    /// Keep tags matching this regular expression.
    pub keep_tags: Option<String>,
    /// Keep tags pushed or pulled within this window.
    pub keep_within: Option<HumanDuration>,
    /// Delete manifests left without a tag for longer than this.
    pub delete_untagged_after: Option<HumanDuration>,
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub struct RetentionRule {
    repositories: GlobMatcher,
    pattern: String,
    keep_last: Option<usize>,
    keep_tags: Option<Regex>,
    keep_within: Option<Duration>,
    /// Untagged manifests older than this go.
    pub delete_untagged_after: Option<Duration>,
}

impl RetentionConfig {
    /// Validates and compiles the rule.
    pub fn compile(&self) -> Result<RetentionRule, String> {
        let repositories = Glob::new(&self.repositories)
            .map_err(|e| {
                format!(
                    "retention: bad repositories glob {:?}: {e}",
                    self.repositories
                )
            })?
            .compile_matcher();
        let keep_tags = self
            .keep_tags
            .as_deref()
            .map(Regex::new)
            .transpose()
            .map_err(|e| format!("retention: bad keep_tags regex: {e}"))?;
        if self.keep_last.is_none()
            && keep_tags.is_none()
            && self.keep_within.is_none()
            && self.delete_untagged_after.is_none()
        {
            return Err(format!(
                "retention rule for {:?} has no keep_last, keep_tags, keep_within or delete_untagged_after: it would do nothing",
                self.repositories
            ));
        }
        Ok(RetentionRule {
            repositories,
            pattern: self.repositories.clone(),
            keep_last: self.keep_last,
            keep_tags,
            keep_within: self.keep_within.map(|d| d.0),
            delete_untagged_after: self.delete_untagged_after.map(|d| d.0),
        })
    }
}

/// A tag a rule lets go, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Expiry {
    /// The repository.
    pub repository: String,
    /// The tag.
    pub tag: String,
    /// The manifest it pointed at.
    pub digest: String,
    /// Why no keep rule held it.
    pub reason: String,
}

impl RetentionRule {
    /// Whether the rule governs `repo`.
    pub fn applies_to(&self, repo: &str) -> bool {
        self.repositories.is_match(repo)
    }

    /// The glob as written.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    fn has_tag_rules(&self) -> bool {
        self.keep_last.is_some() || self.keep_tags.is_some() || self.keep_within.is_some()
    }

    /// The tags of `repo` this rule lets go at time `now` (unix seconds): those no keep rule
    /// holds. A rule with only `delete_untagged_after` lets no tag go.
    pub fn expired(&self, repo: &str, tags: &[TagInfo], now: u64) -> Vec<Expiry> {
        if !self.has_tag_rules() {
            return Vec::new();
        }
        let mut by_recency: Vec<&TagInfo> = tags.iter().collect();
        by_recency.sort_by(|a, b| b.pushed.cmp(&a.pushed).then_with(|| a.tag.cmp(&b.tag)));
        let mut out = Vec::new();
        for (rank, tag) in by_recency.iter().enumerate() {
            let mut reasons = Vec::new();
            if let Some(n) = self.keep_last {
                if rank < n {
                    continue;
                }
                reasons.push(format!("not among the {n} most recently pushed"));
            }
            if let Some(re) = &self.keep_tags {
                if re.is_match(&tag.tag) {
                    continue;
                }
                reasons.push(format!("does not match {:?}", re.as_str()));
            }
            if let Some(window) = self.keep_within {
                let last_used = tag.pulled.unwrap_or(0).max(tag.pushed);
                if now.saturating_sub(last_used) < window.as_secs() {
                    continue;
                }
                reasons.push(format!(
                    "not pushed or pulled within {}",
                    HumanDuration(window)
                ));
            }
            out.push(Expiry {
                repository: repo.to_owned(),
                tag: tag.tag.clone(),
                digest: tag.digest.to_string(),
                reason: reasons.join("; "),
            });
        }
        out.sort_by(|a, b| a.tag.cmp(&b.tag));
        out
    }
}

#[cfg(test)]
mod tests {
    use berth_oci::Digest;

    use super::*;

    const DAY: u64 = 86_400;
    const NOW: u64 = 1_000 * DAY;

    fn tag(name: &str, pushed_days_ago: u64, pulled_days_ago: Option<u64>) -> TagInfo {
        TagInfo {
            tag: name.into(),
            digest: Digest::sha256(name.as_bytes()),
            pushed: NOW - pushed_days_ago * DAY,
            pulled: pulled_days_ago.map(|d| NOW - d * DAY),
        }
    }

    fn rule(text: &str) -> RetentionRule {
        let config: RetentionConfig = toml::from_str(text).expect("toml");
        config.compile().expect("valid")
    }

    fn expired(rule: &RetentionRule, tags: &[TagInfo]) -> Vec<String> {
        rule.expired("r", tags, NOW)
            .into_iter()
            .map(|e| e.tag)
            .collect()
    }

    fn tags() -> Vec<TagInfo> {
        vec![
            tag("v1.0.0", 50, None),
            tag("v1.1.0", 40, Some(1)),
            tag("dev-a", 30, None),
            tag("dev-b", 20, None),
            tag("dev-c", 10, None),
            tag("latest", 1, None),
        ]
    }

    #[test]
    fn keep_last_keeps_the_most_recently_pushed() {
        let r = rule("repositories = \"*\"\nkeep_last = 2");
        assert_eq!(expired(&r, &tags()), ["dev-a", "dev-b", "v1.0.0", "v1.1.0"]);
        let reasons = r.expired("r", &tags(), NOW);
        assert_eq!(reasons[0].reason, "not among the 2 most recently pushed");
    }

    #[test]
    fn keep_tags_keeps_matches() {
        let r = rule("repositories = \"*\"\nkeep_tags = '^v\\d+\\.\\d+\\.\\d+$'");
        assert_eq!(expired(&r, &tags()), ["dev-a", "dev-b", "dev-c", "latest"]);
    }

    #[test]
    fn keep_within_counts_pushes_and_pulls() {
        let r = rule("repositories = \"*\"\nkeep_within = \"15d\"");
        // v1.1.0 was pushed 40 days ago but pulled yesterday.
        assert_eq!(expired(&r, &tags()), ["dev-a", "dev-b", "v1.0.0"]);
    }

    #[test]
    fn rules_combine_as_any_keep_wins() {
        let r =
            rule("repositories = \"*\"\nkeep_last = 1\nkeep_tags = '^v'\nkeep_within = \"15d\"");
        assert_eq!(expired(&r, &tags()), ["dev-a", "dev-b"]);
        let reasons = r.expired("r", &tags(), NOW);
        assert_eq!(
            reasons[0].reason,
            "not among the 1 most recently pushed; does not match \"^v\"; not pushed or pulled within 15d"
        );
    }

    #[test]
    fn untagged_only_rules_keep_every_tag() {
        let r = rule("repositories = \"*\"\ndelete_untagged_after = \"7d\"");
        assert!(expired(&r, &tags()).is_empty());
        assert_eq!(r.delete_untagged_after, Some(Duration::from_secs(7 * DAY)));
    }

    #[test]
    fn rules_apply_by_glob_and_must_do_something() {
        let r = rule("repositories = \"shop/*\"\nkeep_last = 3");
        assert!(r.applies_to("shop/web"));
        assert!(r.applies_to("shop/web/debug"));
        assert!(!r.applies_to("other/web"));
        let empty: RetentionConfig = toml::from_str("repositories = \"*\"").expect("toml");
        assert!(empty.compile().is_err());
        let bad: Result<RetentionConfig, _> = toml::from_str("repositories = \"*\"\nkeep_lats = 3");
        assert!(bad.is_err(), "unknown keys are rejected");
        let bad_regex: RetentionConfig =
            toml::from_str("repositories = \"*\"\nkeep_tags = \"(\"").expect("toml");
        assert!(bad_regex.compile().is_err());
    }
}
