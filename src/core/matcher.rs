//! Allow rules compiled into a matcher, and `explain`.
//!
//! Semantics are Teleport's, exactly: a token's rules are ORed, the fields of one rule are ANDed,
//! unset fields are skipped; `aws_account` is exact equality; `aws_arn` is a case-sensitive glob
//! anchored at both ends in which only `*` (any run of characters, `/` and `:` included, possibly
//! empty) and `?` (exactly one character) are special. The lowest-index matching rule wins.
//!
//! Speed: each ARN pattern is split into its literal head (everything before the first wildcard)
//! and the rest. The head is indexed at its last `:` or `/` (the "cut") and by the partial
//! segment after it, so a lookup walks only the cuts the identity's ARN actually has and the
//! partial lengths that exist there: a handful of hash probes whatever the rule count. Exact
//! patterns and `head*` patterns are decided by the index alone; any other remainder is checked by
//! a [`globset::GlobSet`] holding just the rules that share that head.

use std::collections::HashMap;
use std::fmt;

use foldhash::fast::RandomState;
use globset::{Candidate, GlobBuilder, GlobSet, GlobSetBuilder};

use crate::core::arn::{AccountId, Arn, Partition, Principal, Service};
use crate::core::error::{Error, ErrorKind};
use crate::core::rule::Rule;

type Map<K, V> = HashMap<K, V, RandomState>;

/// Rules compiled once for fast matching. Immutable, `Send + Sync`, cheap to query concurrently.
///
/// An empty matcher matches nothing.
#[derive(Debug)]
pub struct RuleMatcher {
    rules: Vec<Rule>,
    /// Lowest-index rule with an `aws_account` and no `aws_arn`, per account.
    account_only: Map<AccountId, usize>,
    /// Patterns `arn:P:S::ACCOUNT:REST` with the first five fields literal: an index over the
    /// resource, per partition, service and account. Almost every real pattern lands here.
    by_account: Map<(Partition, Service, AccountId), Index>,
    /// Patterns `arn:P:S::*:REST` (any account): an index over the resource, per partition and
    /// service.
    any_account: Map<(Partition, Service), Index>,
    /// The same any-account patterns whole, for the rare ARN whose resource holds a `:` (an IAM
    /// path may), where `*` could span past the account and the per-resource index is not exact.
    any_account_whole: Option<(GlobSet, Vec<RuleRef>)>,
    /// Every other pattern (wildcards in the partition, service or account field, or patterns
    /// that are not principal-shaped): an index over the whole ARN.
    other: Index,
    /// Organization rules (few per token): index and a matcher for the ARN pattern, if any.
    organization: Vec<(usize, Option<globset::GlobMatcher>)>,
}

/// Where a pattern goes, from its first five fields.
enum Shape<'a> {
    ByAccount(Partition, Service, AccountId, &'a str),
    AnyAccount(Partition, Service, &'a str),
    /// Literal fields no principal ARN has: the pattern can never match.
    Never,
    Other,
}

fn shape(pattern: &str) -> Shape<'_> {
    let mut it = pattern.splitn(6, ':');
    let (Some(arn), Some(p), Some(s), Some(region), Some(account), Some(rest)) =
        (it.next(), it.next(), it.next(), it.next(), it.next(), it.next())
    else {
        return Shape::Other;
    };
    let wild = |f: &str| f.contains(['*', '?']);
    if wild(arn) || wild(p) || wild(s) || wild(region) {
        return Shape::Other;
    }
    let (Some(partition), Some(service), "arn", "") = (Partition::from_name(p), Service::from_name(s), arn, region)
    else {
        return Shape::Never;
    };
    if account == "*" {
        return Shape::AnyAccount(partition, service, rest);
    }
    if wild(account) {
        return Shape::Other;
    }
    match AccountId::parse(account) {
        Some(a) => Shape::ByAccount(partition, service, a, rest),
        None => Shape::Never,
    }
}

/// Literal-head index over patterns. See the module docs.
#[derive(Debug, Default)]
struct Index {
    /// Groups by the cut of their literal head.
    cuts: Map<Box<str>, Group>,
    /// The distinct cut lengths, ascending: only these positions of an ARN need a probe.
    cut_lens: Vec<usize>,
}

#[derive(Default)]
struct IndexBuilder {
    cuts: Map<String, Map<String, LeafBuilder>>,
}

impl IndexBuilder {
    fn add(&mut self, pattern: &str, r: RuleRef) {
        let (cut, partial, rest) = split_pattern(pattern);
        let leaf = self.cuts.entry(cut.to_owned()).or_default().entry(partial.to_owned()).or_default();
        match to_glob(rest).as_str() {
            "" => leaf.exact.push(r),
            "*" => leaf.head_star.push(r),
            glob => leaf.globs.push((glob.to_owned(), r)),
        }
    }

    fn build(self) -> Result<Index, Error> {
        let mut index = Index::default();
        for (cut, partials) in self.cuts {
            index.cut_lens.push(cut.len());
            let mut group = Group::default();
            for (partial, b) in partials {
                group.partial_lens.push(partial.len());
                group.partials.insert(partial.into(), build_leaf(b)?);
            }
            group.partial_lens.sort_unstable();
            group.partial_lens.dedup();
            index.cuts.insert(cut.into(), group);
        }
        index.cut_lens.sort_unstable();
        index.cut_lens.dedup();
        Ok(index)
    }
}

impl Index {
    /// Offers to `goal` every rule whose pattern matches `arn`.
    fn search(&self, arn: &str, goal: &mut Goal<'_>) {
        let bytes = arn.as_bytes();
        for &len in &self.cut_lens {
            // A cut ends at a boundary (or is empty, for patterns with no literal boundary).
            match len.checked_sub(1).map(|i| bytes.get(i)) {
                Some(None) => break,
                Some(Some(&b)) if !is_boundary(b) => continue,
                _ => {}
            }
            if let Some(group) = self.cuts.get(&arn[..len]) {
                group.search(&arn[len..], goal);
            }
        }
    }
}

/// A rule as the index stores it: its index and the account it also requires.
#[derive(Clone, Copy, Debug)]
struct RuleRef {
    index: usize,
    account: Option<AccountId>,
}

impl RuleRef {
    fn account_ok(&self, account: &AccountId) -> bool {
        self.account.as_ref().is_none_or(|a| a == account)
    }
}

#[derive(Debug, Default)]
struct Group {
    /// By the partial segment between the cut and the first wildcard.
    partials: Map<Box<str>, Leaf>,
    /// The distinct lengths of those partials, ascending.
    partial_lens: Vec<usize>,
}

/// The rules that share one literal head.
#[derive(Debug, Default)]
struct Leaf {
    /// The lowest rule index in this leaf, to skip it when a better match is known.
    min_index: usize,
    /// Patterns that are the head and nothing more (no wildcard).
    exact: Vec<RuleRef>,
    /// Patterns that are the head followed by `*`.
    head_star: Vec<RuleRef>,
    /// Every other remainder, as globs over the text after the head.
    globs: Option<(GlobSet, Vec<RuleRef>)>,
}

#[derive(Default)]
struct LeafBuilder {
    exact: Vec<RuleRef>,
    head_star: Vec<RuleRef>,
    globs: Vec<(String, RuleRef)>,
}

/// What a search is for: the first rule whose every field matches, or every rule whose ARN
/// pattern matches (for `explain`).
enum Goal<'a> {
    First { account: &'a AccountId, best: Option<usize> },
    AllArnMatches(&'a mut [bool]),
}

impl Goal<'_> {
    fn wants(&self, leaf_min: usize) -> bool {
        match self {
            Goal::First { best, .. } => best.is_none_or(|b| leaf_min < b),
            Goal::AllArnMatches(_) => true,
        }
    }

    fn offer(&mut self, r: &RuleRef) {
        match self {
            Goal::First { account, best } => {
                if r.account_ok(account) && best.is_none_or(|b| r.index < b) {
                    *best = Some(r.index);
                }
            }
            Goal::AllArnMatches(hits) => hits[r.index] = true,
        }
    }
}

fn is_boundary(b: u8) -> bool {
    b == b':' || b == b'/'
}

/// Splits a pattern into (cut, partial, rest): `cut` is the literal head up to and including its
/// last `:` or `/`, `partial` the literal text after it up to the first wildcard, `rest` the
/// remainder (empty for an exact pattern, otherwise starting with a wildcard).
fn split_pattern(pattern: &str) -> (&str, &str, &str) {
    let head_len = pattern.find(['*', '?']).unwrap_or(pattern.len());
    let head = &pattern[..head_len];
    let cut_len = head.bytes().rposition(is_boundary).map_or(0, |i| i + 1);
    (&pattern[..cut_len], &pattern[cut_len..head_len], &pattern[head_len..])
}

impl Leaf {
    fn search(&self, rest: &str, goal: &mut Goal<'_>) {
        if !goal.wants(self.min_index) {
            return;
        }
        if rest.is_empty() {
            self.exact.iter().for_each(|r| goal.offer(r));
        }
        self.head_star.iter().for_each(|r| goal.offer(r));
        if let Some((set, refs)) = &self.globs {
            let candidate = Candidate::new(rest);
            for g in set.matches_candidate(&candidate) {
                goal.offer(&refs[g]);
            }
        }
    }
}

impl Group {
    fn search(&self, after_cut: &str, goal: &mut Goal<'_>) {
        for &len in &self.partial_lens {
            let Some(partial) = after_cut.get(..len) else { break };
            if let Some(leaf) = self.partials.get(partial) {
                leaf.search(&after_cut[len..], goal);
            }
        }
    }
}

/// Turns a Teleport ARN pattern into a globset glob with the same meaning: `[ ] { } \` are
/// escaped so they stay literal, and runs of `*` collapse into one (globset gives `**` a
/// path-segment meaning that Teleport's `.*` does not have; `.*.*` and `.*` are equal).
///
/// One more rewrite keeps globset's path shortcuts from deciding: a glob whose literal tail
/// (after its last wildcard) holds a `.` with no `/` after it would get the `Extension` or
/// `RequiredExtension` strategy, which compares the candidate's file extension, and globset
/// finds no file name, so no extension, in a last segment of exactly `..`. So `*.` would not
/// match `r/..`, where Teleport's `.*\.` does. Writing that `.` as the class `[.]` (the same
/// single character) turns both shortcuts off. Globs with a literal head and a trailing `*`
/// (`Prefix`), literal globs and `*literal` globs without such a dot keep their shortcuts, which
/// compare bytes and agree with Teleport. No glob here can start with `**/`, so the basename
/// strategies never apply.
fn to_glob(pattern: &str) -> String {
    let tail_start = pattern.rfind(['*', '?']).map_or(0, |i| i + 1);
    let tail = &pattern[tail_start..];
    let dot = tail.rfind('.').filter(|&d| !tail[d..].contains('/')).map(|d| tail_start + d);
    let mut out = String::with_capacity(pattern.len() + 8);
    let mut prev_star = false;
    for (i, c) in pattern.char_indices() {
        match c {
            '*' if prev_star => continue,
            '.' if Some(i) == dot && tail_start > 0 => out.push_str("[.]"),
            '[' | ']' | '{' | '}' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            _ => out.push(c),
        }
        prev_star = c == '*';
    }
    out
}

/// What rules are matched against: an account and an ARN, in one value. A verified identity
/// gives one ([`From<&CallerIdentity>`](crate::CallerIdentity)); so can any pair, to explain.
/// The ARN must belong to the account (STS never says otherwise, and the response parser refuses
/// it); an inconsistent pair matches nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subject<'a> {
    account: &'a AccountId,
    arn: &'a Arn,
    /// `arn` is an IAM role, and the subject is every session of it (what a web identity token
    /// proves): a rule matches only when it admits every session STS could name.
    every_session: bool,
}

impl<'a> Subject<'a> {
    /// The subject `arn` in `account`, matched as GetCallerIdentity's answer is: literally.
    pub fn new(account: &'a AccountId, arn: &'a Arn) -> Self {
        Self { account, arn, every_session: false }
    }

    /// Every session of the IAM role `role_arn` in `account`: what a web identity token proves
    /// (it names the role, not a session). A rule matches it only when it admits
    /// `arn:P:sts::ACCOUNT:assumed-role/NAME/SESSION` for every session name STS allows (2 to 64
    /// of `[A-Za-z0-9_+=,.@-]`): `…:assumed-role/NAME/*`, an account-only rule and `*` do;
    /// `…:assumed-role/NAME/i-*` does not. `None` when `role_arn` is not an IAM role.
    ///
    /// ```
    /// use iam_join::{AccountId, Arn, Rule, RuleMatcher, Subject};
    /// let m = RuleMatcher::compile(vec![
    ///     Rule::new(None, Some("arn:aws:sts::222222222222:assumed-role/node/i-*")).unwrap(),
    ///     Rule::new(None, Some("arn:aws:sts::222222222222:assumed-role/node/*")).unwrap(),
    /// ]).unwrap();
    /// let acct = AccountId::parse("222222222222").unwrap();
    /// let role = Arn::parse("arn:aws:iam::222222222222:role/teams/node").unwrap();
    /// assert_eq!(m.first_match(Subject::every_session_of(&acct, &role).unwrap()), Some(1));
    /// ```
    pub fn every_session_of(account: &'a AccountId, role_arn: &'a Arn) -> Option<Self> {
        matches!(role_arn.principal(), Principal::Role { .. }).then_some(Self {
            account,
            arn: role_arn,
            every_session: true,
        })
    }

    /// Whether this is every session of a role ([`Subject::every_session_of`]).
    pub fn is_every_session(&self) -> bool {
        self.every_session
    }

    /// `arn:P:sts::ACCOUNT:assumed-role/NAME/`: what every session ARN of the role starts with.
    fn session_prefix(&self) -> Option<String> {
        match self.arn.principal() {
            Principal::Role { name, .. } if self.every_session => {
                Some(format!("arn:{}:sts::{}:assumed-role/{name}/", self.arn.partition(), self.arn.account()))
            }
            _ => None,
        }
    }
}

impl<'a> From<&'a crate::core::identity::CallerIdentity> for Subject<'a> {
    fn from(id: &'a crate::core::identity::CallerIdentity) -> Self {
        Self { account: id.account(), arn: id.arn(), every_session: id.is_every_session_of_role() }
    }
}

/// The characters of a role session name, and its lengths (STS `RoleSessionName`:
/// `[\w+=,.@-]*`, 2 to 64 characters; AWS STS API reference, AssumeRole).
const SESSION_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_+=,.@-";
const SESSION_LENS: std::ops::RangeInclusive<usize> = 2..=64;
/// A session name every universal pattern matches: a necessary condition, checked by the index.
const WITNESS_SESSION: &str = "================================================================";
/// The most distinct automaton states the universality check explores before it gives up (and
/// refuses: a rule is never taken to admit what was not shown).
const MAX_SESSION_STATES: usize = 256;

/// How much of the role's sessions a pattern admits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Coverage {
    /// Every session name.
    All,
    /// Some, not all (or too complex to decide: never taken as all).
    Some,
    /// None.
    None,
}

/// Whether `pattern` (Teleport glob: `*` any run, `?` one character) matches `prefix` followed
/// by every session name, some, or none. Exact: it walks the pattern's automaton over the
/// prefix, then over every session length, one representative per class of characters (each
/// the pattern names, and one it does not: those behave alike), and asks whether the states
/// reached at each length accept.
fn session_coverage(pattern: &str, prefix: &str) -> Coverage {
    let p = pattern.as_bytes();
    let n = p.len();
    // A state: which pattern positions are live (position n = the whole pattern matched).
    let close = |set: &mut Vec<bool>| {
        for i in 0..n {
            if set[i] && p[i] == b'*' {
                set[i + 1] = true;
            }
        }
    };
    let step = |set: &[bool], c: u8| -> Vec<bool> {
        let mut next = vec![false; n + 1];
        for i in 0..n {
            if set[i] {
                match p[i] {
                    b'*' => next[i] = true,
                    b'?' => next[i + 1] = true,
                    q if q == c => next[i + 1] = true,
                    _ => {}
                }
            }
        }
        close(&mut next);
        next
    };
    let mut start = vec![false; n + 1];
    start[0] = true;
    close(&mut start);
    for &c in prefix.as_bytes() {
        start = step(&start, c);
        if !start.contains(&true) {
            return Coverage::None;
        }
    }
    // The common case, decided at once: a live position after which only `*` remains.
    if (0..=n).any(|i| start[i] && p[i..].iter().all(|&b| b == b'*')) {
        return Coverage::All;
    }
    let mut symbols: Vec<u8> = SESSION_CHARS.iter().copied().filter(|c| p.contains(c)).collect();
    symbols.extend(SESSION_CHARS.iter().copied().find(|c| !p.contains(c)));
    let (mut all, mut some) = (true, false);
    let mut level = std::collections::BTreeSet::from([start]);
    for len in 1..=*SESSION_LENS.end() {
        let next: std::collections::BTreeSet<Vec<bool>> = level
            .iter()
            .flat_map(|st| symbols.iter().map(|&c| step(st, c)))
            .filter(|st| st.contains(&true) || all)
            .collect();
        if next.len() > MAX_SESSION_STATES {
            return if some { Coverage::Some } else { Coverage::None };
        }
        if len >= *SESSION_LENS.start() {
            all &= next.iter().all(|st| st[n]);
            some |= next.iter().any(|st| st[n]);
        }
        if (next == level && len > *SESSION_LENS.start()) || next.is_empty() {
            break; // a fixed point: every longer length reaches the same states
        }
        level = next;
    }
    match (all, some) {
        (true, _) => Coverage::All,
        (false, true) => Coverage::Some,
        (false, false) => Coverage::None,
    }
}

impl RuleMatcher {
    /// Compiles rules once. Organization rules (`aws_organization_id`) are kept for `explain`
    /// and [`RuleMatcher::organization_rules`] but never matched by [`RuleMatcher::first_match`].
    pub fn compile(rules: Vec<Rule>) -> Result<Self, Error> {
        let mut account_only: Map<AccountId, usize> = Map::default();
        let mut by_account: Map<(Partition, Service, AccountId), IndexBuilder> = Map::default();
        let mut any_account: Map<(Partition, Service), IndexBuilder> = Map::default();
        let mut whole = Vec::new();
        let mut other = IndexBuilder::default();
        let mut organization = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            if rule.needs_organization() {
                let glob = match rule.aws_arn.as_deref() {
                    Some(p) => Some(glob_builder(&to_glob(p), i)?.compile_matcher()),
                    None => None,
                };
                organization.push((i, glob));
                continue;
            }
            let r = RuleRef { index: i, account: rule.aws_account };
            let Some(pattern) = rule.aws_arn.as_deref() else {
                if let Some(a) = rule.aws_account {
                    account_only.entry(a).or_insert(i);
                }
                continue;
            };
            match shape(pattern) {
                Shape::ByAccount(p, s, a, rest) => by_account.entry((p, s, a)).or_default().add(rest, r),
                Shape::AnyAccount(p, s, rest) => {
                    any_account.entry((p, s)).or_default().add(rest, r);
                    whole.push((to_glob(pattern), r));
                }
                Shape::Never => {}
                Shape::Other => other.add(pattern, r),
            }
        }
        Ok(Self {
            rules,
            account_only,
            by_account: by_account.into_iter().map(|(k, b)| Ok((k, b.build()?))).collect::<Result<_, Error>>()?,
            any_account: any_account.into_iter().map(|(k, b)| Ok((k, b.build()?))).collect::<Result<_, Error>>()?,
            any_account_whole: if whole.is_empty() { None } else { Some(build_globs(whole)?) },
            other: other.build()?,
            organization,
        })
    }

    /// Organization rules, lowest index first, whose account and ARN fields match the identity:
    /// each still needs an AWS Organizations lookup to decide. Empty when the token has none.
    pub fn organization_candidates(&self, subject: Subject<'_>) -> Vec<usize> {
        let Subject { account, arn, .. } = subject;
        if arn.account() != account {
            return Vec::new();
        }
        let prefix = subject.session_prefix();
        self.organization
            .iter()
            .filter(|(i, glob)| {
                let arn_ok = match (glob, &prefix, self.rules[*i].aws_arn.as_deref()) {
                    (None, _, _) => true,
                    (Some(_), Some(prefix), Some(pattern)) => session_coverage(pattern, prefix) == Coverage::All,
                    (Some(g), _, _) => g.is_match(arn.as_str()),
                };
                self.rules[*i].aws_account.is_none_or(|a| &a == account) && arn_ok
            })
            .map(|(i, _)| *i)
            .collect()
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Indices of the rules that need an AWS Organizations lookup.
    pub fn organization_rules(&self) -> impl Iterator<Item = usize> + '_ {
        self.rules.iter().enumerate().filter(|(_, r)| r.needs_organization()).map(|(i, _)| i)
    }

    /// Offers to `goal` every pattern rule whose pattern matches `arn`.
    fn search(&self, arn: &Arn, goal: &mut Goal<'_>) {
        let resource = arn.resource();
        if let Some(index) = self.by_account.get(&(arn.partition(), arn.service(), *arn.account())) {
            index.search(resource, goal);
        }
        if let Some((set, refs)) = &self.any_account_whole {
            if arn.resource_has_colon() {
                for g in set.matches(arn.as_str()) {
                    goal.offer(&refs[g]);
                }
            } else if let Some(index) = self.any_account.get(&(arn.partition(), arn.service())) {
                index.search(resource, goal);
            }
        }
        self.other.search(arn.as_str(), goal);
    }

    /// The index of the first rule the identity matches, if any.
    ///
    /// An inconsistent subject (an ARN of another account) matches nothing.
    ///
    /// ```
    /// use iam_join::{AccountId, Arn, Rule, RuleMatcher, Subject};
    /// let m = RuleMatcher::compile(vec![
    ///     Rule::new(Some("111111111111"), None).unwrap(),
    ///     Rule::new(None, Some("arn:aws:sts::222222222222:assumed-role/node/i-*")).unwrap(),
    /// ]).unwrap();
    /// let acct = AccountId::parse("222222222222").unwrap();
    /// let arn = Arn::parse("arn:aws:sts::222222222222:assumed-role/node/i-0abc").unwrap();
    /// assert_eq!(m.first_match(Subject::new(&acct, &arn)), Some(1));
    /// ```
    pub fn first_match(&self, subject: Subject<'_>) -> Option<usize> {
        let Subject { account, arn, .. } = subject;
        if arn.account() != account {
            return None;
        }
        if let Some(prefix) = subject.session_prefix() {
            return self.first_every_session(account, &prefix);
        }
        let mut goal = Goal::First { account, best: self.account_only.get(account).copied() };
        self.search(arn, &mut goal);
        match goal {
            Goal::First { best, .. } => best,
            Goal::AllArnMatches(_) => None,
        }
    }

    /// The first rule that admits every session under `prefix`: an account-only rule, or a
    /// pattern rule whose pattern matches a witness session (the index finds those) and, checked
    /// exactly, every other.
    fn first_every_session(&self, account: &AccountId, prefix: &str) -> Option<usize> {
        let by_account = self.account_only.get(account).copied();
        let Ok(witness) = Arn::parse(&format!("{prefix}{WITNESS_SESSION}")) else { return by_account };
        let mut hits = vec![false; self.rules.len()];
        self.search(&witness, &mut Goal::AllArnMatches(&mut hits));
        let by_pattern = hits.iter().enumerate().filter(|&(_, &hit)| hit).map(|(i, _)| i).find(|&i| {
            let rule = &self.rules[i];
            rule.aws_account.is_none_or(|a| &a == account)
                && rule.aws_arn.as_deref().is_some_and(|p| session_coverage(p, prefix) == Coverage::All)
        });
        match (by_account, by_pattern) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Says, rule by rule, why the identity does or does not match. Organization rules are
    /// reported as not evaluated; see [`RuleMatcher::explain_with`].
    pub fn explain(&self, subject: Subject<'_>) -> Explanation {
        self.explain_with(subject, None)
    }

    /// Like [`RuleMatcher::explain`], judging organization rules against `membership` when given.
    pub fn explain_with(
        &self,
        subject: Subject<'_>,
        membership: Option<&crate::core::membership::Membership>,
    ) -> Explanation {
        let Subject { account, arn, .. } = subject;
        let prefix = subject.session_prefix();
        let mut arn_ok = vec![false; self.rules.len()];
        // For every session of a role: how much of them each pattern admits.
        let mut coverage = vec![Coverage::None; self.rules.len()];
        if let Some(prefix) = &prefix {
            for (i, rule) in self.rules.iter().enumerate() {
                if let Some(p) = rule.aws_arn.as_deref() {
                    coverage[i] = session_coverage(p, prefix);
                    arn_ok[i] = coverage[i] == Coverage::All;
                }
            }
        } else {
            self.search(arn, &mut Goal::AllArnMatches(&mut arn_ok));
            // Organization rules are not in the index; their patterns have their own matchers.
            for (i, glob) in &self.organization {
                arn_ok[*i] = glob.as_ref().is_some_and(|g| g.is_match(arn.as_str()));
            }
        }
        let consistent = arn.account() == account;
        let rules = self
            .rules
            .iter()
            .enumerate()
            .map(|(index, rule)| {
                let account_check = match &rule.aws_account {
                    None => Check::NotSet,
                    Some(a) if a == account => Check::Matched,
                    Some(_) => Check::Differs,
                };
                let arn_check = match &rule.aws_arn {
                    None => Check::NotSet,
                    Some(_) if arn_ok[index] => Check::Matched,
                    Some(_) if coverage[index] == Coverage::Some => Check::SomeSessions,
                    Some(_) => Check::Differs,
                };
                let organization = match (rule.needs_organization(), membership) {
                    (false, _) => Check::NotSet,
                    (true, None) => Check::NotEvaluated,
                    (true, Some(m)) if m.admits(rule) => Check::Matched,
                    (true, Some(_)) => Check::Differs,
                };
                let matched = consistent
                    && matches!(organization, Check::NotSet | Check::Matched)
                    && account_check != Check::Differs
                    && matches!(arn_check, Check::NotSet | Check::Matched);
                RuleOutcome { index, account: account_check, arn: arn_check, organization, matched }
            })
            .collect::<Vec<_>>();
        let matched = rules.iter().find(|r| r.matched).map(|r| r.index);
        Explanation { matched, rules }
    }
}

fn build_leaf(b: LeafBuilder) -> Result<Leaf, Error> {
    let min_index = b.exact.iter().chain(&b.head_star).chain(b.globs.iter().map(|(_, r)| r)).map(|r| r.index).min();
    let globs = if b.globs.is_empty() { None } else { Some(build_globs(b.globs)?) };
    Ok(Leaf { min_index: min_index.unwrap_or(usize::MAX), exact: b.exact, head_star: b.head_star, globs })
}

/// A globset glob with Teleport's semantics (see [`to_glob`]).
fn glob_builder(glob: &str, rule: usize) -> Result<globset::Glob, Error> {
    GlobBuilder::new(glob)
        .literal_separator(false)
        .backslash_escape(true)
        .case_insensitive(false)
        .build()
        .map_err(|e| Error::new(ErrorKind::TokenInvalid, format!("rule {rule}: aws_arn: {e}")))
}

/// One glob set over already-translated globs, with the rule of each.
fn build_globs(globs: Vec<(String, RuleRef)>) -> Result<(GlobSet, Vec<RuleRef>), Error> {
    let mut set = GlobSetBuilder::new();
    let mut refs = Vec::with_capacity(globs.len());
    for (glob, r) in globs {
        set.add(glob_builder(&glob, r.index)?);
        refs.push(r);
    }
    let set = set.build().map_err(|e| Error::new(ErrorKind::TokenInvalid, format!("compiling allow rules: {e}")))?;
    Ok((set, refs))
}

/// The result of one field of a rule against an identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// The rule does not set this field.
    NotSet,
    /// The field matches.
    Matched,
    /// The field does not match.
    Differs,
    /// The field needs an AWS Organizations lookup, which this evaluation did not make.
    NotEvaluated,
    /// For every session of a role (a web identity token): the ARN pattern admits some of the
    /// role's sessions, not all, so it cannot admit a proof of the role.
    SomeSessions,
}

impl Check {
    /// A short stable word: `not_set`, `matched`, `differs`, `not_evaluated`, `some_sessions`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::NotSet => "not_set",
            Self::Matched => "matched",
            Self::Differs => "differs",
            Self::NotEvaluated => "not_evaluated",
            Self::SomeSessions => "some_sessions",
        }
    }
}

/// How one rule fared.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RuleOutcome {
    /// The rule's index in the token.
    pub index: usize,
    /// `aws_account` against the identity's account.
    pub account: Check,
    /// `aws_arn` against the identity's ARN.
    pub arn: Check,
    /// The organization fields.
    pub organization: Check,
    /// Whether the rule as a whole matches.
    pub matched: bool,
}

/// Rule-by-rule reasons for an outcome, from [`RuleMatcher::explain`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Explanation {
    /// The first matching rule, if any: the one `first_match` reports.
    pub matched: Option<usize>,
    /// One outcome per rule, in order.
    pub rules: Vec<RuleOutcome>,
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for r in &self.rules {
            let why = if r.matched {
                "matched".to_owned()
            } else {
                let mut parts = Vec::new();
                if r.account == Check::Differs {
                    parts.push("account differs");
                }
                if r.arn == Check::Differs {
                    parts.push("ARN pattern differs");
                }
                if r.arn == Check::SomeSessions {
                    parts.push("ARN pattern admits only some sessions of the role (a web identity token proves the role, not a session)");
                }
                if r.organization == Check::NotEvaluated {
                    parts.push("organization not evaluated");
                }
                if r.organization == Check::Differs {
                    parts.push("organization or OU differs");
                }
                if parts.is_empty() {
                    parts.push("ARN account differs from the account");
                }
                parts.join(", ")
            };
            writeln!(f, "rule {}: {}", r.index, why)?;
        }
        match self.matched {
            Some(i) => write!(f, "allowed by rule {i}"),
            None => write!(f, "not allowed: no rule matched"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a rule; patterns that can never match are accepted (as lints), so matching
    /// semantics can be tested on every pattern.
    fn rule(account: Option<&str>, arn: Option<&str>) -> Rule {
        Rule::new(account, arn).unwrap()
    }

    fn first(rules: Vec<Rule>, arn: &str) -> Option<usize> {
        let m = RuleMatcher::compile(rules).unwrap();
        let arn = Arn::parse(arn).unwrap();
        let got = m.first_match(Subject::new(arn.account(), &arn));
        assert_eq!(got, m.explain(Subject::new(arn.account(), &arn)).matched, "explain disagrees for {arn}");
        got
    }

    /// One line per case: (aws_account, aws_arn) of a single rule, identity ARN, matches?
    macro_rules! matches {
        ($($name:ident: $acct:expr, $pat:expr, $arn:expr => $want:expr;)*) => {$(
            #[test]
            fn $name() {
                assert_eq!(first(vec![rule($acct, $pat)], $arn).is_some(), $want);
            }
        )*};
    }

    const USER: &str = "arn:aws:iam::123456789012:user/admins-123";

    matches! {
        account_only: Some("123456789012"), None, USER => true;
        wrong_account: Some("123456789013"), None, USER => false;
        wildcard_suffix: None, Some("arn:aws:iam::123456789012:user/admins-*"), USER => true;
        three_question_marks: None, Some("arn:aws:iam::123456789012:user/admins-???"), USER => true;
        three_question_marks_not_four: None, Some("arn:aws:iam::123456789012:user/admins-???"),
            "arn:aws:iam::123456789012:user/admins-1234" => false;
        exact_assumed_role: None, Some("arn:aws:sts::123456789012:assumed-role/my-super-test-role/my-session-name"),
            "arn:aws:sts::123456789012:assumed-role/my-super-test-role/my-session-name" => true;
        exact_is_exact: None, Some("arn:aws:sts::123456789012:assumed-role/my-super-test-role/my-session-name"),
            "arn:aws:sts::123456789012:assumed-role/my-super-test-role/my-session-name2" => false;
        star_in_role_name: None, Some("arn:aws:sts::123456789012:assumed-role/my-*-test-role/my-session-name"),
            "arn:aws:sts::123456789012:assumed-role/my-super-test-role/my-session-name" => true;
        star_in_role_and_session: None, Some("arn:aws:sts::123456789012:assumed-role/my-*-test-role/*"),
            "arn:aws:sts::123456789012:assumed-role/my-super-test-role/my-session-name" => true;
        no_session_part_no_match: None, Some("arn:aws:sts::123456789012:assumed-role/my-super-test-role"),
            "arn:aws:sts::123456789012:assumed-role/my-super-test-role/my-session-name" => false;
        wrong_arn: None, Some("arn:aws:iam::123456789012:user/admins-*"), "arn:aws:iam::123456789012:user/users-1" => false;
        account_and_arn_wrong_account: Some("123456789013"), Some("arn:aws:iam::*:user/admins-*"), USER => false;
        account_and_arn: Some("123456789012"), Some("arn:aws:iam::*:user/admins-*"), USER => true;
        star_spans_slash_and_colon: None, Some("arn:aws:*/admins-123"), USER => true;
        star_matches_empty: None, Some("arn:aws:iam::123456789012:user/admins-123*"), USER => true;
        question_is_one_char: None, Some("arn:aws:iam::123456789012:user/admins-12?"), USER => true;
        question_not_empty: None, Some("arn:aws:iam::123456789012:user/admins-123?"), USER => false;
        case_sensitive: None, Some("arn:aws:iam::123456789012:user/Admins-*"), USER => false;
        anchored_start: None, Some("arn:aws:iam::123456789012:user/dmins-*"), USER => false;
        double_star_is_star: None, Some("arn:aws:iam::**/admins-123"), USER => true;
        brackets_literal: None, Some("arn:aws:iam::123456789012:user/[a]*"), USER => false;
        braces_literal: None, Some("arn:aws:iam::123456789012:user/{admins,x}-12?"), USER => false;
        dot_literal: None, Some("arn:aws:iam::123456789012:user/admins.123"), USER => false;
        any_account_star: None, Some("arn:aws:iam::*:user/admins-*"), USER => true;
        any_account_star_other_partition: None, Some("arn:aws-cn:iam::*:user/admins-*"), USER => false;
        any_account_star_spans_path_colon: None, Some("arn:aws:iam::*:b/x"), "arn:aws:iam::123456789012:role/a:b/x" => true;
        any_account_star_path_colon_no_match: None, Some("arn:aws:iam::*:c/x"), "arn:aws:iam::123456789012:role/a:b/x" => false;
        any_partition_star: None, Some("arn:*:iam::123456789012:user/admins-123"), USER => true;
    }

    /// globset's extension shortcut finds no extension in a last segment of `..`, so before the
    /// `[.]` rewrite these patterns missed session names Teleport's regex matches.
    #[test]
    fn dot_only_session_names_match_like_teleport_regex() {
        let cases = [
            ("arn:aws:sts::123456789012:assumed-role/r/*.", "arn:aws:sts::123456789012:assumed-role/r/..", true),
            ("arn:aws:sts::123456789012:assumed-role/r/?.", "arn:aws:sts::123456789012:assumed-role/r/..", true),
            ("arn:aws:sts::123456789012:assumed-role/*.", "arn:aws:sts::123456789012:assumed-role/r/..", true),
            ("arn:aws:sts::*:assumed-role/r/*.", "arn:aws:sts::123456789012:assumed-role/r/..", true),
            ("arn:aws:sts::12345678901?:assumed-role/r/*.", "arn:aws:sts::123456789012:assumed-role/r/..", true),
            ("arn:aws:sts::123456789012:assumed-role/r/*..", "arn:aws:sts::123456789012:assumed-role/r/..", true),
            ("arn:aws:sts::123456789012:assumed-role/r/*.x", "arn:aws:sts::123456789012:assumed-role/r/..", false),
            ("arn:aws:sts::123456789012:assumed-role/r/*.", "arn:aws:sts::123456789012:assumed-role/r/.a", false),
        ];
        for (pattern, arn, want) in cases {
            assert_eq!(first(vec![rule(None, Some(pattern))], arn).is_some(), want, "{pattern} vs {arn}");
        }
    }

    #[test]
    fn to_glob_turns_off_only_the_extension_shortcuts() {
        assert_eq!(to_glob("a/*.x"), "a/*[.]x");
        assert_eq!(to_glob("*."), "*[.]");
        assert_eq!(to_glob("a.b*"), "a.b*", "prefix globs keep their shortcut");
        assert_eq!(to_glob("*a.b/c"), "*a.b/c", "a dot before a / is no extension");
        assert_eq!(to_glob("a.b"), "a.b", "literal globs keep their shortcut");
        assert_eq!(to_glob("**[x]{y}\\"), "*\\[x\\]\\{y\\}\\\\");
    }

    #[test]
    fn empty_matcher_matches_nothing() {
        assert_eq!(first(vec![], USER), None);
    }

    #[test]
    fn lowest_index_wins() {
        let rules = vec![
            rule(None, Some("arn:aws:iam::123456789012:user/nobody")),
            rule(None, Some("arn:aws:iam::*:user/admins-*")),
            rule(Some("123456789012"), None),
            rule(None, Some("arn:aws:iam::123456789012:user/admins-123")),
        ];
        assert_eq!(first(rules, USER), Some(1));
        let rules =
            vec![rule(None, Some("arn:aws:iam::123456789012:user/admins-123")), rule(Some("123456789012"), None)];
        assert_eq!(first(rules, USER), Some(0));
        let rules = vec![rule(Some("123456789012"), None), rule(None, Some("arn:aws:iam::*:user/*"))];
        assert_eq!(first(rules, USER), Some(0));
    }

    #[test]
    fn inconsistent_identity_matches_nothing() {
        let m = RuleMatcher::compile(vec![rule(None, Some("arn:aws:iam::*:user/*"))]).unwrap();
        let arn = Arn::parse(USER).unwrap();
        let other = AccountId::parse("999999999999").unwrap();
        assert_eq!(m.first_match(Subject::new(&other, &arn)), None);
        assert_eq!(m.explain(Subject::new(&other, &arn)).matched, None);
    }

    #[test]
    fn explain_says_why() {
        let rules = vec![
            rule(Some("111111111111"), None),
            rule(Some("123456789012"), Some("arn:aws:iam::123456789012:user/x")),
            rule(None, Some("arn:aws:iam::*:user/admins-*")),
        ];
        let m = RuleMatcher::compile(rules).unwrap();
        let arn = Arn::parse(USER).unwrap();
        let e = m.explain(Subject::new(arn.account(), &arn));
        assert_eq!(e.matched, Some(2));
        assert_eq!((e.rules[0].account, e.rules[0].arn, e.rules[0].matched), (Check::Differs, Check::NotSet, false));
        assert_eq!((e.rules[1].account, e.rules[1].arn, e.rules[1].matched), (Check::Matched, Check::Differs, false));
        assert_eq!((e.rules[2].account, e.rules[2].arn, e.rules[2].matched), (Check::NotSet, Check::Matched, true));
        assert_eq!(
            e.to_string(),
            "rule 0: account differs\nrule 1: ARN pattern differs\nrule 2: matched\nallowed by rule 2"
        );
    }

    #[test]
    fn star_matches_every_arn_of_the_account() {
        let m = RuleMatcher::compile(vec![rule(Some("123456789012"), Some("*"))]).unwrap();
        for arn in [USER, "arn:aws:sts::123456789012:assumed-role/r/s", "arn:aws:iam::123456789012:root"] {
            let arn = Arn::parse(arn).unwrap();
            assert_eq!(m.first_match(Subject::new(arn.account(), &arn)), Some(0), "{arn}");
        }
        let other = Arn::parse("arn:aws:iam::210987654321:user/x").unwrap();
        assert_eq!(m.first_match(Subject::new(other.account(), &other)), None);
    }

    #[test]
    fn explain_judges_organization_rules_with_their_own_patterns() {
        use crate::core::membership::Membership;
        let yaml = "kind: token\nversion: v2\nmetadata:\n  name: t\nspec:\n  roles: [Node]\n  join_method: iam\n  allow:\n  - aws_organization_id: o-abcdefghij\n    aws_arn: \"arn:aws:iam::*:user/admins-*\"\n  - aws_organization_id: o-abcdefghij\n    aws_arn: \"arn:aws:iam::*:user/other\"\n";
        let set = crate::core::token::set::TokenSet::from_yaml(yaml).unwrap();
        let m = set.get("t").unwrap().matcher();
        let arn = Arn::parse(USER).unwrap();
        let member = Membership::Member { organization_id: "o-abcdefghij".into(), ancestors: vec!["r-ab12".into()] };
        let e = m.explain_with(Subject::new(arn.account(), &arn), Some(&member));
        assert_eq!(
            (e.rules[0].arn, e.rules[0].organization, e.rules[0].matched),
            (Check::Matched, Check::Matched, true)
        );
        assert_eq!((e.rules[1].arn, e.rules[1].matched), (Check::Differs, false));
        assert_eq!(e.matched, Some(0));
        assert_eq!(m.organization_candidates(Subject::new(arn.account(), &arn)), vec![0]);
        assert_eq!(
            m.first_match(Subject::new(arn.account(), &arn)),
            None,
            "organization rules never match without a lookup"
        );
    }

    /// Every session of a role: a pattern admits the proof only when it admits every session
    /// name STS allows. Positive controls first.
    #[test]
    fn every_session_of_a_role_is_admitted_only_by_patterns_that_admit_every_session() {
        let prefix = "arn:aws:sts::111111111111:assumed-role/node/";
        for (pattern, want) in [
            ("arn:aws:sts::111111111111:assumed-role/node/*", Coverage::All),
            ("arn:aws:sts::111111111111:assumed-role/*", Coverage::All),
            ("arn:aws:sts::*:assumed-role/node/*", Coverage::All),
            ("*", Coverage::All),
            ("arn:aws:sts::111111111111:assumed-role/node*", Coverage::All),
            ("arn:aws:sts::111111111111:assumed-role/node/??*", Coverage::All),
            ("arn:aws:sts::111111111111:assumed-role/node/*?", Coverage::All),
            ("arn:aws:sts::111111111111:assumed-role/node/?*?", Coverage::All),
            ("arn:aws:sts::111111111111:*/node/*", Coverage::All),
            ("arn:aws:sts::111111111111:assumed-role/node/i-*", Coverage::Some),
            ("arn:aws:sts::111111111111:assumed-role/node/???*", Coverage::Some),
            ("arn:aws:sts::111111111111:assumed-role/node/??", Coverage::Some),
            ("arn:aws:sts::111111111111:assumed-role/node/*-*", Coverage::Some),
            ("arn:aws:sts::111111111111:assumed-role/node/*a", Coverage::Some),
            ("arn:aws:sts::111111111111:assumed-role/node/ab", Coverage::Some),
            ("arn:aws:sts::111111111111:assumed-role/node/?", Coverage::None),
            ("arn:aws:sts::111111111111:assumed-role/node/s", Coverage::None),
            ("arn:aws:sts::111111111111:assumed-role/node", Coverage::None),
            ("arn:aws:sts::111111111111:assumed-role/other/*", Coverage::None),
            ("arn:aws:iam::111111111111:role/node", Coverage::None),
            ("arn:aws:sts::222222222222:assumed-role/node/*", Coverage::None),
        ] {
            assert_eq!(session_coverage(pattern, prefix), want, "{pattern}");
        }
        // 65 `?` admit only 65-character names, longer than STS allows: none.
        let long = format!("{prefix}{}", "?".repeat(65));
        assert_eq!(session_coverage(&long, prefix), Coverage::None);
    }

    #[test]
    fn every_session_matching_through_the_index_and_explain() {
        let m = RuleMatcher::compile(vec![
            rule(None, Some("arn:aws:sts::111111111111:assumed-role/node/i-*")),
            rule(None, Some("arn:aws:iam::111111111111:role/node")),
            rule(Some("222222222222"), None),
            rule(Some("111111111111"), Some("arn:aws:sts::111111111111:assumed-role/node/*")),
        ])
        .unwrap();
        let acct = AccountId::parse("111111111111").unwrap();
        let role = Arn::parse("arn:aws:iam::111111111111:role/path/node").unwrap();
        let subject = Subject::every_session_of(&acct, &role).unwrap();
        assert_eq!(m.first_match(subject), Some(3));
        let e = m.explain(subject);
        assert_eq!(e.matched, Some(3));
        assert_eq!(e.rules[0].arn, Check::SomeSessions);
        assert_eq!(e.rules[1].arn, Check::Differs, "the role ARN itself is no GetCallerIdentity answer");
        assert!(e.to_string().contains("only some sessions"), "{e}");
        // The same ARN matched literally (as an STS answer would be) matches rule 1 only.
        assert_eq!(m.first_match(Subject::new(&acct, &role)), None, "role/path/node is not role/node");
        let plain = Arn::parse("arn:aws:iam::111111111111:role/node").unwrap();
        assert_eq!(m.first_match(Subject::new(&acct, &plain)), Some(1));
        // An account-only rule admits every session.
        let other = AccountId::parse("222222222222").unwrap();
        let role2 = Arn::parse("arn:aws:iam::222222222222:role/x").unwrap();
        assert_eq!(m.first_match(Subject::every_session_of(&other, &role2).unwrap()), Some(2));
        // Only roles have sessions.
        let user = Arn::parse("arn:aws:iam::111111111111:user/u").unwrap();
        assert!(Subject::every_session_of(&acct, &user).is_none());
    }

    #[test]
    fn matcher_is_send_sync() {
        fn check<T: Send + Sync>() {}
        check::<RuleMatcher>();
    }
}
