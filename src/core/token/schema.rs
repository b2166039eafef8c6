//! The token YAML's shape (read leniently about keys, so every problem is reported) and its
//! validation into a [`Token`], each finding placed at its YAML node.

use std::fmt;
use std::time::SystemTime;

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_saphyr::Spanned;

use crate::core::error::{Problem, Severity};
use crate::core::matcher::RuleMatcher;
use crate::core::rule::{self, OuFields, Place, Rule, RuleFields};
use crate::core::token::join_method::JoinMethod;
use crate::core::token::role::Role;
use crate::core::token::{MAX_RULES_PER_TOKEN, Token};

pub(crate) type Loc = (u64, u64);

pub(crate) fn at<T>(s: &Spanned<T>) -> Loc {
    (s.referenced.line(), s.referenced.column())
}

/// What a token document turned out to be.
pub(crate) enum Outcome {
    Iam(Box<Token>),
    Other(JoinMethod),
    Invalid,
}

/// Diagnostics for one token document, with its lines shifted to the file's.
pub(crate) struct Diags<'a> {
    pub(crate) out: &'a mut Vec<Problem>,
    pub(crate) line_offset: u64,
    pub(crate) token: &'a str,
    pub(crate) errors: usize,
}

impl Diags<'_> {
    pub(crate) fn push(&mut self, severity: Severity, loc: Loc, message: String) {
        let line = if loc.0 == 0 { 0 } else { loc.0 + self.line_offset };
        let mut p = Problem::new(severity, line, loc.1, message);
        p.token = Some(self.token.to_owned());
        if severity == Severity::Error {
            self.errors += 1;
        }
        self.out.push(p);
    }

    fn error(&mut self, loc: Loc, message: String) {
        self.push(Severity::Error, loc, message);
    }

    fn warn(&mut self, loc: Loc, message: String) {
        self.push(Severity::Warning, loc, message);
    }

    fn info(&mut self, loc: Loc, message: String) {
        self.push(Severity::Info, loc, message);
    }
}

// ---- the YAML shape ---------------------------------------------------------------------------

/// A struct of the token schema, read leniently about keys: a key the schema does not know is
/// recorded with its place instead of stopping the whole document (as `deny_unknown_fields`
/// would), so that one run reports a typo together with every other problem of the token. Each
/// field's type must be `Default` (an `Option`); a key given twice is the YAML parser's error.
macro_rules! schema {
    ($(#[$meta:meta])* $vis:vis struct $name:ident { $($(#[$fmeta:meta])* $field:ident: $ty:ty => $key:literal),* $(,)? }) => {
        $(#[$meta])*
        $vis struct $name {
            $($(#[$fmeta])* pub(crate) $field: $ty,)*
            /// Keys the schema does not know, with where they are.
            pub(crate) unknown: Vec<(String, Loc)>,
        }

        impl $name {
            /// Every key the schema knows, for the message about one it does not.
            const KEYS: &'static [&'static str] = &[$($key),*];

            fn unknown_keys(&self, d: &mut Diags<'_>) {
                for (key, loc) in &self.unknown {
                    d.error(*loc, unknown_field(key, Self::KEYS));
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct Fields;
                impl<'de> serde::de::Visitor<'de> for Fields {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str(concat!("a mapping (", stringify!($name), ")"))
                    }
                    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<$name, A::Error> {
                        let mut out = $name { $($field: Default::default(),)* unknown: Vec::new() };
                        while let Some(key) = map.next_key::<Spanned<String>>()? {
                            match key.value.as_str() {
                                $($key => out.$field = map.next_value()?,)*
                                _ => {
                                    map.next_value::<IgnoredAny>()?;
                                    out.unknown.push((key.value.clone(), at(&key)));
                                }
                            }
                        }
                        Ok(out)
                    }
                }
                deserializer.deserialize_map(Fields)
            }
        }
    };
}

/// The wording the YAML parser used for an unknown key, so messages stay as they were.
fn unknown_field(key: &str, known: &[&str]) -> String {
    format!("unknown field `{key}`, expected one of {}", known.join(", "))
}

schema! {
    pub(crate) struct RawToken {
        kind: Option<Spanned<String>> => "kind",
        version: Option<Spanned<String>> => "version",
        metadata: Option<Spanned<RawMetadata>> => "metadata",
        spec: Option<Spanned<RawSpec>> => "spec",
        // Fields tctl prints that carry nothing this library checks.
        _sub_kind: Option<IgnoredAny> => "sub_kind",
        _status: Option<IgnoredAny> => "status",
    }
}

schema! {
    pub(crate) struct RawMetadata {
        name: Option<Spanned<String>> => "name",
        expires: Option<Spanned<String>> => "expires",
        _description: Option<IgnoredAny> => "description",
        _labels: Option<IgnoredAny> => "labels",
        _revision: Option<IgnoredAny> => "revision",
        _namespace: Option<IgnoredAny> => "namespace",
        _id: Option<IgnoredAny> => "id",
    }
}

schema! {
    pub(crate) struct RawSpec {
        roles: Option<Spanned<Vec<Spanned<String>>>> => "roles",
        join_method: Option<Spanned<String>> => "join_method",
        allow: Option<Spanned<Vec<Spanned<RawRule>>>> => "allow",
        bot_name: Option<Spanned<String>> => "bot_name",
        _suggested_labels: Option<IgnoredAny> => "suggested_labels",
        _suggested_agent_matcher_labels: Option<IgnoredAny> => "suggested_agent_matcher_labels",
        _aws_iid_ttl: Option<IgnoredAny> => "aws_iid_ttl",
        _integration: Option<IgnoredAny> => "integration",
        // The sections of Teleport's other join methods, by key. An iam token that carries one
        // gets a warning: Teleport ignores it for iam, and so does this library.
        kubernetes: Option<Spanned<IgnoredAny>> => "kubernetes",
        github: Option<Spanned<IgnoredAny>> => "github",
        circleci: Option<Spanned<IgnoredAny>> => "circleci",
        gcp: Option<Spanned<IgnoredAny>> => "gcp",
        gitlab: Option<Spanned<IgnoredAny>> => "gitlab",
        azure: Option<Spanned<IgnoredAny>> => "azure",
        azure_devops: Option<Spanned<IgnoredAny>> => "azure_devops",
        spacelift: Option<Spanned<IgnoredAny>> => "spacelift",
        tpm: Option<Spanned<IgnoredAny>> => "tpm",
        terraform_cloud: Option<Spanned<IgnoredAny>> => "terraform_cloud",
        bitbucket: Option<Spanned<IgnoredAny>> => "bitbucket",
        oracle: Option<Spanned<IgnoredAny>> => "oracle",
        bound_keypair: Option<Spanned<IgnoredAny>> => "bound_keypair",
        env0: Option<Spanned<IgnoredAny>> => "env0",
    }
}

impl RawSpec {
    /// The other join methods' sections present, by key.
    fn other_sections(&self) -> Vec<(&'static str, Loc)> {
        [
            ("kubernetes", &self.kubernetes),
            ("github", &self.github),
            ("circleci", &self.circleci),
            ("gcp", &self.gcp),
            ("gitlab", &self.gitlab),
            ("azure", &self.azure),
            ("azure_devops", &self.azure_devops),
            ("spacelift", &self.spacelift),
            ("tpm", &self.tpm),
            ("terraform_cloud", &self.terraform_cloud),
            ("bitbucket", &self.bitbucket),
            ("oracle", &self.oracle),
            ("bound_keypair", &self.bound_keypair),
            ("env0", &self.env0),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| (k, at(v))))
        .collect()
    }
}

schema! {
    pub(crate) struct RawRule {
        aws_account: Option<Spanned<String>> => "aws_account",
        aws_arn: Option<Spanned<String>> => "aws_arn",
        aws_organization_id: Option<Spanned<String>> => "aws_organization_id",
        aws_organizational_units: Option<Spanned<RawOus>> => "aws_organizational_units",
        // Accepted by the parser only to say precisely why they are wrong in an iam rule.
        aws_role: Option<Spanned<IgnoredAny>> => "aws_role",
        aws_regions: Option<Spanned<IgnoredAny>> => "aws_regions",
    }
}

schema! {
    pub(crate) struct RawOus {
        include: Option<Spanned<Vec<Spanned<String>>>> => "include",
        exclude: Option<Vec<Spanned<String>>> => "exclude",
    }
}

// ---- validation ---------------------------------------------------------------------------------

impl RawToken {
    /// Every problem of one token document, reported together: `name` is its `metadata.name`,
    /// `doc_at` where the document starts (for what it lacks).
    pub(crate) fn validate(self, name: &str, doc_at: Loc, d: &mut Diags<'_>) -> Outcome {
        self.unknown_keys(d);
        match &self.kind {
            None => d.error(doc_at, "kind is missing; expected \"token\"".to_owned()),
            Some(k) if k.value != "token" => d.error(at(k), format!("kind is {:?}, expected \"token\"", k.value)),
            Some(_) => {}
        }
        match &self.version {
            None => d.error(doc_at, "version is missing; expected \"v2\"".to_owned()),
            Some(v) if v.value != "v2" => d.error(at(v), format!("version is {:?}, expected \"v2\"", v.value)),
            Some(_) => {}
        }
        let expires = match self.metadata {
            None => {
                d.error(doc_at, "metadata is missing".to_owned());
                None
            }
            Some(meta) => {
                let meta_at = at(&meta);
                let meta = meta.value;
                meta.unknown_keys(d);
                match &meta.name {
                    None => d.error(meta_at, "metadata.name is missing".to_owned()),
                    Some(n) if n.value.trim().is_empty() => d.error(at(n), "metadata.name is empty".to_owned()),
                    Some(_) => {}
                }
                meta.expires
            }
        };
        let name = name.to_owned();
        let expires = expires.as_ref().and_then(|e| match parse_rfc3339(&e.value) {
            Some(t) => Some(t),
            None => {
                d.error(at(e), format!("metadata.expires {:?} is not an RFC 3339 time", e.value));
                None
            }
        });
        let Some(spec) = self.spec else {
            d.error(doc_at, "spec is missing".to_owned());
            return Outcome::Invalid;
        };
        let spec_at = at(&spec);
        let spec = spec.value;
        spec.unknown_keys(d);

        // Teleport's default join method is `token`; only iam tokens are this library's.
        let method = spec.join_method.as_ref().map_or("token", |m| m.value.as_str()).to_owned();
        if method != "iam" {
            if d.errors > 0 {
                return Outcome::Invalid;
            }
            let loc = spec.join_method.as_ref().map_or(spec_at, at);
            d.info(loc, format!("token {name:?} uses join_method {method:?}; not an iam token, skipped"));
            return Outcome::Other(JoinMethod::from_name(&method));
        }
        for (key, loc) in spec.other_sections() {
            d.warn(loc, format!("spec.{key} belongs to join_method {key:?} and is ignored for join_method \"iam\""));
        }

        let mut roles = Vec::new();
        match &spec.roles {
            None => d.error(spec_at, "spec.roles is missing; a token must grant at least one role".to_owned()),
            Some(r) if r.value.is_empty() => {
                d.error(at(r), "spec.roles is empty; a token must grant at least one role".to_owned())
            }
            Some(r) => {
                for role in &r.value {
                    match Role::from_name(&role.value) {
                        Some(parsed) if roles.contains(&parsed) => {
                            d.error(at(role), format!("duplicate role {:?}", role.value))
                        }
                        Some(parsed) => roles.push(parsed),
                        None => d.error(
                            at(role),
                            format!(
                                "role {:?} is not a role a provision token can grant (one of {})",
                                role.value,
                                Role::ALL.map(Role::as_str).join(", ")
                            ),
                        ),
                    }
                }
            }
        }
        let bot_name = spec.bot_name.as_ref().map(|b| b.value.clone()).filter(|b| !b.is_empty());
        if roles.contains(&Role::Bot) && bot_name.is_none() {
            d.error(spec_at, "the Bot role requires spec.bot_name".to_owned());
        }

        let mut rules = Vec::new();
        match spec.allow {
            None => d.error(spec_at, "spec.allow is missing; an iam token needs at least one allow rule".to_owned()),
            Some(a) if a.value.is_empty() => {
                d.error(at(&a), "spec.allow is empty; an iam token needs at least one allow rule".to_owned())
            }
            Some(a) if a.value.len() > MAX_RULES_PER_TOKEN => {
                d.error(at(&a), format!("spec.allow has more than {MAX_RULES_PER_TOKEN} rules"))
            }
            Some(a) => {
                for raw in a.value {
                    let rule_at = at(&raw);
                    if let Some(rule) = raw.value.validate(rule_at, d) {
                        rules.push(rule);
                    }
                }
            }
        }
        if d.errors > 0 {
            return Outcome::Invalid;
        }
        match RuleMatcher::compile(rules) {
            Ok(matcher) => Outcome::Iam(Box::new(Token { name, roles, bot_name, expires, matcher })),
            Err(e) => {
                d.error(spec_at, e.detail().to_owned());
                Outcome::Invalid
            }
        }
    }
}

fn value(s: &Option<Spanned<String>>) -> Option<&str> {
    s.as_ref().map(|v| v.value.as_str())
}

impl RawRule {
    /// Runs the one rule validator ([`crate::core::rule`]) and places each finding at its YAML node.
    /// Unknown keys are errors too, reported with the rest.
    fn validate(self, rule_at: Loc, d: &mut Diags<'_>) -> Option<Rule> {
        self.unknown_keys(d);
        if let Some(ous) = &self.aws_organizational_units {
            ous.value.unknown_keys(d);
        }
        let ous = self.aws_organizational_units.as_ref().map(|o| OuFields {
            include: o.value.include.as_ref().map(|i| i.value.iter().map(|v| v.value.as_str()).collect()),
            exclude: o.value.exclude.iter().flatten().map(|v| v.value.as_str()).collect(),
        });
        let fields = RuleFields {
            aws_account: value(&self.aws_account),
            aws_arn: value(&self.aws_arn),
            aws_organization_id: value(&self.aws_organization_id),
            aws_organizational_units: ous,
            aws_role: self.aws_role.is_some(),
            aws_regions: self.aws_regions.is_some(),
            unknown_keys: !self.unknown.is_empty(),
        };
        let ous = self.aws_organizational_units.as_ref();
        let include = ous.and_then(|o| o.value.include.as_ref());
        let place = |p: Place| -> Loc {
            let loc = match p {
                Place::Rule => None,
                Place::Account => self.aws_account.as_ref().map(at),
                Place::Arn => self.aws_arn.as_ref().map(at),
                Place::OrganizationId => self.aws_organization_id.as_ref().map(at),
                Place::Ous => ous.map(at),
                Place::Include => include.map(at),
                Place::IncludeItem(i) => include.and_then(|inc| inc.value.get(i)).map(at),
                Place::ExcludeItem(i) => ous.and_then(|o| o.value.exclude.as_ref()?.get(i)).map(at),
                Place::AwsRole => self.aws_role.as_ref().map(at),
                Place::AwsRegions => self.aws_regions.as_ref().map(at),
            };
            loc.unwrap_or(rule_at)
        };
        rule::validate(&fields, &mut |severity, p, message| d.push(severity, place(p), message))
    }
}

pub(crate) fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    Some(SystemTime::from(t))
}
