//! AWS Organizations: where an account sits, and whether an organization rule admits it.
//!
//! This module holds the parts that need no network: the membership model and the rule
//! semantics, strict parsing and classification of the Organizations API's `DescribeAccount` and
//! `ListParents` answers (AWS JSON 1.1), and a bounded, single-flight cache with a TTL.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::Deserialize;

use crate::core::arn::{AccountId, Partition};
use crate::core::error::{Error, ErrorKind};
pub use crate::core::membership::Membership;
use crate::core::response::HttpAnswer;
use crate::core::rule::is_org_id;
use crate::io::credentials::{Credentials, sign_headers};
use crate::io::transport::{AwsCall, AwsTransport};

/// Default time a looked-up membership is trusted.
pub const DEFAULT_ORG_CACHE_TTL: Duration = Duration::from_secs(5 * 60);
/// Default bound on cached accounts.
pub const DEFAULT_ORG_CACHE_ENTRIES: usize = 100_000;
/// The deepest OU nesting walked (AWS allows 5 levels below the root).
pub const MAX_OU_DEPTH: usize = 8;
/// The largest Organizations answer read.
pub const MAX_ORGANIZATIONS_RESPONSE_BYTES: usize = 64 * 1024;

fn lookup_failed(retryable: bool, detail: impl Into<String>) -> Error {
    Error::new(ErrorKind::LookupFailed, detail).with_retryable(retryable)
}

/// The kind of an AWS JSON 1.1 error: `__type`, without any `namespace#` prefix.
fn error_type(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct E {
        #[serde(rename = "__type")]
        kind: String,
    }
    let e: E = serde_json::from_slice(body).ok()?;
    Some(e.kind.rsplit('#').next().unwrap_or_default().chars().take(96).collect())
}

/// What a non-200 answer means. `Ok(())` is "the account is not in (the caller's) organization";
/// everything else refuses the join with `lookup_failed`, naming the permission when access was
/// denied.
fn classify(operation: &str, status: u16, body: &[u8]) -> Result<(), Error> {
    let kind = error_type(body).unwrap_or_default();
    match kind.as_str() {
        "AccountNotFoundException" | "ChildNotFoundException" | "AWSOrganizationsNotInUseException" => Ok(()),
        // Any 403 is access denied too, whatever its body (emulators answer XML).
        _ if status == 403 || kind.starts_with("AccessDenied") => Err(lookup_failed(
            false,
            format!("Organizations denied {operation}: the auth server's credentials need organizations:{operation}"),
        )),
        "TooManyRequestsException" | "ThrottlingException" | "ServiceException" => {
            Err(lookup_failed(true, format!("Organizations {operation} is throttled or failing ({kind})")))
        }
        _ if status >= 500 => Err(lookup_failed(true, format!("Organizations {operation} failed (HTTP {status})"))),
        _ => Err(lookup_failed(
            false,
            format!(
                "Organizations {operation} refused (HTTP {status}{}{kind})",
                if kind.is_empty() { "" } else { ", " }
            ),
        )),
    }
}

fn check_size(body: &[u8]) -> Result<(), Error> {
    if body.len() > MAX_ORGANIZATIONS_RESPONSE_BYTES {
        return Err(lookup_failed(
            false,
            format!("Organizations answer is larger than {MAX_ORGANIZATIONS_RESPONSE_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// Reads a `DescribeAccount` answer: the account's organization id, or `None` when the account
/// is not in the caller's organization.
///
/// The organization id comes from the account ARN
/// (`arn:PARTITION:organizations::MANAGEMENT:account/o-xxxx/ACCOUNT`), which must name `account`.
pub fn parse_describe_account(account: &AccountId, status: u16, body: &[u8]) -> Result<Option<String>, Error> {
    check_size(body)?;
    if status != 200 {
        return classify("DescribeAccount", status, body).map(|()| None);
    }
    #[derive(Deserialize)]
    struct Answer {
        #[serde(rename = "Account")]
        account: Account,
    }
    #[derive(Deserialize)]
    struct Account {
        #[serde(rename = "Arn")]
        arn: String,
        #[serde(rename = "Id")]
        id: String,
    }
    let a: Answer = serde_json::from_slice(body)
        .map_err(|e| lookup_failed(false, format!("DescribeAccount answer is not valid: {e}")))?;
    let bad = || lookup_failed(false, "DescribeAccount answer does not describe the account asked about");
    if a.account.id != account.as_str() {
        return Err(bad());
    }
    let mut fields = a.account.arn.splitn(6, ':');
    let (Some("arn"), Some(_partition), Some("organizations"), Some(""), Some(_mgmt), Some(resource)) =
        (fields.next(), fields.next(), fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(bad());
    };
    match resource.split('/').collect::<Vec<_>>().as_slice() {
        ["account", org, id] if *id == account.as_str() && is_org_id(org) => Ok(Some((*org).to_owned())),
        _ => Err(bad()),
    }
}

/// One step up the tree, from a `ListParents` answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parent {
    /// An organizational unit (`ou-...`); keep walking.
    Ou(String),
    /// The root (`r-...`); the walk ends.
    Root(String),
}

/// Reads a `ListParents` answer: exactly one parent (an account or OU has one).
pub fn parse_list_parents(status: u16, body: &[u8]) -> Result<Option<Parent>, Error> {
    check_size(body)?;
    if status != 200 {
        return classify("ListParents", status, body).map(|()| None);
    }
    #[derive(Deserialize)]
    struct Answer {
        #[serde(rename = "Parents")]
        parents: Vec<P>,
    }
    #[derive(Deserialize)]
    struct P {
        #[serde(rename = "Id")]
        id: String,
        #[serde(rename = "Type")]
        kind: String,
    }
    let a: Answer = serde_json::from_slice(body)
        .map_err(|e| lookup_failed(false, format!("ListParents answer is not valid: {e}")))?;
    let [p] = a.parents.as_slice() else {
        return Err(lookup_failed(false, "ListParents answer does not have exactly one parent"));
    };
    match p.kind.as_str() {
        "ORGANIZATIONAL_UNIT" if p.id.starts_with("ou-") => Ok(Some(Parent::Ou(p.id.clone()))),
        "ROOT" if p.id.starts_with("r-") => Ok(Some(Parent::Root(p.id.clone()))),
        _ => Err(lookup_failed(false, "ListParents answer has a parent of an unknown type")),
    }
}

type Key = (Partition, AccountId);
type Slot = Arc<tokio::sync::Mutex<Option<(Instant, Membership)>>>;

/// A bounded cache of memberships with a TTL and single flight: a burst of joins from one account
/// makes one lookup; the others wait for it. Failures are not cached.
#[derive(Debug)]
pub struct OrgCache {
    ttl: Duration,
    max_entries: usize,
    slots: Mutex<HashMap<Key, Slot>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// How an [`OrgCache`] has done since it was made: for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Memberships answered from the cache.
    pub hits: u64,
    /// Memberships that needed a lookup (whether or not it succeeded).
    pub misses: u64,
    /// Accounts held now.
    pub entries: usize,
}

impl Default for OrgCache {
    fn default() -> Self {
        Self::new(DEFAULT_ORG_CACHE_TTL, DEFAULT_ORG_CACHE_ENTRIES)
    }
}

impl OrgCache {
    /// A cache keeping memberships for `ttl`, at most `max_entries` accounts.
    pub fn new(ttl: Duration, max_entries: usize) -> Self {
        Self {
            ttl,
            max_entries: max_entries.max(1),
            slots: Mutex::new(HashMap::new()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Hits, misses and entries so far.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries: self.len(),
        }
    }

    /// The cached membership of the account, or the result of `lookup`, which runs at most once
    /// at a time per account.
    pub async fn get_or_lookup<F, Fut>(
        &self,
        partition: Partition,
        account: AccountId,
        lookup: F,
    ) -> Result<Membership, Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Membership, Error>>,
    {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            if !slots.contains_key(&(partition, account)) && slots.len() >= self.max_entries {
                let now = Instant::now();
                // Drop expired entries nobody is using, then, if still full, any idle one.
                slots.retain(|_, s| {
                    Arc::strong_count(s) > 1
                        || s.try_lock()
                            .map(|v| v.as_ref().is_some_and(|(t, _)| now.duration_since(*t) < self.ttl))
                            .unwrap_or(true)
                });
                if slots.len() >= self.max_entries
                    && let Some(k) = slots.iter().find(|(_, s)| Arc::strong_count(s) == 1).map(|(k, _)| *k)
                {
                    slots.remove(&k);
                }
            }
            slots.entry((partition, account)).or_default().clone()
        };
        let mut value = slot.lock().await;
        if let Some((at, m)) = value.as_ref()
            && at.elapsed() < self.ttl
        {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(m.clone());
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let fresh = lookup().await?;
        *value = Some((Instant::now(), fresh.clone()));
        Ok(fresh)
    }

    /// How many accounts are cached.
    pub fn len(&self) -> usize {
        self.slots.lock().map(|s| s.len()).unwrap_or_default()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The Organizations endpoint and signing region of a partition.
fn organizations_endpoint(partition: Partition) -> Result<(&'static str, &'static str), Error> {
    match partition {
        Partition::Aws => Ok(("organizations.us-east-1.amazonaws.com", "us-east-1")),
        Partition::AwsUsGov => Ok(("organizations.us-gov-west-1.amazonaws.com", "us-gov-west-1")),
        Partition::AwsCn => Ok(("organizations.cn-northwest-1.amazonaws.com.cn", "cn-northwest-1")),
        other => Err(lookup_failed(false, format!("no AWS Organizations endpoint is known for partition {other}"))),
    }
}

/// Looks up where accounts sit, with the AWS Organizations API and the auth server's own
/// credentials (not the joining agent's): `DescribeAccount` for the organization, then
/// `ListParents` up to the root. Requests are AWS JSON 1.1, signed with `aws-sigv4`, and go
/// through an [`AwsTransport`], the same kind of transport as STS's (the default
/// `ReqwestTransport`: verified TLS, timeouts, caps, no redirects; its endpoint override redirects
/// these calls too, keeping the signed host). Results are cached ([`OrgCache`]).
#[derive(Debug)]
pub struct OrganizationsClient {
    credentials: Credentials,
    transport: Arc<dyn AwsTransport>,
    cache: OrgCache,
}

impl OrganizationsClient {
    /// A client with the default cache (5 minutes, 100,000 accounts).
    pub fn new(credentials: Credentials, transport: impl AwsTransport + 'static) -> Self {
        Self::with_shared_transport(credentials, Arc::new(transport))
    }

    /// Like [`OrganizationsClient::new`], sharing a transport (and its connection pool), for
    /// example with the verifier's STS calls.
    pub fn with_shared_transport(credentials: Credentials, transport: Arc<dyn AwsTransport>) -> Self {
        Self { credentials, transport, cache: OrgCache::default() }
    }

    /// Replaces the cache.
    pub fn cache(mut self, cache: OrgCache) -> Self {
        self.cache = cache;
        self
    }

    /// The cache's hits, misses and entries so far.
    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// Where `account` sits, from the cache or the Organizations API. Requests are signed at
    /// `now`.
    pub async fn membership(
        &self,
        partition: Partition,
        account: AccountId,
        now: SystemTime,
    ) -> Result<Membership, Error> {
        self.cache.get_or_lookup(partition, account, || self.lookup(partition, account, now)).await
    }

    async fn lookup(&self, partition: Partition, account: AccountId, now: SystemTime) -> Result<Membership, Error> {
        let (host, region) = organizations_endpoint(partition)?;
        let r = self.call(host, region, "DescribeAccount", format!(r#"{{"AccountId":"{account}"}}"#), now).await?;
        let Some(organization_id) = parse_describe_account(&account, r.status, &r.body)? else {
            return Ok(Membership::NotInOrganization);
        };
        let mut ancestors = Vec::new();
        let mut child = account.as_str().to_owned();
        for _ in 0..=MAX_OU_DEPTH {
            let r = self.call(host, region, "ListParents", format!(r#"{{"ChildId":"{child}"}}"#), now).await?;
            match parse_list_parents(r.status, &r.body)? {
                None => return Ok(Membership::NotInOrganization),
                Some(Parent::Ou(id)) => {
                    child.clone_from(&id);
                    ancestors.push(id);
                }
                Some(Parent::Root(id)) => {
                    ancestors.push(id);
                    return Ok(Membership::Member { organization_id, ancestors });
                }
            }
        }
        Err(lookup_failed(false, format!("OUs nest deeper than {MAX_OU_DEPTH} levels above the account")))
    }

    async fn call(
        &self,
        host: &str,
        region: &str,
        operation: &str,
        body: String,
        now: SystemTime,
    ) -> Result<HttpAnswer, Error> {
        let target = format!("AWSOrganizationsV20161128.{operation}");
        let headers =
            [("host", host), ("content-type", "application/x-amz-json-1.1"), ("x-amz-target", target.as_str())];
        let added = sign_headers(&self.credentials, "organizations", region, host, &headers, body.as_bytes(), now)?;
        let all = headers.iter().copied().chain(added.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        let headers: Vec<(&str, &str)> = all.collect();
        let call = AwsCall::organizations(host, headers, body.as_bytes(), MAX_ORGANIZATIONS_RESPONSE_BYTES);
        self.transport.call(call).await.map_err(|e| e.into_kind(ErrorKind::LookupFailed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::rule::Rule;
    use crate::core::token::set::TokenSet;

    fn rules(yaml_rules: &str) -> Vec<Rule> {
        let yaml = format!(
            "kind: token\nversion: v2\nmetadata:\n  name: t\nspec:\n  roles: [Node]\n  join_method: iam\n  allow:\n{yaml_rules}"
        );
        TokenSet::from_yaml(&yaml).unwrap().get("t").unwrap().rules().to_vec()
    }

    fn member(org: &str, ancestors: &[&str]) -> Membership {
        Membership::Member { organization_id: org.into(), ancestors: ancestors.iter().map(|s| s.to_string()).collect() }
    }

    const ORG: &str = "o-abcdefghij";
    const ROOT: &str = "r-ab12";
    const PROD: &str = "ou-ab12-prod0001";
    const PROD_WEB: &str = "ou-ab12-prodweb1";
    const DEV: &str = "ou-ab12-devel001";

    #[test]
    fn organization_rule_semantics() {
        let r = rules(&format!(
            "  - aws_organization_id: {ORG}\n  - aws_organization_id: {ORG}\n    aws_organizational_units: {{include: [\"*\"]}}\n  - aws_organization_id: {ORG}\n    aws_organizational_units: {{include: [{PROD}], exclude: [{PROD_WEB}]}}\n  - aws_organization_id: {ORG}\n    aws_organizational_units: {{include: [{ROOT}]}}\n"
        ));
        let deep_prod = member(ORG, &["ou-ab12-prodapi1", PROD, ROOT]);
        let prod_web = member(ORG, &["ou-ab12-leaf0001", PROD_WEB, PROD, ROOT]);
        let dev = member(ORG, &[DEV, ROOT]);
        let at_root = member(ORG, &[ROOT]);
        let other_org = member("o-zzzzzzzzzz", &[PROD, ROOT]);
        let none = Membership::NotInOrganization;
        let table: &[(&Membership, [bool; 4])] = &[
            (&deep_prod, [true, true, true, true]), // nested under an included OU
            (&prod_web, [true, true, false, true]), // under an excluded OU, at any depth
            (&dev, [true, true, false, true]),      // not under the included OU
            (&at_root, [true, true, false, true]),
            (&other_org, [false, false, false, false]), // another organization's account
            (&none, [false, false, false, false]),      // outside any organization
        ];
        for (m, want) in table {
            let got: Vec<bool> = r.iter().map(|rule| m.admits(rule)).collect();
            assert_eq!(got, want, "{m:?}");
        }
        // A rule without organization fields needs no lookup and is not judged here.
        let plain = rules("  - aws_account: \"111111111111\"\n");
        assert!(!deep_prod.admits(&plain[0]));
    }

    fn acct() -> AccountId {
        AccountId::parse("222222222222").unwrap()
    }

    #[test]
    fn describe_account() {
        let ok = br#"{"Account":{"Arn":"arn:aws:organizations::111111111111:account/o-abcdefghij/222222222222","Email":"a@example.com","Id":"222222222222","Name":"prod","Status":"ACTIVE"}}"#;
        assert_eq!(parse_describe_account(&acct(), 200, ok).unwrap().as_deref(), Some("o-abcdefghij"));
        let other = br#"{"Account":{"Arn":"arn:aws:organizations::111111111111:account/o-abcdefghij/333333333333","Id":"333333333333"}}"#;
        assert_eq!(parse_describe_account(&acct(), 200, other).unwrap_err().kind(), ErrorKind::LookupFailed);
        let bad_org =
            br#"{"Account":{"Arn":"arn:aws:organizations::111111111111:account/x/222222222222","Id":"222222222222"}}"#;
        assert!(parse_describe_account(&acct(), 200, bad_org).is_err());
        let not_found =
            br#"{"__type":"AccountNotFoundException","Message":"You specified an account that doesn't exist."}"#;
        assert_eq!(parse_describe_account(&acct(), 400, not_found).unwrap(), None);
        let not_in_use = br#"{"__type":"com.amazonaws.organizations#AWSOrganizationsNotInUseException","Message":"x"}"#;
        assert_eq!(parse_describe_account(&acct(), 400, not_in_use).unwrap(), None);
        let denied = br#"{"__type":"AccessDeniedException","Message":"not authorized"}"#;
        let e = parse_describe_account(&acct(), 400, denied).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::LookupFailed);
        assert!(!e.is_retryable());
        assert!(e.detail().contains("organizations:DescribeAccount"), "{e}");
        let xml_403 = br#"<ErrorResponse><Errors><Error><Code>AccessDenied</Code></Error></Errors></ErrorResponse>"#;
        assert!(
            parse_describe_account(&acct(), 403, xml_403)
                .unwrap_err()
                .detail()
                .contains("organizations:DescribeAccount")
        );
        let throttled = br#"{"__type":"TooManyRequestsException","Message":"slow down"}"#;
        assert!(parse_describe_account(&acct(), 400, throttled).unwrap_err().is_retryable());
        assert!(parse_describe_account(&acct(), 503, b"<html>").unwrap_err().is_retryable());
        assert!(parse_describe_account(&acct(), 200, &vec![b' '; 70_000]).is_err());
    }

    #[test]
    fn list_parents() {
        let ou = br#"{"Parents":[{"Id":"ou-ab12-prod0001","Type":"ORGANIZATIONAL_UNIT"}]}"#;
        assert_eq!(parse_list_parents(200, ou).unwrap(), Some(Parent::Ou("ou-ab12-prod0001".into())));
        let root = br#"{"Parents":[{"Id":"r-ab12","Type":"ROOT"}]}"#;
        assert_eq!(parse_list_parents(200, root).unwrap(), Some(Parent::Root("r-ab12".into())));
        for bad in [
            &br#"{"Parents":[]}"#[..],
            br#"{"Parents":[{"Id":"r-ab12","Type":"ROOT"},{"Id":"r-ab13","Type":"ROOT"}]}"#,
            br#"{"Parents":[{"Id":"r-ab12","Type":"ACCOUNT"}]}"#,
            br#"{"Parents":[{"Id":"ou-x","Type":"ROOT"}]}"#,
        ] {
            assert!(parse_list_parents(200, bad).is_err());
        }
        let denied = br#"{"__type":"AccessDeniedException","Message":"no"}"#;
        assert!(parse_list_parents(400, denied).unwrap_err().detail().contains("organizations:ListParents"));
    }

    #[tokio::test]
    async fn cache_is_single_flight_ttl_bound_and_bounded() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let cache = Arc::new(OrgCache::new(Duration::from_millis(200), 2));
        let calls = Arc::new(AtomicUsize::new(0));
        let lookup = |calls: Arc<AtomicUsize>| async move {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok(member(ORG, &[ROOT]))
        };
        // A burst of 50 joins from one account: one lookup.
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (cache, calls) = (cache.clone(), calls.clone());
            tasks
                .push(tokio::spawn(async move { cache.get_or_lookup(Partition::Aws, acct(), || lookup(calls)).await }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), member(ORG, &[ROOT]));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses, stats.entries), (49, 1, 1), "{stats:?}");
        // After the TTL, one more.
        tokio::time::sleep(Duration::from_millis(250)).await;
        cache.get_or_lookup(Partition::Aws, acct(), || lookup(calls.clone())).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // Failures are not cached.
        let other = AccountId::parse("333333333333").unwrap();
        let fail = cache.get_or_lookup(Partition::Aws, other, || async { Err(lookup_failed(true, "down")) }).await;
        assert!(fail.is_err());
        cache.get_or_lookup(Partition::Aws, other, || lookup(calls.clone())).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!((cache.stats().hits, cache.stats().misses), (49, 4), "a failed lookup is a miss");
        // Bounded: a third account evicts an idle one.
        let third = AccountId::parse("444444444444").unwrap();
        cache.get_or_lookup(Partition::Aws, third, || lookup(calls.clone())).await.unwrap();
        assert!(cache.len() <= 2, "{}", cache.len());
    }
}
