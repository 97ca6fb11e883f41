//! Test support for distlock backends: the conformance suite every backend
//! must pass, fixtures that provide a store, and helpers that check mutual
//! exclusion.
//!
//! A backend's integration test is one line:
//!
//! ```text
//! distlock_testkit::conformance_suite!(my_fixture);
//! ```
//!
//! where `my_fixture` is an `async fn() -> impl Fixture`.
#![deny(missing_docs)]

pub mod conformance;
#[cfg(feature = "etcd")]
pub mod etcd;
pub mod fairness;
mod faulty;
mod fixture;
pub mod proxy;
#[cfg(feature = "redis")]
pub mod redis;
pub mod refusal;
mod section;
pub mod server;

pub use faulty::Faulty;
pub use fixture::{FileFixture, Fixture, MemoryFixture, ReachableFixture, unique_namespace};
pub use section::CriticalSection;

/// Expands to one `#[tokio::test]` per conformance case, each calling
/// `$fixture().await` for a fresh fixture. The list of cases lives here
/// only; adding a backend means one invocation of this macro.
///
/// A store whose locks do not expire by TTL (file locks live exactly as
/// long as their holder) is declared with `; without: ttl_expiry`. The six
/// TTL-dependent cases then run in a module named `without_ttl_expiry`, so
/// every runner lists them as adapted (`without_ttl_expiry::expiry_frees_…`),
/// and they assert the opposite behaviour: the lock outlives its TTL while
/// held. Nothing is skipped. Each of them first checks that the store's
/// `capabilities().ttl_expiry` matches the declaration.
#[macro_export]
macro_rules! conformance_suite {
    ($fixture:path) => {
        $crate::__conformance_common!($fixture);
        $crate::conformance_cases!(
            $fixture; ttl_expiry = true;
            fencing_tokens_increase_across_expiry_and_holders,
            release_after_expiry_is_not_held,
            expiry_frees_the_key_after_the_ttl,
            refresh_after_expiry_is_not_held,
            dropping_the_refresh_handle_stops_refreshing,
            lost_fires_at_the_validity_deadline_before_the_store_expires_it,
            a_grant_arriving_after_its_deadline_is_not_handed_out,
        );
    };
    ($fixture:path; without: ttl_expiry) => {
        $crate::__conformance_common!($fixture);
        /// The TTL-dependent cases, adapted to a store without TTL expiry.
        mod without_ttl_expiry {
            #[allow(unused_imports)]
            use super::*;
            $crate::conformance_cases!(
                $fixture; ttl_expiry = false;
                fencing_tokens_increase_across_expiry_and_holders,
                release_after_expiry_is_not_held,
                expiry_frees_the_key_after_the_ttl,
                refresh_after_expiry_is_not_held,
                dropping_the_refresh_handle_stops_refreshing,
                lost_fires_at_the_validity_deadline_before_the_store_expires_it,
                a_grant_arriving_after_its_deadline_is_not_handed_out,
            );
        }
    };
}

/// The cases that do not depend on the store's capabilities.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_common {
    ($fixture:path) => {
        $crate::conformance_cases!(
            $fixture;
            obtain_and_release,
            try_obtain_on_held_key_fails_fast,
            wait_with_deadline_gives_up_at_the_deadline,
            wait_forever_gets_the_lock_when_released,
            retries_exhausted_is_not_obtained,
            waiter_wakes_promptly_on_release,
            fencing_tokens_increase_across_release,
            release_twice_at_the_store_is_not_held,
            non_owner_cannot_release,
            non_owner_cannot_extend,
            acquire_is_idempotent_for_the_same_owner,
            refresh_extends_the_lock,
            start_refresh_keeps_the_lock_past_several_ttls,
            refresh_stop_is_idempotent_and_reports_no_error,
            lost_fires_when_the_key_is_deleted,
            lost_resolves_on_release,
            is_locked_is_read_only,
            inspect_reports_holder_token_ttl_and_metadata,
            inspect_never_creates_a_lock,
            racing_tasks_have_exactly_one_winner,
            rounds_never_overlap_and_tokens_increase,
            separate_lockers_never_overlap,
            waiters_are_served_fairly,
            unusual_keys_work,
            prefix_keys_are_independent,
            invalid_keys_are_rejected,
            invalid_options_are_rejected,
            dropped_obtain_future_leaks_nothing,
            dropped_lock_is_released_in_the_background,
            close_releases_locks_and_refuses_operations,
            closing_one_locker_leaves_the_others_on_its_backend_alone,
            namespaces_isolate,
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! conformance_cases {
    ($fixture:path; ttl_expiry = $ttl:literal; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let fixture = $fixture().await;
                $crate::conformance::expect_ttl_expiry(&fixture, $ttl).await;
                $crate::conformance::$case(&fixture).await;
            }
        )*
    };
    ($fixture:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let fixture = $fixture().await;
                $crate::conformance::$case(&fixture).await;
            }
        )*
    };
}
