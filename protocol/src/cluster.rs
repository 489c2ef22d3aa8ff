//! The cluster client: finds the leader from a bootstrap list, follows `NotLeader` redirects and
//! leader changes, and retries retriable errors with capped exponential backoff until a deadline,
//! after which it surfaces [`ClientError::Unreachable`].
//!
//! Callers: `ferry-producer`, `ferry-consumer`, `ferryctl`, `ferry-bench`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::api::ErrorCode;
use crate::client::{ClientError, ConnectOptions, Connection};
use crate::messages::Request;
use crate::wire::Decode;

/// How a [`ClusterClient`] retries.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Give up on a request after this long (then `Unreachable`).
    pub deadline: Duration,
    /// First pause after a retriable failure.
    pub backoff_initial: Duration,
    /// Longest pause between attempts.
    pub backoff_max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            deadline: Duration::from_secs(30),
            backoff_initial: Duration::from_millis(20),
            backoff_max: Duration::from_secs(1),
        }
    }
}

/// Options for a [`ClusterClient`].
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// `host:port` of one or more brokers.
    pub bootstrap: Vec<String>,
    /// Per-connection options (identity, bounds, timeouts).
    pub connect: ConnectOptions,
    /// Retry behaviour.
    pub retry: RetryPolicy,
}

impl ClusterOptions {
    /// Options for `bootstrap` (a comma-separated list is split) with default bounds.
    pub fn new(bootstrap: &str, connect: ConnectOptions) -> Self {
        ClusterOptions { bootstrap: split_addrs(bootstrap), connect, retry: RetryPolicy::default() }
    }
}

/// Whether `addr` looks like `host:port` with a numeric port (the host is left to the
/// resolver). Used to check bootstrap lists before connecting.
pub fn is_host_port(addr: &str) -> bool {
    match addr.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok(),
        None => false,
    }
}

/// Splits and checks a bootstrap list: at least one address, each `host:port`.
///
/// # Errors
/// A sentence naming what is wrong, for a configuration error.
pub fn parse_bootstrap(list: &str) -> Result<Vec<String>, String> {
    let addrs = split_addrs(list);
    if addrs.is_empty() {
        return Err("bootstrap is empty; expected host:port[,host:port...]".into());
    }
    if let Some(bad) = addrs.iter().find(|a| !is_host_port(a)) {
        return Err(format!("bootstrap address {bad:?} is not host:port"));
    }
    Ok(addrs)
}

/// Splits `a:1, b:2` into addresses, dropping empty items.
pub fn split_addrs(list: &str) -> Vec<String> {
    list.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
}

#[derive(Default)]
struct Route {
    /// Every address known: bootstrap first, then those learned from handshakes.
    known: Vec<String>,
    /// Where the leader is believed to be.
    leader_addr: Option<String>,
    /// The open connection to the believed leader.
    conn: Option<Connection>,
    /// Round-robin position in `known` for the next blind attempt.
    next: usize,
}

struct Inner {
    opts: ClusterOptions,
    route: Mutex<Route>,
    /// Serialises reconnects so a burst of failing calls opens one connection, not hundreds.
    connecting: tokio::sync::Mutex<()>,
}

/// A cheap, cloneable handle that sends requests to the cluster leader.
#[derive(Clone)]
pub struct ClusterClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ClusterClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterClient").field("bootstrap", &self.inner.opts.bootstrap).finish()
    }
}

impl ClusterClient {
    /// A client for the cluster named by `opts.bootstrap`. Connects lazily.
    ///
    /// # Errors
    /// `Handshake` when the bootstrap list is empty.
    pub fn new(opts: ClusterOptions) -> Result<ClusterClient, ClientError> {
        if opts.bootstrap.is_empty() {
            return Err(ClientError::Handshake("empty bootstrap list".into()));
        }
        let route = Route { known: opts.bootstrap.clone(), ..Route::default() };
        Ok(ClusterClient {
            inner: Arc::new(Inner {
                opts,
                route: Mutex::new(route),
                connecting: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// The options this client was built with.
    pub fn options(&self) -> &ClusterOptions {
        &self.inner.opts
    }

    /// Every broker address known so far.
    pub fn known_addrs(&self) -> Vec<String> {
        self.inner.route.lock().map(|r| r.known.clone()).unwrap_or_default()
    }

    /// Sends `req` to the leader with the default request timeout, retrying as configured.
    pub async fn call<R: Request>(&self, req: &R) -> Result<R::Response, ClientError> {
        self.call_timeout(req, self.inner.opts.connect.request_timeout).await
    }

    /// Sends `req` to the leader, allowing `timeout` per attempt, retrying retriable failures
    /// (connection loss, `NotLeader`, `NoLeader`, `Busy`, timeouts) until the retry deadline.
    ///
    /// A retried write may be applied twice if an earlier attempt's response was lost.
    pub async fn call_timeout<R: Request>(
        &self,
        req: &R,
        timeout: Duration,
    ) -> Result<R::Response, ClientError> {
        let body = req.to_bytes();
        let policy = &self.inner.opts.retry;
        let started = Instant::now();
        let mut backoff = policy.backoff_initial;
        let mut attempts: u32 = 0;
        loop {
            attempts += 1;
            let outcome = match self.leader_connection().await {
                Ok(conn) => {
                    match conn.call_raw(R::API_KEY, R::API_VERSION, body.clone(), timeout).await {
                        Ok(raw) => return Ok(R::Response::decode_all(raw)?),
                        Err(e) => {
                            self.note_failure(&conn, &e);
                            e
                        }
                    }
                }
                Err(e) => e,
            };
            if !outcome.is_retriable() {
                return Err(outcome);
            }
            let elapsed = started.elapsed();
            if elapsed >= policy.deadline {
                return Err(ClientError::Unreachable {
                    attempts,
                    elapsed,
                    last: Box::new(outcome),
                });
            }
            // A redirect to a known leader is followed at once; everything else waits.
            let redirected = matches!(
                &outcome,
                ClientError::Server { code: ErrorCode::NotLeader, leader: Some(_), .. }
            );
            if !redirected || attempts > 3 {
                let pause = backoff.min(policy.deadline.saturating_sub(elapsed));
                tokio::time::sleep(jitter(pause)).await;
                backoff = (backoff * 2).min(policy.backoff_max);
            }
        }
    }

    /// Forgets the current connection after a failure and records any leader hint.
    fn note_failure(&self, conn: &Connection, error: &ClientError) {
        let Ok(mut route) = self.inner.route.lock() else {
            return;
        };
        let same = route.conn.as_ref().is_some_and(|c| c.addr() == conn.addr());
        match error {
            ClientError::Server { code: ErrorCode::NotLeader, leader, .. } => {
                if same {
                    route.conn = None;
                }
                route.leader_addr = leader.as_ref().map(|l| l.leader_addr.clone());
                if let Some(addr) = route.leader_addr.clone() {
                    if !route.known.contains(&addr) {
                        route.known.push(addr);
                    }
                }
            }
            // A node without a leader (mid-election, or removed from the cluster and still
            // campaigning) may stay that way: move on to the other known nodes.
            ClientError::Server { code: ErrorCode::NoLeader, .. } => {
                if same {
                    route.conn = None;
                }
                route.leader_addr = None;
            }
            e if e.is_connection_error() => {
                if same {
                    route.conn = None;
                }
                route.leader_addr = None;
            }
            _ => {}
        }
    }

    /// Returns the open leader connection, opening one if needed.
    async fn leader_connection(&self) -> Result<Connection, ClientError> {
        if let Some(conn) = self.current() {
            return Ok(conn);
        }
        let _guard = self.inner.connecting.lock().await;
        if let Some(conn) = self.current() {
            return Ok(conn);
        }
        let target = {
            let mut route = self.inner.route.lock().map_err(|_| ClientError::Closed)?;
            match route.leader_addr.clone() {
                Some(addr) => addr,
                None => {
                    let i = route.next % route.known.len().max(1);
                    route.next = route.next.wrapping_add(1);
                    route.known.get(i).cloned().unwrap_or_default()
                }
            }
        };
        let conn = Connection::connect(&target, &self.inner.opts.connect).await;
        let mut route = self.inner.route.lock().map_err(|_| ClientError::Closed)?;
        let conn = match conn {
            Ok(c) => c,
            Err(e) => {
                route.leader_addr = None;
                return Err(e);
            }
        };
        for node in &conn.handshake().nodes {
            if !route.known.contains(&node.addr) {
                route.known.push(node.addr.clone());
            }
        }
        // If the node we reached knows a different leader, go there next instead of paying a
        // NotLeader round trip per request.
        if let Some(hint) = &conn.handshake().leader {
            if hint.leader_addr != target && conn.handshake().node_id != hint.leader_id {
                route.leader_addr = Some(hint.leader_addr.clone());
                return Err(ClientError::Server {
                    code: ErrorCode::NotLeader,
                    message: format!("{target} is a follower"),
                    leader: Some(hint.clone()),
                    txn_state: None,
                });
            }
        }
        route.leader_addr = Some(target);
        route.conn = Some(conn.clone());
        Ok(conn)
    }

    fn current(&self) -> Option<Connection> {
        let route = self.inner.route.lock().ok()?;
        route.conn.as_ref().filter(|c| !c.is_closed()).cloned()
    }
}

/// Spreads retries of many clients apart: a pause in `[d/2, d]`.
fn jitter(d: Duration) -> Duration {
    let half = d / 2;
    half + half.mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::NodeStatusRequest;
    use crate::types::ClientKind;

    #[test]
    fn host_port_check() {
        assert!(is_host_port("127.0.0.1:7400"));
        assert!(is_host_port("broker-1.example:1"));
        assert!(!is_host_port("127.0.0.1"));
        assert!(!is_host_port(":7400"));
        assert!(!is_host_port("h:99999"));
        assert_eq!(split_addrs(" a:1, ,b:2 "), vec!["a:1".to_string(), "b:2".to_string()]);
        assert_eq!(parse_bootstrap("a:1,b:2").unwrap().len(), 2);
        assert!(parse_bootstrap(" , ").is_err());
        assert!(parse_bootstrap("a:1,b").is_err());
    }

    #[tokio::test]
    async fn unreachable_cluster_is_reported_after_the_deadline() {
        // A port nobody listens on: bind, note it, close.
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let mut opts = ClusterOptions::new(&addr, ConnectOptions::new("t", ClientKind::Admin));
        opts.retry.deadline = Duration::from_millis(300);
        let client = ClusterClient::new(opts).unwrap();
        let started = Instant::now();
        let err = client.call(&NodeStatusRequest).await.unwrap_err();
        assert!(matches!(err, ClientError::Unreachable { attempts, .. } if attempts >= 2), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(!err.is_retriable());
    }

    #[test]
    fn empty_bootstrap_is_refused() {
        let opts = ClusterOptions::new(" , ", ConnectOptions::new("t", ClientKind::Admin));
        assert!(ClusterClient::new(opts).is_err());
    }
}
