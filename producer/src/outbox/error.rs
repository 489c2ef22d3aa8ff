//! The outbox's error type: what failed (the database, a setting, the publisher) and whether
//! the relay carries on after it.

/// Why an outbox call failed.
///
/// The relay itself survives [`OutboxError::Database`] (it backs off and tries again); every
/// other variant is returned by the call that hit it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutboxError {
    /// A table name that is not a plain lowercase SQL identifier (it is spliced into SQL).
    #[error("invalid outbox table name {name:?}: {reason}")]
    TableName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A database URL the outbox cannot use (unknown scheme, malformed options).
    #[error("unsupported database URL {url:?}: {reason}")]
    Url {
        /// The URL, with any password replaced by `***`.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A [`crate::outbox::RelayConfig`] field is out of range.
    #[error("invalid relay config: {0}")]
    Config(String),
    /// A message that cannot be written as an outbox row (empty topic, key too long).
    #[error("invalid outbox message: {0}")]
    InvalidMessage(String),
    /// The database refused or failed a statement, or could not be reached.
    #[error("outbox database error while {action}: {source}")]
    Database {
        /// What the outbox was doing.
        action: &'static str,
        /// The driver's error.
        source: sqlx::Error,
    },
    /// Registering the relay's metrics failed (usually: a second relay on the same registry).
    #[error("cannot register outbox metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The ferry producer could not be started (`Relay::connect`).
    #[error("cannot start the relay's producer: {0}")]
    Producer(#[from] crate::ProducerError),
    /// The publisher was closed: the relay cannot publish anything any more.
    #[error("the relay's publisher is closed")]
    PublisherClosed,
}

impl OutboxError {
    /// Wraps a driver error with what the outbox was doing.
    pub(crate) fn db(action: &'static str) -> impl FnOnce(sqlx::Error) -> OutboxError {
        move |source| OutboxError::Database { action, source }
    }
}

/// Result of outbox calls.
pub type Result<T, E = OutboxError> = std::result::Result<T, E>;

/// `url` with the password (between `user:` and `@`) replaced by `***`, for error messages.
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(at) => rest.split_at(at),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((user_info, host)) => match user_info.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact_url("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(redact_url("mysql://u@h/db"), "mysql://u@h/db");
        assert_eq!(redact_url("sqlite://a.db?mode=rwc"), "sqlite://a.db?mode=rwc");
        assert_eq!(redact_url("sqlite::memory:"), "sqlite::memory:");
    }
}
