//! Process nemeses against a `sleep 30` child spawned by the test.

mod common;

use std::process::Stdio;

use common::within;
use tessera_chaos::process::{self, ManagedProcess, ProcessSpec};

/// Waits, with a failure bound, for `cond` to hold. Process state changes
/// (SIGSTOP taking effect) are asynchronous and have no event to await, so
/// this yields between checks; it never asserts on elapsed time.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    within(what, async {
        let mut poll = tokio::time::interval(std::time::Duration::from_millis(1));
        while !cond() {
            poll.tick().await;
        }
    })
    .await;
}

fn sleep_cmd() -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("sleep");
    cmd.arg("30").stdin(Stdio::null()).stdout(Stdio::null());
    cmd
}

#[tokio::test]
async fn pause_resume_kill9_a_child() {
    let mut child = ManagedProcess::spawn("sleeper", &mut sleep_cmd()).expect("spawn sleep");
    let pid = child.pid();
    assert!(child.is_alive());
    assert!(process::is_alive(pid));

    child.pause().expect("pause");
    until("child stopped", || process::is_stopped(pid)).await;
    assert!(child.is_alive(), "a paused process is still alive");

    child.resume().expect("resume");
    until("child running again", || !process::is_stopped(pid)).await;
    assert!(child.is_alive());

    child.kill9().expect("kill -9");
    let status = within("child exit", child.wait()).await.expect("wait");
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9));
    }
    assert!(!child.is_alive());
    assert!(!process::is_alive(pid));
    // Once reaped, the pid may be reused: the wrapper refuses to signal it.
    assert!(matches!(child.kill9(), Err(tessera_chaos::ChaosError::Exited(p)) if p == pid));
    assert!(child.pause().is_err());
}

#[tokio::test]
async fn killed_but_unreaped_child_is_not_alive() {
    let mut child = ManagedProcess::spawn("sleeper", &mut sleep_cmd()).expect("spawn sleep");
    let pid = child.pid();
    process::kill9(pid).expect("kill -9 by pid");
    // The zombie exists until reaped; is_alive must still say no.
    until("zombie seen as dead", || !process::is_alive(pid)).await;
    within("reap", child.wait()).await.expect("wait");
}

#[tokio::test]
async fn restart_from_spec_gets_a_new_process() {
    let spec = ProcessSpec::new("sleeper", "sleep").args(["30"]);
    let mut child = ManagedProcess::spawn_spec(spec).expect("spawn");
    let first = child.pid();
    child.pause().expect("pause");
    within("restart", child.restart()).await.expect("restart");
    assert_ne!(child.pid(), first);
    assert!(child.is_alive());
    assert!(!process::is_alive(first));
    child.kill9().expect("kill");
    within("wait", child.wait()).await.expect("wait");
}

#[test]
fn dangerous_pids_are_refused() {
    for pid in [0, 1, std::process::id(), u32::MAX] {
        assert!(process::kill9(pid).is_err(), "pid {pid}");
        assert!(process::pause(pid).is_err(), "pid {pid}");
    }
    assert!(!process::is_alive(0));
    assert!(!process::is_alive(u32::MAX));
}
