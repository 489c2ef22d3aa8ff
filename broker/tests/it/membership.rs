//! Membership changes: a fourth node joins as a learner, becomes a voter, and is removed again;
//! data produced before it joined reaches it.

use std::time::Duration;

use bytes::Bytes;
use ferry_protocol::messages::*;
use ferry_protocol::{
    ClientKind, ClusterClient, ClusterOptions, ConnectOptions, ErrorCode, NodeId, Offset,
    PartitionIndex, Record, RecordBatchBuilder,
};

use crate::harness::{batch_of, wait_for, Cluster};

fn admin(bootstrap: &str) -> ClusterClient {
    let mut opts = ConnectOptions::new("test-admin", ClientKind::Admin);
    opts.request_timeout = Duration::from_secs(60);
    ClusterClient::new(ClusterOptions::new(bootstrap, opts)).unwrap()
}

fn one_record_batch(v: &str) -> Bytes {
    batch_of(&[v])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_joins_as_voter_and_is_removed() {
    let mut cluster = Cluster::start(3).await;
    let client = admin(&cluster.bootstrap());
    client.call(&CreateTopicRequest { name: "m".into(), partitions: 1 }).await.unwrap();
    for i in 0..50 {
        let r = client
            .call(&ProduceRequest {
                topic: "m".into(),
                partition: PartitionIndex(0),
                batch: one_record_batch(&format!("v{i}")),
                deliver_at_ms: 0,
            })
            .await
            .unwrap();
        assert_eq!(r.base_offset, Offset(i));
    }

    // Enough data that the new node needs many append-entries rounds of large batches to
    // catch up (each round must finish within openraft's heartbeat-sized RPC timeout).
    let big = {
        let mut b = RecordBatchBuilder::new(0, 0, 0);
        for _ in 0..500 {
            b.push(&Record {
                timestamp_ms: 1,
                key: None,
                headers: vec![],
                value: Bytes::from(vec![7u8; 1024]),
            });
        }
        b.finish()
    };
    for _ in 0..40 {
        client
            .call(&ProduceRequest {
                topic: "m".into(),
                partition: PartitionIndex(0),
                batch: big.clone(),
                deliver_at_ms: 0,
            })
            .await
            .unwrap();
    }

    let addr = cluster.spawn_joining(4);
    client.call(&AddNodeRequest { node_id: NodeId(4), addr }).await.unwrap();
    let leader = cluster.leader().await;
    let status = cluster.status(leader).await.unwrap();
    let member = status.members.iter().find(|m| m.id == NodeId(4)).expect("node 4 is a member");
    assert!(member.voter, "node 4 was promoted to voter");
    // The new node holds everything produced before it joined.
    cluster.wait_caught_up().await;
    let s4 = cluster.status(4).await.unwrap();
    assert!(s4.applied_index >= status.commit_index.min(status.last_log_index));
    assert_eq!(s4.leader_id, Some(NodeId(leader)));

    // Removing an unknown node is refused; removing node 4 works and the cluster goes on.
    let r = client.call(&RemoveNodeRequest { node_id: NodeId(9) }).await;
    assert_eq!(r.unwrap_err().code(), Some(ErrorCode::InvalidArgument));
    client.call(&RemoveNodeRequest { node_id: NodeId(4) }).await.unwrap();
    wait_for("node 4 to leave the membership", || async {
        let s = cluster.status(cluster.leader().await).await?;
        (!s.members.iter().any(|m| m.id == NodeId(4))).then_some(())
    })
    .await;
    cluster.kill(4);
    let r = client
        .call(&ProduceRequest {
            topic: "m".into(),
            partition: PartitionIndex(0),
            batch: one_record_batch("after"),
            deliver_at_ms: 0,
        })
        .await
        .unwrap();
    assert_eq!(r.base_offset, Offset(50 + 40 * 500));
}
