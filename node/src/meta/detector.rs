//! The failure detector: on the meta leader, probes every node's API each
//! second and declares a node dead (`MarkDead`, which rebuilds its replicas
//! elsewhere; see [`super::repair`]) once it has not answered for the map's
//! `dead_after_secs`. A new meta leader starts every node's clock afresh,
//! so a leader change can only delay a declaration, never hasten one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera_proto::{pb, NodeId};
use tokio::sync::watch;

use super::mover::leads_meta;
use super::{MetaCommand, NodeState};
use crate::node::NodeInner;

/// How often nodes are probed.
const TICK: Duration = Duration::from_secs(1);
/// How long one probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Runs until `shutdown` flips.
pub async fn run(node: Arc<NodeInner>, mut shutdown: watch::Receiver<bool>) {
    let mut last_ok: HashMap<NodeId, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(TICK);
    loop {
        if leads_meta(&node) {
            check_nodes(&node, &mut last_ok).await;
        } else {
            last_ok.clear();
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
    }
}

async fn check_nodes(node: &NodeInner, last_ok: &mut HashMap<NodeId, Instant>) {
    let map = node.meta.map();
    let dead_after = Duration::from_secs(map.settings.dead_after_secs.max(1));
    let watched: Vec<_> = map
        .nodes
        .values()
        .filter(|n| n.id != node.id && map.node_states.get(&n.id) != Some(&NodeState::Dead))
        .collect();
    let probes = watched
        .iter()
        .map(|n| async move { (n.id, answers(node, &n.grpc_addr).await) });
    let now = Instant::now();
    for (id, ok) in futures::future::join_all(probes).await {
        let since = last_ok.entry(id).or_insert(now);
        if ok {
            *since = now;
            continue;
        }
        if since.elapsed() < dead_after || map.shards_on(id).is_empty() {
            continue;
        }
        tracing::warn!(node = id, silent_for = ?since.elapsed(), "declaring node dead; rebuilding its replicas elsewhere");
        if let Err(e) = node.propose_meta(MetaCommand::MarkDead(id)).await {
            tracing::warn!(node = id, "could not declare the node dead: {e}");
        }
    }
}

async fn answers(node: &NodeInner, addr: &str) -> bool {
    let probe = async {
        let mut c = node.peer_client(addr).await.ok()?;
        c.status(pb::StatusRequest {}).await.ok()
    };
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, probe).await,
        Ok(Some(_))
    )
}
