//! Teleport `ProvisionToken` YAML → validated [`Token`]s in a [`TokenSet`].
//!
//! Tokens are read exactly as `tctl` users write them (`kind: token`, `version: v2`), one or many
//! per file (a multi-document stream, as `tctl get tokens` prints them). Parsing is strict:
//! duplicate keys, unknown keys, and anything that could make a rule allow more than its author
//! meant are errors, each with the line and column of the offending node.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_saphyr::Spanned;

use crate::arn::AccountId;
use crate::error::{Error, ErrorKind, Problem};
use crate::rules::{RuleMatcher, arn_pattern_problem};

/// The largest token file accepted. A thousand tokens with a few rules each take about 300 KiB;
/// 8 MiB leaves room for very large fleets while bounding what a bad file can cost.
pub const MAX_TOKEN_FILE_BYTES: usize = 8 * 1024 * 1024;
/// The most tokens one file may hold.
pub const MAX_TOKENS_PER_FILE: usize = 100_000;
/// The most allow rules one token may hold. Matching cost does not grow with it, but compile
/// time and memory do.
pub const MAX_RULES_PER_TOKEN: usize = 100_000;
/// The longest `aws_arn` pattern accepted (an ARN is at most 2048 bytes).
pub const MAX_ARN_PATTERN_LEN: usize = 2048;

/// A system role a provision token may grant.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// `Auth`
    Auth,
    /// `Node`
    Node,
    /// `Proxy`
    Proxy,
    /// `Kube`
    Kube,
    /// `App`
    App,
    /// `Db`
    Db,
    /// `WindowsDesktop`
    WindowsDesktop,
    /// `Discovery`
    Discovery,
    /// `Bot` (requires `spec.bot_name`)
    Bot,
    /// `Instance`
    Instance,
    /// `Okta`
    Okta,
    /// `MDM`
    Mdm,
    /// `Trusted_cluster`
    TrustedCluster,
}

impl Role {
    const ALL: [Role; 13] = [
        Self::Auth,
        Self::Node,
        Self::Proxy,
        Self::Kube,
        Self::App,
        Self::Db,
        Self::WindowsDesktop,
        Self::Discovery,
        Self::Bot,
        Self::Instance,
        Self::Okta,
        Self::Mdm,
        Self::TrustedCluster,
    ];

    /// The canonical name Teleport uses, e.g. `WindowsDesktop`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Auth => "Auth",
            Self::Node => "Node",
            Self::Proxy => "Proxy",
            Self::Kube => "Kube",
            Self::App => "App",
            Self::Db => "Db",
            Self::WindowsDesktop => "WindowsDesktop",
            Self::Discovery => "Discovery",
            Self::Bot => "Bot",
            Self::Instance => "Instance",
            Self::Okta => "Okta",
            Self::Mdm => "MDM",
            Self::TrustedCluster => "Trusted_cluster",
        }
    }

    /// Teleport normalizes role names case-insensitively and accepts a few aliases.
    fn from_name(name: &str) -> Option<Self> {
        let lower = name.trim().to_ascii_lowercase();
        match lower.as_str() {
            "windows_desktop" => return Some(Self::WindowsDesktop),
            "trustedcluster" => return Some(Self::TrustedCluster),
            _ => {}
        }
        Self::ALL.into_iter().find(|r| r.as_str().eq_ignore_ascii_case(&lower))
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which organizational units an organization rule includes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OuInclude {
    /// `include: ["*"]`: every account of the organization.
    All,
    /// Accounts under (at any depth) at least one of these OU or root ids.
    Any(Vec<String>),
}

/// The `aws_organizational_units` part of a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrganizationalUnits {
    /// The included OUs.
    pub include: OuInclude,
    /// Accounts under any of these OUs never match.
    pub exclude: Vec<String>,
}

/// One validated allow rule. Its fields are ANDed; a token's rules are ORed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub(crate) aws_account: Option<AccountId>,
    pub(crate) aws_arn: Option<String>,
    pub(crate) aws_organization_id: Option<String>,
    pub(crate) aws_organizational_units: Option<OrganizationalUnits>,
}

impl Rule {
    /// Builds a rule from its parts, validating them as the YAML loader does.
    ///
    /// ```
    /// use iam_join::Rule;
    /// let rule = Rule::new(Some("111111111111"), Some("arn:aws:sts::111111111111:assumed-role/r/*")).unwrap();
    /// assert_eq!(rule.aws_account().unwrap().as_str(), "111111111111");
    /// assert!(Rule::new(None, None).is_err());
    /// assert!(Rule::new(Some("1111"), None).is_err());
    /// ```
    pub fn new(aws_account: Option<&str>, aws_arn: Option<&str>) -> Result<Self, Error> {
        let mut problems = Vec::new();
        let account = aws_account.and_then(|a| {
            let parsed = AccountId::parse(a);
            if parsed.is_none() {
                problems.push(format!("aws_account {a:?} is not a 12-digit AWS account id"));
            }
            parsed
        });
        if let Some(p) = aws_arn.and_then(|p| arn_pattern_problem(p, account.as_ref())) {
            problems.push(p);
        }
        if aws_account.is_none() && aws_arn.is_none() {
            problems.push("a rule needs aws_account, aws_arn or aws_organization_id".to_owned());
        }
        if problems.is_empty() {
            Ok(Self {
                aws_account: account,
                aws_arn: aws_arn.map(str::to_owned),
                aws_organization_id: None,
                aws_organizational_units: None,
            })
        } else {
            Err(Error::new(ErrorKind::TokenInvalid, problems.join("; ")))
        }
    }

    /// A rule with only the account check (12 digits) and none of the pattern checks
    /// [`Rule::new`] makes. For tests, fuzzing and benchmarks of the matcher over patterns the
    /// loader would refuse; never for rules an operator wrote.
    #[doc(hidden)]
    pub fn new_unchecked(aws_account: Option<&str>, aws_arn: Option<&str>) -> Option<Self> {
        let aws_account = match aws_account {
            Some(a) => Some(AccountId::parse(a)?),
            None => None,
        };
        Some(Self {
            aws_account,
            aws_arn: aws_arn.map(str::to_owned),
            aws_organization_id: None,
            aws_organizational_units: None,
        })
    }

    /// The account the identity must be in, if the rule names one.
    pub fn aws_account(&self) -> Option<&AccountId> {
        self.aws_account.as_ref()
    }

    /// The ARN glob the identity must match, if the rule names one.
    pub fn aws_arn(&self) -> Option<&str> {
        self.aws_arn.as_deref()
    }

    /// The AWS Organization the identity's account must belong to, if any.
    pub fn aws_organization_id(&self) -> Option<&str> {
        self.aws_organization_id.as_deref()
    }

    /// The organizational units the identity's account must sit under, if any.
    pub fn aws_organizational_units(&self) -> Option<&OrganizationalUnits> {
        self.aws_organizational_units.as_ref()
    }

    /// Whether matching this rule needs an AWS Organizations lookup.
    pub fn needs_organization(&self) -> bool {
        self.aws_organization_id.is_some()
    }
}

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
}

/// All tokens loaded from one or more YAML documents, by name. Immutable and cheap to share.
#[derive(Debug, Clone, Default)]
pub struct TokenSet {
    tokens: Arc<HashMap<String, Arc<Token>>>,
    order: Arc<Vec<String>>,
}

impl TokenSet {
    /// Parses and validates every token in a YAML stream.
    ///
    /// On failure the error has kind `token_invalid` and [`Error::problems`] lists each problem
    /// with its line and column.
    ///
    /// ```
    /// let set = iam_join::TokenSet::from_yaml(r#"
    /// kind: token
    /// version: v2
    /// metadata:
    ///   name: iam-token
    /// spec:
    ///   roles: [Node]
    ///   join_method: iam
    ///   allow:
    ///   - aws_account: 012345678901
    /// "#).unwrap();
    /// let token = set.get("iam-token").unwrap();
    /// assert_eq!(token.rules()[0].aws_account().unwrap().as_str(), "012345678901");
    /// ```
    pub fn from_yaml(src: &str) -> Result<Self, Error> {
        if src.len() > MAX_TOKEN_FILE_BYTES {
            return Err(invalid(vec![Problem {
                line: 0,
                column: 0,
                message: format!("token file is larger than {MAX_TOKEN_FILE_BYTES} bytes"),
            }]));
        }
        let options = serde_saphyr::options! {
            budget: serde_saphyr::budget! { max_documents: MAX_TOKENS_PER_FILE },
        };
        let docs: Vec<RawToken> = serde_saphyr::from_multiple_with_options(src, options).map_err(|e| {
            let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
            invalid(vec![Problem { line, column, message: yaml_message(&e) }])
        })?;
        let mut problems = Vec::new();
        let mut tokens = HashMap::with_capacity(docs.len());
        let mut order = Vec::with_capacity(docs.len());
        if docs.is_empty() {
            problems.push(Problem { line: 0, column: 0, message: "the file holds no token".to_owned() });
        }
        for doc in docs {
            let name_at = at(&doc.metadata.value.name);
            if let Some(token) = doc.validate(&mut problems) {
                if tokens.contains_key(&token.name) {
                    problems.push(problem(name_at, format!("duplicate token name {:?}", token.name)));
                    continue;
                }
                order.push(token.name.clone());
                tokens.insert(token.name.clone(), Arc::new(token));
            }
        }
        if !problems.is_empty() {
            return Err(invalid(problems));
        }
        Ok(Self { tokens: Arc::new(tokens), order: Arc::new(order) })
    }

    /// The token with this name.
    pub fn get(&self, name: &str) -> Option<&Arc<Token>> {
        self.tokens.get(name)
    }

    /// The tokens in file order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Token>> {
        self.order.iter().filter_map(|n| self.tokens.get(n))
    }

    /// How many tokens the set holds.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether the set holds no token.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

fn invalid(problems: Vec<Problem>) -> Error {
    let detail = match problems.as_slice() {
        [one] => format!("invalid token file: {one}"),
        many => format!("invalid token file: {} problems, first {}", many.len(), many[0]),
    };
    Error::new(ErrorKind::TokenInvalid, detail).with_problems(problems)
}

/// serde-saphyr's plain message without the snippet or the trailing location (we print our own).
fn yaml_message(e: &serde_saphyr::Error) -> String {
    let text = e.without_snippet().to_string();
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

type Loc = (u64, u64);

fn at<T>(s: &Spanned<T>) -> Loc {
    (s.referenced.line(), s.referenced.column())
}

fn problem(loc: Loc, message: String) -> Problem {
    Problem { line: loc.0, column: loc.1, message }
}

// ---- the YAML shape ---------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    kind: Spanned<String>,
    version: Spanned<String>,
    metadata: Spanned<RawMetadata>,
    spec: Spanned<RawSpec>,
    // Fields tctl prints that carry nothing this library checks.
    #[serde(default, rename = "sub_kind")]
    _sub_kind: Option<IgnoredAny>,
    #[serde(default, rename = "status")]
    _status: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetadata {
    name: Spanned<String>,
    #[serde(default)]
    expires: Option<Spanned<String>>,
    #[serde(default, rename = "description")]
    _description: Option<IgnoredAny>,
    #[serde(default, rename = "labels")]
    _labels: Option<IgnoredAny>,
    #[serde(default, rename = "revision")]
    _revision: Option<IgnoredAny>,
    #[serde(default, rename = "namespace")]
    _namespace: Option<IgnoredAny>,
    #[serde(default, rename = "id")]
    _id: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    #[serde(default)]
    roles: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    join_method: Option<Spanned<String>>,
    #[serde(default)]
    allow: Option<Spanned<Vec<Spanned<RawRule>>>>,
    #[serde(default)]
    bot_name: Option<Spanned<String>>,
    #[serde(default, rename = "suggested_labels")]
    _suggested_labels: Option<IgnoredAny>,
    #[serde(default, rename = "suggested_agent_matcher_labels")]
    _suggested_agent_matcher_labels: Option<IgnoredAny>,
    #[serde(default, rename = "aws_iid_ttl")]
    _aws_iid_ttl: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(default)]
    aws_account: Option<Spanned<String>>,
    #[serde(default)]
    aws_arn: Option<Spanned<String>>,
    #[serde(default)]
    aws_organization_id: Option<Spanned<String>>,
    #[serde(default)]
    aws_organizational_units: Option<Spanned<RawOus>>,
    // Accepted by the parser only to say precisely why they are wrong in an iam rule.
    #[serde(default)]
    aws_role: Option<Spanned<IgnoredAny>>,
    #[serde(default)]
    aws_regions: Option<Spanned<IgnoredAny>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOus {
    #[serde(default)]
    include: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    exclude: Option<Vec<Spanned<String>>>,
}

// ---- validation ---------------------------------------------------------------------------------

impl RawToken {
    fn validate(self, problems: &mut Vec<Problem>) -> Option<Token> {
        let before = problems.len();
        let mut push = |loc: Loc, msg: String| problems.push(problem(loc, msg));
        if self.kind.value != "token" {
            push(at(&self.kind), format!("kind is {:?}, expected \"token\"", self.kind.value));
        }
        if self.version.value != "v2" {
            push(at(&self.version), format!("version is {:?}, expected \"v2\"", self.version.value));
        }
        let meta = self.metadata.value;
        let name = meta.name.value.clone();
        if name.trim().is_empty() {
            push(at(&meta.name), "metadata.name is empty".to_owned());
        }
        let expires = meta.expires.as_ref().and_then(|e| match parse_rfc3339(&e.value) {
            Some(t) => Some(t),
            None => {
                push(at(e), format!("metadata.expires {:?} is not an RFC 3339 time", e.value));
                None
            }
        });
        let spec_at = at(&self.spec);
        let spec = self.spec.value;

        match &spec.join_method {
            None => push(spec_at, "spec.join_method is missing; expected \"iam\"".to_owned()),
            Some(m) if m.value != "iam" => {
                push(at(m), format!("join_method is {:?}; this token must use join_method \"iam\"", m.value))
            }
            Some(_) => {}
        }

        let mut roles = Vec::new();
        match &spec.roles {
            None => push(spec_at, "spec.roles is missing; a token must grant at least one role".to_owned()),
            Some(r) if r.value.is_empty() => {
                push(at(r), "spec.roles is empty; a token must grant at least one role".to_owned())
            }
            Some(r) => {
                for role in &r.value {
                    match Role::from_name(&role.value) {
                        Some(parsed) if roles.contains(&parsed) => {
                            push(at(role), format!("duplicate role {:?}", role.value))
                        }
                        Some(parsed) => roles.push(parsed),
                        None => push(
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
            push(spec_at, "the Bot role requires spec.bot_name".to_owned());
        }

        let mut rules = Vec::new();
        match spec.allow {
            None => push(spec_at, "spec.allow is missing; an iam token needs at least one allow rule".to_owned()),
            Some(a) if a.value.is_empty() => {
                push(at(&a), "spec.allow is empty; an iam token needs at least one allow rule".to_owned())
            }
            Some(a) if a.value.len() > MAX_RULES_PER_TOKEN => {
                push(at(&a), format!("spec.allow has more than {MAX_RULES_PER_TOKEN} rules"))
            }
            Some(a) => {
                for raw in a.value {
                    let rule_at = at(&raw);
                    if let Some(rule) = raw.value.validate(rule_at, &mut push) {
                        rules.push(rule);
                    }
                }
            }
        }
        if problems.len() != before {
            return None;
        }
        match RuleMatcher::compile(rules) {
            Ok(matcher) => Some(Token { name, roles, bot_name, expires, matcher }),
            Err(e) => {
                problems.push(problem(spec_at, e.detail().to_owned()));
                None
            }
        }
    }
}

impl RawRule {
    fn validate(self, rule_at: Loc, push: &mut impl FnMut(Loc, String)) -> Option<Rule> {
        let mut ok = true;
        let mut bad = |loc: Loc, msg: String| {
            ok = false;
            push(loc, msg);
        };
        if let Some(r) = &self.aws_role {
            bad(at(r), "aws_role belongs to join_method ec2 rules and is not checked by iam; remove it".to_owned());
        }
        if let Some(r) = &self.aws_regions {
            bad(at(r), "aws_regions belongs to join_method ec2 rules and is not checked by iam; remove it".to_owned());
        }
        let account = self.aws_account.as_ref().and_then(|a| {
            let parsed = AccountId::parse(&a.value);
            if parsed.is_none() {
                bad(at(a), format!("aws_account {:?} is not a 12-digit AWS account id", a.value));
            }
            parsed
        });
        if let Some(p) = &self.aws_arn
            && let Some(msg) = arn_pattern_problem(&p.value, account.as_ref())
        {
            bad(at(p), msg);
        }
        if let Some(o) = &self.aws_organization_id
            && !is_org_id(&o.value)
        {
            bad(
                at(o),
                format!(
                    "aws_organization_id {:?} is not an organization id (o- and 10 to 32 lowercase letters or digits)",
                    o.value
                ),
            );
        }
        let ous = self.aws_organizational_units.and_then(|ous| {
            let ous_at = at(&ous);
            if self.aws_organization_id.is_none() {
                bad(ous_at, "aws_organizational_units needs aws_organization_id in the same rule".to_owned());
            }
            let include = match ous.value.include {
                None => {
                    bad(
                        ous_at,
                        "aws_organizational_units.include is missing; use [\"*\"] for the whole organization"
                            .to_owned(),
                    );
                    None
                }
                Some(inc) if inc.value.is_empty() => {
                    bad(
                        at(&inc),
                        "aws_organizational_units.include is empty; use [\"*\"] for the whole organization".to_owned(),
                    );
                    None
                }
                Some(inc) => {
                    let star = inc.value.iter().any(|v| v.value == "*");
                    if star && inc.value.len() > 1 {
                        bad(at(&inc), "\"*\" in include stands alone: it already means every OU".to_owned());
                        None
                    } else if star {
                        Some(OuInclude::All)
                    } else {
                        let mut ids = Vec::new();
                        for v in inc.value {
                            if is_ou_or_root_id(&v.value) {
                                ids.push(v.value);
                            } else {
                                bad(at(&v), format!("{:?} is not an OU id (ou-...) or root id (r-...)", v.value));
                            }
                        }
                        Some(OuInclude::Any(ids))
                    }
                }
            };
            let mut exclude = Vec::new();
            for v in ous.value.exclude.unwrap_or_default() {
                if v.value == "*" {
                    bad(at(&v), "\"*\" cannot be excluded: the rule would match nothing".to_owned());
                } else if is_ou_or_root_id(&v.value) {
                    exclude.push(v.value);
                } else {
                    bad(at(&v), format!("{:?} is not an OU id (ou-...) or root id (r-...)", v.value));
                }
            }
            include.map(|include| OrganizationalUnits { include, exclude })
        });
        if self.aws_account.is_none() && self.aws_arn.is_none() && self.aws_organization_id.is_none() {
            bad(rule_at, "a rule needs aws_account, aws_arn or aws_organization_id".to_owned());
        }
        ok.then(|| Rule {
            aws_account: account,
            aws_arn: self.aws_arn.map(|a| a.value),
            aws_organization_id: self.aws_organization_id.map(|o| o.value),
            aws_organizational_units: ous,
        })
    }
}

fn is_lower_alnum(s: &str, min: usize, max: usize) -> bool {
    (min..=max).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

pub(crate) fn is_org_id(s: &str) -> bool {
    s.strip_prefix("o-").is_some_and(|r| is_lower_alnum(r, 10, 32))
}

fn is_ou_or_root_id(s: &str) -> bool {
    if let Some(r) = s.strip_prefix("r-") {
        return is_lower_alnum(r, 4, 32);
    }
    s.strip_prefix("ou-")
        .and_then(|r| r.split_once('-'))
        .is_some_and(|(root, ou)| is_lower_alnum(root, 4, 32) && is_lower_alnum(ou, 8, 32))
}

pub(crate) fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    Some(SystemTime::from(t))
}
