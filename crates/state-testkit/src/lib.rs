#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

use std::sync::Arc;

use async_trait::async_trait;
use state_core::{StateBackend, StateResult};

pub mod cases;
pub mod chaos;
pub mod linearizability;
pub mod lock_history;
mod proof;
mod reference;
mod support;
mod yielding;

pub use reference::ReferenceBackend;
pub use support::{FailingScan, unique_namespace};
pub use yielding::{Yielding, YieldingIo};

/// Opens backends for the conformance suite.
///
/// Each case opens its own namespaces (a prefix, a table, a tree) with fresh random names, so
/// cases run in parallel against one server.
#[async_trait]
pub trait BackendFactory: Send + Sync {
    /// Opens the namespace `namespace` on the store under test, creating it if needed.
    ///
    /// Different names must never see each other's keys. Opening a name again after the
    /// previous backend was dropped must reach the same data when the backend declares
    /// [`state_core::Capabilities::persistence`], and an empty namespace when it does not.
    async fn open(&self, namespace: &str) -> StateResult<Arc<dyn StateBackend>>;

    /// Opens `namespace` like [`BackendFactory::open`], with the innermost store wrapped in
    /// [`Yielding`], so the cancellation case reaches every await point of the layers above it.
    ///
    /// The default wraps what `open` returns, which is right for a backend that is not a
    /// wrapper. A factory of a wrapper (a cache, a layer, a tier) overrides it to put
    /// `Yielding` under the wrapper, around each backend it wraps.
    async fn open_slowed(&self, namespace: &str) -> StateResult<Arc<dyn StateBackend>> {
        Ok(Yielding::wrap(self.open(namespace).await?))
    }

    /// Whether the backends this factory opens may answer plain reads (`get`) from a replica
    /// that has not replayed every acknowledged write, as documented for that configuration
    /// (default `false`: every operation is linearizable).
    ///
    /// When `true`, the linearizability case still runs every operation but checks only
    /// what such a configuration promises: the writes and atomic operations, which run on the
    /// primary, form a linearizable history; the `get`s are left out of it.
    fn reads_may_be_stale(&self) -> bool {
        false
    }
}

/// A factory for the [`ReferenceBackend`]: every `open` is a fresh, empty map.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReferenceFactory;

#[async_trait]
impl BackendFactory for ReferenceFactory {
    async fn open(&self, _namespace: &str) -> StateResult<Arc<dyn StateBackend>> {
        Ok(Arc::new(ReferenceBackend::new()))
    }
}

/// Generates the whole conformance suite: one `#[tokio::test]` per contract case, named after
/// the case, each calling [`cases`] with a factory built by the given expression.
///
/// The calling crate needs `tokio` (with `macros` and `rt-multi-thread`) as a dev-dependency.
/// Most cases run on tokio's current-thread runtime (the `#[tokio::test]` default, which
/// catches `block_in_place` misuse); the concurrency cases run on a multi-threaded one.
///
/// See the crate documentation for a complete example.
#[macro_export]
macro_rules! conformance_suite {
    ($factory:expr) => {
        $crate::__conformance_cases! { $factory;
            current: [
                get_missing_key_returns_none,
                put_then_get_returns_exact_bytes,
                put_overwrites_previous_value,
                delete_removes_key_and_reports_it,
                delete_missing_key_is_not_an_error,
                contains_tracks_put_and_delete,
                binary_keys_round_trip,
                empty_value_round_trips,
                large_16_mib_value_round_trips,
                emoji_and_json_values_come_back_as_same_bytes,
                empty_key_is_rejected_as_invalid_input,
                oversized_key_is_rejected_as_invalid_input,
                oversized_value_is_rejected_and_old_value_kept,
                batch_put_with_invalid_entry_writes_nothing,
                list_keys_respects_overlapping_prefixes,
                list_keys_with_empty_prefix_lists_everything,
                list_keys_prefix_ending_in_ff_excludes_next_prefix,
                keys_with_special_characters_round_trip,
                glob_and_like_metacharacters_in_prefix_match_literally,
                scan_yields_live_entries_under_prefix,
                scan_streams_100k_keys,
                delete_prefix_removes_exactly_matching_keys,
                count_reflects_puts_and_deletes,
                clear_removes_every_key,
                clear_and_count_are_isolated_between_namespaces,
                namespaces_named_as_prefixes_of_each_other_stay_isolated,
                batch_get_keeps_order_and_duplicates,
                batch_get_answers_none_for_missing_key_in_place,
                batch_get_of_1000_keys_round_trips,
                batch_put_last_duplicate_wins,
                batch_delete_counts_removed_and_ignores_missing,
                batch_ops_on_empty_input_do_nothing,
                ttl_expired_key_is_invisible_to_get,
                ttl_expired_key_is_invisible_to_contains,
                ttl_expired_key_is_invisible_to_list_keys,
                ttl_expired_key_is_invisible_to_count,
                ttl_expired_key_is_invisible_to_scan,
                ttl_reports_remaining_time,
                get_with_ttl_pairs_value_and_time_left,
                ttl_is_none_without_expiry,
                put_after_put_with_ttl_clears_the_ttl,
                ttl_300ms_expires_between_300_and_600ms,
                set_if_not_exists_with_500ms_ttl_is_not_truncated,
                zero_or_sub_millisecond_ttl_is_rejected,
                set_if_not_exists_only_first_write_wins,
                set_if_not_exists_treats_expired_key_as_absent,
                get_and_delete_returns_value_once,
                compare_and_swap_follows_expected_value,
                checkpoint_restore_round_trips_keys_values_and_ttls,
                checkpoint_restores_into_and_from_another_backend_kind,
                checkpoint_leaves_out_expired_entries,
                restore_rejects_corrupted_checkpoint,
                checkpoint_file_is_replaced_atomically,
                typed_values_round_trip,
                typed_decode_of_foreign_bytes_is_serialization_error,
                capability_ttl_declared_works_undeclared_unsupported,
                capability_atomic_declared_works_undeclared_unsupported,
                capability_memory_usage_declared_works_undeclared_unsupported,
                capability_persistence_matches_reopen,
                stats_count_operations_and_hits,
                health_check_reports_healthy,
                ttl_outside_1ms_to_100_years_is_invalid_input,
                ttl_of_exactly_100_years_or_1ms_is_accepted,
                deletes_do_not_count_expired_keys,
                set_if_not_exists_wins_once_the_key_expires,
                proof_cancelled_operations_leave_before_or_after_state,
            ],
            multi: [
                proof_model_based_sequences_match_reference,
                proof_concurrent_histories_are_linearizable,
                set_if_not_exists_32_concurrent_callers_have_one_winner,
                get_and_delete_32_concurrent_callers_have_one_winner,
                compare_and_swap_32_concurrent_callers_have_one_winner,
                compare_and_swap_increments_from_8_tasks_lose_no_update,
                concurrent_writers_to_distinct_keys_all_land,
                set_if_not_exists_racing_expiry_has_one_winner,
            ],
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_cases {
    ($factory:expr; current: [$($c:ident),* $(,)?], multi: [$($m:ident),* $(,)?] $(,)?) => {
        $(
            #[tokio::test]
            async fn $c() {
                let factory = $factory;
                $crate::cases::$c(&factory).await;
            }
        )*
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $m() {
                let factory = $factory;
                $crate::cases::$m(&factory).await;
            }
        )*
    };
}

#[cfg(test)]
mod reference_conformance {
    // The suite must pass on the obviously-correct reference backend.
    crate::conformance_suite!(crate::ReferenceFactory);
}
