//! Scenarios: which faults a run injects, on a schedule drawn from the seed.
//!
//! Every scenario loops until its duration is over: wait a seeded 1–3 s, inject its fault
//! (aimed at the current leader where that matters), hold it for a seeded time, undo it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::bail;
use tokio_util::sync::CancellationToken;

use super::clients::{self, History, Intents, TxnClient};
use super::cluster::ChaosCluster;

/// A named fault pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// SIGKILL the leader (sometimes any node), restart it a little later; again and again.
    LeaderKill,
    /// Cut the leader off from the other nodes (a minority of one), then heal; sometimes a
    /// follower instead, or every node from every other.
    LeaderPartition,
    /// SIGSTOP the leader for longer than an election, then SIGCONT.
    LeaderPause,
    /// A transactional producer dies after half sends while the leader is killed; another
    /// instance of its group answers the check-backs.
    ProducerCrash,
    /// A group consumer dies mid-batch (no commit, no leave); the group rebalances.
    ConsumerCrash,
    /// Every node SIGKILLed at once, then all restarted.
    FullRestart,
    /// A follower is SIGKILLed, bytes of one of its database files (WAL or table) are
    /// damaged, and it is restarted: it must detect the damage, resync from the leader, and
    /// never lead before it has caught up.
    DiskCorruption,
    /// A spare node is added as a voter while a member is down, then a member (sometimes the
    /// leader) is removed while another is down; the removed node is wiped and becomes the
    /// spare. Runs with a fourth node.
    Membership,
}

impl Scenario {
    /// Every scenario, in the order `all` runs them.
    pub const ALL: [Scenario; 8] = [
        Scenario::LeaderKill,
        Scenario::LeaderPartition,
        Scenario::LeaderPause,
        Scenario::ProducerCrash,
        Scenario::ConsumerCrash,
        Scenario::FullRestart,
        Scenario::DiskCorruption,
        Scenario::Membership,
    ];

    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::LeaderKill => "leader-kill",
            Scenario::LeaderPartition => "leader-partition",
            Scenario::LeaderPause => "leader-pause",
            Scenario::ProducerCrash => "producer-crash",
            Scenario::ConsumerCrash => "consumer-crash",
            Scenario::FullRestart => "full-restart",
            Scenario::DiskCorruption => "disk-corruption",
            Scenario::Membership => "membership",
        }
    }

    /// The scenario named `name`.
    ///
    /// # Errors
    /// An unknown name; the message lists the known ones.
    pub fn parse(name: &str) -> anyhow::Result<Scenario> {
        match Scenario::ALL.iter().find(|s| s.name() == name) {
            Some(s) => Ok(*s),
            None => {
                let known: Vec<&str> = Scenario::ALL.iter().map(|s| s.name()).collect();
                bail!("unknown scenario {name:?}; known: all, {}", known.join(", "))
            }
        }
    }
}

/// Starts and crashes clients on the scenario's behalf.
#[derive(Clone)]
pub struct ClientControl {
    inner: Arc<ControlInner>,
}

struct ControlInner {
    bootstrap: String,
    history: Arc<History>,
    intents: Intents,
    seed: u64,
    stop_sending: CancellationToken,
    stop: CancellationToken,
    next: AtomicU64,
    txn_clients: Mutex<Vec<CancellationToken>>,
    consumers: Mutex<Vec<CancellationToken>>,
    tasks: Mutex<tokio::task::JoinSet<()>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ClientControl {
    /// Control over clients of the cluster at `bootstrap`.
    pub fn new(
        bootstrap: String,
        history: Arc<History>,
        intents: Intents,
        seed: u64,
        stop_sending: CancellationToken,
        stop: CancellationToken,
    ) -> ClientControl {
        ClientControl {
            inner: Arc::new(ControlInner {
                bootstrap,
                history,
                intents,
                seed,
                stop_sending,
                stop,
                next: AtomicU64::new(0),
                txn_clients: Mutex::new(Vec::new()),
                consumers: Mutex::new(Vec::new()),
                tasks: Mutex::new(tokio::task::JoinSet::new()),
            }),
        }
    }

    fn next(&self) -> u64 {
        self.inner.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Starts one more instance of the transactional producer group.
    pub fn start_txn_client(&self) {
        let n = self.next();
        let kill = CancellationToken::new();
        let client = TxnClient {
            name: format!("x{n}"),
            bootstrap: self.inner.bootstrap.clone(),
            history: self.inner.history.clone(),
            intents: self.inner.intents.clone(),
            seed: self.inner.seed.wrapping_mul(31).wrapping_add(n),
            stop_sending: self.inner.stop_sending.clone(),
            stop: self.inner.stop.clone(),
            kill: kill.clone(),
        };
        lock(&self.inner.txn_clients).push(kill);
        lock(&self.inner.tasks).spawn(client.run());
    }

    /// Crashes the oldest live transactional producer instance.
    pub fn crash_txn_client(&self) {
        let mut clients = lock(&self.inner.txn_clients);
        if !clients.is_empty() {
            clients.remove(0).cancel();
        }
    }

    /// Starts a transactional producer instance unless one is alive (check-backs need one).
    pub fn make_sure_a_txn_client_runs(&self) {
        if lock(&self.inner.txn_clients).is_empty() {
            self.start_txn_client();
        }
    }

    /// Starts one more consumer-group member.
    pub fn start_consumer(&self) {
        let n = self.next();
        let kill = CancellationToken::new();
        lock(&self.inner.consumers).push(kill.clone());
        lock(&self.inner.tasks).spawn(clients::consumer(
            format!("c{n}"),
            self.inner.bootstrap.clone(),
            self.inner.history.clone(),
            self.inner.stop.clone(),
            kill,
        ));
    }

    /// Crashes the oldest live consumer.
    pub fn crash_consumer(&self) {
        let mut consumers = lock(&self.inner.consumers);
        if !consumers.is_empty() {
            consumers.remove(0).cancel();
        }
    }

    /// Waits (at most 60 s) for every client this control started to end.
    pub async fn wait(&self) {
        let mut tasks = std::mem::take(&mut *lock(&self.inner.tasks));
        let _ = tokio::time::timeout(Duration::from_secs(60), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        tasks.abort_all();
    }
}

/// The fault schedule of one run.
pub struct Faults {
    scenario: Scenario,
    rng: fastrand::Rng,
    control: ClientControl,
}

impl Faults {
    /// The schedule for `scenario` drawn from `seed`.
    pub fn new(scenario: Scenario, seed: u64, control: ClientControl) -> Faults {
        Faults { scenario, rng: fastrand::Rng::with_seed(seed), control }
    }

    fn ms(&mut self, range: std::ops::Range<u64>) -> Duration {
        Duration::from_millis(self.rng.u64(range))
    }

    /// Injects faults for `duration`; every fault is undone before it returns.
    pub async fn run(
        &mut self,
        cluster: &mut ChaosCluster,
        duration: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + duration;
        let started = Instant::now();
        loop {
            let wait = self.ms(1000..3000);
            if Instant::now() + wait >= deadline {
                tokio::time::sleep(deadline.saturating_duration_since(Instant::now())).await;
                return Ok(());
            }
            tokio::time::sleep(wait).await;
            let at = started.elapsed().as_secs_f64();
            let hold = self.inject(cluster).await?;
            tracing::info!(at, scenario = self.scenario.name(), hold = ?hold, "fault injected");
        }
    }

    /// One fault: inject, hold, undo. Returns what was done, for the log.
    async fn inject(&mut self, cluster: &mut ChaosCluster) -> anyhow::Result<String> {
        let leader = cluster.current_leader().await;
        Ok(match self.scenario {
            Scenario::LeaderKill => {
                let hold = self.ms(500..3000);
                let Some(l) = leader else { return Ok("no leader".into()) };
                // Mostly the leader; one time in four any node.
                let ids = cluster.ids();
                let victim =
                    if self.rng.u8(..4) == 0 { ids[self.rng.usize(..ids.len())] } else { l };
                cluster.kill(victim).await?;
                tokio::time::sleep(hold).await;
                cluster.restart(victim)?;
                format!("killed node {victim} (leader {l}) for {hold:?}")
            }
            Scenario::LeaderPause => {
                let hold = self.ms(1500..4000);
                let Some(l) = leader else { return Ok("no leader".into()) };
                cluster.pause(l);
                tokio::time::sleep(hold).await;
                cluster.resume(l);
                format!("paused node {l} for {hold:?}")
            }
            Scenario::LeaderPartition => {
                let hold = self.ms(2000..5000);
                let Some(l) = leader else { return Ok("no leader".into()) };
                let ids = cluster.ids();
                // Mostly the leader alone against the rest; sometimes a follower alone, or a
                // split with no majority anywhere.
                let sides: Vec<Vec<u64>> = match self.rng.u8(..5) {
                    0 => ids.iter().map(|id| vec![*id]).collect(),
                    1 => {
                        let followers: Vec<u64> =
                            ids.iter().copied().filter(|id| *id != l).collect();
                        let f = followers[self.rng.usize(..followers.len())];
                        vec![vec![f], ids.iter().copied().filter(|id| *id != f).collect()]
                    }
                    _ => vec![vec![l], ids.iter().copied().filter(|id| *id != l).collect()],
                };
                cluster.net().partition(&sides).await?;
                tokio::time::sleep(hold).await;
                cluster.net().heal().await?;
                format!("partitioned {sides:?} (leader {l}) for {hold:?}")
            }
            Scenario::FullRestart => {
                let hold = self.ms(200..2000);
                for id in cluster.ids() {
                    cluster.kill(id).await?;
                }
                tokio::time::sleep(hold).await;
                for id in cluster.ids() {
                    cluster.restart(id)?;
                }
                cluster.leader(Duration::from_secs(30)).await?;
                format!("killed every node for {hold:?}")
            }
            Scenario::ProducerCrash => {
                let hold = self.ms(1000..3000);
                self.control.crash_txn_client();
                if let Some(l) = leader {
                    cluster.kill(l).await?;
                }
                tokio::time::sleep(hold).await;
                if let Some(l) = leader {
                    cluster.restart(l)?;
                }
                self.control.start_txn_client();
                format!("crashed a transactional producer and killed node {leader:?} for {hold:?}")
            }
            Scenario::DiskCorruption => {
                let Some(l) = leader else { return Ok("no leader".into()) };
                let followers: Vec<u64> = cluster.ids().into_iter().filter(|id| *id != l).collect();
                let victim = followers[self.rng.usize(..followers.len())];
                cluster.kill(victim).await?;
                let damaged =
                    damage_one_file(&cluster.data_dir(victim)?.join("db"), &mut self.rng)?;
                tokio::time::sleep(self.ms(200..1000)).await;
                cluster.restart(victim)?;
                let resync = watch_resync(cluster, victim).await?;
                format!("damaged {damaged} of node {victim}; {resync}")
            }
            Scenario::Membership => {
                let Some(spare) = cluster.spare() else { return Ok("no spare node".into()) };
                let members = cluster.ids();
                let down = members[self.rng.usize(..members.len())];
                cluster.kill(down).await?;
                cluster.add_node(spare).await?;
                cluster.restart(down)?;
                let members = cluster.ids();
                let gone = members[self.rng.usize(..members.len())];
                let others: Vec<u64> = members.iter().copied().filter(|id| *id != gone).collect();
                let down2 = others[self.rng.usize(..others.len())];
                cluster.kill(down2).await?;
                cluster.remove_node(gone).await?;
                cluster.restart(down2)?;
                format!(
                    "added node {spare} while node {down} was down; removed node {gone} \
                     (leader was {leader:?}) while node {down2} was down"
                )
            }
            Scenario::ConsumerCrash => {
                let hold = self.ms(500..2000);
                self.control.crash_consumer();
                let also_node = self.rng.bool();
                let victim = if also_node { Some(self.rng.u64(1..=3)) } else { None };
                if let Some(v) = victim {
                    cluster.kill(v).await?;
                }
                tokio::time::sleep(hold).await;
                if let Some(v) = victim {
                    cluster.restart(v)?;
                }
                self.control.start_consumer();
                format!("crashed a consumer (and node {victim:?}) for {hold:?}")
            }
        })
    }
}

/// XORs 32 bytes at a seeded offset of one seeded file of the stopped node's database: a
/// write-ahead log or table file that has data. Returns which file and where.
fn damage_one_file(db: &std::path::Path, rng: &mut fastrand::Rng) -> anyhow::Result<String> {
    let mut files: Vec<(std::path::PathBuf, u64)> = std::fs::read_dir(db)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "log" || e == "sst"))
        .filter_map(|p| {
            let len = std::fs::metadata(&p).ok()?.len();
            (len >= 4096).then_some((p, len))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no database file of 4 KiB or more to damage in {}", db.display());
    }
    let (file, len) = files.swap_remove(rng.usize(..files.len()));
    let offset = rng.u64(len / 8..len - 64);
    let mut bytes = std::fs::read(&file)?;
    let at = usize::try_from(offset)?;
    for b in &mut bytes[at..at + 32] {
        *b ^= 0xA5;
    }
    std::fs::write(&file, bytes)?;
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    Ok(format!("{name} at {offset}"))
}

/// After a damaged node restarts: its damage must be detected (the resync marker appears
/// before it answers) and it must not lead while it resyncs. Waits for the resync to end.
async fn watch_resync(cluster: &ChaosCluster, id: u64) -> anyhow::Result<String> {
    let marker = cluster.data_dir(id)?.join("RESYNC");
    let started = Instant::now();
    while cluster.status(id).await.is_none() {
        if started.elapsed() > Duration::from_secs(30) {
            bail!("node {id} did not answer within 30 s of its restart");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !marker.exists() {
        bail!("node {id} started on damaged data without detecting it");
    }
    while marker.exists() {
        if let Some(s) = cluster.status(id).await {
            if s.role == "leader" {
                bail!("node {id} became leader while resyncing damaged data");
            }
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("node {id} still resyncing 60 s after its restart");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(format!("resynced in {:.1} s", started.elapsed().as_secs_f64()))
}
