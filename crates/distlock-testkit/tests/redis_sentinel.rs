//! The conformance suite on a Sentinel set (one master, two replicas,
//! three sentinels), through `redis+sentinel://`, grants acknowledged by a
//! replica.
#![cfg(feature = "redis")]

distlock_testkit::conformance_suite!(distlock_testkit::redis_ha::HaFixture::sentinel);
