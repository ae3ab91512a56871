//! Conformance suites for adapter implementations (filled in by the testkit work).
