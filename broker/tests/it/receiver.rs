//! A scriptable loopback HTTP receiver for the push-subscription tests: it records every
//! request, counts attempts per `webhook-id`, and answers as the test's policy says (accept,
//! fail, hang, 410, Retry-After, redirect, a huge body).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------------------------------------
// Test receiver
// ---------------------------------------------------------------------------------------------

/// Largest request body the receiver accepts; larger ones get 413 and are not recorded. Well
/// above any message a test sends, so the bound never shapes a test by accident.
const RECEIVER_BODY_BYTES_MAX: usize = 16 * 1024 * 1024;

/// One POST the receiver got.
#[derive(Clone, Debug)]
pub struct Request {
    /// `webhook-id` header, or empty if it was missing (lossy UTF-8, like all header values).
    pub id: String,
    /// `webhook-timestamp` header, or empty if missing.
    pub timestamp: String,
    /// `webhook-signature` header, or empty if missing.
    pub signature: String,
    /// Every header, names lower-case, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// When the handler got the request, its body already read.
    pub received: Instant,
    /// How many requests with this `webhook-id` the receiver has seen, this one included
    /// (1-based). Counted before the policy runs, and not reset by [`Receiver::clear`].
    pub attempt: u32,
}

/// What the receiver answers, chosen per request by the policy.
#[derive(Clone, Debug)]
pub enum Reply {
    /// 200 with an empty body.
    Ok,
    /// That status with an empty body. Panics (dropping the connection) if not 100..=999.
    Status(u16),
    /// That status with a `Retry-After` header of that many seconds.
    RetryAfter(u16, u64),
    /// Sleeps that long, then answers 200. If the receiver is dropped meanwhile, answers 503
    /// at once instead, so a test never waits on a hang it has abandoned.
    Hang(Duration),
    /// 302 with that `Location`.
    Redirect(String),
    /// That status with a body of that many bytes.
    BigBody(u16, usize),
}

type Policy = Arc<dyn Fn(&Request) -> Reply + Send + Sync>;

#[derive(Default)]
struct Log {
    requests: Vec<Request>,
    attempts_by_id: HashMap<String, u32>,
}

struct Shared {
    policy: Mutex<Policy>,
    log: Mutex<Log>,
    shutdown: CancellationToken,
}

/// An HTTP endpoint on loopback that records every POST (any path) and answers as its policy
/// says. Requests other than POST get 405 and are not recorded.
///
/// Dropping it stops accepting connections, closes idle keep-alive connections, and cuts short
/// any [`Reply::Hang`] in flight.
pub struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

// A poisoned lock here only means some other test thread panicked; the data is still whole.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Starts a receiver on `127.0.0.1:0` answering with `policy`.
pub async fn start(policy: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> Receiver {
    let listener =
        tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the webhook receiver");
    let addr = listener.local_addr().expect("webhook receiver address");
    let shared = Arc::new(Shared {
        policy: Mutex::new(Arc::new(policy)),
        log: Mutex::default(),
        shutdown: CancellationToken::new(),
    });
    let app = Router::new()
        .fallback(handle)
        .layer(DefaultBodyLimit::max(RECEIVER_BODY_BYTES_MAX))
        .with_state(Arc::clone(&shared));
    let stop = shared.shutdown.clone().cancelled_owned();
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop).await {
            eprintln!("webhook receiver on {addr} failed: {e}");
        }
    });
    Receiver { addr, shared }
}

impl Receiver {
    /// URL to subscribe, `http://127.0.0.1:PORT/hook`.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Every recorded request, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        lock(&self.shared.log).requests.clone()
    }

    /// Forgets the recorded requests. Attempt counts per `webhook-id` are kept, so a
    /// redelivery after `clear` still shows its true attempt number.
    pub fn clear(&self) {
        lock(&self.shared.log).requests.clear();
    }

    /// Replaces the policy; requests already being answered keep the old one.
    pub fn set_policy(&self, policy: impl Fn(&Request) -> Reply + Send + Sync + 'static) {
        *lock(&self.shared.policy) = Arc::new(policy);
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
    }
}

fn lossy(value: &HeaderValue) -> String {
    String::from_utf8_lossy(value.as_bytes()).into_owned()
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let received = Instant::now();
    if method != Method::POST {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    let header = |name: &str| headers.get(name).map(lossy).unwrap_or_default();
    let id = header("webhook-id");
    let timestamp = header("webhook-timestamp");
    let signature = header("webhook-signature");
    let all_headers =
        headers.iter().map(|(name, value)| (name.as_str().to_owned(), lossy(value))).collect();

    // Count and record under one lock so arrival order and attempt numbers agree.
    let request = {
        let mut log = lock(&shared.log);
        let seen = log.attempts_by_id.entry(id.clone()).or_insert(0);
        *seen += 1;
        let request = Request {
            id,
            timestamp,
            signature,
            headers: all_headers,
            body,
            received,
            attempt: *seen,
        };
        log.requests.push(request.clone());
        request
    };
    // Cloned out so the policy runs with no lock held.
    let policy = Arc::clone(&lock(&shared.policy));
    let reply = policy(&request);
    respond(reply, &shared.shutdown).await
}

fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or_else(|_| panic!("Reply with invalid HTTP status {code}"))
}

async fn respond(reply: Reply, shutdown: &CancellationToken) -> Response {
    match reply {
        Reply::Ok => StatusCode::OK.into_response(),
        Reply::Status(code) => status(code).into_response(),
        Reply::RetryAfter(code, seconds) => {
            (status(code), [(header::RETRY_AFTER, seconds.to_string())]).into_response()
        }
        Reply::Hang(duration) => tokio::select! {
            () = tokio::time::sleep(duration) => StatusCode::OK.into_response(),
            () = shutdown.cancelled() => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        },
        Reply::Redirect(location) => {
            (StatusCode::FOUND, [(header::LOCATION, location)]).into_response()
        }
        Reply::BigBody(code, body_bytes) => (status(code), vec![b'x'; body_bytes]).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::tests::SPEC_SECRET;
    use crate::webhook::{sign, verify};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Answer {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Answer {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
        }
    }

    /// Sends one HTTP/1.1 request on a fresh connection (closed after the answer) to the host
    /// and port of `url`, and reads a response framed by `Content-Length`.
    async fn send(
        method: &str,
        url: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Answer {
        let host = url.strip_prefix("http://").unwrap().split('/').next().unwrap();
        let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        stream.write_all(body).await.unwrap();

        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("end of head");
        let head = String::from_utf8(raw[..head_end].to_vec()).unwrap();
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
        let headers = lines
            .map(|line| {
                let (name, value) = line.split_once(':').unwrap();
                (name.to_string(), value.trim().to_string())
            })
            .collect();
        Answer { status, headers, body: raw[head_end + 4..].to_vec() }
    }

    async fn post_signed(url: &str, id: &str, body: &[u8]) -> Answer {
        let ts = "1700000000";
        let signature = sign(SPEC_SECRET, id, ts, body);
        let headers = [
            ("webhook-id", id),
            ("webhook-timestamp", ts),
            ("webhook-signature", signature.as_str()),
            ("content-type", "application/json"),
        ];
        send("POST", url, "/hook", &headers, body).await
    }

    #[tokio::test]
    async fn receiver_records_requests_counts_attempts_and_applies_the_policy() {
        // Fails the first two attempts of each message, then accepts.
        let receiver = start(|request: &Request| match request.attempt {
            1 | 2 => Reply::Status(503),
            _ => Reply::Ok,
        })
        .await;
        let url = receiver.url();
        assert!(url.starts_with("http://127.0.0.1:") && url.ends_with("/hook"), "{url}");

        let statuses = [
            post_signed(&url, "msg_1", b"{\"n\":1}").await.status,
            post_signed(&url, "msg_1", b"{\"n\":1}").await.status,
            post_signed(&url, "msg_2", b"{\"n\":2}").await.status,
            post_signed(&url, "msg_1", b"{\"n\":1}").await.status,
        ];
        assert_eq!(statuses, [503, 503, 503, 200]);

        let requests = receiver.requests();
        let seen: Vec<(&str, u32)> = requests.iter().map(|r| (r.id.as_str(), r.attempt)).collect();
        assert_eq!(seen, [("msg_1", 1), ("msg_1", 2), ("msg_2", 1), ("msg_1", 3)]);
        for pair in requests.windows(2) {
            assert!(pair[0].received <= pair[1].received, "arrival order");
        }
        for request in &requests {
            assert_eq!(request.timestamp, "1700000000");
            let verified = verify(
                &[SPEC_SECRET],
                &request.id,
                &request.timestamp,
                &request.signature,
                &request.body,
            );
            assert_eq!(verified, Ok(1));
            assert!(request
                .headers
                .contains(&("content-type".to_string(), "application/json".to_string())));
        }
        assert_eq!(&requests[2].body[..], b"{\"n\":2}");

        // Any path is accepted (and answered by the policy: a first attempt gets 503); other
        // methods are refused and not recorded.
        receiver.clear();
        assert!(receiver.requests().is_empty());
        assert_eq!(send("POST", &url, "/elsewhere/deeper", &[], b"x").await.status, 503);
        assert_eq!(send("GET", &url, "/hook", &[], b"").await.status, 405);
        let requests = receiver.requests();
        assert_eq!(requests.len(), 1);
        // Missing webhook headers are recorded as empty, and attempt counts outlive clear().
        assert_eq!((requests[0].id.as_str(), requests[0].attempt), ("", 1));
        assert_eq!(post_signed(&url, "msg_2", b"{\"n\":2}").await.status, 503);
        assert_eq!(receiver.requests()[1].attempt, 2);
    }

    #[tokio::test]
    async fn receiver_answers_every_kind_of_reply() {
        let receiver = start(|_: &Request| Reply::Ok).await;
        let url = receiver.url();
        assert_eq!(post_signed(&url, "msg_ok", b"{}").await.status, 200);

        receiver.set_policy(|request: &Request| match &request.body[..] {
            b"retry" => Reply::RetryAfter(429, 7),
            b"redirect" => Reply::Redirect("http://127.0.0.1:9/moved".to_string()),
            b"big" => Reply::BigBody(500, 100_000),
            b"hang" => Reply::Hang(Duration::from_millis(200)),
            _ => Reply::Status(410),
        });

        let answer = post_signed(&url, "msg_retry", b"retry").await;
        assert_eq!((answer.status, answer.header("retry-after")), (429, Some("7")));

        let answer = post_signed(&url, "msg_redirect", b"redirect").await;
        assert_eq!(answer.status, 302);
        assert_eq!(answer.header("location"), Some("http://127.0.0.1:9/moved"));

        let answer = post_signed(&url, "msg_big", b"big").await;
        assert_eq!((answer.status, answer.body.len()), (500, 100_000));

        let started = Instant::now();
        assert_eq!(post_signed(&url, "msg_hang", b"hang").await.status, 200);
        assert!(started.elapsed() >= Duration::from_millis(200));

        assert_eq!(post_signed(&url, "msg_gone", b"other").await.status, 410);
        assert_eq!(receiver.requests().len(), 6);
    }

    #[tokio::test]
    async fn dropping_the_receiver_cuts_a_hang_short_and_stops_listening() {
        let receiver = start(|_: &Request| Reply::Hang(Duration::from_secs(600))).await;
        let url = receiver.url();
        let hanging = tokio::spawn({
            let url = url.clone();
            async move { post_signed(&url, "msg_hang", b"{}").await.status }
        });
        // Wait until the request is in the handler before dropping.
        while receiver.requests().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(receiver);

        let status = tokio::time::timeout(Duration::from_secs(10), hanging).await;
        assert_eq!(status.expect("hang cut short").unwrap(), 503);

        let host = url.strip_prefix("http://").unwrap().split('/').next().unwrap().to_string();
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(&host).await.is_ok() {
            assert!(Instant::now() < deadline, "receiver still listening after drop");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
