//! The STS endpoint table and the operator's endpoint policy.
//!
//! The table is generated from AWS's published partition and region metadata (botocore's
//! `partitions.json` and `endpoints.json`); a test fails when the two drift apart. A signed `Host`
//! is trusted only if it is an exact, lowercase entry of this table: no port, no trailing dot, no
//! userinfo, no IP literal, nothing the table does not list. The policy then narrows the table.

use std::fmt;

use crate::core::arn::Partition;
use crate::core::error::{Error, ErrorKind};

/// One STS endpoint AWS publishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub(crate) host: &'static str,
    pub(crate) partition: Partition,
    pub(crate) region: &'static str,
    pub(crate) fips: bool,
    pub(crate) dual_stack: bool,
    pub(crate) global: bool,
}

#[rustfmt::skip]
#[path = "endpoint_table.rs"]
mod table;

impl Endpoint {
    /// The endpoint whose host is exactly `host`, if AWS publishes one.
    ///
    /// ```
    /// use iam_join::{Endpoint, Partition};
    /// let e = Endpoint::lookup("sts.eu-west-1.amazonaws.com").unwrap();
    /// assert_eq!((e.partition(), e.signing_region()), (Partition::Aws, "eu-west-1"));
    /// assert_eq!(Endpoint::lookup("sts.amazonaws.com").unwrap().signing_region(), "us-east-1");
    /// assert!(Endpoint::lookup("sts.eu-west-1.amazonaws.com.").is_none());
    /// assert!(Endpoint::lookup("STS.eu-west-1.amazonaws.com").is_none());
    /// ```
    pub fn lookup(host: &str) -> Option<&'static Endpoint> {
        let table = table::STS_ENDPOINTS;
        table.binary_search_by(|e| e.host.cmp(host)).ok().map(|i| &table[i])
    }

    /// Every endpoint of the table, sorted by host.
    pub fn all() -> &'static [Endpoint] {
        table::STS_ENDPOINTS
    }

    /// The host name, e.g. `sts.us-west-2.amazonaws.com`.
    pub fn host(&self) -> &'static str {
        self.host
    }

    /// The partition the endpoint belongs to.
    pub fn partition(&self) -> Partition {
        self.partition
    }

    /// The region requests to this endpoint are signed for (`us-east-1` for the global endpoint).
    pub fn signing_region(&self) -> &'static str {
        self.region
    }

    /// Whether the endpoint is FIPS 140 validated (`sts-fips.*`, and every GovCloud endpoint).
    pub fn is_fips(&self) -> bool {
        self.fips
    }

    /// Whether the endpoint is dual-stack (IPv4 and IPv6).
    pub fn is_dual_stack(&self) -> bool {
        self.dual_stack
    }

    /// Whether this is the global endpoint `sts.amazonaws.com`.
    pub fn is_global(&self) -> bool {
        self.global
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.host)
    }
}

/// Whether only FIPS endpoints are accepted.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FipsMode {
    /// FIPS and non-FIPS endpoints are both accepted.
    #[default]
    Allowed,
    /// Only FIPS endpoints (`sts-fips.*` and the GovCloud `sts.us-gov-*` hosts); the global
    /// endpoint is refused.
    Required,
}

/// Which endpoints of the table an operator trusts.
///
/// The default trusts every endpoint of the `aws` partition, FIPS or not, global or regional,
/// dual-stack or not. Other partitions are opt-in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointPolicy {
    partitions: Vec<Partition>,
    regions: Option<Vec<String>>,
    fips: FipsMode,
}

impl Default for EndpointPolicy {
    fn default() -> Self {
        Self { partitions: vec![Partition::Aws], regions: None, fips: FipsMode::Allowed }
    }
}

impl EndpointPolicy {
    /// The default policy: the `aws` partition only.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also trusts the endpoints of `partition` (e.g. `aws-us-gov`).
    pub fn allow_partition(mut self, partition: Partition) -> Self {
        if !self.partitions.contains(&partition) {
            self.partitions.push(partition);
        }
        self
    }

    /// Trusts only these partitions (replacing the default `aws`).
    pub fn partitions(mut self, partitions: impl IntoIterator<Item = Partition>) -> Self {
        self.partitions = partitions.into_iter().collect();
        self
    }

    /// Trusts only endpoints whose signing region is one of these. The global endpoint signs as
    /// `us-east-1`, so it passes only when `us-east-1` is listed.
    pub fn regions<S: Into<String>>(mut self, regions: impl IntoIterator<Item = S>) -> Self {
        self.regions = Some(regions.into_iter().map(Into::into).collect());
        self
    }

    /// Sets the FIPS mode.
    pub fn fips(mut self, mode: FipsMode) -> Self {
        self.fips = mode;
        self
    }

    /// The endpoint for `host` if the policy trusts it, otherwise an `untrusted_endpoint` error.
    ///
    /// ```
    /// use iam_join::{EndpointPolicy, ErrorKind, FipsMode};
    /// let policy = EndpointPolicy::new().fips(FipsMode::Required);
    /// assert!(policy.check("sts-fips.us-east-1.amazonaws.com").is_ok());
    /// assert_eq!(policy.check("sts.amazonaws.com").unwrap_err().kind(), ErrorKind::UntrustedEndpoint);
    /// ```
    pub fn check(&self, host: &str) -> Result<&'static Endpoint, Error> {
        let untrusted = |why: String| Err(Error::new(ErrorKind::UntrustedEndpoint, why));
        let Some(endpoint) = Endpoint::lookup(host) else {
            // AWS's public table, not this server's policy: the client may be told.
            let fact = format!("signed host {} is not an AWS STS endpoint", crate::core::text::quoted_shown(host));
            return Err(Error::about_request(ErrorKind::UntrustedEndpoint, fact));
        };
        if !self.partitions.contains(&endpoint.partition) {
            return untrusted(format!(
                "STS endpoint {host} is in partition {}, which the endpoint policy does not allow",
                endpoint.partition
            ));
        }
        if let Some(regions) = &self.regions
            && !regions.iter().any(|r| r == endpoint.region)
        {
            return untrusted(format!(
                "STS endpoint {host} signs for region {}, which the endpoint policy does not allow",
                endpoint.region
            ));
        }
        if self.fips == FipsMode::Required && !endpoint.fips {
            return untrusted(format!("STS endpoint {host} is not a FIPS endpoint and FIPS is required"));
        }
        Ok(endpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_lowercase_and_unique() {
        let all = Endpoint::all();
        assert!(all.len() > 100);
        for w in all.windows(2) {
            assert!(w[0].host < w[1].host, "{} !< {}", w[0].host, w[1].host);
        }
        for e in all {
            assert_eq!(e.host, e.host.to_ascii_lowercase());
            assert!(e.host.starts_with("sts.") || e.host.starts_with("sts-fips."), "{}", e.host);
        }
    }

    macro_rules! host {
        ($($name:ident: $policy:expr, $host:expr => $ok:expr;)*) => {$(
            #[test]
            fn $name() {
                let got = $policy.check($host);
                assert_eq!(got.is_ok(), $ok, "{:?} -> {:?}", $host, got);
                if let Err(e) = got {
                    assert_eq!(e.kind(), ErrorKind::UntrustedEndpoint);
                }
            }
        )*};
    }

    fn default() -> EndpointPolicy {
        EndpointPolicy::new()
    }

    fn fips() -> EndpointPolicy {
        EndpointPolicy::new().fips(FipsMode::Required).allow_partition(Partition::AwsUsGov)
    }

    host! {
        global: default(), "sts.amazonaws.com" => true;
        regional: default(), "sts.us-west-2.amazonaws.com" => true;
        fips_regional: default(), "sts-fips.us-east-1.amazonaws.com" => true;
        dual_stack: default(), "sts.eu-central-1.api.aws" => true;
        evil_region: default(), "sts.evil.amazonaws.com" => false;
        evil_fips: default(), "sts-fips.evil.amazonaws.com" => false;
        fips_without_fips_region: default(), "sts-fips.eu-west-1.amazonaws.com" => false;
        other_service: default(), "evil.us-west-2.amazonaws.com" => false;
        other_domain: default(), "sts.us-west-2.example.com" => false;
        suffix_appended: default(), "sts.us-west-2.amazonaws.com.evil" => false;
        unknown_region: default(), "sts.us-attacker-1.amazonaws.com" => false;
        china_suffix_on_us_region: default(), "sts.us-east-1.amazonaws.com.cn" => false;
        empty_label: default(), "sts..amazonaws.com" => false;
        website: default(), "website.amazonaws.com" => false;
        empty: default(), "" => false;
        non_ascii: default(), "sts.us-east-1.amazonaws.c\u{f6}m" => false;
        uppercase: default(), "STS.US-EAST-1.AMAZONAWS.COM" => false;
        with_port: default(), "sts.us-east-1.amazonaws.com:443" => false;
        trailing_dot: default(), "sts.us-east-1.amazonaws.com." => false;
        userinfo: default(), "user@sts.us-east-1.amazonaws.com" => false;
        ip_literal: default(), "52.94.0.1" => false;
        ipv6_literal: default(), "[::1]" => false;
        injected_query: default(), "sts.evil.org?us-east-1.amazonaws.com" => false;
        china_needs_opt_in: default(), "sts.cn-north-1.amazonaws.com.cn" => false;
        china_opted_in: default().allow_partition(Partition::AwsCn), "sts.cn-north-1.amazonaws.com.cn" => true;
        govcloud_needs_opt_in: default(), "sts.us-gov-west-1.amazonaws.com" => false;
        fips_mode_accepts_fips: fips(), "sts-fips.us-west-2.amazonaws.com" => true;
        fips_mode_accepts_govcloud: fips(), "sts.us-gov-east-1.amazonaws.com" => true;
        fips_mode_refuses_global: fips(), "sts.amazonaws.com" => false;
        fips_mode_refuses_regional: fips(), "sts.us-west-2.amazonaws.com" => false;
        region_allowlist_accepts: default().regions(["eu-west-1"]), "sts.eu-west-1.amazonaws.com" => true;
        region_allowlist_refuses: default().regions(["eu-west-1"]), "sts.eu-west-2.amazonaws.com" => false;
        region_allowlist_global_is_us_east_1: default().regions(["us-east-1"]), "sts.amazonaws.com" => true;
        region_allowlist_refuses_global: default().regions(["eu-west-1"]), "sts.amazonaws.com" => false;
        partition_replaced: default().partitions([Partition::AwsEusc]), "sts.us-east-1.amazonaws.com" => false;
        eusc: default().partitions([Partition::AwsEusc]), "sts.eusc-de-east-1.amazonaws.eu" => true;
    }

    #[test]
    fn every_aws_region_and_fips_host_passes_the_default_policy() {
        let policy = EndpointPolicy::new();
        let aws: Vec<_> = Endpoint::all().iter().filter(|e| e.partition == Partition::Aws).collect();
        assert!(aws.len() >= 70, "{} aws endpoints", aws.len());
        for e in aws {
            assert_eq!(policy.check(e.host).map(|x| x.host).ok(), Some(e.host));
        }
        for r in ["us-east-1", "us-east-2", "us-west-1", "us-west-2"] {
            let e = policy.check(&format!("sts-fips.{r}.amazonaws.com")).unwrap();
            assert!(e.is_fips());
            assert_eq!(e.signing_region(), r);
        }
    }

    #[test]
    fn error_names_the_host_safely() {
        let e = EndpointPolicy::new().check("sts.evil\r\n.amazonaws.com").unwrap_err();
        assert_eq!(
            e.to_string(),
            "untrusted_endpoint: signed host \"sts.evil\\r\\n.amazonaws.com\" is not an AWS STS endpoint"
        );
    }
}
