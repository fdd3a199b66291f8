//! Process nemeses: kill -9, pause (SIGSTOP), resume (SIGCONT), restart,
//! and a clean SIGTERM stop.
//!
//! Everything is addressed by pid, and the free functions refuse pids that
//! could hit something other than one process (0 and negative values mean
//! process groups to `kill(2)`), init, or ourselves. [`ManagedProcess`] adds
//! the guarantee that matters in practice: it only signals a child it
//! spawned and has not yet reaped, so a recycled pid can never be hit.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};

use nix::errno::Errno;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::error::{ChaosError, Result};

/// Turns a pid into a `kill(2)` target, refusing the values that would
/// signal more than one process or a process we must never touch.
fn target_pid(pid: u32) -> Result<Pid> {
    if pid <= 1 || pid == std::process::id() {
        return Err(ChaosError::ForbiddenPid(pid));
    }
    let raw = i32::try_from(pid).map_err(|_| ChaosError::ForbiddenPid(pid))?;
    Ok(Pid::from_raw(raw))
}

fn send(pid: u32, sig: Signal) -> Result<()> {
    let target = target_pid(pid)?;
    signal::kill(target, sig).map_err(|errno| match errno {
        Errno::ESRCH => ChaosError::NoSuchProcess(pid),
        errno => ChaosError::Signal {
            pid,
            signal: sig.as_str(),
            errno,
        },
    })
}

/// Sends SIGKILL: the crash a process cannot clean up after, which is what
/// durability checks need.
pub fn kill9(pid: u32) -> Result<()> {
    send(pid, Signal::SIGKILL)
}

/// Sends SIGTERM: the polite stop, for shutting a cluster down cleanly
/// (as opposed to the crash of [`kill9`]).
pub fn terminate(pid: u32) -> Result<()> {
    send(pid, Signal::SIGTERM)
}

/// Sends SIGSTOP: the process keeps its sockets and state but stops
/// answering, like a long GC pause or a hung VM.
pub fn pause(pid: u32) -> Result<()> {
    send(pid, Signal::SIGSTOP)
}

/// Sends SIGCONT to undo [`pause`].
pub fn resume(pid: u32) -> Result<()> {
    send(pid, Signal::SIGCONT)
}

/// Whether a process with this pid exists and is not a zombie.
///
/// A killed child stays a zombie until its parent reaps it, and `kill(pid,
/// 0)` still succeeds on a zombie, so on Linux the state in `/proc` is
/// checked too.
pub fn is_alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    if raw <= 0 {
        return false;
    }
    match signal::kill(Pid::from_raw(raw), None) {
        // EPERM: it exists but belongs to someone else.
        Ok(()) | Err(Errno::EPERM) => !matches!(proc_state(pid), Some('Z' | 'X' | 'x')),
        Err(_) => false,
    }
}

/// Whether the process is stopped by a signal (paused), every thread of it.
/// Linux only; always false elsewhere. Lets tests wait for a pause to take
/// effect instead of sleeping.
///
/// `kill(SIGSTOP)` returns before the stop is complete: it wakes one thread,
/// and that thread stops the others once it is scheduled. On a loaded
/// machine the other threads can go on serving requests for milliseconds,
/// so the leader's state alone is not proof that the process is frozen.
pub fn is_stopped(pid: u32) -> bool {
    matches!(proc_state(pid), Some('T')) && all_threads_stopped(pid)
}

/// Whether every thread in `/proc/PID/task` is in a stopped state.
#[cfg(target_os = "linux")]
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.filter_map(|t| t.ok()).all(|task| {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        matches!(state_in_stat(&stat), Some('T' | 't'))
    })
}

#[cfg(not(target_os = "linux"))]
fn all_threads_stopped(_pid: u32) -> bool {
    false
}

/// The one-letter state from `/proc/PID/stat` (R, S, D, T, Z, ...).
#[cfg(target_os = "linux")]
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    state_in_stat(&stat)
}

/// The state field of a `stat` line. The command name is in parentheses and
/// may itself contain ") ", so the state is the first field after the
/// *last* ')'.
#[cfg(target_os = "linux")]
fn state_in_stat(stat: &str) -> Option<char> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.trim_start().chars().next()
}

#[cfg(not(target_os = "linux"))]
fn proc_state(_pid: u32) -> Option<char> {
    None
}

/// How to start a process again after a crash, so a nemesis can restart
/// what it killed with the same command line.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessSpec {
    /// A human name for logs (for example `"node-3"`).
    pub label: String,
    /// The program to run.
    pub program: PathBuf,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory; inherited when unset.
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// File that receives stdout and stderr (appended, so restarts keep the
    /// earlier output); inherited when unset.
    #[serde(default)]
    pub log: Option<PathBuf>,
}

impl ProcessSpec {
    /// A spec for `program` with no arguments.
    pub fn new(label: impl Into<String>, program: impl Into<PathBuf>) -> Self {
        ProcessSpec {
            label: label.into(),
            program: program.into(),
            ..ProcessSpec::default()
        }
    }

    /// Adds arguments, builder style.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    fn command(&self) -> Result<tokio::process::Command> {
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(&self.args).envs(&self.env).stdin(Stdio::null());
        if let Some(dir) = &self.cwd {
            cmd.current_dir(dir);
        }
        if let Some(log) = &self.log {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)?;
            cmd.stdout(file.try_clone()?).stderr(file);
        }
        Ok(cmd)
    }
}

/// A child process that nemeses may signal.
///
/// The pid is recorded at spawn and signals go to that pid only while the
/// child has not been reaped: once `wait`/`is_alive` has seen it exit, every
/// signal is refused, because the pid may already belong to another
/// process. Dropping it kills the child (`kill_on_drop`), so a failed test
/// does not leave stray processes behind.
#[derive(Debug)]
pub struct ManagedProcess {
    child: tokio::process::Child,
    pid: u32,
    label: String,
    spec: Option<ProcessSpec>,
    status: Option<ExitStatus>,
}

impl ManagedProcess {
    /// Spawns `cmd` (forcing `kill_on_drop`). Must run inside a tokio
    /// runtime.
    pub fn spawn(label: impl Into<String>, cmd: &mut tokio::process::Command) -> Result<Self> {
        let child = cmd.kill_on_drop(true).spawn()?;
        Self::from_child(label, child)
    }

    /// Spawns from a spec and remembers it, so [`ManagedProcess::restart`]
    /// can start the same command again.
    pub fn spawn_spec(spec: ProcessSpec) -> Result<Self> {
        let mut cmd = spec.command()?;
        let mut p = Self::spawn(spec.label.clone(), &mut cmd)?;
        p.spec = Some(spec);
        Ok(p)
    }

    /// Adopts a child spawned elsewhere (remember `kill_on_drop` there).
    pub fn from_child(label: impl Into<String>, child: tokio::process::Child) -> Result<Self> {
        let label = label.into();
        let pid = child.id().ok_or_else(|| {
            ChaosError::Io(std::io::Error::other(format!(
                "child {label:?} exited before its pid was read"
            )))
        })?;
        tracing::debug!(%label, pid, "managed process started");
        Ok(ManagedProcess {
            child,
            pid,
            label,
            spec: None,
            status: None,
        })
    }

    /// The pid recorded at spawn (still reported after exit, for logs).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The human name given at spawn.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The exit status, once the child has been reaped.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.status
    }

    /// The underlying child, for taking its stdout and the like. Do not
    /// wait on it directly: that would hide the exit from this wrapper.
    pub fn child_mut(&mut self) -> &mut tokio::process::Child {
        &mut self.child
    }

    /// Errors unless the child is still ours to signal. Not reaping between
    /// this check and the signal is what keeps the pid from being reused.
    fn ensure_unreaped(&mut self) -> Result<()> {
        if self.status.is_none() {
            if let Some(st) = self.child.try_wait()? {
                self.status = Some(st);
            }
        }
        match self.status {
            Some(_) => Err(ChaosError::Exited(self.pid)),
            None => Ok(()),
        }
    }

    /// SIGKILL the child. Call [`ManagedProcess::wait`] afterwards to reap it.
    pub fn kill9(&mut self) -> Result<()> {
        self.ensure_unreaped()?;
        tracing::info!(label = %self.label, pid = self.pid, "kill -9");
        kill9(self.pid)
    }

    /// SIGTERM the child, for a clean stop.
    pub fn terminate(&mut self) -> Result<()> {
        self.ensure_unreaped()?;
        tracing::info!(label = %self.label, pid = self.pid, "terminate (SIGTERM)");
        terminate(self.pid)
    }

    /// SIGSTOP the child.
    pub fn pause(&mut self) -> Result<()> {
        self.ensure_unreaped()?;
        tracing::info!(label = %self.label, pid = self.pid, "pause (SIGSTOP)");
        pause(self.pid)
    }

    /// SIGCONT the child.
    pub fn resume(&mut self) -> Result<()> {
        self.ensure_unreaped()?;
        tracing::info!(label = %self.label, pid = self.pid, "resume (SIGCONT)");
        resume(self.pid)
    }

    /// Whether the child is running or paused (reaps it if it has exited).
    pub fn is_alive(&mut self) -> bool {
        self.ensure_unreaped().is_ok() && is_alive(self.pid)
    }

    /// Whether the child is currently stopped by SIGSTOP (Linux only).
    pub fn is_stopped(&mut self) -> bool {
        self.ensure_unreaped().is_ok() && is_stopped(self.pid)
    }

    /// Waits for the child to exit and reaps it.
    pub async fn wait(&mut self) -> Result<ExitStatus> {
        if let Some(st) = self.status {
            return Ok(st);
        }
        let st = self.child.wait().await?;
        self.status = Some(st);
        Ok(st)
    }

    /// Kills the child if it still runs, reaps it, and starts the same
    /// spec again under a new pid. Only for processes made by
    /// [`ManagedProcess::spawn_spec`].
    pub async fn restart(&mut self) -> Result<()> {
        let spec = self.spec.clone().ok_or_else(|| {
            ChaosError::InvalidSpec(format!("{:?} has no spec to restart from", self.label))
        })?;
        if self.ensure_unreaped().is_ok() {
            // A paused process dies on SIGKILL too.
            kill9(self.pid)?;
        }
        self.wait().await?;
        *self = Self::spawn_spec(spec)?;
        tracing::info!(label = %self.label, pid = self.pid, "restarted");
        Ok(())
    }
}
