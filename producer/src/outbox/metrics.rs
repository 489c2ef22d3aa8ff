//! The relay's Prometheus metrics, registered once in the registry the relay is given (or its
//! own); handles are resolved at construction so the hot path does no label lookups.
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `ferry_outbox_pending_rows` | gauge | rows not yet published (refreshed every `metrics_interval`) |
//! | `ferry_outbox_oldest_pending_age_seconds` | gauge | age of the oldest pending row, 0 when none |
//! | `ferry_outbox_published_total` | counter | rows published and marked by this relay |
//! | `ferry_outbox_claims_total` | counter | claims that returned at least one row |
//! | `ferry_outbox_claimed_rows_total` | counter | rows claimed |
//! | `ferry_outbox_blocked_rows_total` | counter | claimed rows released because an earlier row of their key was another relay's |
//! | `ferry_outbox_errors_total{kind="db"}` | counter | failed database statements (the relay retries) |
//! | `ferry_outbox_errors_total{kind="broker"}` | counter | rows whose publish failed (rejected or broker unreachable) |

use std::time::Duration;

use prometheus::{Gauge, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use super::error::Result;

/// Metric handles of one relay.
#[derive(Debug, Clone)]
pub struct RelayMetrics {
    pub(crate) pending_rows: IntGauge,
    pub(crate) oldest_pending_age_seconds: Gauge,
    pub(crate) published_total: IntCounter,
    pub(crate) claims_total: IntCounter,
    pub(crate) claimed_rows_total: IntCounter,
    pub(crate) blocked_rows_total: IntCounter,
    pub(crate) errors_db: IntCounter,
    pub(crate) errors_broker: IntCounter,
}

impl RelayMetrics {
    /// Creates the metrics and registers them in `registry`.
    ///
    /// # Errors
    /// When a metric of the same name is already registered there (one relay per registry).
    pub fn register(registry: &Registry) -> Result<RelayMetrics> {
        let errors = IntCounterVec::new(
            Opts::new("ferry_outbox_errors_total", "Outbox relay failures by where they happened"),
            &["kind"],
        )?;
        let metrics = RelayMetrics {
            pending_rows: IntGauge::new(
                "ferry_outbox_pending_rows",
                "Outbox rows not yet published",
            )?,
            oldest_pending_age_seconds: Gauge::new(
                "ferry_outbox_oldest_pending_age_seconds",
                "Age of the oldest pending outbox row (0 when none)",
            )?,
            published_total: IntCounter::new(
                "ferry_outbox_published_total",
                "Outbox rows published and marked by this relay",
            )?,
            claims_total: IntCounter::new(
                "ferry_outbox_claims_total",
                "Claims that returned at least one outbox row",
            )?,
            claimed_rows_total: IntCounter::new(
                "ferry_outbox_claimed_rows_total",
                "Outbox rows claimed by this relay",
            )?,
            blocked_rows_total: IntCounter::new(
                "ferry_outbox_blocked_rows_total",
                "Claimed rows released because an earlier row of their key was another relay's",
            )?,
            errors_db: errors.with_label_values(&["db"]),
            errors_broker: errors.with_label_values(&["broker"]),
        };
        registry.register(Box::new(metrics.pending_rows.clone()))?;
        registry.register(Box::new(metrics.oldest_pending_age_seconds.clone()))?;
        registry.register(Box::new(metrics.published_total.clone()))?;
        registry.register(Box::new(metrics.claims_total.clone()))?;
        registry.register(Box::new(metrics.claimed_rows_total.clone()))?;
        registry.register(Box::new(metrics.blocked_rows_total.clone()))?;
        registry.register(Box::new(errors))?;
        Ok(metrics)
    }

    /// Sets the pending gauges.
    pub(crate) fn set_pending(&self, pending: u64, oldest: Option<Duration>) {
        self.pending_rows.set(i64::try_from(pending).unwrap_or(i64::MAX));
        self.oldest_pending_age_seconds.set(oldest.map_or(0.0, |d| d.as_secs_f64()));
    }
}

/// The registry's metrics in the Prometheus text format (`text/plain; version=0.0.4`).
///
/// # Errors
/// When encoding fails (a metric with an invalid name; not expected).
pub fn encode_text(registry: &Registry) -> Result<String> {
    Ok(prometheus::TextEncoder::new().encode_to_string(&registry.gather())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_register_once_per_registry_and_encode() {
        let registry = Registry::new();
        let m = RelayMetrics::register(&registry).unwrap();
        assert!(RelayMetrics::register(&registry).is_err());
        m.published_total.inc_by(3);
        m.errors_db.inc();
        m.set_pending(7, Some(Duration::from_millis(1500)));
        let text = encode_text(&registry).unwrap();
        for line in [
            "ferry_outbox_published_total 3",
            "ferry_outbox_errors_total{kind=\"db\"} 1",
            "ferry_outbox_errors_total{kind=\"broker\"} 0",
            "ferry_outbox_pending_rows 7",
            "ferry_outbox_oldest_pending_age_seconds 1.5",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
