#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod backend;
mod config;
mod conn;
mod conninfo;
mod error;
mod ops;
mod pubsub;
pub mod schema;
mod tls;
mod transaction;

pub use backend::PostgresStateBackend;
pub use config::{
    MAX_TABLE_NAME_LEN, PostgresConfig, PostgresConfigBuilder, RESERVED_TABLE_NAMES,
    ReadConsistency, TableName, TlsMode,
};
pub use error::{map_pg as map_error, map_pg_write as map_write_error, map_pool as map_pool_error};
pub use ops::{ReplicationStatus, TableStats};
pub use pubsub::{MAX_MESSAGE_BYTES, Subscription};
pub use transaction::PostgresTransaction;

/// The tokio-postgres version this crate is built on (for [`PostgresStateBackend::pool`]).
pub use deadpool_postgres;
pub use state_core;
pub use tokio_postgres;
/// Transaction isolation levels for [`PostgresStateBackend::begin_transaction_with`].
pub use tokio_postgres::IsolationLevel;
