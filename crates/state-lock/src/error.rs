//! tokio-postgres errors mapped to [`state_core::StateError`]: the backend's own mapping
//! (`state_postgres::map_error`), so a lock reports a server failure exactly as a backend on
//! the same server does (its unit tests cover the cases). Redis lock commands go through
//! `state_redis::eval_once`, which maps with `state_redis::map_write_error`.

pub(crate) use state_postgres::{map_error as map_pg, map_pool_error as map_pool};
