//! The wall clock leader-side services read (push delivery today): the system clock, or, in
//! tests, a clock the test moves by hand so that retry schedules of minutes and hours can be
//! checked in milliseconds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

/// Milliseconds since the Unix epoch, from the system or from a test.
#[derive(Clone, Default)]
pub struct Clock {
    manual: Option<Arc<ManualClock>>,
}

struct ManualClock {
    now_ms: AtomicU64,
    moved: watch::Sender<u64>,
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.manual {
            None => f.write_str("Clock::System"),
            Some(m) => write!(f, "Clock::Manual({})", m.now_ms.load(Ordering::Acquire)),
        }
    }
}

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock { manual: None }
    }

    /// A clock that stands at `start_ms` until [`Clock::advance`] moves it.
    pub fn manual(start_ms: u64) -> Clock {
        let (moved, _) = watch::channel(start_ms);
        Clock { manual: Some(Arc::new(ManualClock { now_ms: AtomicU64::new(start_ms), moved })) }
    }

    /// Now, in milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        match &self.manual {
            None => ferry_protocol::now_ms(),
            Some(m) => m.now_ms.load(Ordering::Acquire),
        }
    }

    /// Moves a manual clock forward (no effect on the system clock).
    pub fn advance(&self, by: Duration) {
        if let Some(m) = &self.manual {
            let by = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
            let now = m.now_ms.fetch_add(by, Ordering::AcqRel).saturating_add(by);
            m.moved.send_replace(now);
        }
    }

    /// Sleeps until the clock reads at least `at_ms`, or `cap` of real time passed.
    pub async fn sleep_until(&self, at_ms: u64, cap: Duration) {
        match &self.manual {
            None => {
                let wait = Duration::from_millis(at_ms.saturating_sub(self.now_ms())).min(cap);
                tokio::time::sleep(wait).await;
            }
            Some(m) => {
                let mut rx = m.moved.subscribe();
                let reached = rx.wait_for(|now| *now >= at_ms);
                let _ = tokio::time::timeout(cap, reached).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn manual_clock_moves_only_when_told() {
        let clock = Clock::manual(1_000);
        assert_eq!(clock.now_ms(), 1_000);
        let waiter = {
            let clock = clock.clone();
            tokio::spawn(async move { clock.sleep_until(6_000, Duration::from_secs(10)).await })
        };
        clock.advance(Duration::from_secs(5));
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken by the advance")
            .expect("task");
        assert_eq!(clock.now_ms(), 6_000);
        assert!(Clock::system().now_ms() > 1_600_000_000_000);
    }
}
