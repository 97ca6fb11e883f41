//! The conformance suite against the file backend. Its locks live exactly
//! as long as their holder, so the TTL-dependent cases run adapted, listed
//! as `without_ttl_expiry::*`.

distlock_testkit::conformance_suite!(distlock_testkit::FileFixture::new; without: ttl_expiry);
