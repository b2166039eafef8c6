//! The tests that need a system package beyond Debian's essential ones: a real `redis-server`
//! (started on a loopback port and stopped by each test), and `curl` (the README's commands,
//! run as written). They run through libtest-mimic so that, when a package is missing, its
//! tests show as *ignored* in the test summary (not as passed), with a line saying why. With
//! `IAM_JOIN_REQUIRE_REDIS=1` (and `IAM_JOIN_REQUIRE_TOOLS=1` for the others), as `.ci/run`
//! sets after installing them, a missing package is a failure instead.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

#[path = "../../../tests/common/mod.rs"]
mod common;
#[path = "../support/service.rs"]
mod service;

mod failover;
mod guard;
mod readme;
mod replicas;

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

/// Whether `program` runs here (`--version` exits 0).
fn found(program: &str) -> bool {
    std::process::Command::new(program).arg("--version").output().is_ok_and(|o| o.status.success())
}

type Test = Box<dyn FnOnce() -> Result<(), Failed> + Send>;

fn main() -> ExitCode {
    let args = Arguments::from_args();
    // (program, the variable that makes its absence a failure)
    let packages = [("redis-server", "IAM_JOIN_REQUIRE_REDIS"), ("curl", "IAM_JOIN_REQUIRE_TOOLS")];
    let mut missing = Vec::new();
    for (program, required_by) in packages {
        if found(program) {
            continue;
        }
        if std::env::var(required_by).as_deref() == Ok("1") {
            eprintln!("{required_by}=1 but {program} is not installed (apt-get install -y {program})");
            return ExitCode::FAILURE;
        }
        eprintln!(
            "SKIPPED: {program} is not installed, so the tests that need it are ignored \
             (apt-get install -y {program}; {required_by}=1 makes this a failure)"
        );
        missing.push(program);
    }
    let trial = |needs: &'static str, name: &str, f: Test| {
        Trial::test(name, f).with_ignored_flag(missing.contains(&needs)).with_kind(needs)
    };
    let mut trials = vec![
        trial(
            "redis-server",
            "guard::single_use_across_replicas_through_redis_and_fail_closed_while_it_is_down",
            Box::new(run(guard::single_use_across_replicas_through_redis_and_fail_closed_while_it_is_down)),
        ),
        trial(
            "redis-server",
            "guard::claims_survive_a_lost_reply_and_a_redis_restart_at_the_first_attempt",
            Box::new(run(guard::claims_survive_a_lost_reply_and_a_redis_restart_at_the_first_attempt)),
        ),
        trial(
            "redis-server",
            "replicas::three_replicas_share_challenges_single_use_redis_outages_and_reloads",
            Box::new(run(replicas::three_replicas_share_challenges_single_use_redis_outages_and_reloads)),
        ),
        trial(
            "redis-server",
            "replicas::replicas_idle_during_a_redis_restart_join_at_once_and_claims_end_with_the_challenge",
            Box::new(run(
                replicas::replicas_idle_during_a_redis_restart_join_at_once_and_claims_end_with_the_challenge,
            )),
        ),
        trial(
            "redis-server",
            "replicas::one_issued_challenge_is_one_join_across_replicas_whatever_its_spelling",
            Box::new(run(replicas::one_issued_challenge_is_one_join_across_replicas_whatever_its_spelling)),
        ),
        trial(
            "redis-server",
            "failover::a_request_allowed_before_a_sentinel_failover_is_refused_after_it_at_every_replica",
            Box::new(run(failover::a_request_allowed_before_a_sentinel_failover_is_refused_after_it_at_every_replica)),
        ),
        trial(
            "redis-server",
            "failover::without_min_replicas_a_failover_forgets_unreplicated_claims",
            Box::new(run(failover::without_min_replicas_a_failover_forgets_unreplicated_claims)),
        ),
        trial(
            "bash",
            "readme::the_operator_guide_runs_as_written",
            Box::new(|| {
                readme::the_operator_guide_runs_as_written();
                Ok(())
            }),
        ),
        trial(
            "curl",
            "readme::try_the_service_offline_runs_as_written",
            Box::new(|| {
                readme::try_the_service_offline_runs_as_written();
                Ok(())
            }),
        ),
    ];
    // The load test is ignored by default whether or not Redis is there: run it with --ignored.
    trials.push(
        Trial::test("replicas::load_across_three_replicas", run(replicas::load_across_three_replicas))
            .with_ignored_flag(true)
            .with_kind("load"),
    );
    libtest_mimic::run(&args, trials).exit_code()
}
