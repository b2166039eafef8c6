//! The tests that need a real `redis-server` (Debian's package), started on a loopback port and
//! stopped by each test. They run through libtest-mimic so that, when `redis-server` is not on
//! the `PATH`, they show as *ignored* in the test summary (not as passed), with a line saying
//! why. With `IAM_JOIN_REQUIRE_REDIS=1`, as `.ci/run` sets after installing the package, a
//! missing `redis-server` is a failure instead.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

#[path = "../common/mod.rs"]
mod common;

mod guard;
mod service;

use std::future::Future;
use std::process::ExitCode;

use libtest_mimic::{Arguments, Failed, Trial};

/// Runs an async test on a two-worker runtime; a panic is the test's failure.
fn run<F: Future<Output = ()> + 'static>(test: fn() -> F) -> impl FnOnce() -> Result<(), Failed> + Send + 'static {
    move || {
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap().block_on(test());
        Ok(())
    }
}

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let found = common::redis::redis_server_found();
    let required = std::env::var("IAM_JOIN_REQUIRE_REDIS").as_deref() == Ok("1");
    if !found {
        if required {
            eprintln!("IAM_JOIN_REQUIRE_REDIS=1 but redis-server is not installed (apt-get install -y redis-server)");
            return ExitCode::FAILURE;
        }
        eprintln!(
            "SKIPPED: redis-server is not installed, so the tests below are ignored \
             (apt-get install -y redis-server; IAM_JOIN_REQUIRE_REDIS=1 makes this a failure)"
        );
    }
    let trial = |name: &str, f: Box<dyn FnOnce() -> Result<(), Failed> + Send>| {
        Trial::test(name, f).with_ignored_flag(!found).with_kind("redis-server")
    };
    let mut trials = vec![
        trial(
            "guard::single_use_across_replicas_through_redis_and_fail_closed_while_it_is_down",
            Box::new(run(guard::single_use_across_replicas_through_redis_and_fail_closed_while_it_is_down)),
        ),
        trial(
            "guard::claims_survive_a_lost_reply_and_a_redis_restart_at_the_first_attempt",
            Box::new(run(guard::claims_survive_a_lost_reply_and_a_redis_restart_at_the_first_attempt)),
        ),
        trial(
            "service::three_replicas_share_challenges_single_use_redis_outages_and_reloads",
            Box::new(run(service::three_replicas_share_challenges_single_use_redis_outages_and_reloads)),
        ),
        trial(
            "service::replicas_idle_during_a_redis_restart_join_at_once_and_claims_end_with_the_challenge",
            Box::new(run(service::replicas_idle_during_a_redis_restart_join_at_once_and_claims_end_with_the_challenge)),
        ),
        trial(
            "service::one_issued_challenge_is_one_join_across_replicas_whatever_its_spelling",
            Box::new(run(service::one_issued_challenge_is_one_join_across_replicas_whatever_its_spelling)),
        ),
    ];
    // The load test is ignored by default whether or not Redis is there: run it with --ignored.
    trials.push(
        Trial::test("service::load_across_three_replicas", run(service::load_across_three_replicas))
            .with_ignored_flag(true)
            .with_kind("load"),
    );
    libtest_mimic::run(&args, trials).exit_code()
}
