//! The observability contract of the crate docs: one `iam_join.verify` span per verification,
//! with the retries and their events inside it, timings recorded for refusals in `prepare` too,
//! and the attacker-chosen token name truncated.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use iam_join::agent::{JoinRequest, sign_join_request};
use iam_join::{Challenge, Proof};
use iam_join::{EndpointOverride, ErrorKind, RequestPolicy, ReqwestTransport, TokenSet, Verifier};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;
use tracing_subscriber::registry::LookupSpan;

use crate::common::fixtures::{TOKENS, user};

#[derive(Default)]
struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}").trim_matches('"').to_owned());
    }
}

/// What the test saw: each span by id (name, fields) and each event (message, the names of
/// the spans it sat in, innermost first).
#[derive(Default)]
struct Seen {
    spans: BTreeMap<u64, (String, BTreeMap<String, String>)>,
    events: Vec<(String, Vec<String>)>,
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Seen>>);

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
        let mut f = Fields::default();
        attrs.record(&mut f);
        self.0.lock().unwrap().spans.insert(id.into_u64(), (attrs.metadata().name().to_owned(), f.0));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        let mut f = Fields::default();
        values.record(&mut f);
        if let Some((_, fields)) = self.0.lock().unwrap().spans.get_mut(&id.into_u64()) {
            fields.extend(f.0);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut f = Fields::default();
        event.record(&mut f);
        let scope: Vec<String> =
            ctx.event_scope(event).map(|scope| scope.map(|span| span.name().to_owned()).collect()).unwrap_or_default();
        let message = f.0.get("message").cloned().unwrap_or_default();
        self.0.lock().unwrap().events.push((message, scope));
    }
}

fn verify_span(seen: &Seen) -> BTreeMap<String, String> {
    let spans: Vec<_> = seen.spans.values().filter(|(n, _)| n == "iam_join.verify").collect();
    assert_eq!(spans.len(), 1, "one iam_join.verify span per verification");
    spans[0].1.clone()
}

#[tokio::test(flavor = "current_thread")]
async fn retries_and_refusals_stay_inside_one_span_with_stable_fields() {
    let capture = Capture::default();
    let _guard = tracing_subscriber::registry().with(capture.clone()).set_default();

    // STS is down: every attempt fails, and every retry is logged inside the span.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}/", closed.local_addr().unwrap());
    drop(closed);
    let transport = ReqwestTransport::builder()
        .endpoint_override(EndpointOverride::Url(dead))
        .connect_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let v = Verifier::builder(TokenSet::from_yaml(TOKENS).unwrap())
        .policy(RequestPolicy::new())
        .transport(transport)
        .retries(2)
        .build();
    let c = iam_join::challenge::generate().unwrap();
    let raw = sign_join_request(&user(), &JoinRequest::new(&c), SystemTime::now()).unwrap();
    let e = v.verify("iam-token", Challenge::Plain(&c), Proof::Forwarded(&raw), SystemTime::now()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::StsUnavailable);
    {
        let seen = capture.0.lock().unwrap();
        let fields = verify_span(&seen);
        assert_eq!(fields["outcome"], "sts_unavailable");
        assert_eq!(fields["attempts"], "3");
        assert_eq!(fields["token"], "iam-token");
        for f in ["endpoint", "prepare_us", "sts_us", "total_us"] {
            assert!(fields.contains_key(f), "{f} in {fields:?}");
        }
        let retries: Vec<_> = seen.events.iter().filter(|(m, _)| m == "retrying STS").collect();
        assert_eq!(retries.len(), 2);
        for (_, scope) in retries.iter().copied().chain(seen.events.iter().filter(|(m, _)| m == "join refused")) {
            assert!(scope.iter().any(|s| s == "iam_join.verify"), "event outside the span: {scope:?}");
        }
    }

    // A refusal in prepare records its timing too; the token name is truncated.
    capture.0.lock().unwrap().spans.clear();
    let long = "t".repeat(10_000);
    let e = v.verify(&long, Challenge::Plain(&c), Proof::Forwarded(&raw), SystemTime::now()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TokenInvalid);
    let seen = capture.0.lock().unwrap();
    let fields = verify_span(&seen);
    assert_eq!(fields["outcome"], "token_invalid");
    assert!(fields.contains_key("prepare_us") && fields.contains_key("total_us"), "{fields:?}");
    assert!(!fields.contains_key("attempts"), "nothing was sent");
    assert_eq!(fields["token"].len(), 128 + 3, "truncated to 128 characters and ...");
    // prepare's own span sits inside, with its outcome.
    let prepare: Vec<_> = seen.spans.values().filter(|(n, _)| n == "iam_join.prepare").collect();
    assert_eq!(prepare.len(), 1);
    assert_eq!(prepare[0].1["outcome"], "token_invalid");
}
