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
use sha2::Digest as _;

use crate::core::error::{Error, ErrorKind, Problem, Severity};
use crate::core::matcher::RuleMatcher;
use crate::core::rule::{self, OuFields, Place, Rule, RuleFields};

/// The largest token file accepted. A thousand tokens with a few rules each take about 300 KiB;
/// 8 MiB leaves room for very large fleets while bounding what a bad file can cost.
pub const MAX_TOKEN_FILE_BYTES: usize = 8 * 1024 * 1024;
/// The most tokens one file may hold.
pub const MAX_TOKENS_PER_FILE: usize = 100_000;
/// The most allow rules one token may hold. Matching cost does not grow with it, but compile
/// time and memory do.
pub const MAX_RULES_PER_TOKEN: usize = 100_000;
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

/// The canonical name, e.g. `"Kube"`.
#[cfg(feature = "serialize")]
impl serde::Serialize for Role {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
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

    /// Whether a rule of the token needs an AWS Organizations lookup to decide
    /// (`aws_organization_id`): a verifier needs an Organizations client for it.
    pub fn needs_organizations(&self) -> bool {
        self.matcher.organization_rules().next().is_some()
    }
}

/// Why a token named in the file is not in the usable iam set.
#[derive(Clone, Debug)]
enum Unusable {
    /// A token of another join method (`token`, `ec2`, `kubernetes`, ...): not ours to verify.
    OtherJoinMethod(String),
    /// The token has at least one error; the first one, for the refusal message.
    Invalid(String),
}

/// All tokens loaded from one or more YAML documents, by name. Immutable and cheap to share.
///
/// A file may mix join methods, as `tctl get tokens` prints it: only `join_method: iam` tokens
/// become [`Token`]s; the others are noted as [`Severity::Info`] and refused by name with a
/// message naming their join method. A token with an error is left out on its own: every other
/// token of the file still loads ([`TokenSet::load`]). Warnings (rules that can never match, as
/// Teleport accepts them) never leave a token out.
#[derive(Debug, Clone, Default)]
pub struct TokenSet {
    tokens: Arc<HashMap<String, Arc<Token>>>,
    order: Arc<Vec<String>>,
    unusable: Arc<HashMap<String, Unusable>>,
    /// Documents whose name could not be read at all.
    unnamed_failures: usize,
    diagnostics: Arc<Vec<Problem>>,
    /// The SHA-256 of the text the set was loaded from.
    digest: [u8; 32],
}

impl TokenSet {
    /// Parses and validates every token in a YAML stream, and fails when any problem is an
    /// error, even in a token the caller will never ask for. Use [`TokenSet::load`] to keep the
    /// valid tokens of a file that also holds broken ones.
    ///
    /// On failure the error has kind `token_invalid` and [`Error::problems`] lists every
    /// diagnostic with its line and column. On success, warnings and information are in
    /// [`TokenSet::diagnostics`].
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
        let set = Self::load(src);
        if set.has_errors() { Err(invalid(set.diagnostics.to_vec())) } else { Ok(set) }
    }

    /// Parses every token in a YAML stream and keeps each valid iam token, whatever is wrong with
    /// the others. Never fails: file-level problems (too large, no token, a YAML syntax error)
    /// and token-level ones are all in [`TokenSet::diagnostics`], with line and column.
    ///
    /// ```
    /// use iam_join::{ErrorKind, Severity, TokenSet};
    /// let set = TokenSet::load(r#"
    /// kind: token
    /// version: v2
    /// metadata: {name: good}
    /// spec: {roles: [Node], join_method: iam, allow: [{aws_account: "111111111111"}]}
    /// ---
    /// kind: token
    /// version: v2
    /// metadata: {name: broken}
    /// spec: {roles: [Node], join_method: iam, allow: [{aws_acount: "111111111111"}]}
    /// ---
    /// kind: token
    /// version: v2
    /// metadata: {name: static}
    /// spec: {roles: [Node], join_method: token}
    /// "#);
    /// assert!(set.get("good").is_some());
    /// assert!(set.has_errors());
    /// assert_eq!(set.lookup("broken").unwrap_err().kind(), ErrorKind::TokenInvalid);
    /// assert!(set.lookup("static").unwrap_err().detail().contains("join_method \"token\""));
    /// assert_eq!((set.join_method("good"), set.join_method("static"), set.join_method("broken")), (Some("iam"), Some("token"), None));
    /// let first = &set.diagnostics()[0];
    /// assert_eq!((first.line, first.severity), (10, Severity::Error));
    /// ```
    pub fn load(src: &str) -> Self {
        Loader::default().run(src)
    }

    /// The SHA-256 of the text the set was loaded from: a server reloads a file only when its
    /// contents change.
    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }

    /// The same set with `file` named in every diagnostic, so they print as
    /// `FILE:LINE:COL: SEVERITY: MESSAGE`.
    pub fn with_file_name(mut self, file: &str) -> Self {
        let file: Arc<str> = Arc::from(file);
        let diagnostics = self.diagnostics.iter().cloned().map(|mut p| {
            p.file = Some(file.clone());
            p
        });
        self.diagnostics = Arc::new(diagnostics.collect());
        self
    }

    /// Every diagnostic of the file, in file order: errors, warnings and information.
    pub fn diagnostics(&self) -> &[Problem] {
        &self.diagnostics
    }

    /// Whether any diagnostic is an error (some token, or the whole file, was left out).
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(|p| p.severity == Severity::Error)
    }

    /// Whether any diagnostic is a warning.
    pub fn has_warnings(&self) -> bool {
        self.diagnostics.iter().any(|p| p.severity == Severity::Warning)
    }

    /// The usable iam token with this name.
    pub fn get(&self, name: &str) -> Option<&Arc<Token>> {
        self.tokens.get(name)
    }

    /// The usable iam token with this name, or a `token_invalid` error that says why not: no
    /// such token, a token of another join method (named), or a token with errors (the first
    /// one). The name is shown truncated to 128 characters.
    pub fn lookup(&self, name: &str) -> Result<&Arc<Token>, Error> {
        if let Some(t) = self.tokens.get(name) {
            return Ok(t);
        }
        let shown = crate::core::text::quoted_name(name);
        let detail = match self.unusable.get(name) {
            Some(Unusable::OtherJoinMethod(m)) => {
                format!("token {shown} uses join_method {m:?}, not \"iam\"")
            }
            Some(Unusable::Invalid(first)) => format!("token {shown} is invalid: {first}"),
            None if self.unnamed_failures > 0 => format!(
                "no iam token named {shown} ({} document(s) of the token file could not be read)",
                self.unnamed_failures
            ),
            None => format!("no iam token named {shown}"),
        };
        Err(Error::new(ErrorKind::TokenInvalid, detail))
    }

    /// The join method of the token named `name`: `"iam"` for a usable iam token, the method of
    /// a token of another join method (`"token"`, `"ec2"`, ...), or `None` for a name the file
    /// does not hold or a token with errors.
    pub fn join_method(&self, name: &str) -> Option<&str> {
        if self.tokens.contains_key(name) {
            return Some("iam");
        }
        match self.unusable.get(name) {
            Some(Unusable::OtherJoinMethod(m)) => Some(m),
            _ => None,
        }
    }

    /// The usable tokens in file order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Token>> {
        self.order.iter().filter_map(|n| self.tokens.get(n))
    }

    /// How many usable iam tokens the set holds.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether the set holds no usable iam token.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

fn invalid(problems: Vec<Problem>) -> Error {
    let errors: Vec<&Problem> = problems.iter().filter(|p| p.severity == Severity::Error).collect();
    let detail = match errors.as_slice() {
        [] => "invalid token file".to_owned(),
        [one] => format!("invalid token file: {one}"),
        many => format!("invalid token file: {} errors, first {}", many.len(), many[0]),
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

/// Splits a YAML stream into pieces that each hold whole documents, with the 0-based line each
/// piece starts at. A piece starts at a line beginning with the document marker `---` (followed
/// by white space or the end of the line). YAML 1.2 forbids such a line inside any document's
/// content (section 9.1.1, `c-forbidden`), so a cut never splits a node. Lines before a marker
/// that hold no content (comments, directives, blank lines) stay with the document they precede.
fn pieces(src: &str) -> Vec<(u64, &str)> {
    let mut out = Vec::new();
    let (mut start, mut start_line, mut has_content) = (0usize, 0u64, false);
    let mut offset = 0usize;
    for (n, line) in src.split_inclusive('\n').enumerate() {
        let n = n as u64;
        let marker = line.strip_prefix("---").filter(|r| r.is_empty() || r.starts_with([' ', '\t', '\r', '\n']));
        if let Some(rest) = marker {
            if has_content {
                out.push((start_line, &src[start..offset]));
                (start, start_line) = (offset, n);
            }
            let rest = rest.trim();
            has_content = !rest.is_empty() && !rest.starts_with('#');
        } else {
            let t = line.trim();
            if !(t.is_empty() || t.starts_with('#') || line.starts_with('%') || t == "...") {
                has_content = true;
            }
        }
        offset += line.len();
    }
    if start < src.len() {
        out.push((start_line, &src[start..]));
    }
    out
}

/// Collects diagnostics while a file loads.
#[derive(Default)]
struct Loader {
    problems: Vec<Problem>,
    tokens: HashMap<String, Arc<Token>>,
    order: Vec<String>,
    unusable: HashMap<String, Unusable>,
    /// Where each name was first seen, for duplicates.
    seen: HashMap<String, Loc>,
    unnamed_failures: usize,
    documents: usize,
}

/// What a token document turned out to be.
enum Outcome {
    Iam(Box<Token>),
    Other(String),
    Invalid,
}

impl Loader {
    fn run(mut self, src: &str) -> TokenSet {
        if src.len() > MAX_TOKEN_FILE_BYTES {
            self.file_error(format!("token file is larger than {MAX_TOKEN_FILE_BYTES} bytes"));
        } else {
            for (line_offset, piece) in pieces(src) {
                if !self.piece(line_offset, piece) {
                    break;
                }
            }
            if self.documents == 0 && self.problems.is_empty() {
                self.file_error("the file holds no token".to_owned());
            }
        }
        TokenSet {
            tokens: Arc::new(self.tokens),
            order: Arc::new(self.order),
            unusable: Arc::new(self.unusable),
            unnamed_failures: self.unnamed_failures,
            diagnostics: Arc::new(self.problems),
            digest: sha2::Sha256::digest(src.as_bytes()).into(),
        }
    }

    fn file_error(&mut self, message: String) {
        self.problems.push(Problem::new(Severity::Error, 0, 0, message));
    }

    /// Loads the documents of one piece; `false` when the file must stop here.
    fn piece(&mut self, line_offset: u64, piece: &str) -> bool {
        // Tags: tctl never writes one, and an unknown tag is otherwise dropped silently.
        let options = serde_saphyr::options! {
            budget: serde_saphyr::budget! { max_documents: MAX_TOKENS_PER_FILE },
            reject_unsupported_tags: true,
        };
        let docs: Vec<Spanned<RawToken>> = match serde_saphyr::from_multiple_with_options(piece, options) {
            Ok(docs) => docs,
            Err(e) => {
                let (line, column) = e.location().map_or((0, 0), |l| (l.line() + line_offset, l.column()));
                let name = name_of(piece);
                let mut p = Problem::new(Severity::Error, line, column, yaml_message(&e));
                p.token.clone_from(&name);
                let first = p.to_string();
                self.problems.push(p);
                match name {
                    Some(n) => self.reject(n, (line, column), first),
                    None => self.unnamed_failures += 1,
                }
                return true;
            }
        };
        for doc in docs {
            self.documents += 1;
            if self.documents > MAX_TOKENS_PER_FILE {
                self.file_error(format!("the file holds more than {MAX_TOKENS_PER_FILE} tokens; the rest is not read"));
                return false;
            }
            let doc_at = at(&doc);
            let doc = doc.value;
            let named = doc.metadata.as_ref().and_then(|m| m.value.name.as_ref());
            let Some((name, (line, column))) = named.map(|n| (n.value.clone(), at(n))) else {
                // Nothing to file its problems under: reported, and counted as unreadable.
                let before = self.problems.len();
                doc.validate("", doc_at, &mut Diags { out: &mut self.problems, line_offset, token: "", errors: 0 });
                self.problems[before..].sort_by_key(|p| (p.line, p.column));
                for p in &mut self.problems[before..] {
                    p.token = None;
                }
                self.unnamed_failures += 1;
                continue;
            };
            let name_at = (line + line_offset, column);
            let before = self.problems.len();
            let outcome = doc.validate(
                &name,
                doc_at,
                &mut Diags { out: &mut self.problems, line_offset, token: &name, errors: 0 },
            );
            // One token's problems in file order, whichever check found them.
            self.problems[before..].sort_by_key(|p| (p.line, p.column));
            let first_error =
                self.problems[before..].iter().find(|p| p.severity == Severity::Error).map(|p| p.to_string());
            if let Some(&(l, c)) = self.seen.get(&name) {
                let mut p = Problem::new(
                    Severity::Error,
                    name_at.0,
                    name_at.1,
                    format!("duplicate token name {:?} (first at {l}:{c}); neither is used", name),
                );
                p.token = Some(name.clone());
                let first = p.to_string();
                self.problems.push(p);
                self.reject(name, name_at, first);
                continue;
            }
            self.seen.insert(name.clone(), name_at);
            match outcome {
                Outcome::Iam(token) => {
                    self.order.push(name.clone());
                    self.tokens.insert(name, Arc::from(token));
                }
                Outcome::Other(method) => {
                    self.unusable.insert(name, Unusable::OtherJoinMethod(method));
                }
                Outcome::Invalid => {
                    let first = first_error.unwrap_or_else(|| "invalid".to_owned());
                    self.unusable.insert(name, Unusable::Invalid(first));
                }
            }
        }
        true
    }

    /// Takes `name` out of the usable set (a duplicate, or a document that failed to parse).
    fn reject(&mut self, name: String, at: Loc, first: String) {
        if self.tokens.remove(&name).is_some() {
            self.order.retain(|n| n != &name);
        }
        self.seen.entry(name.clone()).or_insert(at);
        self.unusable.insert(name, Unusable::Invalid(first));
    }
}

/// The `metadata.name` of a document that failed to load, read leniently (unknown keys ignored),
/// so that a refusal can still name the token. `None` when even that fails.
fn name_of(piece: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Doc {
        metadata: Meta,
    }
    #[derive(Deserialize)]
    struct Meta {
        name: String,
    }
    let docs: Vec<Doc> = serde_saphyr::from_multiple(piece).ok()?;
    match docs.as_slice() {
        [one] => Some(one.metadata.name.clone()),
        _ => None,
    }
}

/// Diagnostics for one token document, with its lines shifted to the file's.
struct Diags<'a> {
    out: &'a mut Vec<Problem>,
    line_offset: u64,
    token: &'a str,
    errors: usize,
}

impl Diags<'_> {
    fn push(&mut self, severity: Severity, loc: Loc, message: String) {
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
    ($(#[$meta:meta])* struct $name:ident { $($(#[$fmeta:meta])* $field:ident: $ty:ty => $key:literal),* $(,)? }) => {
        $(#[$meta])*
        struct $name {
            $($(#[$fmeta])* $field: $ty,)*
            /// Keys the schema does not know, with where they are.
            unknown: Vec<(String, Loc)>,
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
    struct RawToken {
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
    struct RawMetadata {
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
    struct RawSpec {
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
    struct RawRule {
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
    struct RawOus {
        include: Option<Spanned<Vec<Spanned<String>>>> => "include",
        exclude: Option<Vec<Spanned<String>>> => "exclude",
    }
}

// ---- validation ---------------------------------------------------------------------------------

impl RawToken {
    /// Every problem of one token document, reported together: `name` is its `metadata.name`,
    /// `doc_at` where the document starts (for what it lacks).
    fn validate(self, name: &str, doc_at: Loc, d: &mut Diags<'_>) -> Outcome {
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
            return Outcome::Other(method);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn starts(src: &str) -> Vec<u64> {
        pieces(src).into_iter().map(|(line, _)| line).collect()
    }

    #[test]
    fn pieces_start_at_document_markers_only() {
        assert_eq!(starts("a: 1\n---\nb: 2\n--- \nc: 3\n"), [0, 1, 3]);
        // Not markers: indented, followed by text, or inside a line.
        assert_eq!(starts("a: 1\n ---\nb: ---\n---x: 2\n"), [0]);
        // A leading marker, comments and directives stay with the document they precede.
        assert_eq!(starts("# tokens\n%YAML 1.2\n---\na: 1\n"), [0]);
        assert_eq!(starts("a: 1\n# next\n---\nb: 2\n"), [0, 2]);
        // An end marker does not cut; the next start marker does.
        assert_eq!(starts("a: 1\n...\n---\nb: 2\n"), [0, 2]);
        assert_eq!(starts(""), Vec::<u64>::new());
        // Every byte lands in exactly one piece.
        let src = "a: 1\n---\nb: 2\n---\n";
        assert_eq!(pieces(src).iter().map(|(_, p)| *p).collect::<String>(), src);
    }

    #[test]
    fn a_broken_document_is_named_when_its_name_can_be_read() {
        let set = TokenSet::load("kind: token\nversion: v2\nmetadata: {name: n}\nspec: {roles: [Node], extra: 1}\n");
        assert_eq!(set.diagnostics()[0].token.as_deref(), Some("n"));
        assert!(set.lookup("n").unwrap_err().detail().starts_with("token \"n\" is invalid: "));
    }
}
