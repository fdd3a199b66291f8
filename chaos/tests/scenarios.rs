//! A brief run of every chaos scenario against a real cluster (six
//! `tessera-node` and three `tessera-router` processes with a fault proxy on
//! every link): the data invariants must hold in each. Read availability
//! and failover times are printed, not asserted: they depend on timing,
//! and `scripts/chaos.sh` holds the full-length runs to them.
//!
//! Needs the release binaries: `cargo build --release --bins` first
//! (`scripts/test.sh` does). Scenarios run one at a time (a lock), since
//! each starts its own cluster and the machine may have two cores.

use std::sync::Mutex;
use std::time::Duration;

use tessera_chaos::cluster::default_bin_dir;
use tessera_chaos::scenario::{self, RunOptions};

/// Seconds of workload per scenario: long enough for at least one fault
/// of each kind, short enough that all twelve fit well inside ten minutes.
const BRIEF_SECS: u64 = 12;
const SEED: u64 = 7;

static SERIAL: Mutex<()> = Mutex::new(());

fn brief(name: &str) {
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let bin_dir = default_bin_dir().expect("locating the binaries");
    assert!(
        bin_dir.join("tessera-node").exists() && bin_dir.join("tessera-router").exists(),
        "tessera-node/tessera-router missing in {}: run `cargo build --release --bins` first",
        bin_dir.display()
    );
    let opts = RunOptions::new(name, Duration::from_secs(BRIEF_SECS), SEED, bin_dir);
    let report = runtime
        .block_on(scenario::run(opts))
        .unwrap_or_else(|e| panic!("scenario {name} could not run: {e}"));
    eprintln!("{}", report.summary());
    assert!(report.faults_injected > 0, "{name} injected no fault");
    assert!(report.safety_ok(), "{}", report.summary());
}

#[test]
fn leader_kill() {
    brief("leader-kill");
}

#[test]
fn follower_kill() {
    brief("follower-kill");
}

#[test]
fn pause() {
    brief("pause");
}

#[test]
fn partition_minority() {
    brief("partition-minority");
}

#[test]
fn partition_leader() {
    brief("partition-leader");
}

#[test]
fn one_way() {
    brief("one-way");
}

#[test]
fn region_outage() {
    brief("region-outage");
}

#[test]
fn slow_node() {
    brief("slow-node");
}

#[test]
fn flapping_link() {
    brief("flapping-link");
}

#[test]
fn rolling_restart() {
    brief("rolling-restart");
}

#[test]
fn resize() {
    brief("resize");
}

#[test]
fn mixed() {
    brief("mixed");
}
