//! Recorded AWS Organizations answers under `tests/vectors/organizations/`, one line each.

use std::collections::BTreeSet;

use iam_join::organizations::{Parent, parse_describe_account, parse_list_parents};
use iam_join::{AccountId, ErrorKind};

use crate::common::{read_vectors, vectors};

enum Want {
    Org(Option<String>),
    Parent(Parent),
    Failed { retryable: bool, says: &'static str },
}
use Want::*;

fn cases() -> Vec<(&'static str, u16, Want)> {
    vec![
        ("describe_account_ok.json", 200, Org(Some("o-abcdefghij".into()))),
        ("describe_account_govcloud_ok.json", 200, Org(Some("o-abcdefghij".into()))),
        ("describe_account_other_account.json", 200, Failed { retryable: false, says: "does not describe" }),
        ("describe_account_bad_arn.json", 200, Failed { retryable: false, says: "does not describe" }),
        ("describe_account_not_found.json", 400, Org(None)),
        ("describe_account_not_in_use.json", 400, Org(None)),
        (
            "describe_account_access_denied.json",
            400,
            Failed { retryable: false, says: "organizations:DescribeAccount" },
        ),
        ("describe_account_throttled.json", 400, Failed { retryable: true, says: "throttled" }),
        ("list_parents_ou.json", 200, Parent(Parent::Ou("ou-ab12-prod0001".into()))),
        ("list_parents_root.json", 200, Parent(Parent::Root("r-ab12".into()))),
        ("list_parents_two.json", 200, Failed { retryable: false, says: "exactly one parent" }),
        ("list_parents_access_denied.json", 400, Failed { retryable: false, says: "organizations:ListParents" }),
    ]
}

#[test]
fn every_recorded_answer_gives_what_it_should() {
    let account = AccountId::parse("222222222222").unwrap();
    for (file, status, want) in cases() {
        let body = std::fs::read(vectors("organizations").join(file)).unwrap();
        let got: Result<Want, iam_join::Error> = if file.starts_with("describe_account") {
            parse_describe_account(&account, status, &body).map(Org)
        } else {
            parse_list_parents(status, &body).map(|p| Parent(p.expect("a parent")))
        };
        match (want, got) {
            (Org(w), Ok(Org(g))) => assert_eq!(w, g, "{file}"),
            (Parent(w), Ok(Parent(g))) => assert_eq!(w, g, "{file}"),
            (Failed { retryable, says }, Err(e)) => {
                assert_eq!(e.kind(), ErrorKind::LookupFailed, "{file}");
                assert_eq!(e.is_retryable(), retryable, "{file}");
                assert!(e.detail().contains(says), "{file}: {e}");
            }
            (_, Ok(_)) => panic!("{file}: accepted, expected a failure or another value"),
            (_, Err(e)) => panic!("{file}: {e}"),
        }
    }
}

#[test]
fn no_vector_is_left_out() {
    let on_disk: BTreeSet<String> = read_vectors("organizations").into_iter().map(|(n, _)| n).collect();
    let listed: BTreeSet<String> = cases().into_iter().map(|c| c.0.to_owned()).collect();
    assert_eq!(on_disk, listed);
}

/// The Organizations client takes any `AwsTransport`, the same trait STS calls go through: a
/// transport built only from the public API sees the signed call and its answer decides.
#[tokio::test]
async fn the_organizations_client_uses_any_aws_transport() {
    use std::sync::{Arc, Mutex};

    use iam_join::organizations::OrganizationsClient;
    use iam_join::{AwsCall, AwsTransport, BoxFuture, Error, HttpAnswer, Membership};

    #[derive(Debug, Default)]
    struct Canned(Mutex<Vec<(String, String, String)>>);
    impl AwsTransport for Canned {
        fn call<'a>(&'a self, call: AwsCall<'a>) -> BoxFuture<'a, Result<HttpAnswer, Error>> {
            let target = call.headers.iter().find(|(n, _)| *n == "x-amz-target").map(|(_, v)| v.to_string());
            self.0.lock().unwrap().push((
                call.service.as_str().to_owned(),
                call.host.to_owned(),
                target.unwrap_or_default(),
            ));
            Box::pin(async {
                Ok(HttpAnswer::new(
                    400,
                    Some("application/x-amz-json-1.1"),
                    br#"{"__type":"AccountNotFoundException","Message":"x"}"#.to_vec(),
                ))
            })
        }
    }
    let canned = Arc::new(Canned::default());
    let creds = iam_join::Credentials::new("AKIAORGREADER000000", "secret", None);
    let client = OrganizationsClient::with_shared_transport(creds, canned.clone());
    let account = iam_join::AccountId::parse("555555555555").unwrap();
    let m = client.membership(iam_join::Partition::Aws, account, std::time::SystemTime::now()).await.unwrap();
    assert_eq!(m, Membership::NotInOrganization);
    let seen = canned.0.lock().unwrap().clone();
    assert_eq!(
        seen,
        [(
            "Organizations".to_owned(),
            "organizations.us-east-1.amazonaws.com".to_owned(),
            "AWSOrganizationsV20161128.DescribeAccount".to_owned()
        )]
    );
}
