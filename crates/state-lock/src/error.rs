//! fred and tokio-postgres errors mapped to [`state_core::StateError`]: the backends' own
//! mappings (`state_redis::map_error`, `state_postgres::map_error`), so a lock reports a server
//! failure exactly as a backend on the same server does (their unit tests cover the cases).

pub(crate) use state_postgres::{map_error as map_pg, map_pool_error as map_pool};
pub(crate) use state_redis::map_error as map_fred;
