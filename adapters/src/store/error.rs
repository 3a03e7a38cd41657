//! The store's internal error and its mapping onto the port's [`StoreError`]. What matters
//! to callers is the split between transient (retry: the event log writer retries forever)
//! and permanent (a constraint said no, or the stored data is not what we wrote).

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::pooled_connection::PoolError as ManagerError;
use diesel_async::pooled_connection::deadpool::PoolError;
use gatehouse_actors::store::StoreError;

/// Why a store operation failed, before it is flattened into a [`StoreError`].
#[derive(Debug)]
pub(crate) enum Error {
    /// From diesel: classified in [`Error::into_store`].
    Db(DieselError),
    /// The database cannot be reached (pool, connection).
    Unavailable(String),
    /// Our own check refused a change (the message names what and why).
    Rejected(String),
    /// Stored data we cannot read back, or a value we cannot store.
    Other(String),
}

impl From<DieselError> for Error {
    fn from(e: DieselError) -> Self {
        Error::Db(e)
    }
}

impl Error {
    pub(crate) fn pool(target: &str, e: PoolError) -> Error {
        match e {
            PoolError::Backend(ManagerError::ConnectionError(e)) => {
                Error::Unavailable(format!("cannot connect to {target}: {e}"))
            }
            // The ping on checkout failed: the connection died while idle.
            PoolError::Backend(ManagerError::QueryError(e)) => match Error::from(e).into_store() {
                StoreError::Other(m) => Error::Unavailable(m),
                other => Error::Unavailable(other.to_string()),
            },
            PoolError::Timeout(_) | PoolError::Closed => {
                Error::Unavailable(format!("no connection to {target}: {e}"))
            }
            other => Error::Other(format!("connection pool for {target}: {other}")),
        }
    }

    /// A failure of diesel's migration runner, which boxes whatever went wrong.
    pub(crate) fn migration(e: &(dyn std::error::Error + Send + Sync + 'static)) -> Error {
        match e.downcast_ref::<DieselError>() {
            Some(DieselError::DatabaseError(kind, info)) => {
                // Not the original (it is borrowed); rebuild one that classifies the same.
                Error::classify(*kind, info.message()).unwrap_or_else(|| {
                    Error::Other(format!("migration failed: {}", info.message()))
                })
            }
            _ => Error::Other(format!("migration failed: {e}")),
        }
    }

    /// Classifies a database error by kind and message where the kind alone does not tell.
    /// `None`: not transient, not a constraint.
    fn classify(kind: DatabaseErrorKind, message: &str) -> Option<Error> {
        match kind {
            DatabaseErrorKind::UniqueViolation
            | DatabaseErrorKind::ForeignKeyViolation
            | DatabaseErrorKind::NotNullViolation
            | DatabaseErrorKind::CheckViolation
            | DatabaseErrorKind::RestrictViolation
            | DatabaseErrorKind::ExclusionViolation => Some(Error::Rejected(message.to_owned())),
            // The connection is gone (tokio-postgres reports a closed socket this way), or
            // a concurrent transaction won a serialization conflict: retrying is right.
            DatabaseErrorKind::ClosedConnection
            | DatabaseErrorKind::UnableToSendCommand
            | DatabaseErrorKind::SerializationFailure => {
                Some(Error::Unavailable(message.to_owned()))
            }
            _ if is_transient_message(message) => Some(Error::Unavailable(message.to_owned())),
            _ => None,
        }
    }

    pub(crate) fn into_store(self) -> StoreError {
        match self {
            Error::Db(DieselError::DatabaseError(kind, info)) => {
                let message = match info.details() {
                    Some(details) => format!("{} ({details})", info.message()),
                    None => info.message().to_owned(),
                };
                match Error::classify(kind, &message) {
                    Some(e) => e.into_store(),
                    None => StoreError::Other(message),
                }
            }
            Error::Db(DieselError::BrokenTransactionManager) => {
                // The pool discards such a connection; the next attempt gets a fresh one.
                StoreError::Unavailable("the connection was left in a broken transaction".into())
            }
            Error::Db(DieselError::RollbackErrorOnCommit { commit_error, .. }) => {
                Error::Db(*commit_error).into_store()
            }
            Error::Db(e) => StoreError::Other(e.to_string()),
            Error::Unavailable(m) => StoreError::Unavailable(m),
            Error::Rejected(m) => StoreError::Rejected(m),
            Error::Other(m) => StoreError::Other(m),
        }
    }
}

/// Messages of errors that diesel files under `Unknown` but that mean "try again": SQLite's
/// lock contention past `busy_timeout` and a file system that refuses to grow the database
/// (disk full, a file size limit: `SQLITE_FULL`, or `SQLITE_IOERR` when a write fails
/// outright), and PostgreSQL ending sessions (restart, failover, `pg_terminate_backend`) or
/// refusing new ones while starting or shutting down.
fn is_transient_message(message: &str) -> bool {
    const TRANSIENT: [&str; 9] = [
        "database is locked",
        "database table is locked",
        "database or disk is full",
        "disk I/O error",
        "terminating connection",
        "the database system is starting up",
        "the database system is shutting down",
        "connection closed",
        "server closed the connection",
    ];
    TRANSIENT.iter().any(|t| message.contains(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constraint_kinds_are_rejections_and_lost_connections_are_transient() {
        let unique = Error::Db(DieselError::DatabaseError(
            DatabaseErrorKind::UniqueViolation,
            Box::new("duplicate key".to_string()),
        ));
        assert!(matches!(unique.into_store(), StoreError::Rejected(_)));
        let closed = Error::Db(DieselError::DatabaseError(
            DatabaseErrorKind::ClosedConnection,
            Box::new("gone".to_string()),
        ));
        assert!(closed.into_store().is_transient());
        let locked = Error::Db(DieselError::DatabaseError(
            DatabaseErrorKind::Unknown,
            Box::new("database is locked".to_string()),
        ));
        assert!(locked.into_store().is_transient());
        for full in ["database or disk is full", "disk I/O error"] {
            let full = Error::Db(DieselError::DatabaseError(
                DatabaseErrorKind::Unknown,
                Box::new(full.to_string()),
            ));
            assert!(full.into_store().is_transient());
        }
        let syntax = Error::Db(DieselError::DatabaseError(
            DatabaseErrorKind::Unknown,
            Box::new("syntax error".to_string()),
        ));
        assert!(matches!(syntax.into_store(), StoreError::Other(_)));
        assert!(matches!(
            Error::Db(DieselError::NotFound).into_store(),
            StoreError::Other(_)
        ));
    }
}
