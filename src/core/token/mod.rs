//! Teleport `ProvisionToken` YAML → validated [`Token`]s in a [`TokenSet`](set::TokenSet).
//!
//! Tokens are read exactly as `tctl` users write them (`kind: token`, `version: v2`), one or many
//! per file (a multi-document stream, as `tctl get tokens` prints them). Parsing is strict about
//! what a token means (anything that could make a rule allow more than its author meant is an
//! error) and reports every problem of a token at once, each with its line and column.
//!
//! The concepts: [`Role`](role::Role), [`Token`], [`TokenSet`](set::TokenSet) and
//! [`JoinMethod`](join_method::JoinMethod); the loader (`load`) and the YAML schema with its
//! validation (`schema`).

pub(crate) mod join_method;
mod load;
pub(crate) mod role;
mod schema;
pub(crate) mod set;

use std::time::SystemTime;

use crate::core::matcher::RuleMatcher;
use crate::core::rule::Rule;
use crate::core::token::role::Role;

/// The largest token file accepted. A thousand tokens with a few rules each take about 300 KiB;
/// 8 MiB leaves room for very large fleets while bounding what a bad file can cost.
pub const MAX_TOKEN_FILE_BYTES: usize = 8 * 1024 * 1024;
/// The most tokens one file may hold.
pub const MAX_TOKENS_PER_FILE: usize = 100_000;
/// The most allow rules one token may hold. Matching cost does not grow with it, but compile
/// time and memory do.
pub const MAX_RULES_PER_TOKEN: usize = 100_000;
/// A validated iam provision token with its compiled allow rules.
#[derive(Debug)]
pub struct Token {
    name: String,
    roles: Vec<Role>,
    bot_name: Option<String>,
    expires: Option<SystemTime>,
    matcher: RuleMatcher,
}

impl Token {
    /// The token's name (`metadata.name`), which joining agents present.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The system roles the token grants.
    pub fn roles(&self) -> &[Role] {
        &self.roles
    }

    /// `spec.bot_name`, set when the token grants `Bot`.
    pub fn bot_name(&self) -> Option<&str> {
        self.bot_name.as_deref()
    }

    /// When the token stops being usable, if it expires.
    pub fn expires(&self) -> Option<SystemTime> {
        self.expires
    }

    /// Whether the token has expired at `now` (a token expiring exactly at `now` has).
    pub fn is_expired(&self, now: SystemTime) -> bool {
        self.expires.is_some_and(|e| e <= now)
    }

    /// The allow rules, in file order.
    pub fn rules(&self) -> &[Rule] {
        self.matcher.rules()
    }

    /// The compiled matcher for the allow rules.
    pub fn matcher(&self) -> &RuleMatcher {
        &self.matcher
    }

    /// Whether a rule of the token needs an AWS Organizations lookup to decide
    /// (`aws_organization_id`): a verifier needs an Organizations client for it.
    pub fn needs_organizations(&self) -> bool {
        self.matcher.organization_rules().next().is_some()
    }
}
