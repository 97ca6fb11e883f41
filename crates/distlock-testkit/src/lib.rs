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

pub mod certs;
pub mod conformance;
#[cfg(feature = "etcd")]
pub mod etcd;
pub mod fairness;
mod faulty;
mod fixture;
pub mod proxy;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "redis")]
pub mod redis_ha;
pub mod refusal;
mod section;
pub mod server;

pub use faulty::Faulty;
pub use fixture::{FileFixture, Fixture, MemoryFixture, ReachableFixture, unique_namespace};
pub use section::CriticalSection;

/// Expands to one `#[tokio::test]` per conformance case, each calling
/// `$fixture().await` for a fresh fixture. The cases come from
/// [`conformance_list!`], their one list; adding a backend means one
/// invocation of this macro.
///
/// The lock cases are at the top level of the test binary; those of each
/// primitive built on permits are in a module named after it
/// (`semaphore::…`, `rwlock::…`), as they are in
/// [`conformance`](crate::conformance).
///
/// A store whose locks do not expire by TTL (file locks live exactly as
/// long as their holder) is declared with `; without: ttl_expiry`. The
/// TTL-dependent cases ([`conformance::TTL_CASES`]) then run in a module
/// named `without_ttl_expiry` (inside the primitive's module for theirs),
/// so every runner lists them as adapted (`without_ttl_expiry::expiry_frees_…`,
/// `semaphore::without_ttl_expiry::…`), and they assert the opposite
/// behaviour: the lock outlives its TTL while held. Nothing is skipped.
/// Each of them first checks that the store's `capabilities().ttl_expiry`
/// matches the declaration.
#[macro_export]
macro_rules! conformance_suite {
    ($fixture:path) => {
        $crate::conformance_list!(__conformance_tests($fixture; ttl_expiry = true));
    };
    ($fixture:path; without: ttl_expiry) => {
        $crate::conformance_list!(__conformance_tests($fixture; ttl_expiry = false));
    };
}

/// The one list of conformance cases, each named once, by topic (the file
/// of `src/conformance/` that holds it). Expands to
/// `$crate::$then!((args) always: [...], ttl_expiry: [...], semaphore: {
/// always: [...], ttl_expiry: [...] }, rwlock: { ... })`:
/// [`conformance_suite!`] makes the tests from it, and
/// [`conformance::CASES`] the names. `ttl_expiry` holds the cases that
/// depend on the store's TTL expiry. The lock cases are functions of
/// [`conformance`](crate::conformance); a primitive's are functions of its
/// module there, named as its list is (`conformance::semaphore`, from
/// `src/conformance/semaphore.rs`). A `pub async fn` case in
/// `src/conformance/` that is missing here fails the testkit's unit test
/// `every_case_is_listed_exactly_once`.
#[macro_export]
macro_rules! conformance_list {
    ($then:ident $args:tt) => {
        $crate::$then! {
            $args
            always: [
                // obtain.rs
                obtain_and_release,
                try_obtain_on_held_key_fails_fast,
                // ownership.rs
                release_twice_at_the_store_is_not_held,
                non_owner_cannot_release,
                non_owner_cannot_extend,
                acquire_is_idempotent_for_the_same_owner,
                // waiting.rs
                wait_with_deadline_gives_up_at_the_deadline,
                wait_forever_gets_the_lock_when_released,
                retries_exhausted_is_not_obtained,
                waiter_wakes_promptly_on_release,
                waiters_are_served_fairly,
                // fencing.rs
                fencing_tokens_increase_across_release,
                // refresh.rs
                refresh_extends_the_lock,
                start_refresh_keeps_the_lock_past_several_ttls,
                refresh_stop_is_idempotent_and_reports_no_error,
                // lost.rs
                lost_fires_when_the_key_is_deleted,
                lost_resolves_on_release,
                // inspect.rs
                is_locked_is_read_only,
                inspect_reports_holder_token_ttl_and_metadata,
                inspect_never_creates_a_lock,
                // exclusion.rs
                racing_tasks_have_exactly_one_winner,
                rounds_never_overlap_and_tokens_increase,
                separate_lockers_never_overlap,
                // input.rs
                unusual_keys_work,
                prefix_keys_are_independent,
                invalid_keys_are_rejected,
                invalid_options_are_rejected,
                namespaces_isolate,
                // cancel.rs
                dropped_obtain_future_leaks_nothing,
                dropped_lock_is_released_in_the_background,
                close_releases_locks_and_refuses_operations,
                // sharing.rs
                closing_one_locker_leaves_the_others_on_its_backend_alone,
            ],
            ttl_expiry: [
                // fencing.rs
                fencing_tokens_increase_across_expiry_and_holders,
                // expiry.rs
                release_after_expiry_is_not_held,
                expiry_frees_the_key_after_the_ttl,
                a_grant_arriving_after_its_deadline_is_not_handed_out,
                // refresh.rs
                refresh_after_expiry_is_not_held,
                dropping_the_refresh_handle_stops_refreshing,
                // lost.rs
                lost_fires_at_the_validity_deadline_before_the_store_expires_it,
            ],
            // semaphore.rs
            semaphore: {
                always: [
                    limit_is_respected_by_racing_tasks,
                    limit_is_respected_across_lockers,
                    racing_try_acquires_win_exactly_the_limit,
                    try_acquire_fails_fast_when_full,
                    a_release_wakes_a_waiter_promptly,
                    a_deleted_permit_is_lost_alone,
                    a_different_limit_is_refused_at_once,
                    plain_locks_and_permits_exclude_each_other,
                    fencing_tokens_increase_over_permits_and_locks,
                    start_refresh_keeps_a_permit_past_several_ttls,
                    non_owner_cannot_release_or_extend_a_permit,
                    extend_and_release_in_another_mode_are_not_held,
                    acquire_is_idempotent_for_the_same_owner,
                    dropped_acquire_future_leaks_no_permit,
                    a_dropped_permit_is_released_in_the_background,
                    holders_lists_every_permit_with_token_ttl_metadata_and_limit,
                    holders_is_read_only,
                    waiters_of_one_locker_get_permits_in_arrival_order,
                    releasing_the_last_permit_frees_the_key,
                    a_semaphore_of_one_is_a_lock,
                ],
                ttl_expiry: [
                    a_crashed_holders_permit_returns_after_its_ttl,
                    an_unrefreshed_permit_is_lost_alone,
                ],
            },
            // rwlock.rs
            rwlock: {
                always: [
                    readers_hold_the_key_together,
                    a_writer_and_readers_exclude_each_other,
                    a_waiting_writer_blocks_new_readers,
                    waiters_of_one_locker_are_served_in_arrival_order_across_modes,
                    fencing_orders_writes_after_every_earlier_grant,
                    a_read_lock_is_released_alone,
                    a_deleted_read_lock_is_lost_alone,
                    a_write_lock_is_a_plain_lock,
                    readers_and_a_semaphore_refuse_each_other,
                    dropping_a_waiting_writer_unblocks_readers_at_once,
                    a_dead_writers_queue_entry_lapses,
                    holders_lists_every_reader_with_token_ttl_and_metadata,
                    try_write_fails_fast_and_blocks_no_reader,
                    refresh_keeps_a_read_lock,
                    a_writer_wakes_promptly_when_the_last_reader_leaves,
                    reads_and_writes_of_racing_tasks_never_overlap,
                    a_dropped_read_lock_is_released_in_the_background,
                ],
                ttl_expiry: [
                    a_crashed_readers_place_returns_after_its_ttl,
                ],
            },
            // leadership.rs
            leadership: {
                always: [
                    one_leader_among_racing_candidates,
                    terms_increase_and_are_fencing_tokens,
                    resign_hands_over_promptly,
                    a_dropped_leadership_resigns_in_the_background,
                    observe_reports_every_change_in_order,
                    observe_is_quiet_while_the_leader_stays,
                    observe_is_woken_by_a_campaign_and_a_resignation,
                    observe_sees_a_change_made_while_its_consumer_was_busy,
                    leader_is_read_only,
                    leader_reports_identity_term_since_and_time_left,
                    invalid_identities_are_rejected,
                    a_campaign_gives_up_at_its_deadline_and_leaves_nothing,
                    a_dropped_campaign_leaves_no_candidate,
                ],
                ttl_expiry: [
                    a_cut_off_leader_is_lost_at_its_deadline_and_replaced,
                    observe_reports_a_vanished_leader_within_a_poll,
                ],
            },
        }
    };
}

/// [`conformance_list!`] to tests: the lock cases at the top level, each
/// primitive's in its module.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_tests {
    (
        ($fixture:path; ttl_expiry = $ttl:tt)
        always: [$($case:ident),* $(,)?],
        ttl_expiry: [$($ttl_case:ident),* $(,)?],
        $($primitive:ident: {
            always: [$($p_case:ident),* $(,)?],
            ttl_expiry: [$($p_ttl_case:ident),* $(,)?] $(,)?
        }),* $(,)?
    ) => {
        $crate::__conformance_group!(
            ($fixture; ttl_expiry = $ttl; [])
            [$($case),*] [$($ttl_case),*]
        );
        $(
            #[doc = concat!("The conformance cases of `conformance::", stringify!($primitive), "`.")]
            mod $primitive {
                #[allow(unused_imports)]
                use super::*;
                $crate::__conformance_group!(
                    ($fixture; ttl_expiry = $ttl; [$primitive])
                    [$($p_case),*] [$($p_ttl_case),*]
                );
            }
        )*
    };
}

/// One group of cases (the locks', `[]`, or one primitive's, `[module]` of
/// `conformance`) to tests.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_group {
    (
        ($fixture:path; ttl_expiry = true; $module:tt)
        [$($case:ident),*] [$($ttl_case:ident),*]
    ) => {
        $($crate::__conformance_test!($fixture; $module; $case);)*
        $($crate::__conformance_test!($fixture; $module; ttl_expiry = true; $ttl_case);)*
    };
    (
        ($fixture:path; ttl_expiry = false; $module:tt)
        [$($case:ident),*] [$($ttl_case:ident),*]
    ) => {
        $($crate::__conformance_test!($fixture; $module; $case);)*
        /// The TTL-dependent cases, adapted to a store without TTL expiry.
        mod without_ttl_expiry {
            #[allow(unused_imports)]
            use super::*;
            $($crate::__conformance_test!($fixture; $module; ttl_expiry = false; $ttl_case);)*
        }
    };
}

/// [`conformance_list!`] to [`conformance::CASES`] or
/// [`conformance::TTL_CASES`]: a primitive's cases as `primitive::case`.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_names {
    (
        (all)
        always: [$($case:ident),* $(,)?],
        ttl_expiry: [$($ttl_case:ident),* $(,)?],
        $($primitive:ident: {
            always: [$($p_case:ident),* $(,)?],
            ttl_expiry: [$($p_ttl_case:ident),* $(,)?] $(,)?
        }),* $(,)?
    ) => {
        &[
            $(stringify!($case),)*
            $(stringify!($ttl_case),)*
            $(
                $(concat!(stringify!($primitive), "::", stringify!($p_case)),)*
                $(concat!(stringify!($primitive), "::", stringify!($p_ttl_case)),)*
            )*
        ]
    };
    (
        (ttl_expiry)
        always: [$($case:ident),* $(,)?],
        ttl_expiry: [$($ttl_case:ident),* $(,)?],
        $($primitive:ident: {
            always: [$($p_case:ident),* $(,)?],
            ttl_expiry: [$($p_ttl_case:ident),* $(,)?] $(,)?
        }),* $(,)?
    ) => {
        &[
            $(stringify!($ttl_case),)*
            $($(concat!(stringify!($primitive), "::", stringify!($p_ttl_case)),)*)*
        ]
    };
}

/// One conformance test, calling `conformance::[module::]case`.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_test {
    ($fixture:path; [$($module:ident)?]; ttl_expiry = $ttl:literal; $case:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let fixture = $fixture().await;
            $crate::conformance::expect_ttl_expiry(&fixture, $ttl).await;
            $crate::conformance::$($module::)?$case(&fixture).await;
        }
    };
    ($fixture:path; [$($module:ident)?]; $case:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let fixture = $fixture().await;
            $crate::conformance::$($module::)?$case(&fixture).await;
        }
    };
}
