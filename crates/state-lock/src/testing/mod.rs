//! The lock suite: [`LockFactory`] and [`lock_suite!`](crate::lock_suite), the same named
//! tests for every [`DistributedLock`] backend (feature `testing`).

use std::sync::Arc;

use crate::{DistributedLock, LockOptions};
use async_trait::async_trait;
use state_core::StateResult;

pub mod cases;

/// Opens locks of the backend under test for the lock suite.
///
/// The suite calls it from several runtimes (a multi-threaded one, single-threaded ones on
/// threads of their own whose runtime it stalls or shuts down, and a second process that
/// re-runs the test binary), so a factory holds only what is needed to connect (URLs) and
/// connects on each call, on the calling runtime.
#[async_trait]
pub trait LockFactory: Send + Sync {
    /// A new handle on the lock `name` with `options`, on connections of its own.
    async fn lock(&self, name: &str, options: LockOptions)
    -> StateResult<Arc<dyn DistributedLock>>;

    /// Takes the current lease of `name` away on the server, as an operator, a failover or
    /// a lost session would (delete the Redis owner key, expire the lease row, terminate the
    /// advisory lock's session). The holder's next renewal must then fail.
    async fn revoke(&self, name: &str) -> StateResult<()>;

    /// Whether the server ends a lease nobody renews at its TTL, so another holder can take
    /// it (default `true`: Redis, the PostgreSQL lease table). `false` for a lock that lasts
    /// as long as the holder's session (a PostgreSQL advisory lock): the suite then checks
    /// that an unrenewed lease is *not* taken while its session lives, and is free once the
    /// session ends.
    fn leases_expire(&self) -> bool {
        true
    }
}

/// Generates the lock suite: one test per case of [`crate::testing::cases`], named after the
/// case, each with a factory built by the given expression.
///
/// The calling crate needs `tokio` (with `macros`, `rt-multi-thread` and `time`) as a
/// dev-dependency, and must let the suite re-run its test binary: the mutual-exclusion case
/// spawns the binary again (`--exact <this test> --nocapture`, with
/// [`crate::testing::cases::CHILD_ENV`] set) as the second contending process.
///
/// ```no_run
/// # use std::sync::Arc;
/// # use state_core::StateResult;
/// # use state_lock::{DistributedLock, LockOptions, RedisLock};
/// struct OnRedis;
///
/// #[async_trait::async_trait]
/// impl state_lock::testing::LockFactory for OnRedis {
///     async fn lock(&self, name: &str, options: LockOptions)
///         -> StateResult<Arc<dyn DistributedLock>> {
///         Ok(Arc::new(RedisLock::new("redis://127.0.0.1:6379", name).await?.with_options(options)))
///     }
///     async fn revoke(&self, _name: &str) -> StateResult<()> {
///         // DEL the owner key
/// #       Ok(())
///     }
/// }
///
/// mod redis_lock_suite {
///     state_lock::lock_suite!(super::OnRedis);
/// }
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! lock_suite {
    ($factory:expr) => {
        $crate::__lock_cases! { $factory;
            multi: [
                try_acquire_is_exclusive_and_not_reentrant,
                tokens_strictly_increase_across_handles,
                with_lock_releases_after_success_error_and_panic,
                renewed_lease_is_held_past_its_ttl,
                renewal_after_expiry_or_revocation_fails,
                unrenewed_lease_expires_at_ttl_unless_session_bound,
                revoked_lease_is_reported_lost_by_guard_and_with_lock,
                forged_lease_neither_releases_nor_renews,
                dropped_guard_is_released_in_background_or_expires,
                release_racing_a_renewal_answers_held,
                invalid_ttl_is_invalid_input,
                cancelled_acquire_leaves_lock_free_or_released_soon,
                cancelled_release_leaves_lock_released_soon,
                leader_handover_is_bounded_after_step_down_and_crash,
            ],
            threads: [
                stalled_holder_sees_lease_lost_and_with_lock_fails,
            ],
            processes: [
                mutual_exclusion_history_2_processes_x_16_tasks_has_no_overlap,
            ],
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __lock_cases {
    ($factory:expr;
     multi: [$($m:ident),* $(,)?],
     threads: [$($t:ident),* $(,)?],
     processes: [$($p:ident),* $(,)?] $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $m() {
                let factory = $factory;
                $crate::testing::cases::$m(&factory).await;
            }
        )*
        $(
            #[test]
            fn $t() {
                let factory: ::std::sync::Arc<dyn $crate::testing::LockFactory> =
                    ::std::sync::Arc::new($factory);
                $crate::testing::cases::$t(&factory);
            }
        )*
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $p() {
                let factory = $factory;
                $crate::testing::cases::$p(
                    &factory,
                    &$crate::testing::cases::test_path(module_path!(), stringify!($p)),
                )
                .await;
            }
        )*
    };
}
