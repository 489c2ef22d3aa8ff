//! The HTTP admin listener: `/metrics` (Prometheus text), `/livez` (the process and its Raft
//! replica run), `/readyz` (a leader is known and this node has applied what it stores), and
//! the push reconciliation API ([`crate::push::api`]).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::replication::Replica;

/// Entries a follower may have stored but not yet applied and still be called ready.
const READY_APPLY_LAG_MAX: u64 = 1000;

#[derive(Clone)]
struct AdminState {
    replica: Replica,
    metrics: Arc<Metrics>,
}

/// Serves the admin endpoints until `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    replica: Replica,
    metrics: Arc<Metrics>,
    clock: crate::clock::Clock,
    shutdown: CancellationToken,
) {
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .with_state(AdminState { replica: replica.clone(), metrics })
        .merge(crate::push::api::routes(replica, clock));
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(error) = result {
        tracing::error!(%error, "admin listener failed");
    }
}

async fn metrics_text(State(s): State<AdminState>) -> String {
    s.metrics.set_raft(&s.replica.raft_numbers());
    s.metrics.render()
}

async fn livez(State(s): State<AdminState>) -> (StatusCode, &'static str) {
    if s.replica.raft_numbers().running {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "raft stopped\n")
    }
}

async fn readyz(State(s): State<AdminState>) -> (StatusCode, String) {
    let n = s.replica.raft_numbers();
    let lag = n.last_log_index.saturating_sub(n.applied_index);
    let body = format!(
        "{{\"leader_id\":{},\"is_leader\":{},\"term\":{},\"applied_index\":{},\"last_log_index\":{}}}\n",
        n.leader.map_or("null".to_string(), |l| l.to_string()),
        n.is_leader,
        n.term,
        n.applied_index,
        n.last_log_index
    );
    if n.running && n.leader.is_some() && lag <= READY_APPLY_LAG_MAX {
        (StatusCode::OK, body)
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, body)
    }
}
