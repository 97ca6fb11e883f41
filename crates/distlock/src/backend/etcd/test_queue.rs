//! What readers (`inspect`, `holders`, hence `status` and `leader`) see of
//! a queue against a private etcd: an entry the queue has admitted but
//! whose owner has not yet written its grant is nobody's holder. Its
//! fencing token is not chosen until that put, so reporting it would show
//! a term or token no grant ever had.

use std::time::Duration;

use super::test_etcd::TestEtcd;
use crate::backend::{AcquireRequest, Attempt, Backend};
use crate::{Key, LockKey, Namespace, OwnerToken, Share};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admitted_waiter_is_no_holder_until_its_grant_is_written() {
    let etcd = tokio::task::spawn_blocking(TestEtcd::start).await.unwrap();
    // Two backends: two processes' sessions and leases.
    let (a, b) = (etcd.backend().await, etcd.backend().await);
    let ttl = Duration::from_secs(5);
    for (k, share) in [
        ("lock", Share::Exclusive),
        ("sem", Share::Permit { limit: 1 }),
    ] {
        let key = LockKey {
            namespace: Namespace::new("queue").unwrap(),
            key: Key::new(k).unwrap(),
        };
        let holder =
            AcquireRequest::new(key.clone(), OwnerToken::random().unwrap(), ttl).share(share);
        let Attempt::Granted {
            fencing_token: first,
        } = a.try_acquire(&holder).await.unwrap()
        else {
            panic!("{k}: the free key is granted");
        };
        let mut waiter =
            AcquireRequest::new(key.clone(), OwnerToken::random().unwrap(), ttl).share(share);
        waiter.will_wait = true;
        assert!(
            matches!(
                b.try_acquire(&waiter).await.unwrap(),
                Attempt::Contended { .. }
            ),
            "{k}: the waiter queues"
        );
        a.release(&holder.lease()).await.unwrap();
        // The waiter's entry now heads the queue, its grant not yet written.
        assert!(a.holders(&key).await.unwrap().is_empty(), "{k}: holders");
        assert_eq!(a.inspect(&key).await.unwrap(), None, "{k}: inspect");
        let Attempt::Granted { fencing_token } = b.try_acquire(&waiter).await.unwrap() else {
            panic!("{k}: the waiter is granted once the holder left");
        };
        assert!(fencing_token > first, "{k}");
        let holders = a.holders(&key).await.unwrap();
        let tokens: Vec<u64> = holders.holders.iter().map(|h| h.fencing_token).collect();
        assert_eq!(
            tokens,
            [fencing_token],
            "{k}: the grant, with its own token"
        );
        b.release(&waiter.lease()).await.unwrap();
    }
}
