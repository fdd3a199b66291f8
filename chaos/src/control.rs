//! Run-time control over a set of named links, in-process ([`ProxySet`])
//! and over the network ([`ControlServer`], [`ControlClient`]).
//!
//! # Wire protocol
//!
//! The control server speaks JSON lines over plain TCP: the client sends one
//! JSON object per line and gets exactly one JSON object per line back, in
//! order; a connection may carry any number of requests. It is easy to
//! drive from a script (`tessera-chaos ctl`, or even `nc`).
//!
//! Requests (`op` selects the operation):
//!
//! ```text
//! {"op":"list"}
//! {"op":"get","link":"n1->n3"}
//! {"op":"set","link":"n1->n3","faults":{"latency_ms":50}}      replace all faults
//! {"op":"update","link":"n1->n3","faults":{"blackhole":true}}  change only the given fields
//! {"op":"heal","link":"n1->n3"}                                 back to the link's baseline
//! {"op":"heal-all"}
//! ```
//!
//! Responses: `{"ok":true,"links":[LinkStatus...]}` with the affected links
//! (all of them for `list` and `heal-all`), or `{"ok":false,"error":"..."}`.
//!
//! The server binds where it is told and has no authentication: it is a
//! test tool, so bind it to loopback.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::error::{ChaosError, Result};
use crate::proxy::{LinkControl, LinkCounters, LinkFaults, LinkProxy, LinkSpec, Proto};

/// Longest request line the server accepts; far above any real request,
/// low enough that a stray client cannot make it buffer without bound.
pub const MAX_LINE: usize = 64 * 1024;

/// What the control API reports about one link.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinkStatus {
    /// The link's name.
    pub name: String,
    /// UDP or TCP.
    pub proto: Proto,
    /// The address actually bound (port 0 in the spec is resolved here).
    pub listen: SocketAddr,
    /// Where the link forwards to.
    pub target: SocketAddr,
    /// Faults in force now.
    pub faults: LinkFaults,
    /// Faults `heal` returns to.
    pub baseline: LinkFaults,
    /// Traffic counters since the link started.
    pub counters: LinkCounters,
}

/// A named set of running links: the in-process form of the control API,
/// shared by the proxy binary, its control server and test harnesses.
///
/// Methods take `&self`, so one `Arc<ProxySet>` can serve a control server
/// and a nemesis at once.
#[derive(Debug, Default)]
pub struct ProxySet {
    links: parking_lot::Mutex<BTreeMap<String, Arc<LinkProxy>>>,
}

impl ProxySet {
    /// An empty set.
    pub fn new() -> Self {
        ProxySet::default()
    }

    /// Starts one link and adds it under its name; fails if the name is
    /// taken or the listen address cannot be bound.
    pub async fn start(&self, spec: LinkSpec) -> Result<LinkStatus> {
        spec.validate()?;
        if self.links.lock().contains_key(&spec.name) {
            return Err(ChaosError::InvalidSpec(format!(
                "duplicate link name {:?}",
                spec.name
            )));
        }
        let proxy = Arc::new(LinkProxy::bind(&spec).await?);
        let status = status_of(&spec.name, &proxy);
        let mut links = self.links.lock();
        // Checked again: another start may have raced us while binding.
        if links.contains_key(&spec.name) {
            return Err(ChaosError::InvalidSpec(format!(
                "duplicate link name {:?}",
                spec.name
            )));
        }
        links.insert(spec.name.clone(), proxy);
        tracing::info!(link = %spec.name, proto = %spec.proto, listen = %status.listen, target = %spec.target, faults = ?spec.faults, "link started");
        Ok(status)
    }

    /// Starts every link of a config, stopping at the first failure (the
    /// links started before it keep running, so the caller can report them).
    pub async fn start_all(
        &self,
        specs: impl IntoIterator<Item = LinkSpec>,
    ) -> Result<Vec<LinkStatus>> {
        let mut out = Vec::new();
        for spec in specs {
            out.push(self.start(spec).await?);
        }
        Ok(out)
    }

    /// Stops one link and forgets it.
    pub fn stop(&self, name: &str) -> Result<()> {
        self.links
            .lock()
            .remove(name)
            .map(drop)
            .ok_or_else(|| ChaosError::UnknownLink(name.to_owned()))
    }

    /// The fault handle of one link, for nemeses that act on it directly.
    pub fn control(&self, name: &str) -> Result<LinkControl> {
        Ok(self.get_proxy(name)?.control().clone())
    }

    /// Replaces a link's faults.
    pub fn set(&self, name: &str, faults: LinkFaults) -> Result<LinkStatus> {
        let proxy = self.get_proxy(name)?;
        proxy.control().set(faults)?;
        Ok(status_of(name, &proxy))
    }

    /// Merges a JSON object of fault fields into a link's current faults,
    /// so a nemesis can add a blackhole without restating the latency.
    pub fn update(&self, name: &str, patch: &serde_json::Value) -> Result<LinkStatus> {
        let proxy = self.get_proxy(name)?;
        let next = merge_faults(&proxy.control().get(), patch)?;
        proxy.control().set(next)?;
        Ok(status_of(name, &proxy))
    }

    /// Returns one link to its baseline.
    pub fn heal(&self, name: &str) -> Result<LinkStatus> {
        let proxy = self.get_proxy(name)?;
        proxy.control().heal();
        Ok(status_of(name, &proxy))
    }

    /// Returns every link to its baseline.
    pub fn heal_all(&self) -> Vec<LinkStatus> {
        let links = self.snapshot();
        for (_, p) in &links {
            p.control().heal();
        }
        links.iter().map(|(n, p)| status_of(n, p)).collect()
    }

    /// The status of one link.
    pub fn status(&self, name: &str) -> Result<LinkStatus> {
        let proxy = self.get_proxy(name)?;
        Ok(status_of(name, &proxy))
    }

    /// The status of every link, sorted by name.
    pub fn list(&self) -> Vec<LinkStatus> {
        self.snapshot()
            .iter()
            .map(|(n, p)| status_of(n, p))
            .collect()
    }

    /// Names of all links, sorted.
    pub fn names(&self) -> Vec<String> {
        self.links.lock().keys().cloned().collect()
    }

    /// Executes one control request; never fails, errors become an
    /// `ok:false` response so the server can always answer.
    pub fn handle(&self, req: ControlRequest) -> ControlResponse {
        let result = match req {
            ControlRequest::List => Ok(self.list()),
            ControlRequest::HealAll => Ok(self.heal_all()),
            ControlRequest::Get { link } => self.status(&link).map(|s| vec![s]),
            ControlRequest::Set { link, faults } => self.set(&link, faults).map(|s| vec![s]),
            ControlRequest::Update { link, faults } => self.update(&link, &faults).map(|s| vec![s]),
            ControlRequest::Heal { link } => self.heal(&link).map(|s| vec![s]),
        };
        match result {
            Ok(links) => ControlResponse {
                ok: true,
                error: None,
                links,
            },
            Err(e) => ControlResponse {
                ok: false,
                error: Some(e.to_string()),
                links: Vec::new(),
            },
        }
    }

    fn get_proxy(&self, name: &str) -> Result<Arc<LinkProxy>> {
        self.links
            .lock()
            .get(name)
            .cloned()
            .ok_or_else(|| ChaosError::UnknownLink(name.to_owned()))
    }

    /// Copies the map out so no lock is held while statuses are built.
    fn snapshot(&self) -> Vec<(String, Arc<LinkProxy>)> {
        self.links
            .lock()
            .iter()
            .map(|(n, p)| (n.clone(), p.clone()))
            .collect()
    }
}

fn status_of(name: &str, proxy: &LinkProxy) -> LinkStatus {
    let control = proxy.control();
    LinkStatus {
        name: name.to_owned(),
        proto: proxy.proto(),
        listen: proxy.local_addr(),
        target: proxy.target(),
        faults: control.get(),
        baseline: control.baseline(),
        counters: control.counters(),
    }
}

/// Overlays the fields of a JSON object onto `current`; unknown fields and
/// non-objects are rejected so typos do not pass silently.
pub fn merge_faults(current: &LinkFaults, patch: &serde_json::Value) -> Result<LinkFaults> {
    let serde_json::Value::Object(patch) = patch else {
        return Err(ChaosError::InvalidFaults(
            "an update must be a JSON object".into(),
        ));
    };
    let mut merged = match serde_json::to_value(current)? {
        serde_json::Value::Object(m) => m,
        other => {
            return Err(ChaosError::InvalidFaults(format!(
                "faults did not serialize to an object: {other}"
            )))
        }
    };
    for (k, v) in patch {
        merged.insert(k.clone(), v.clone());
    }
    let next: LinkFaults = serde_json::from_value(serde_json::Value::Object(merged))?;
    next.validate()?;
    Ok(next)
}

/// One control request; see the module docs for the wire form.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ControlRequest {
    /// Status of every link.
    List,
    /// Status of one link.
    Get {
        /// The link's name.
        link: String,
    },
    /// Replace a link's faults (missing fields mean healthy).
    Set {
        /// The link's name.
        link: String,
        /// The new faults.
        faults: LinkFaults,
    },
    /// Change only the given fault fields of a link.
    Update {
        /// The link's name.
        link: String,
        /// A JSON object with some `LinkFaults` fields.
        faults: serde_json::Value,
    },
    /// Return a link to its baseline.
    Heal {
        /// The link's name.
        link: String,
    },
    /// Return every link to its baseline.
    HealAll,
}

/// The answer to one control request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ControlResponse {
    /// Whether the request was carried out.
    pub ok: bool,
    /// Why not, when `ok` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The links the request touched or asked about.
    #[serde(default)]
    pub links: Vec<LinkStatus>,
}

/// The network face of a [`ProxySet`]; dropping it stops serving (the
/// links themselves keep running).
#[derive(Debug)]
pub struct ControlServer {
    local_addr: SocketAddr,
    _task: JoinSet<()>,
}

impl ControlServer {
    /// Binds `addr` and serves the JSON-lines protocol for `set`.
    pub async fn bind(addr: SocketAddr, set: Arc<ProxySet>) -> Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let mut task = JoinSet::new();
        task.spawn(serve(listener, set));
        tracing::info!(%local_addr, "control server listening");
        Ok(ControlServer {
            local_addr,
            _task: task,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

async fn serve(listener: TcpListener, set: Arc<ProxySet>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let set = set.clone();
                    conns.spawn(async move {
                        if let Err(e) = serve_connection(stream, &set).await {
                            tracing::debug!(%peer, error = %e, "control connection ended with error");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn serve_connection(stream: TcpStream, set: &ProxySet) -> Result<()> {
    let (r, mut w) = stream.into_split();
    let mut reader = BufReader::new(r);
    let mut line = Vec::new();
    loop {
        line.clear();
        let limit = u64::try_from(MAX_LINE + 1).unwrap_or(u64::MAX);
        let n = (&mut reader)
            .take(limit)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        if line.last() != Some(&b'\n') && line.len() > MAX_LINE {
            let resp = error_response(format!("request line longer than {MAX_LINE} bytes"));
            write_line(&mut w, &resp).await?;
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        let resp = match serde_json::from_str::<ControlRequest>(text) {
            Ok(req) => {
                tracing::info!(?req, "control request");
                set.handle(req)
            }
            Err(e) => error_response(format!("bad request: {e}")),
        };
        write_line(&mut w, &resp).await?;
    }
}

fn error_response(error: String) -> ControlResponse {
    ControlResponse {
        ok: false,
        error: Some(error),
        links: Vec::new(),
    }
}

async fn write_line<W: AsyncWriteExt + Unpin, T: Serialize>(w: &mut W, value: &T) -> Result<()> {
    let mut out = serde_json::to_vec(value)?;
    out.push(b'\n');
    w.write_all(&out).await?;
    w.flush().await?;
    Ok(())
}

/// A connection to a control server; one request at a time, in order.
#[derive(Debug)]
pub struct ControlClient {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl ControlClient {
    /// Connects to a control server.
    pub async fn connect(addr: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        let (r, w) = stream.into_split();
        Ok(ControlClient {
            reader: BufReader::new(r),
            writer: w,
        })
    }

    /// Sends one request and returns the raw response, `ok:false` included.
    pub async fn request(&mut self, req: &ControlRequest) -> Result<ControlResponse> {
        write_line(&mut self.writer, req).await?;
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).await?;
        if n == 0 {
            return Err(ChaosError::Control("server closed the connection".into()));
        }
        Ok(serde_json::from_str(line.trim())?)
    }

    /// Sends one request and turns an `ok:false` answer into an error, for
    /// callers that only care about success.
    pub async fn call(&mut self, req: &ControlRequest) -> Result<Vec<LinkStatus>> {
        let resp = self.request(req).await?;
        if resp.ok {
            Ok(resp.links)
        } else {
            Err(ChaosError::Control(resp.error.unwrap_or_else(|| {
                "request failed without a reason".into()
            })))
        }
    }
}
