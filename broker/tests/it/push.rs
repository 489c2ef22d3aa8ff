//! Push subscriptions end to end: a real HTTP receiver in this process, signatures checked by
//! the independent implementation in `webhook.rs`, retry timing checked against a clock the
//! test moves (in-process broker), and a leader SIGKILL during delivery (three processes).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ferry_broker::clock::Clock;
use ferry_broker::{Broker, Config};
use ferry_protocol::messages::{CreateTopicRequest, NodeStatusRequest, ProduceRequest};
use ferry_protocol::push::{
    AlterPushRequest, CreatePushRequest, ListPushFailedRequest, ListPushRequest, PushAction,
    PushSubscription, ReplayPushRequest, SubscriptionStatus,
};
use ferry_protocol::{
    ClientKind, ClusterClient, ClusterOptions, ConnectOptions, Connection, ErrorCode,
    PartitionIndex,
};

use crate::harness::{batch_of, http_get, wait_for, Cluster};
use crate::receiver::{self, Reply};
use crate::webhook;

/// The manual clock's start: 2023-11-14T22:13:20Z.
const T0_MS: u64 = 1_700_000_000_000;

struct Node {
    broker: Broker,
    clock: Clock,
    conn: Connection,
    _dir: tempfile::TempDir,
}

async fn start_manual() -> Node {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0_MS);
    let config = Config {
        listen: "127.0.0.1:0".into(),
        admin_listen: Some("127.0.0.1:0".into()),
        data_dir: dir.path().to_path_buf(),
        clock: clock.clone(),
        ..Config::default()
    };
    let broker = Broker::start(config).await.unwrap();
    let opts = ConnectOptions::new("push-test", ClientKind::Admin);
    let conn = wait_for("the single node to lead", || async {
        let conn = Connection::connect(&broker.addr().to_string(), &opts).await.ok()?;
        let status = conn.call(&NodeStatusRequest).await.ok()?;
        (status.role == "leader").then_some(conn)
    })
    .await;
    Node { broker, clock, conn, _dir: dir }
}

async fn produce(conn: &Connection, topic: &str, partition: u32, values: &[&str]) {
    conn.call(&ProduceRequest {
        topic: topic.into(),
        partition: PartitionIndex(partition),
        batch: batch_of(values),
        deliver_at_ms: 0,
    })
    .await
    .unwrap();
}

/// Requests the receiver got for `id`.
fn attempts_of(rx: &receiver::Receiver, id: &str) -> Vec<receiver::Request> {
    rx.requests().into_iter().filter(|r| r.id == id).collect()
}

/// Waits until `id` was received `n` times.
async fn wait_attempts(rx: &receiver::Receiver, id: &str, n: usize) -> Vec<receiver::Request> {
    wait_for(&format!("attempt {n} of {id}"), || async {
        let got = attempts_of(rx, id);
        (got.len() >= n).then_some(got)
    })
    .await
}

/// Lets the broker run for a while and checks `id` got no further attempt.
async fn assert_no_new_attempt(rx: &receiver::Receiver, id: &str, have: usize) {
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(attempts_of(rx, id).len(), have, "{id} was sent again too early");
}

fn header<'a>(r: &'a receiver::Request, name: &str) -> Option<&'a str> {
    r.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

async fn describe(conn: &Connection, name: &str) -> PushSubscription {
    let mut list = conn.call(&ListPushRequest { name: name.into() }).await.unwrap();
    list.subscriptions.pop().unwrap()
}

async fn metrics(node: &Node) -> String {
    http_get(node.broker.admin_addr().unwrap(), "/metrics", None).await.1
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_are_signed_and_retries_follow_the_schedule() {
    let node = start_manual().await;
    let conn = &node.conn;
    conn.call(&CreateTopicRequest { name: "orders".into(), partitions: 1 }).await.unwrap();
    // The first message fails three times, the others are accepted at once.
    let rx = receiver::start(|r| {
        if r.id.ends_with(".0.0") && r.attempt <= 3 {
            Reply::Status(500)
        } else {
            Reply::Ok
        }
    })
    .await;
    let sub = conn
        .call(&CreatePushRequest {
            name: "hook".into(),
            topic: "orders".into(),
            url: rx.url(),
            schedule_ms: vec![5_000, 300_000, 1_800_000],
            timeout_ms: 2_000,
            ..CreatePushRequest::default()
        })
        .await
        .unwrap();
    assert!(sub.secret.starts_with("whsec_"), "a secret is generated: {}", sub.secret);
    assert_eq!(sub.max_attempts, 4, "schedule steps + 1");
    let dup = conn
        .call(&CreatePushRequest {
            name: "hook".into(),
            topic: "orders".into(),
            url: rx.url(),
            ..CreatePushRequest::default()
        })
        .await;
    assert_eq!(dup.unwrap_err().code(), Some(ErrorCode::SubscriptionExists));

    produce(conn, "orders", 0, &["first", "second", "third"]).await;
    for (offset, body) in ["first", "second", "third"].iter().enumerate() {
        let got = wait_attempts(&rx, &format!("hook.0.{offset}"), 1).await;
        let r = &got[0];
        assert_eq!(&r.body[..], body.as_bytes());
        assert_eq!(r.timestamp, (T0_MS / 1000).to_string(), "stamped from the broker's clock");
        let matched = webhook::verify(&[&sub.secret], &r.id, &r.timestamp, &r.signature, &r.body)
            .unwrap_or_else(|e| panic!("signature of {} does not verify: {e}", r.id));
        assert_eq!(matched, 1);
        assert!(webhook::verify(
            &["whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"],
            &r.id,
            &r.timestamp,
            &r.signature,
            &r.body
        )
        .is_err());
        assert_eq!(header(r, "ferry-topic"), Some("orders"));
        assert_eq!(header(r, "ferry-offset"), Some(offset.to_string().as_str()));
        assert_eq!(header(r, "ferry-attempt"), Some("1"));
    }

    // Attempt 2 of the first message: 5 s ± 10% after attempt 1, on the broker's clock.
    let id = "hook.0.0";
    assert_no_new_attempt(&rx, id, 1).await;
    node.clock.advance(Duration::from_millis(4_400));
    assert_no_new_attempt(&rx, id, 1).await;
    node.clock.advance(Duration::from_millis(1_200));
    let got = wait_attempts(&rx, id, 2).await;
    assert_eq!(header(&got[1], "ferry-attempt"), Some("2"));
    assert_eq!(got[1].id, got[0].id, "webhook-id is stable across retries");
    assert_eq!(got[1].timestamp, ((T0_MS + 5_600) / 1000).to_string());
    webhook::verify(&[&sub.secret], &got[1].id, &got[1].timestamp, &got[1].signature, &got[1].body)
        .unwrap();

    // Attempt 3: 5 min ± 10% later.
    node.clock.advance(Duration::from_secs(265));
    assert_no_new_attempt(&rx, id, 2).await;
    node.clock.advance(Duration::from_secs(70));
    wait_attempts(&rx, id, 3).await;
    // Attempt 4: 30 min ± 10% later, and it succeeds.
    node.clock.advance(Duration::from_secs(1_600));
    assert_no_new_attempt(&rx, id, 3).await;
    node.clock.advance(Duration::from_secs(400));
    wait_attempts(&rx, id, 4).await;
    let now = wait_for("the retry to be recorded delivered", || async {
        let s = describe(conn, "hook").await;
        (s.retrying == 0 && s.partitions[0].cursor == 3).then_some(s)
    })
    .await;
    assert_eq!(now.failed, 0);
    let text = metrics(&node).await;
    assert_eq!(metric(&text, "ferry_push_deliveries_total{result=\"http_error\"}"), 3.0);
    assert_eq!(metric(&text, "ferry_push_deliveries_total{result=\"delivered\"}"), 3.0);
    assert!(metric(&text, "ferry_push_delivery_duration_seconds_count") >= 6.0);
    // Nothing else was sent.
    assert_eq!(rx.requests().len(), 6);

    // A rotated secret: both sign during the grace period.
    let rotated = conn
        .call(&AlterPushRequest {
            name: "hook".into(),
            action: PushAction::RotateSecret,
            secret: String::new(),
            grace_ms: 60_000,
        })
        .await
        .unwrap();
    assert_ne!(rotated.secret, sub.secret);
    produce(conn, "orders", 0, &["fourth"]).await;
    let r = wait_attempts(&rx, "hook.0.3", 1).await.remove(0);
    let both = webhook::verify(
        &[&rotated.secret, &sub.secret],
        &r.id,
        &r.timestamp,
        &r.signature,
        &r.body,
    )
    .unwrap();
    assert_eq!(both, 2, "old and new secret both sign: {}", r.signature);
    node.clock.advance(Duration::from_secs(61));
    produce(conn, "orders", 0, &["fifth"]).await;
    let r = wait_attempts(&rx, "hook.0.4", 1).await.remove(0);
    assert!(webhook::verify(&[&sub.secret], &r.id, &r.timestamp, &r.signature, &r.body).is_err());
    webhook::verify(&[&rotated.secret], &r.id, &r.timestamp, &r.signature, &r.body).unwrap();
    node.broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_retry_after_exhaustion_replay_and_gone() {
    let node = start_manual().await;
    let conn = &node.conn;
    conn.call(&CreateTopicRequest { name: "t".into(), partitions: 1 }).await.unwrap();
    let rx = receiver::start(|r| match (&r.body[..], r.attempt) {
        (b"hang", 1) => Reply::Hang(Duration::from_secs(3)),
        (b"later", 1) => Reply::RetryAfter(503, 120),
        (b"never", _) => Reply::Status(500),
        (b"moved", _) => Reply::Redirect("http://127.0.0.1:9/elsewhere".into()),
        (b"huge", _) => Reply::BigBody(500, 8 << 20),
        _ => Reply::Ok,
    })
    .await;
    conn.call(&CreatePushRequest {
        name: "s".into(),
        topic: "t".into(),
        url: rx.url(),
        schedule_ms: vec![1_000],
        max_attempts: 3,
        timeout_ms: 300,
        ..CreatePushRequest::default()
    })
    .await
    .unwrap();
    produce(conn, "t", 0, &["hang", "later", "never", "moved", "huge"]).await;
    for offset in 0..5 {
        wait_attempts(&rx, &format!("s.0.{offset}"), 1).await;
    }
    let retrying = wait_for("five retries recorded", || async {
        let s = describe(conn, "s").await;
        (s.retrying == 5).then_some(s)
    })
    .await;
    assert_eq!(retrying.partitions[0].cursor, 5);
    let failed = conn
        .call(&ListPushFailedRequest {
            name: "s".into(),
            first: true,
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(failed.failed.is_empty());

    // Timeout, redirect and huge body retry after the 1 s schedule; Retry-After waits 120 s.
    node.clock.advance(Duration::from_millis(1_200));
    wait_attempts(&rx, "s.0.0", 2).await;
    wait_attempts(&rx, "s.0.2", 2).await;
    wait_attempts(&rx, "s.0.3", 2).await;
    wait_attempts(&rx, "s.0.4", 2).await;
    assert_no_new_attempt(&rx, "s.0.1", 1).await;
    node.clock.advance(Duration::from_millis(1_200));
    // The third attempt of "never", "moved" and "huge" is their last.
    wait_attempts(&rx, "s.0.2", 3).await;
    wait_attempts(&rx, "s.0.3", 3).await;
    wait_attempts(&rx, "s.0.4", 3).await;
    node.clock.advance(Duration::from_secs(118));
    wait_attempts(&rx, "s.0.1", 2).await;
    let s = wait_for("three failed", || async {
        let s = describe(conn, "s").await;
        (s.failed == 3 && s.retrying == 0).then_some(s)
    })
    .await;
    assert_eq!(s.status, SubscriptionStatus::Active);
    let failed = conn
        .call(&ListPushFailedRequest {
            name: "s".into(),
            first: true,
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let by_offset: BTreeMap<u64, _> = failed.failed.iter().map(|f| (f.offset, f)).collect();
    assert_eq!(by_offset.keys().copied().collect::<Vec<_>>(), vec![2, 3, 4]);
    assert_eq!((by_offset[&2].attempts, by_offset[&2].last_status), (3, 500));
    assert_eq!(by_offset[&3].last_status, 302);
    assert!(by_offset[&3].last_error.contains("not followed"), "{}", by_offset[&3].last_error);
    assert!(by_offset[&4].last_error.len() <= 256, "the error keeps a short prefix of the body");
    let text = wait_for("the failed gauge", || async {
        let text = metrics(&node).await;
        (metric(&text, "ferry_push_failed_messages{subscription=\"s\"}") == 3.0).then_some(text)
    })
    .await;
    assert!(metric(&text, "ferry_push_deliveries_total{result=\"timeout\"}") >= 1.0);
    // Paging: one per page.
    let page = conn
        .call(&ListPushFailedRequest {
            name: "s".into(),
            first: true,
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!((page.failed.len(), page.more), (1, true));
    let next = conn
        .call(&ListPushFailedRequest {
            name: "s".into(),
            after: (0, page.failed[0].offset),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(next.failed.len(), 2);

    // Replay one by id, then the rest by time, once the receiver accepts them.
    rx.set_policy(|_| Reply::Ok);
    let one = conn
        .call(&ReplayPushRequest { name: "s".into(), since_ms: 0, messages: vec![(0, 2)] })
        .await
        .unwrap();
    assert_eq!(one.replayed, 1);
    wait_attempts(&rx, "s.0.2", 4).await;
    let rest = conn
        .call(&ReplayPushRequest { name: "s".into(), since_ms: T0_MS, messages: vec![] })
        .await
        .unwrap();
    assert_eq!(rest.replayed, 2);
    wait_attempts(&rx, "s.0.3", 4).await;
    wait_attempts(&rx, "s.0.4", 4).await;
    wait_for("nothing failed or retrying", || async {
        let s = describe(conn, "s").await;
        (s.failed == 0 && s.retrying == 0).then_some(())
    })
    .await;

    // 410 Gone disables the subscription; resume re-enables it and the message goes again.
    rx.set_policy(|r| if r.attempt == 1 { Reply::Status(410) } else { Reply::Ok });
    produce(conn, "t", 0, &["gone"]).await;
    wait_attempts(&rx, "s.0.5", 1).await;
    let s = wait_for("disabled", || async {
        let s = describe(conn, "s").await;
        (s.status == SubscriptionStatus::Disabled).then_some(s)
    })
    .await;
    assert!(s.status_reason.contains("410"), "{}", s.status_reason);
    produce(conn, "t", 0, &["while-disabled"]).await;
    node.clock.advance(Duration::from_secs(5));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(attempts_of(&rx, "s.0.6").is_empty(), "a disabled subscription sends nothing");
    let text = wait_for("the failing gauge", || async {
        let text = metrics(&node).await;
        (metric(&text, "ferry_push_subscriptions_failing") == 1.0).then_some(text)
    })
    .await;
    assert_eq!(metric(&text, "ferry_push_deliveries_total{result=\"gone\"}"), 1.0);
    conn.call(&AlterPushRequest {
        name: "s".into(),
        action: PushAction::Resume,
        secret: String::new(),
        grace_ms: 0,
    })
    .await
    .unwrap();
    wait_attempts(&rx, "s.0.5", 2).await;
    wait_attempts(&rx, "s.0.6", 1).await;

    // Pause stops, delete forgets.
    conn.call(&AlterPushRequest {
        name: "s".into(),
        action: PushAction::Pause,
        secret: String::new(),
        grace_ms: 0,
    })
    .await
    .unwrap();
    wait_for("paused", || async {
        (describe(conn, "s").await.status == SubscriptionStatus::Paused).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    produce(conn, "t", 0, &["while-paused"]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(attempts_of(&rx, "s.0.7").is_empty(), "a paused subscription sends nothing");
    conn.call(&AlterPushRequest {
        name: "s".into(),
        action: PushAction::Delete,
        secret: String::new(),
        grace_ms: 0,
    })
    .await
    .unwrap();
    let gone = conn.call(&ListPushRequest { name: "s".into() }).await;
    assert_eq!(gone.unwrap_err().code(), Some(ErrorCode::UnknownSubscription));
    node.broker.shutdown().await;
}

#[derive(serde::Deserialize)]
struct Page {
    messages: Vec<serde_json::Value>,
    next_cursor: String,
    more: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_missed_messages_recovers_them_through_reconciliation() {
    let node = start_manual().await;
    let conn = &node.conn;
    conn.call(&CreateTopicRequest { name: "r".into(), partitions: 3 }).await.unwrap();
    // The receiver acknowledges everything but loses every third message (a crash after the
    // answer), and one message keeps failing.
    let rx =
        receiver::start(|r| if &r.body[..] == b"p1-m4" { Reply::Status(503) } else { Reply::Ok })
            .await;
    let sub = conn
        .call(&CreatePushRequest {
            name: "rec".into(),
            topic: "r".into(),
            url: rx.url(),
            ..CreatePushRequest::default()
        })
        .await
        .unwrap();
    let mut sent = BTreeSet::new();
    for p in 0..3u32 {
        let values: Vec<String> = (0..10).map(|m| format!("p{p}-m{m}")).collect();
        let refs: Vec<&str> = values.iter().map(String::as_str).collect();
        produce(conn, "r", p, &refs).await;
        sent.extend(values);
    }
    wait_for("30 first attempts", || async {
        let ids: BTreeSet<String> = rx.requests().into_iter().map(|r| r.id).collect();
        (ids.len() == 30).then_some(())
    })
    .await;
    let kept: BTreeSet<String> = rx
        .requests()
        .into_iter()
        .enumerate()
        .filter(|(i, _)| i % 3 != 0)
        .map(|(_, r)| String::from_utf8(r.body.to_vec()).unwrap())
        .collect();
    assert!(kept.len() < 30);
    wait_for("first attempts settled", || async {
        let s = describe(conn, "rec").await;
        (s.partitions.iter().all(|p| p.cursor == 10) && s.retrying == 1).then_some(())
    })
    .await;

    let admin = node.broker.admin_addr().unwrap();
    let base = "/push/subscriptions/rec/messages";
    assert_eq!(http_get(admin, base, None).await.0, 401);
    assert_eq!(http_get(admin, base, Some("whsec_wrong")).await.0, 401);
    assert_eq!(
        http_get(admin, "/push/subscriptions/nope/messages", Some(&sub.secret)).await.0,
        401
    );

    // Page through everything, 7 at a time.
    let mut cursor = String::new();
    let mut recovered = BTreeMap::new();
    let mut pages = 0;
    loop {
        let path = format!("{base}?limit=7&cursor={cursor}");
        let (code, body) = http_get(admin, &path, Some(&sub.secret)).await;
        assert_eq!(code, 200, "{body}");
        let page: Page = serde_json::from_str(&body).unwrap();
        pages += 1;
        for m in &page.messages {
            let b = webhook::base64_decode(m["body_base64"].as_str().unwrap()).unwrap();
            let text = String::from_utf8(b).unwrap();
            recovered.insert(text, m["state"].as_str().unwrap().to_string());
        }
        cursor = page.next_cursor;
        if !page.more {
            break;
        }
        assert!(pages < 20, "paging does not end");
    }
    assert_eq!(pages, 5, "30 messages in pages of 7");
    assert_eq!(recovered.keys().cloned().collect::<BTreeSet<_>>(), sent, "every message is listed");
    assert_eq!(recovered["p1-m4"], "retrying");
    assert!(recovered.iter().filter(|(k, _)| *k != "p1-m4").all(|(_, s)| s == "delivered"));
    let missed: Vec<&String> = sent.iter().filter(|m| !kept.contains(*m)).collect();
    assert!(missed.iter().all(|m| recovered.contains_key(*m)), "the missed ones are recovered");
    // Resuming from a cursor lists only what came after it.
    produce(conn, "r", 2, &["p2-m10"]).await;
    let (_, body) = http_get(admin, &format!("{base}?cursor={cursor}"), Some(&sub.secret)).await;
    let page: Page = serde_json::from_str(&body).unwrap();
    assert_eq!(page.messages.len(), 1, "{body}");
    assert_eq!(page.messages[0]["id"], "rec.2.10");

    // One message by id, with its delivery state.
    let (code, body) = http_get(admin, &format!("{base}/rec.1.4"), Some(&sub.secret)).await;
    assert_eq!(code, 200, "{body}");
    let m: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(m["state"], "retrying");
    assert_eq!(m["attempts"], 1);
    assert_eq!(m["last_status"], 503);
    assert_eq!(m["body_base64"], webhook::base64_encode(b"p1-m4"));
    assert_eq!(http_get(admin, &format!("{base}/rec.1.99"), Some(&sub.secret)).await.0, 404);
    assert_eq!(http_get(admin, &format!("{base}/other.1.4"), Some(&sub.secret)).await.0, 404);
    assert_eq!(http_get(admin, &format!("{base}/garbage"), Some(&sub.secret)).await.0, 400);
    node.broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_kill_during_delivery_loses_nothing() {
    const MESSAGES: usize = 2_000;
    let mut cluster = Cluster::start(3).await;
    let bootstrap = cluster.bootstrap();
    let client = ClusterClient::new(ClusterOptions::new(
        &bootstrap,
        ConnectOptions::new("push-test", ClientKind::Admin),
    ))
    .unwrap();
    client.call(&CreateTopicRequest { name: "k".into(), partitions: 2 }).await.unwrap();
    // A receiver that takes a few ms per request keeps requests in flight.
    let rx = receiver::start(|_| Reply::Hang(Duration::from_millis(10))).await;
    let sub = client
        .call(&CreatePushRequest {
            name: "kill".into(),
            topic: "k".into(),
            url: rx.url(),
            schedule_ms: vec![200],
            max_attempts: 50,
            concurrency: 8,
            ..CreatePushRequest::default()
        })
        .await
        .unwrap();
    for chunk in 0..(MESSAGES / 100) {
        let values: Vec<String> = (0..100).map(|i| format!("m{}", chunk * 100 + i)).collect();
        let refs: Vec<&str> = values.iter().map(String::as_str).collect();
        client
            .call(&ProduceRequest {
                topic: "k".into(),
                partition: PartitionIndex((chunk % 2) as u32),
                batch: batch_of(&refs),
                deliver_at_ms: 0,
            })
            .await
            .unwrap();
    }
    wait_for("half delivered", || async { (rx.requests().len() >= MESSAGES / 2).then_some(()) })
        .await;
    // What the leader has recorded just before it dies: below these cursors every message was
    // acknowledged by the receiver and its result committed.
    let recorded: BTreeMap<u32, u64> =
        client.call(&ListPushRequest { name: "kill".into() }).await.unwrap().subscriptions[0]
            .partitions
            .iter()
            .map(|p| (p.partition, p.cursor))
            .collect();
    assert!(recorded.values().sum::<u64>() > 0, "results are recorded while delivering");
    let old = cluster.leader().await;
    cluster.kill(old);
    let new = cluster.leader().await;
    assert_ne!(new, old);
    let all = wait_for("every message delivered", || async {
        let reqs = rx.requests();
        let ids: BTreeSet<String> = reqs.iter().map(|r| r.id.clone()).collect();
        (ids.len() == MESSAGES).then_some(reqs)
    })
    .await;
    // Only requests in flight at the kill (their results not yet committed) may go twice; a
    // message whose result was recorded is never sent again.
    let mut seen = BTreeSet::new();
    let mut repeated = Vec::new();
    for r in &all {
        if !seen.insert(r.id.clone()) {
            repeated.push(r.id.clone());
        }
        webhook::verify(&[&sub.secret], &r.id, &r.timestamp, &r.signature, &r.body).unwrap();
    }
    for id in &repeated {
        let (_, p, o) = ferry_protocol::push::parse_message_id(id).unwrap();
        assert!(o >= recorded[&p], "{id} was recorded delivered before the kill and sent again");
    }
    println!(
        "leader kill: {MESSAGES} messages, {} requests, {} sent twice (in flight at the kill)",
        all.len(),
        repeated.len()
    );
    let s = wait_for("every result recorded", || async {
        let mut list = client.call(&ListPushRequest { name: "kill".into() }).await.ok()?;
        let s = list.subscriptions.pop()?;
        let total: u64 = s.partitions.iter().map(|p| p.cursor).sum();
        (total as usize == MESSAGES).then_some(s)
    })
    .await;
    assert_eq!((s.retrying, s.failed), (0, 0));

    // The killed node comes back from its own data and the log, and knows all of it: its
    // reconciliation API (any node answers) calls every message delivered.
    cluster.restart(old);
    cluster.wait_caught_up().await;
    let admin: std::net::SocketAddr = cluster.node(old).admin_addr.parse().unwrap();
    let mut cursor = String::new();
    let mut delivered = 0;
    loop {
        let path = format!("/push/subscriptions/kill/messages?limit=1000&cursor={cursor}");
        let (code, body) = http_get(admin, &path, Some(&sub.secret)).await;
        assert_eq!(code, 200, "{body}");
        let page: Page = serde_json::from_str(&body).unwrap();
        for m in &page.messages {
            assert_eq!(m["state"], "delivered", "{m}");
            delivered += 1;
        }
        cursor = page.next_cursor;
        if !page.more {
            break;
        }
    }
    assert_eq!(delivered, MESSAGES);
}
