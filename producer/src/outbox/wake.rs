//! How an idle relay wakes: PostgreSQL relays `LISTEN` on the table's channel (the insert
//! trigger sends `NOTIFY`, whoever inserts); every relay also wakes at its next deadline
//! (poll, metrics, cleanup), since lease expiries and retry times send no notification.

use std::time::{Duration, Instant};

use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;

use super::db::{OutboxDb, TableName};
use super::metrics::RelayMetrics;

/// Wait before listening again after PostgreSQL's listener failed (polling meanwhile).
pub const LISTEN_RETRY: Duration = Duration::from_secs(30);

/// PostgreSQL: a listener on `table`'s channel. `None` elsewhere, or when `LISTEN` failed
/// (counted as a database error; the relay polls).
pub async fn listen(
    db: &OutboxDb,
    table: &TableName,
    metrics: &RelayMetrics,
) -> Option<PgListener> {
    let OutboxDb::Postgres(pool) = db else {
        return None;
    };
    let listening = async {
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(table.as_str()).await?;
        Ok::<_, sqlx::Error>(listener)
    };
    match listening.await {
        Ok(listener) => Some(listener),
        Err(e) => {
            metrics.errors_db.inc();
            tracing::warn!(error = %e, "cannot LISTEN for new outbox rows; polling only");
            None
        }
    }
}

/// Waits until `until`; returns early, with `true`, when cancelled or when the listener saw
/// an insert (or reconnected, so it may have missed one). A failed listener is dropped.
pub async fn idle(
    listener: &mut Option<PgListener>,
    until: Instant,
    cancel: &CancellationToken,
    metrics: &RelayMetrics,
) -> bool {
    let sleep = tokio::time::sleep_until(tokio::time::Instant::from_std(until));
    let Some(l) = listener.as_mut() else {
        return tokio::select! {
            () = cancel.cancelled() => true,
            () = sleep => false,
        };
    };
    let (woken, failed) = tokio::select! {
        () = cancel.cancelled() => (true, None),
        () = sleep => (false, None),
        received = l.try_recv() => match received {
            Ok(Some(_)) => (true, None),
            Ok(None) => {
                tracing::debug!("outbox listener reconnected; notifications may have been missed");
                (true, None)
            }
            Err(e) => (true, Some(e)),
        },
    };
    if let Some(e) = failed {
        metrics.errors_db.inc();
        tracing::warn!(error = %e, "outbox listener failed; polling only for now");
        *listener = None;
    }
    woken
}
