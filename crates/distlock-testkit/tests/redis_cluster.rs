//! The conformance suite on a Redis Cluster (three masters, three
//! replicas), through `redis+cluster://`, grants acknowledged by a
//! replica, release notifications on shard channels.
#![cfg(feature = "redis")]

distlock_testkit::conformance_suite!(distlock_testkit::redis_ha::HaFixture::cluster);
