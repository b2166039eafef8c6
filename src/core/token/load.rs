//! Loading a token file: its documents one at a time, each token checked on its own, so one bad
//! token never disables another; [`TokenSet::load`] and [`TokenSet::from_yaml`].

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;
use serde_saphyr::Spanned;
use sha2::Digest as _;

use crate::core::error::{Error, ErrorKind, Problem, Severity};
use crate::core::token::schema::{Diags, Loc, Outcome, RawToken, at};
use crate::core::token::set::{TokenSet, Unusable};
use crate::core::token::{MAX_TOKEN_FILE_BYTES, MAX_TOKENS_PER_FILE, Token};

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
    /// use iam_join::{ErrorKind, JoinMethod, Severity, TokenSet};
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
    /// assert_eq!((set.join_method("good"), set.join_method("static"), set.join_method("broken")), (Some(JoinMethod::Iam), Some(JoinMethod::Token), None));
    /// let first = &set.diagnostics()[0];
    /// assert_eq!((first.line, first.severity), (10, Severity::Error));
    /// ```
    pub fn load(src: &str) -> Self {
        Loader::default().run(src)
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
