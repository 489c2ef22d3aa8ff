//! Command implementations, one module per command group; [`run`] dispatches the parsed
//! command line to them.

pub mod cluster;
pub mod consume;
pub mod dlq;
pub mod group;
pub mod outbox;
pub mod produce;
pub mod push;
pub mod topic;
pub mod txn;

use std::time::Duration;

use ferry_protocol::push::PushAction;
use ferry_protocol::{ClientKind, ClusterClient, ClusterOptions, ConnectOptions};

use crate::cli::{Cli, ClusterCommand, Command, TopicCommand, TxnCommand};
use crate::cmd::dlq::DlqCommand;
use crate::cmd::group::GroupCommand;
use crate::cmd::outbox::OutboxCommand;
use crate::cmd::push::PushCommand;
use crate::output::Format;

/// Client identity in handshakes.
pub const CLIENT_ID: &str = "ferryctl";

/// Longest wait for a TCP connect plus handshake.
const CONNECT_TIMEOUT_MAX: Duration = Duration::from_secs(3);

/// What every command needs from the global flags.
#[derive(Debug, Clone)]
pub struct Context {
    /// `--bootstrap`.
    pub bootstrap: String,
    /// `--format`.
    pub format: Format,
    /// `--timeout`: retry deadline, and the time allowed for one request.
    pub timeout: Duration,
}

impl Context {
    /// Connection options of a `kind` client bounded by `--timeout`.
    pub fn connect_options(&self, kind: ClientKind) -> ConnectOptions {
        let mut options = ConnectOptions::new(CLIENT_ID, kind);
        options.connect_timeout = self.timeout.min(CONNECT_TIMEOUT_MAX);
        options.request_timeout = self.timeout;
        options
    }

    /// A cluster client (routes to the leader, retries until `--timeout`).
    ///
    /// # Errors
    /// When the bootstrap list is empty (clap already refuses that).
    pub fn cluster_client(&self) -> anyhow::Result<ClusterClient> {
        let mut options =
            ClusterOptions::new(&self.bootstrap, self.connect_options(ClientKind::Admin));
        options.retry.deadline = self.timeout;
        Ok(ClusterClient::new(options)?)
    }
}

/// Runs the parsed command line.
///
/// # Errors
/// Whatever the command reports; the caller prints it on one line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let ctx = Context { bootstrap: cli.bootstrap, format: cli.format, timeout: cli.timeout };
    match cli.command {
        Command::Cluster(ClusterCommand::Status) => cluster::status(&ctx).await,
        Command::Cluster(ClusterCommand::AddNode { id, addr }) => {
            cluster::add_node(&ctx, id, &addr).await
        }
        Command::Cluster(ClusterCommand::RemoveNode { id }) => cluster::remove_node(&ctx, id).await,
        Command::Topic(TopicCommand::Create { name, partitions }) => {
            topic::create(&ctx, &name, partitions).await
        }
        Command::Topic(TopicCommand::List) => topic::list(&ctx).await,
        Command::Topic(TopicCommand::Describe { name }) => topic::describe(&ctx, &name).await,
        Command::Topic(TopicCommand::Delete { name }) => topic::delete(&ctx, &name).await,
        Command::Produce(args) => produce::run(&ctx, args).await,
        Command::Consume(args) => consume::run(&ctx, args).await,
        Command::Txn(TxnCommand::List(args)) => txn::list(&ctx, &args).await,
        Command::Txn(TxnCommand::Show { id, payload }) => txn::show(&ctx, id, payload).await,
        Command::Txn(TxnCommand::Commit { id }) => txn::commit(&ctx, id).await,
        Command::Txn(TxnCommand::Rollback { id }) => txn::rollback(&ctx, id).await,
        Command::Txn(TxnCommand::Stats) => txn::stats(&ctx).await,
        Command::Group(GroupCommand::List(json)) => group::list(&ctx, json).await,
        Command::Group(GroupCommand::Describe { group, json }) => {
            group::describe(&ctx, &group, json).await
        }
        Command::Group(GroupCommand::ResetOffsets(args)) => group::reset_offsets(&ctx, &args).await,
        Command::Dlq(DlqCommand::List(args)) => dlq::list(&ctx, &args).await,
        Command::Dlq(DlqCommand::Replay(args)) => dlq::replay(&ctx, &args).await,
        Command::Dlq(DlqCommand::Purge(args)) => dlq::purge(&ctx, &args).await,
        Command::Outbox(OutboxCommand::Migrate(args)) => outbox::migrate(&ctx, &args).await,
        Command::Outbox(OutboxCommand::Relay(args)) => outbox::relay(&ctx, &args).await,
        Command::Outbox(OutboxCommand::Status(args)) => outbox::status(&ctx, &args).await,
        Command::Push(PushCommand::Create(args)) => push::create(&ctx, &args).await,
        Command::Push(PushCommand::List) => push::list(&ctx).await,
        Command::Push(PushCommand::Describe { name }) => push::describe(&ctx, &name).await,
        Command::Push(PushCommand::Pause { name }) => {
            push::alter(&ctx, &name, PushAction::Pause).await
        }
        Command::Push(PushCommand::Resume { name }) => {
            push::alter(&ctx, &name, PushAction::Resume).await
        }
        Command::Push(PushCommand::Delete { name }) => {
            push::alter(&ctx, &name, PushAction::Delete).await
        }
        Command::Push(PushCommand::RotateSecret(args)) => push::rotate_secret(&ctx, &args).await,
        Command::Push(PushCommand::Failed(args)) => push::failed(&ctx, &args).await,
        Command::Push(PushCommand::Replay(args)) => push::replay(&ctx, &args).await,
    }
}
