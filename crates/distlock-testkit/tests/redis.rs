//! The conformance suite against a real redis-server (one per test process).

distlock_testkit::conformance_suite!(distlock_testkit::redis::RedisFixture::new);
