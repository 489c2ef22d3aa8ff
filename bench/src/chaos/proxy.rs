//! The fault-injecting TCP proxy behind [`super::net::ChaosNet`]'s Proxy mode (no root needed):
//! one proxy per node listens on the node's advertised loopback port and forwards to the port
//! the broker really listens on, stopping bytes while the current [`Faults`] cut the caller
//! off from that node.
//!
//! ```text
//!   node 1's broker ──► node 2's proxy (advertised 127.0.0.1:A2) ──► node 2 (127.0.0.1:L2)
//!   bench client    ──►        "                                 ──►        "
//! ```
//!
//! The proxy learns who calls from the first frame of each connection, which in the ferrymq
//! protocol is always a Handshake request: kind `Peer` with client id `node-<id>` is node `id`,
//! anything else is a client. That frame is kept back and forwarded once the connection to the
//! node is made.
//!
//! # What a cut looks like
//!
//! A cut is a blackhole, as a partition in a real network is: nothing is delivered, nothing is
//! closed, nobody is told.
//!
//! * On a connection that was already forwarding, the proxy stops *reading* both sockets. The
//!   bytes the sender writes meanwhile pile up in its kernel buffers, unacknowledged, as they
//!   would behind a lost link; once those are full the sender's writes block.
//! * A connection opened while cut is accepted (the proxy owns the port, so the TCP handshake
//!   completes) but never connected onward: it is a SYN that got lost. Its first frame waits.
//!   If the caller gives up and closes it meanwhile, the node never sees it.
//!
//! # What healing does: connections carry on
//!
//! When the cut ends, held bytes are delivered in order, and connections opened during the cut
//! are connected onward. Nothing is closed. That is what TCP does after a partition shorter
//! than its retransmission give-up time (about 15 minutes on Linux with default settings, far
//! longer than a chaos partition): it retransmits, and the data sent during the partition
//! arrives late. It is also what the Namespaces mode does for real (its drops are packet
//! drops), so a scenario behaves the same in both modes. Closing every connection on heal
//! would look tidier but would hide the interesting case, a late answer to a request that
//! timed out long ago, and would cause a burst of reconnects no network produces. Each
//! direction stays an ordered byte stream with nothing lost or duplicated, so it is also safe.
//!
//! Differences from a real partition: the caller's `connect` succeeds at once (the TCP
//! handshake is with the proxy) and only the first reply never comes; a connection opened
//! while the node's broker is down is accepted and then closed, instead of refused.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::{Bytes, BytesMut};
use ferry_protocol::frame::RequestHeader;
use ferry_protocol::messages::HandshakeRequest;
use ferry_protocol::{ApiKey, ClientKind, Decode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::net::Faults;

/// Most connections one node's proxy carries at once; accepting waits beyond it.
pub const PROXY_CONNECTIONS_MAX: usize = 1024;

/// Largest first frame the proxy reads to learn the caller. A Handshake is far smaller; a
/// connection whose first frame is larger is treated as a client's and forwarded unread.
pub const FIRST_FRAME_BYTES_MAX: usize = 64 * 1024;

/// How long a new connection may take to send its whole first frame before it is closed
/// (a ferrymq client sends its Handshake as soon as it connects).
pub const FIRST_FRAME_WAIT: Duration = Duration::from_secs(30);

/// Most bytes kept back from a connection waiting for a cut to end before it is connected
/// onward; past this the proxy stops reading it.
pub const PENDING_BYTES_MAX: usize = 64 * 1024;

/// Bytes read from a socket at a time while copying.
pub const COPY_CHUNK_BYTES: usize = 64 * 1024;

/// Longest wait to connect to a node's real port (loopback: it answers at once or refuses).
pub const NODE_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Pause after a failed `accept` (for instance out of file descriptors) before trying again.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(50);

/// Longest [`Proxies::shutdown`] waits for connection tasks to end after cancelling them.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// Lowest loopback port handed out by [`bind_loopback`].
const PORT_LOW: u32 = 20_000;

/// Number of ports [`bind_loopback`] cycles through (20000..32000, below the kernel's
/// ephemeral range, which starts at 32768 on Linux).
const PORT_SPAN: u32 = 12_000;

/// Binds a loopback port taken from a per-process counter in 20000..32000 and returns the
/// bound listener.
///
/// Ports come from below the kernel's ephemeral range: a port found by binding port 0 and
/// releasing it can be handed out again as the source port of an outgoing connection before
/// its intended owner binds it. Processes running side by side start far apart in the range.
///
/// # Errors
/// When no port in the range can be bound.
pub fn bind_loopback() -> anyhow::Result<std::net::TcpListener> {
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % PORT_SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..PORT_SPAN {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let Ok(port) = u16::try_from(PORT_LOW + n % PORT_SPAN) else { continue };
        if let Ok(listener) = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
            return Ok(listener);
        }
    }
    bail!("no free loopback port in {PORT_LOW}..{}", PORT_LOW + PORT_SPAN)
}

/// A loopback port that could be bound just now (see [`bind_loopback`]), released again for
/// a child process to bind. The per-process counter keeps this process from handing it out
/// twice; being below the ephemeral range keeps outgoing connections from taking it.
///
/// # Errors
/// When no port in the range can be bound.
pub fn free_loopback_port() -> anyhow::Result<u16> {
    let listener = bind_loopback()?;
    Ok(listener.local_addr().context("reading a bound port")?.port())
}

/// Who opened a connection, as told by its first frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// Another node's broker (a Handshake of kind `Peer` from `node-<id>`).
    Node(u64),
    /// Anything else: a producer, consumer, admin tool or bench client.
    Client,
}

/// Whether `faults` cut `caller` off from node `target`.
pub fn blocks(faults: &Faults, caller: Caller, target: u64) -> bool {
    match caller {
        Caller::Node(node) => faults.peers_cut(node, target),
        Caller::Client => faults.clients_cut(target),
    }
}

/// The caller a connection's first frame (without its length prefix) names. Anything that is
/// not a well-formed peer Handshake is a client.
pub fn caller_of(mut frame: Bytes) -> Caller {
    let Ok(header) = RequestHeader::decode(&mut frame) else { return Caller::Client };
    if header.api_key != ApiKey::Handshake {
        return Caller::Client;
    }
    let Ok(hello) = HandshakeRequest::decode(&mut frame) else { return Caller::Client };
    if hello.kind != ClientKind::Peer {
        return Caller::Client;
    }
    hello
        .client_id
        .strip_prefix("node-")
        .and_then(|id| id.parse::<u64>().ok())
        .map_or(Caller::Client, Caller::Node)
}

/// One node's proxy: where it listens and where it forwards to.
#[derive(Debug)]
pub struct Route {
    /// The node behind the proxy.
    pub node: u64,
    /// Bound on the node's advertised address.
    pub listener: std::net::TcpListener,
    /// The address the node's broker listens on.
    pub target: SocketAddr,
}

/// The running proxies of one [`super::net::ChaosNet`]: an accept task per node and a task
/// per connection, all tracked and stopped by [`Proxies::shutdown`] (or [`Proxies::stop`]).
#[derive(Debug)]
pub struct Proxies {
    faults: watch::Sender<Faults>,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl Proxies {
    /// Starts a proxy for every route, with no faults. Must be called inside a Tokio runtime.
    ///
    /// # Errors
    /// When a listener cannot be handed to Tokio.
    pub fn start(routes: Vec<Route>) -> anyhow::Result<Proxies> {
        let (faults, _) = watch::channel(Faults::default());
        let proxies =
            Proxies { faults, cancel: CancellationToken::new(), tracker: TaskTracker::new() };
        for route in routes {
            route.listener.set_nonblocking(true).context("setting a proxy listener nonblocking")?;
            let listener = TcpListener::from_std(route.listener)
                .context("handing a proxy listener to Tokio")?;
            let node = NodeEnd { node: route.node, addr: route.target };
            proxies.tracker.spawn(accept_loop(
                listener,
                node,
                proxies.faults.subscribe(),
                proxies.cancel.clone(),
                proxies.tracker.clone(),
            ));
        }
        Ok(proxies)
    }

    /// Makes `faults` the cuts in force, at once: after this returns no further byte crosses
    /// a cut (a write already under way may still land, like a packet already on the wire).
    pub fn set_faults(&self, faults: Faults) {
        self.faults.send_replace(faults);
    }

    /// Closes every listener and connection without waiting (for `Drop`).
    pub fn stop(&self) {
        self.cancel.cancel();
        self.tracker.close();
    }

    /// Closes every listener and connection and waits (bounded) for their tasks to end.
    pub async fn shutdown(&self) {
        self.stop();
        let _ = tokio::time::timeout(SHUTDOWN_WAIT, self.tracker.wait()).await;
    }
}

/// The node behind a proxy.
#[derive(Debug, Clone, Copy)]
struct NodeEnd {
    node: u64,
    addr: SocketAddr,
}

async fn accept_loop(
    listener: TcpListener,
    node: NodeEnd,
    faults: watch::Receiver<Faults>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let permits = Arc::new(Semaphore::new(PROXY_CONNECTIONS_MAX));
    loop {
        let permit = tokio::select! {
            () = cancel.cancelled() => return,
            permit = permits.clone().acquire_owned() => permit,
        };
        let Ok(permit) = permit else { return };
        let accepted = tokio::select! {
            () = cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((inbound, _)) = accepted else {
            tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
            continue;
        };
        let faults = faults.clone();
        let cancel = cancel.clone();
        tracker.spawn(async move {
            tokio::select! {
                () = cancel.cancelled() => {}
                // An error only ends this connection: both sockets close, as a peer would see
                // when the other end resets.
                _ = serve(inbound, node, faults) => {}
            }
            drop(permit);
        });
    }
}

/// Carries one connection from accept to close.
async fn serve(
    mut inbound: TcpStream,
    node: NodeEnd,
    faults: watch::Receiver<Faults>,
) -> io::Result<()> {
    let _ = inbound.set_nodelay(true);
    let mut held = BytesMut::new();
    let caller = tokio::time::timeout(FIRST_FRAME_WAIT, read_first_frame(&mut inbound, &mut held))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no first frame"))??;
    let mut to_node = Gate { faults: faults.clone(), caller, target: node.node };
    if !wait_to_connect(&mut inbound, &mut held, &mut to_node).await? {
        return Ok(()); // The caller gave up before the cut ended: the node never hears of it.
    }
    let outbound = tokio::time::timeout(NODE_CONNECT_TIMEOUT, TcpStream::connect(node.addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connecting to the node"))??;
    let _ = outbound.set_nodelay(true);
    let (in_read, in_write) = inbound.into_split();
    let (out_read, mut out_write) = outbound.into_split();
    to_node.write_all(&mut out_write, &held).await?;
    let to_caller = Gate { faults, caller, target: node.node };
    tokio::try_join!(pump(in_read, out_write, to_node), pump(out_read, in_write, to_caller))?;
    Ok(())
}

/// Reads the first frame, whole, into `held` (length prefix included) and names its caller.
async fn read_first_frame(inbound: &mut TcpStream, held: &mut BytesMut) -> io::Result<Caller> {
    let mut prefix = [0u8; 4];
    inbound.read_exact(&mut prefix).await?;
    held.extend_from_slice(&prefix);
    let len = usize::try_from(u32::from_be_bytes(prefix)).unwrap_or(usize::MAX);
    if len > FIRST_FRAME_BYTES_MAX {
        return Ok(Caller::Client);
    }
    let start = held.len();
    held.resize(start + len, 0);
    inbound.read_exact(&mut held[start..]).await?;
    Ok(caller_of(Bytes::copy_from_slice(&held[start..])))
}

/// Waits until `gate` is open, meanwhile keeping (bounded) whatever else the caller sends and
/// watching for it to give up. True when the connection should go on to the node; false when
/// the caller closed it first.
async fn wait_to_connect(
    inbound: &mut TcpStream,
    held: &mut BytesMut,
    gate: &mut Gate,
) -> io::Result<bool> {
    let mut chunk = [0u8; 4096];
    loop {
        if !gate.is_blocked() {
            return Ok(true);
        }
        let room = PENDING_BYTES_MAX.saturating_sub(held.len()).min(chunk.len());
        tokio::select! {
            open = gate.wait_open() => {
                open?;
                return Ok(true);
            }
            read = inbound.read(&mut chunk[..room]), if room > 0 => match read? {
                0 => return Ok(false),
                n => held.extend_from_slice(&chunk[..n]),
            },
        }
    }
}

/// Copies one direction of a connection while its gate is open; reads nothing while it is
/// shut, so the sender's own buffers fill as behind a lost link. End of stream is passed on
/// as a half-close (also only while open).
async fn pump(mut src: OwnedReadHalf, mut dst: OwnedWriteHalf, mut gate: Gate) -> io::Result<()> {
    let mut chunk = vec![0u8; COPY_CHUNK_BYTES];
    loop {
        gate.wait_open().await?;
        let n = tokio::select! {
            biased;
            () = gate.until_blocked() => continue,
            read = src.read(&mut chunk) => read?,
        };
        if n == 0 {
            gate.wait_open().await?;
            return dst.shutdown().await;
        }
        gate.write_all(&mut dst, &chunk[..n]).await?;
    }
}

/// Whether bytes may pass between one caller and one node, following the current faults.
struct Gate {
    faults: watch::Receiver<Faults>,
    caller: Caller,
    target: u64,
}

impl Gate {
    fn is_blocked(&self) -> bool {
        blocks(&self.faults.borrow(), self.caller, self.target)
    }

    /// Returns once bytes may pass; fails once the proxies are gone.
    async fn wait_open(&mut self) -> io::Result<()> {
        let (caller, target) = (self.caller, self.target);
        match self.faults.wait_for(|f| !blocks(f, caller, target)).await {
            Ok(_) => Ok(()),
            Err(_) => Err(io::Error::other("proxy stopped")),
        }
    }

    /// Returns once bytes may no longer pass (never, once the proxies are gone: cancellation
    /// ends the connection then).
    async fn until_blocked(&mut self) {
        let (caller, target) = (self.caller, self.target);
        if self.faults.wait_for(|f| blocks(f, caller, target)).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Writes all of `data`, pausing (and keeping the rest) whenever the gate shuts.
    async fn write_all(&mut self, dst: &mut OwnedWriteHalf, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            self.wait_open().await?;
            tokio::select! {
                biased;
                () = self.until_blocked() => {}
                written = dst.write(data) => match written? {
                    0 => return Err(io::ErrorKind::WriteZero.into()),
                    n => data = &data[n..],
                },
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // In a test a failed unwrap is a failed test, which is the point.
mod tests {
    use std::sync::atomic::AtomicUsize;

    use bytes::BufMut;
    use ferry_protocol::frame::PROTOCOL_VERSION;
    use ferry_protocol::Encode;

    use super::*;

    /// A whole Handshake frame (length prefix included) from `client_id` of `kind`.
    fn handshake_frame(client_id: &str, kind: ClientKind) -> BytesMut {
        let mut payload = BytesMut::new();
        RequestHeader { api_key: ApiKey::Handshake, api_version: 1, correlation_id: 1, flags: 0 }
            .encode(&mut payload);
        HandshakeRequest {
            version_min: PROTOCOL_VERSION,
            version_max: PROTOCOL_VERSION,
            client_id: client_id.to_string(),
            kind,
            producer_group: String::new(),
            auth_mechanism: "none".into(),
            auth_payload: Bytes::new(),
        }
        .encode(&mut payload);
        let mut frame = BytesMut::new();
        frame.put_u32(u32::try_from(payload.len()).unwrap());
        frame.extend_from_slice(&payload);
        frame
    }

    fn payload_of(frame: BytesMut) -> Bytes {
        frame.freeze().slice(4..)
    }

    #[test]
    fn first_frame_names_the_caller() {
        let peer = payload_of(handshake_frame("node-7", ClientKind::Peer));
        assert_eq!(caller_of(peer), Caller::Node(7));
        let producer = payload_of(handshake_frame("node-7", ClientKind::Producer));
        assert_eq!(caller_of(producer), Caller::Client);
        let odd_peer = payload_of(handshake_frame("broker-7", ClientKind::Peer));
        assert_eq!(caller_of(odd_peer), Caller::Client);
        assert_eq!(caller_of(Bytes::from_static(b"\x00")), Caller::Client);
        let mut produce = BytesMut::new();
        RequestHeader { api_key: ApiKey::Produce, api_version: 1, correlation_id: 2, flags: 0 }
            .encode(&mut produce);
        assert_eq!(caller_of(produce.freeze()), Caller::Client);
    }

    /// A stand-in for a node's broker on `addr`: reads one frame (the Handshake), counts it
    /// in `handshakes`, then echoes every byte.
    async fn fake_node(addr: &str, handshakes: Arc<AtomicUsize>) {
        let listener = TcpListener::bind(addr).await.unwrap();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let handshakes = handshakes.clone();
                tokio::spawn(async move {
                    let mut prefix = [0u8; 4];
                    stream.read_exact(&mut prefix).await.unwrap();
                    let mut frame = vec![0u8; u32::from_be_bytes(prefix) as usize];
                    stream.read_exact(&mut frame).await.unwrap();
                    handshakes.fetch_add(1, Ordering::SeqCst);
                    let (mut read, mut write) = stream.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
    }

    async fn connect_as(addr: &str, client_id: &str, kind: ClientKind) -> TcpStream {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(&handshake_frame(client_id, kind)).await.unwrap();
        stream
    }

    /// Sends `token` and reads until it comes back, within `wait`: everything read (bytes
    /// held back by a cut come first), or None.
    async fn echo(stream: &mut TcpStream, token: &str, wait: Duration) -> Option<String> {
        stream.write_all(token.as_bytes()).await.unwrap();
        let read = async {
            let mut seen = String::new();
            let mut chunk = [0u8; 256];
            while !seen.ends_with(token) {
                let n = stream.read(&mut chunk).await.unwrap();
                assert!(n > 0, "closed after {seen:?}");
                seen.push_str(std::str::from_utf8(&chunk[..n]).unwrap());
            }
            seen
        };
        tokio::time::timeout(wait, read).await.ok()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cut_is_a_blackhole_and_connections_carry_on_after_heal() {
        use super::super::net::{ChaosNet, NetMode};
        const SHORT: Duration = Duration::from_millis(300);
        const LONG: Duration = Duration::from_secs(5);
        tokio::time::timeout(Duration::from_secs(60), async {
            let net = ChaosNet::new(NetMode::Proxy, &[1, 2], "proxy-test").await.unwrap();
            assert_eq!(net.mode(), NetMode::Proxy);
            assert_ne!(net.listen_addr(2), net.advertised_addr(2));
            assert_eq!(
                net.peers_arg(),
                format!("1={},2={}", net.advertised_addr(1), net.advertised_addr(2))
            );
            let seen = [Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0))];
            fake_node(&net.listen_addr(1), seen[0].clone()).await;
            fake_node(&net.listen_addr(2), seen[1].clone()).await;
            let reached_2 = || seen[1].load(Ordering::SeqCst);
            let to_1 = net.advertised_addr(1);
            let to_2 = net.advertised_addr(2);

            let mut peer = connect_as(&to_2, "node-1", ClientKind::Peer).await;
            assert_eq!(echo(&mut peer, "p1;", LONG).await.unwrap(), "p1;");
            let mut client = connect_as(&to_2, "bench-1", ClientKind::Producer).await;
            assert_eq!(echo(&mut client, "c1;", LONG).await.unwrap(), "c1;");
            assert_eq!(reached_2(), 2);

            net.partition(&[vec![1], vec![2]]).await.unwrap();
            assert_eq!(echo(&mut peer, "p2;", SHORT).await, None, "an open connection hangs");
            assert_eq!(echo(&mut client, "c2;", LONG).await.unwrap(), "c2;", "clients pass");
            let mut late = connect_as(&to_2, "node-1", ClientKind::Peer).await;
            assert_eq!(echo(&mut late, "l1;", SHORT).await, None, "a new connection hangs");
            drop(connect_as(&to_2, "node-1", ClientKind::Peer).await); // gives up at once
            let mut back = connect_as(&to_1, "node-2", ClientKind::Peer).await;
            assert_eq!(echo(&mut back, "b1;", SHORT).await, None, "cut both ways");
            let mut fresh = connect_as(&to_2, "bench-2", ClientKind::Consumer).await;
            assert_eq!(echo(&mut fresh, "f1;", LONG).await.unwrap(), "f1;");
            assert_eq!(reached_2(), 3, "only clients reached node 2 during the cut");

            net.isolate_from_clients(2, true).await.unwrap();
            assert_eq!(echo(&mut client, "c3;", SHORT).await, None);
            let mut isolated = connect_as(&to_2, "bench-3", ClientKind::Producer).await;
            assert_eq!(echo(&mut isolated, "i1;", SHORT).await, None);
            let mut to_node_1 = connect_as(&to_1, "bench-4", ClientKind::Producer).await;
            assert_eq!(echo(&mut to_node_1, "t1;", LONG).await.unwrap(), "t1;");

            net.heal().await.unwrap();
            // What was held back arrives first, in order; nothing was closed.
            assert_eq!(echo(&mut peer, "p3;", LONG).await.unwrap(), "p2;p3;");
            assert_eq!(echo(&mut client, "c4;", LONG).await.unwrap(), "c3;c4;");
            assert_eq!(echo(&mut late, "l2;", LONG).await.unwrap(), "l1;l2;");
            assert_eq!(echo(&mut back, "b2;", LONG).await.unwrap(), "b1;b2;");
            assert_eq!(echo(&mut isolated, "i2;", LONG).await.unwrap(), "i1;i2;");
            let mut new_peer = connect_as(&to_2, "node-1", ClientKind::Peer).await;
            assert_eq!(echo(&mut new_peer, "n1;", LONG).await.unwrap(), "n1;");
            // The connection that gave up during the cut never reached node 2.
            assert_eq!(reached_2(), 6);

            net.shutdown().await.unwrap();
            assert!(TcpStream::connect(&to_2).await.is_err(), "the proxy is gone");
        })
        .await
        .expect("proxy test timed out");
    }

    #[test]
    fn loopback_ports_are_below_the_ephemeral_range_and_distinct() {
        let a = bind_loopback().unwrap();
        let b = bind_loopback().unwrap();
        let (pa, pb) = (a.local_addr().unwrap().port(), b.local_addr().unwrap().port());
        assert_ne!(pa, pb);
        for port in [pa, pb] {
            assert!((20_000..32_000).contains(&port), "{port}");
        }
    }
}
