//! The conformance suite against a real single-node etcd.

distlock_testkit::conformance_suite!(distlock_testkit::etcd::EtcdFixture::new);
