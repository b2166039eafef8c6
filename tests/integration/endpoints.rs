//! The STS endpoint table against AWS's metadata.
//!
//! `tests/vectors/endpoints/botocore-sts.json` is extracted from botocore by
//! `.ci/extract-botocore-sts`. This test derives the table from it and fails when
//! `src/core/endpoint_table.rs` differs; `IAM_JOIN_REGENERATE=1 cargo test endpoints` rewrites the file.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::common::vectors;

struct Row {
    partition: String,
    region: String,
    fips: bool,
    dual_stack: bool,
    global: bool,
}

/// Every STS host AWS publishes, from the metadata:
/// - the global endpoint `sts.amazonaws.com` (signing region from its credential scope);
/// - `sts.REGION.SUFFIX` for every region (FIPS in GovCloud, where AWS lists it as the FIPS host);
/// - each explicit FIPS variant (`sts-fips.REGION.amazonaws.com`);
/// - dual-stack `sts.REGION.DUALSTACK_SUFFIX` where the partition supports dual-stack, and
///   `sts-fips.REGION.DUALSTACK_SUFFIX` where the region has an explicit `sts-fips` host.
fn derive(meta: &Value) -> BTreeMap<String, Row> {
    let mut rows = BTreeMap::new();
    for p in meta["partitions"].as_array().expect("partitions") {
        let id = p["id"].as_str().unwrap();
        let suffix = p["dnsSuffix"].as_str().unwrap();
        let dual = p["dualStackDnsSuffix"].as_str();
        let sts = &p["sts"];
        let govcloud = id == "aws-us-gov";
        let mut add = |host: String, region: &str, fips: bool, dual_stack: bool, global: bool| {
            let row = Row { partition: id.to_owned(), region: region.to_owned(), fips, dual_stack, global };
            assert!(rows.insert(host.clone(), row).is_none(), "duplicate host {host}");
        };
        if let Some(g) = sts.get("aws-global") {
            let region = g["credentialScope"]["region"].as_str().unwrap();
            add(g["hostname"].as_str().unwrap().to_owned(), region, false, false, true);
        }
        for region in p["regions"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()) {
            if region.ends_with("-global") || region.ends_with("-fips") {
                continue;
            }
            let regional = format!("sts.{region}.{suffix}");
            let fips_variants: Vec<&str> = sts[region]["variants"]
                .as_array()
                .map(|vs| {
                    vs.iter()
                        .filter(|v| v["tags"].as_array().unwrap().iter().any(|t| t == "fips"))
                        .map(|v| v["hostname"].as_str().unwrap())
                        .collect()
                })
                .unwrap_or_default();
            let regional_is_fips = govcloud || fips_variants.contains(&regional.as_str());
            add(regional, region, regional_is_fips, false, false);
            let mut has_sts_fips = false;
            for v in fips_variants.iter().filter(|v| v.starts_with("sts-fips.")) {
                has_sts_fips = true;
                add((*v).to_owned(), region, true, false, false);
            }
            if let Some(dual) = dual {
                add(format!("sts.{region}.{dual}"), region, govcloud, true, false);
                if has_sts_fips {
                    add(format!("sts-fips.{region}.{dual}"), region, true, true, false);
                }
            }
        }
    }
    rows
}

fn variant(partition: &str) -> &'static str {
    match partition {
        "aws" => "Aws",
        "aws-cn" => "AwsCn",
        "aws-us-gov" => "AwsUsGov",
        "aws-iso" => "AwsIso",
        "aws-iso-b" => "AwsIsoB",
        "aws-iso-e" => "AwsIsoE",
        "aws-iso-f" => "AwsIsoF",
        "aws-eusc" => "AwsEusc",
        other => panic!("partition {other} is new: add it to iam_join::Partition first"),
    }
}

fn render(meta: &Value, rows: &BTreeMap<String, Row>) -> String {
    let mut s = String::new();
    s.push_str("// Generated from AWS's partition and endpoint metadata (botocore ");
    s.push_str(meta["botocore_version"].as_str().unwrap_or("unknown"));
    s.push_str(
        ") by tests/integration/endpoints.rs.\n// Do not edit: run `IAM_JOIN_REGENERATE=1 cargo test endpoints`.\n\n",
    );
    s.push_str("use super::Endpoint;\nuse crate::core::arn::Partition::*;\n\n");
    s.push_str("/// Every STS endpoint AWS publishes, sorted by host for binary search.\n");
    s.push_str("pub(super) static STS_ENDPOINTS: &[Endpoint] = &[\n");
    for (host, r) in rows {
        s.push_str(&format!(
            "    Endpoint {{ host: {host:?}, partition: {}, region: {:?}, fips: {}, dual_stack: {}, global: {} }},\n",
            variant(&r.partition),
            r.region,
            r.fips,
            r.dual_stack,
            r.global
        ));
    }
    s.push_str("];\n");
    s
}

#[test]
fn table_matches_aws_metadata() {
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(vectors("endpoints/botocore-sts.json")).unwrap()).unwrap();
    let rows = derive(&meta);
    let want = render(&meta, &rows);
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/core/endpoint_table.rs");
    let have = std::fs::read_to_string(&path).unwrap();
    if have != want {
        if std::env::var_os("IAM_JOIN_REGENERATE").is_some() {
            std::fs::write(&path, &want).unwrap();
            panic!("src/core/endpoint_table.rs regenerated: rebuild and run the tests again");
        }
        panic!(
            "src/core/endpoint_table.rs has drifted from tests/vectors/endpoints/botocore-sts.json; run `IAM_JOIN_REGENERATE=1 cargo test endpoints`"
        );
    }
    // The compiled-in table is that same file.
    assert_eq!(iam_join::Endpoint::all().len(), rows.len());
    for (host, r) in &rows {
        let e = iam_join::Endpoint::lookup(host).unwrap_or_else(|| panic!("{host} missing"));
        assert_eq!(
            (e.partition().as_str(), e.signing_region(), e.is_fips(), e.is_dual_stack(), e.is_global()),
            (r.partition.as_str(), r.region.as_str(), r.fips, r.dual_stack, r.global)
        );
    }
}
