//! Property tests: random keys and option values never panic and are
//! either accepted or rejected with the right error; distinct keys never
//! share a lock.

use std::collections::HashSet;
use std::time::Duration;

use distlock::{Error, Locker, MAX_KEY_BYTES, ObtainOptions, RetryStrategy};
use proptest::prelude::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

fn keys() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        any::<String>().prop_map(String::into_bytes),
        proptest::collection::vec(any::<u8>(), 0..64),
        (MAX_KEY_BYTES - 4..MAX_KEY_BYTES + 4).prop_map(|n| vec![b'k'; n]),
        Just(Vec::new()),
    ]
}

fn retry() -> impl Strategy<Value = Option<RetryStrategy>> {
    let ms = |n: u64| Duration::from_millis(n);
    prop_oneof![
        Just(None),
        Just(Some(RetryStrategy::none())),
        (0u64..50, proptest::option::of(0u32..5)).prop_map(move |(d, cap)| Some(
            cap.map_or(RetryStrategy::linear(ms(d)), |c| RetryStrategy::linear(ms(
                d
            ))
            .max_retries(c))
        )),
        (0u64..50, 0u64..100)
            .prop_map(move |(b, m)| Some(RetryStrategy::exponential(ms(b), ms(m)))),
    ]
}

fn options() -> impl Strategy<Value = ObtainOptions> {
    (
        prop_oneof![0u64..10, 0u64..100_000, Just(u64::MAX / 2)],
        proptest::option::of(0u64..200_000),
        prop_oneof![Just(None), Just(Some(0u64)), (1u64..100).prop_map(Some)],
        retry(),
        proptest::option::of(0usize..5000),
    )
        .prop_map(|(ttl, refresh, wait, retry, meta)| {
            let mut o = ObtainOptions::new().ttl(Duration::from_millis(ttl));
            if let Some(r) = refresh {
                o = o.refresh_interval(Duration::from_millis(r));
            }
            if let Some(w) = wait {
                o = o.wait(Duration::from_millis(w));
            }
            if let Some(r) = retry {
                o = o.retry(r);
            }
            if let Some(m) = meta {
                o = o.metadata("m".repeat(m));
            }
            o
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_input_is_accepted_or_rejected_cleanly(key in keys(), opts in options()) {
        let valid_key = std::str::from_utf8(&key).is_ok_and(|k| !k.is_empty() && k.len() <= MAX_KEY_BYTES);
        runtime().block_on(async {
            let locker = Locker::memory();
            match locker.obtain_with(key, opts).await {
                Ok(lock) => {
                    prop_assert!(valid_key);
                    lock.release().await.unwrap();
                }
                Err(Error::InvalidKey { reason }) => prop_assert!(!valid_key && !reason.is_empty()),
                Err(Error::InvalidOptions { reason, .. }) => prop_assert!(!reason.is_empty()),
                Err(other) => prop_assert!(false, "unexpected error {other}"),
            }
            Ok(())
        })?;
    }

    #[test]
    fn distinct_keys_never_share_a_lock(keys in proptest::collection::hash_set("\\PC{1,24}", 1..24)) {
        runtime().block_on(async {
            let locker = Locker::memory();
            let mut held = Vec::new();
            for key in &keys {
                held.push(locker.try_obtain(key.as_str()).await.unwrap());
            }
            let tokens: HashSet<u64> = held.iter().map(|l| l.fencing_token()).collect();
            prop_assert_eq!(tokens.len(), keys.len());
            let first = held.remove(0);
            let first_key = first.key().to_owned();
            first.release().await.unwrap();
            for lock in held {
                prop_assert!(locker.is_locked(lock.key()).await.unwrap(), "{} freed with {}", lock.key(), first_key);
                lock.release().await.unwrap();
            }
            Ok(())
        })?;
    }
}
