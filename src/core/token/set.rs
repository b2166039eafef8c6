//! [`TokenSet`]: every usable iam token of a file, by name, and every diagnostic of it.

use std::collections::HashMap;
use std::sync::Arc;

use crate::core::error::{Error, ErrorKind, Problem, Severity};
use crate::core::token::Token;
use crate::core::token::join_method::JoinMethod;

/// Why a token named in the file is not in the usable iam set.
#[derive(Clone, Debug)]
pub(crate) enum Unusable {
    /// A token of another join method (`token`, `ec2`, `kubernetes`, ...): not ours to verify.
    OtherJoinMethod(JoinMethod),
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
    pub(crate) tokens: Arc<HashMap<String, Arc<Token>>>,
    pub(crate) order: Arc<Vec<String>>,
    pub(crate) unusable: Arc<HashMap<String, Unusable>>,
    /// Documents whose name could not be read at all.
    pub(crate) unnamed_failures: usize,
    pub(crate) diagnostics: Arc<Vec<Problem>>,
    /// The SHA-256 of the text the set was loaded from.
    pub(crate) digest: [u8; 32],
}

impl TokenSet {
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
                format!("token {shown} uses join_method {:?}, not \"iam\"", m.as_str())
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

    /// The join method of the token named `name`: [`JoinMethod::Iam`] for a usable iam token,
    /// the method of a token of another join method, or `None` for a name the file does not
    /// hold or a token with errors.
    pub fn join_method(&self, name: &str) -> Option<JoinMethod> {
        if self.tokens.contains_key(name) {
            return Some(JoinMethod::Iam);
        }
        match self.unusable.get(name) {
            Some(Unusable::OtherJoinMethod(m)) => Some(m.clone()),
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
