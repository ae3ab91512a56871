//! The chaos suite's harness (dev-only, never published): the system as real processes
//! ([`cluster`]: `messenger-server` nodes behind HAProxy on Redis and HBase), network
//! faults ([`proxy`]), SDK clients with persistent outboxes keeping ledgers
//! ([`ledger`]), and a run that injects faults and checks the delivery contract
//! ([`run`]). `messenger-server/tests/chaos.rs` runs it; docs/reliability.md says what
//! is guaranteed under which fault.

pub mod cluster;
pub mod ledger;
pub mod proxy;
pub mod run;

pub use cluster::{Cluster, ClusterConfig};
pub use proxy::{Fault, FaultProxy};
pub use run::{run, Profile, Report};
