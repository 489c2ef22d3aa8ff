//! The relay's `/metrics` endpoint: a minimal HTTP/1.1 responder on a Tokio listener (one
//! request per connection, then close), enough for a Prometheus scraper or `curl`.

use std::sync::Arc;
use std::time::Duration;

use ferry_producer::outbox::encode_text;
use prometheus::Registry;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Connections served at once; more wait in the listen backlog.
const CONNECTIONS_MAX: usize = 16;
/// Largest request head read; a longer one is refused.
const REQUEST_HEAD_BYTES_MAX: usize = 8 * 1024;
/// Time a client has to send its request and read the answer.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed accept (e.g. out of file descriptors) before the next.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// The content type of the Prometheus text format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves `GET /metrics` from `registry` until `cancel` fires, then waits for the connections
/// in progress.
pub async fn serve_metrics(listener: TcpListener, registry: Registry, cancel: CancellationToken) {
    let permits = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    let connections = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            () = cancel.cancelled() => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            () = cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _peer)) => {
                let registry = registry.clone();
                connections.spawn(async move {
                    let _permit = permit;
                    let served =
                        tokio::time::timeout(CONNECTION_TIMEOUT, answer(stream, &registry));
                    if let Ok(Err(e)) = served.await {
                        tracing::debug!(error = %e, "metrics request failed");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener cannot accept");
                tokio::time::sleep(ACCEPT_RETRY).await;
            }
        }
    }
    connections.close();
    connections.wait().await;
}

/// Reads one request head and writes the response.
async fn answer(mut stream: TcpStream, registry: &Registry) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(buf.get(..n).unwrap_or_default());
        if head.len() > REQUEST_HEAD_BYTES_MAX {
            break;
        }
    }
    let response = respond(&head, registry);
    stream.write_all(&response).await?;
    stream.shutdown().await
}

/// The full HTTP response to a request head.
pub fn respond(head: &[u8], registry: &Registry) -> Vec<u8> {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    if head.len() > REQUEST_HEAD_BYTES_MAX {
        return response(
            "431 Request Header Fields Too Large",
            "text/plain",
            "request too large\n",
        );
    }
    match (method, path) {
        ("GET", "/metrics") => match encode_text(registry) {
            Ok(text) => response("200 OK", METRICS_CONTENT_TYPE, &text),
            Err(e) => response("500 Internal Server Error", "text/plain", &format!("{e}\n")),
        },
        ("GET", _) => response("404 Not Found", "text/plain", "only /metrics is served here\n"),
        _ => response("405 Method Not Allowed", "text/plain", "use GET /metrics\n"),
    }
}

fn response(status: &str, content_type: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry_with_metrics() -> Registry {
        let registry = Registry::new();
        let _ = ferry_producer::outbox::RelayMetrics::register(&registry).unwrap();
        registry
    }

    #[test]
    fn answers_get_metrics_and_refuses_the_rest() {
        let registry = registry_with_metrics();
        let ok = String::from_utf8(respond(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", &registry))
            .unwrap();
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains(METRICS_CONTENT_TYPE));
        assert!(ok.contains("ferry_outbox_pending_rows 0"), "{ok}");
        let with_query =
            String::from_utf8(respond(b"GET /metrics?x=1 HTTP/1.1\r\n\r\n", &registry)).unwrap();
        assert!(with_query.starts_with("HTTP/1.1 200"));
        for (req, status) in [
            (&b"GET / HTTP/1.1\r\n\r\n"[..], "404"),
            (b"POST /metrics HTTP/1.1\r\n\r\n", "405"),
            (b"\r\n\r\n", "405"),
        ] {
            let r = String::from_utf8(respond(req, &registry)).unwrap();
            assert!(r.starts_with(&format!("HTTP/1.1 {status}")), "{r}");
        }
    }

    #[tokio::test]
    async fn serves_over_tcp_until_cancelled() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let server = tokio::spawn(serve_metrics(listener, registry_with_metrics(), cancel.clone()));
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        assert!(answer.contains("ferry_outbox_published_total 0"), "{answer}");
        cancel.cancel();
        server.await.unwrap();
    }
}
