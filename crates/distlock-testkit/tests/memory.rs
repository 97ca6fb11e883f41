//! The conformance suite against the in-process memory backend.

distlock_testkit::conformance_suite!(distlock_testkit::MemoryFixture::new);
