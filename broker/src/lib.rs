//! ferry-broker: the server. A [`Broker`] owns the stores, the Raft replica, the client/peer
//! listener and the HTTP admin listener; `main.rs` only parses flags and calls [`Broker::start`].

pub mod admin;
pub mod clock;
pub mod config;
pub mod dedup;
pub mod group;
pub mod handlers;
pub mod metrics;
pub mod push;
pub mod recovery;
pub mod replication;
pub mod server;
pub mod state;
pub mod txn;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Config;
use replication::{RaftTiming, Replica, StartMode};

/// A running broker node.
pub struct Broker {
    addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    replica: Replica,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Broker {
    /// Opens the data directory, starts Raft, binds the listeners and starts serving. A node
    /// that has never been part of a cluster forms one from `config.peers` (or alone), unless
    /// `config.join` says it waits to be added.
    pub async fn start(config: Config) -> anyhow::Result<Broker> {
        let listener = TcpListener::bind(&config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let addr = listener.local_addr()?;
        let admin = match &config.admin_listen {
            Some(a) => {
                let l = TcpListener::bind(a)
                    .await
                    .with_context(|| format!("cannot listen on {a} (admin)"))?;
                Some(l)
            }
            None => None,
        };
        let admin_addr = admin.as_ref().map(|l| l.local_addr()).transpose()?;
        let advertised = config.advertise.clone().unwrap_or_else(|| addr.to_string());

        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
        let data_dir = config.data_dir.clone();
        let verify = config.verify_data_on_start;
        // Damaged data can be rebuilt only from another replica.
        let other_replicas = config.join || config.peers.len() > 1;
        let opened = tokio::task::spawn_blocking(move || {
            recovery::open_store(&data_dir, verify, other_replicas)
        })
        .await??;
        let store = opened.store;
        let mode = StartMode {
            resync: opened.resync,
            resync_marker: recovery::marker_path(&config.data_dir),
        };
        let timing = RaftTiming {
            heartbeat: config.raft_heartbeat,
            election_timeout: config.raft_election_timeout,
        };
        let replica = Replica::start(
            config.node_id,
            Arc::new(store.clone()),
            Arc::new(store),
            &config.data_dir.join("snapshots"),
            &timing,
            config.frame_bytes_max,
            mode,
        )
        .await?;
        // A resyncing node is a member already: it waits for the leader's log.
        if !config.join && !opened.resync {
            let members = if config.peers.is_empty() {
                [(config.node_id, advertised.clone())].into_iter().collect()
            } else {
                config.peers.clone()
            };
            replica.initialize(members).await?;
        }

        let metrics = Arc::new(metrics::Metrics::new()?);
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let ctx = Arc::new(handlers::Context {
            config: config.clone(),
            replica: replica.clone(),
            metrics: metrics.clone(),
            advertised,
            shutdown: shutdown.clone(),
            producers: Arc::default(),
            check_window: txn::CheckWindow::default(),
            groups: Arc::default(),
        });
        tasks.spawn(txn::run_coordinator(ctx.clone(), shutdown.clone()));
        tasks.spawn(group::run_group_monitor(ctx.clone(), shutdown.clone()));
        tasks.spawn(push::run_supervisor(ctx.clone(), shutdown.clone()));
        tasks.spawn(server::serve(listener, ctx, shutdown.clone()));
        if let Some(l) = admin {
            tasks.spawn(admin::serve(
                l,
                replica.clone(),
                metrics.clone(),
                config.clock.clone(),
                shutdown.clone(),
            ));
        }
        tasks.spawn(watch_leader(replica.clone(), metrics, shutdown.clone()));
        tasks.close();
        tracing::info!(node_id = config.node_id, %addr, admin = ?admin_addr, "broker started");
        Ok(Broker { addr, admin_addr, replica, shutdown, tasks })
    }

    /// The bound client/peer address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bound admin address, if enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// This node's replica (for tests and tools in-process).
    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// Stops accepting, lets in-flight requests answer, then stops Raft.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.tasks.wait().await;
        self.replica.shutdown().await;
        tracing::info!("broker stopped");
    }
}

/// Counts leader changes and keeps the Raft gauges fresh between scrapes.
async fn watch_leader(
    replica: Replica,
    metrics: Arc<metrics::Metrics>,
    shutdown: CancellationToken,
) {
    let mut rx = replica.watch_leader();
    let mut leader = rx.borrow().current_leader;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = rx.changed() => if changed.is_err() { return },
        }
        let now = rx.borrow().current_leader;
        if now != leader {
            if now.is_some() {
                metrics.raft_leader_changes.inc();
            }
            tracing::info!(old = ?leader, new = ?now, "leader changed");
            leader = now;
        }
    }
}
