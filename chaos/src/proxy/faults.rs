//! What can be wrong with a link, and the shared handle that changes it
//! while traffic flows.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};

use crate::error::{ChaosError, Result};

/// Which way a byte or datagram travels on a link.
///
/// Faults such as one-way cuts only make sense relative to the side that
/// opened the link, so the proxy names the two ways explicitly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Client (the side that connects to `listen`) towards the target.
    Forward,
    /// Target back towards the client.
    Backward,
}

/// The faults of one link. Every field defaults to "healthy", so a JSON
/// object only needs the faults it wants (`{"latency_ms":50}`).
///
/// Latency and jitter are one-way and apply to each direction, so a round
/// trip through a link with `latency_ms = 50` takes at least 100 ms, which
/// matches how region-pair latency is usually quoted as half the RTT.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LinkFaults {
    /// Added one-way delay in each direction, in milliseconds.
    pub latency_ms: u64,
    /// Extra random delay, uniform in `0..=jitter_ms`, on top of
    /// `latency_ms`. The proxy never reorders because of it: a message is
    /// never delivered before one sent earlier in the same direction.
    pub jitter_ms: u64,
    /// Probability (0..=1) that a datagram is dropped. UDP only: a TCP
    /// stream cannot lose bytes, so TCP links ignore it.
    pub drop_rate: f64,
    /// Drop everything in both directions. TCP links stop reading and
    /// forwarding instead (bytes wait, nothing is lost), and hold new
    /// connections before they reach the target.
    pub blackhole: bool,
    /// Cut client→target only (a one-way partition).
    pub cut_forward: bool,
    /// Cut target→client only (a one-way partition).
    pub cut_backward: bool,
}

impl LinkFaults {
    /// A healthy link with only a fixed one-way latency; the common case
    /// for region-pair links in the local cluster.
    pub fn with_latency(latency_ms: u64) -> Self {
        LinkFaults {
            latency_ms,
            ..LinkFaults::default()
        }
    }

    /// Rejects values that would make the proxy misbehave silently
    /// (a `drop_rate` of NaN or 2.0), so mistakes surface at `set` time.
    pub fn validate(&self) -> Result<()> {
        if !self.drop_rate.is_finite() || !(0.0..=1.0).contains(&self.drop_rate) {
            return Err(ChaosError::InvalidFaults(format!(
                "drop_rate must be within 0..=1, got {}",
                self.drop_rate
            )));
        }
        // A day of latency is certainly a typo, and huge values would
        // overflow `Instant` arithmetic on some platforms.
        const MAX_MS: u64 = 86_400_000;
        if self.latency_ms > MAX_MS || self.jitter_ms > MAX_MS {
            return Err(ChaosError::InvalidFaults(format!(
                "latency_ms and jitter_ms must be at most {MAX_MS}"
            )));
        }
        Ok(())
    }

    /// True when nothing may pass in `dir` right now (blackhole or a cut
    /// of that direction).
    pub fn blocks(&self, dir: Direction) -> bool {
        self.blackhole
            || match dir {
                Direction::Forward => self.cut_forward,
                Direction::Backward => self.cut_backward,
            }
    }

    /// Draws the one-way delay for one message: latency plus a fresh
    /// jitter sample.
    pub fn sample_delay(&self) -> Duration {
        let jitter = if self.jitter_ms == 0 {
            0
        } else {
            rand::random_range(0..=self.jitter_ms)
        };
        Duration::from_millis(self.latency_ms.saturating_add(jitter))
    }

    /// Decides whether a UDP datagram is lost to `drop_rate`.
    pub(crate) fn sample_drop(&self) -> bool {
        self.drop_rate > 0.0 && (self.drop_rate >= 1.0 || rand::random::<f64>() < self.drop_rate)
    }
}

/// Counters of one direction of a link, as a plain snapshot.
///
/// Tests and the harness use them to observe what the proxy did instead of
/// guessing from timing (for example "the datagram was dropped").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectionCounters {
    /// Datagrams (UDP) or read chunks (TCP) delivered to the other side.
    pub forwarded_packets: u64,
    /// Bytes delivered to the other side.
    pub forwarded_bytes: u64,
    /// Datagrams dropped by a fault or a full delay queue (UDP only; TCP
    /// never drops bytes).
    pub dropped_packets: u64,
    /// Bytes in the dropped datagrams.
    pub dropped_bytes: u64,
}

/// Counters of both directions of a link.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkCounters {
    /// Client→target.
    pub forward: DirectionCounters,
    /// Target→client.
    pub backward: DirectionCounters,
    /// TCP connections accepted (or UDP client sessions opened).
    pub sessions: u64,
}

impl LinkCounters {
    /// The counters of one direction, for code that is generic over it.
    pub fn dir(&self, dir: Direction) -> &DirectionCounters {
        match dir {
            Direction::Forward => &self.forward,
            Direction::Backward => &self.backward,
        }
    }
}

#[derive(Default)]
struct AtomicDir {
    fwd_packets: AtomicU64,
    fwd_bytes: AtomicU64,
    drop_packets: AtomicU64,
    drop_bytes: AtomicU64,
}

impl AtomicDir {
    fn snapshot(&self) -> DirectionCounters {
        DirectionCounters {
            forwarded_packets: self.fwd_packets.load(Ordering::Relaxed),
            forwarded_bytes: self.fwd_bytes.load(Ordering::Relaxed),
            dropped_packets: self.drop_packets.load(Ordering::Relaxed),
            dropped_bytes: self.drop_bytes.load(Ordering::Relaxed),
        }
    }
}

#[derive(Default)]
struct Stats {
    forward: AtomicDir,
    backward: AtomicDir,
    sessions: AtomicU64,
    changed: Notify,
}

impl Stats {
    fn dir(&self, dir: Direction) -> &AtomicDir {
        match dir {
            Direction::Forward => &self.forward,
            Direction::Backward => &self.backward,
        }
    }
}

struct Shared {
    faults: watch::Sender<LinkFaults>,
    baseline: parking_lot::RwLock<LinkFaults>,
    stats: Stats,
}

/// The run-time handle of one link: change its faults, read its counters.
///
/// It is cheap to clone and shared between the proxy tasks and whoever
/// drives the faults (the control server, a nemesis, a test), so a change
/// takes effect for the very next datagram or read.
///
/// A link remembers a *baseline* (the faults it was created with, such as
/// the region-pair latency of the local cluster); `heal` goes back to that
/// baseline rather than to a perfect link, so healing a partition does not
/// also erase the topology.
#[derive(Clone)]
pub struct LinkControl {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for LinkControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkControl")
            .field("faults", &self.get())
            .field("counters", &self.counters())
            .finish()
    }
}

impl Default for LinkControl {
    fn default() -> Self {
        LinkControl::healthy()
    }
}

impl LinkControl {
    /// A link whose baseline and current faults are `baseline`.
    pub fn new(baseline: LinkFaults) -> Result<Self> {
        baseline.validate()?;
        Ok(LinkControl {
            shared: Arc::new(Shared {
                faults: watch::Sender::new(baseline.clone()),
                baseline: parking_lot::RwLock::new(baseline),
                stats: Stats::default(),
            }),
        })
    }

    /// A link with no faults at all; infallible because nothing needs
    /// validating.
    pub fn healthy() -> Self {
        LinkControl {
            shared: Arc::new(Shared {
                faults: watch::Sender::new(LinkFaults::default()),
                baseline: parking_lot::RwLock::new(LinkFaults::default()),
                stats: Stats::default(),
            }),
        }
    }

    /// Replaces the current faults wholesale (fields left out of a JSON
    /// object mean "healthy"). Invalid faults leave the link unchanged.
    pub fn set(&self, faults: LinkFaults) -> Result<()> {
        faults.validate()?;
        self.shared.faults.send_replace(faults);
        Ok(())
    }

    /// Edits the current faults in place, for nemeses that add one fault on
    /// top of whatever is there (a blackhole on top of region latency).
    pub fn update(&self, edit: impl FnOnce(&mut LinkFaults)) -> Result<LinkFaults> {
        let mut next = self.get();
        edit(&mut next);
        self.set(next.clone())?;
        Ok(next)
    }

    /// Returns the link to its baseline faults.
    pub fn heal(&self) {
        let baseline = self.shared.baseline.read().clone();
        self.shared.faults.send_replace(baseline);
    }

    /// Changes what `heal` returns to, for when the topology itself changes.
    pub fn set_baseline(&self, faults: LinkFaults) -> Result<()> {
        faults.validate()?;
        *self.shared.baseline.write() = faults;
        Ok(())
    }

    /// The faults `heal` would restore.
    pub fn baseline(&self) -> LinkFaults {
        self.shared.baseline.read().clone()
    }

    /// The faults in force right now.
    pub fn get(&self) -> LinkFaults {
        self.shared.faults.borrow().clone()
    }

    /// A snapshot of the link's counters.
    pub fn counters(&self) -> LinkCounters {
        let s = &self.shared.stats;
        LinkCounters {
            forward: s.forward.snapshot(),
            backward: s.backward.snapshot(),
            sessions: s.sessions.load(Ordering::Relaxed),
        }
    }

    /// Waits until the counters satisfy `pred`, without polling: the proxy
    /// wakes waiters on every change. Wrap it in `tokio::time::timeout` to
    /// bound the wait. This is how tests learn that a datagram was dropped
    /// without sleeping for an arbitrary time.
    pub async fn wait_for_counters(
        &self,
        mut pred: impl FnMut(&LinkCounters) -> bool,
    ) -> LinkCounters {
        loop {
            let notified = self.shared.stats.changed.notified();
            tokio::pin!(notified);
            // Register before checking, so a change between the check and
            // the await cannot be missed.
            notified.as_mut().enable();
            let now = self.counters();
            if pred(&now) {
                return now;
            }
            notified.await;
        }
    }

    /// A receiver that sees every fault change; the proxy tasks use it to
    /// sleep while a TCP direction is blocked instead of spinning.
    pub(crate) fn subscribe(&self) -> watch::Receiver<LinkFaults> {
        self.shared.faults.subscribe()
    }

    /// Reads the current faults without cloning, for per-packet decisions.
    pub(crate) fn with_faults<R>(&self, f: impl FnOnce(&LinkFaults) -> R) -> R {
        f(&self.shared.faults.borrow())
    }

    pub(crate) fn record_forwarded(&self, dir: Direction, bytes: usize) {
        let d = self.shared.stats.dir(dir);
        d.fwd_packets.fetch_add(1, Ordering::Relaxed);
        d.fwd_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.shared.stats.changed.notify_waiters();
    }

    pub(crate) fn record_dropped(&self, dir: Direction, bytes: usize) {
        let d = self.shared.stats.dir(dir);
        d.drop_packets.fetch_add(1, Ordering::Relaxed);
        d.drop_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.shared.stats.changed.notify_waiters();
    }

    pub(crate) fn record_session(&self) {
        self.shared.stats.sessions.fetch_add(1, Ordering::Relaxed);
        self.shared.stats.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse_partial_json_and_validate() {
        let f: LinkFaults = serde_json::from_str(r#"{"latency_ms":50}"#).expect("parse");
        assert_eq!(f, LinkFaults::with_latency(50));
        assert!(serde_json::from_str::<LinkFaults>(r#"{"latncy_ms":50}"#).is_err());
        let bad = LinkFaults {
            drop_rate: 1.5,
            ..LinkFaults::default()
        };
        assert!(bad.validate().is_err());
        let nan = LinkFaults {
            drop_rate: f64::NAN,
            ..LinkFaults::default()
        };
        assert!(nan.validate().is_err());
    }

    #[test]
    fn blocks_by_direction() {
        let f = LinkFaults {
            cut_forward: true,
            ..LinkFaults::default()
        };
        assert!(f.blocks(Direction::Forward));
        assert!(!f.blocks(Direction::Backward));
        let b = LinkFaults {
            blackhole: true,
            ..LinkFaults::default()
        };
        assert!(b.blocks(Direction::Forward) && b.blocks(Direction::Backward));
    }

    #[test]
    fn heal_restores_baseline_and_set_rejects_invalid() {
        let c = LinkControl::new(LinkFaults::with_latency(20)).expect("valid");
        c.set(LinkFaults {
            blackhole: true,
            ..LinkFaults::default()
        })
        .expect("valid");
        assert!(c.get().blackhole);
        assert!(c
            .set(LinkFaults {
                drop_rate: -0.1,
                ..LinkFaults::default()
            })
            .is_err());
        assert!(c.get().blackhole, "invalid set must not change the link");
        c.heal();
        assert_eq!(c.get(), LinkFaults::with_latency(20));
        let f = c.update(|f| f.cut_backward = true).expect("valid");
        assert_eq!(f.latency_ms, 20);
        assert!(c.get().cut_backward);
    }

    #[test]
    fn jitter_sample_within_bounds() {
        let f = LinkFaults {
            latency_ms: 10,
            jitter_ms: 5,
            ..LinkFaults::default()
        };
        for _ in 0..100 {
            let d = f.sample_delay();
            assert!(d >= Duration::from_millis(10) && d <= Duration::from_millis(15));
        }
    }
}
