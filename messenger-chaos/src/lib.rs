//! The chaos suite's harness (dev-only, never published): the system as real processes
//! ([`cluster`]: `messenger-server` nodes behind HAProxy on Redis and HBase, optionally
//! Kafka as the relay), network faults ([`proxy`]), the relay's recovery after a Kafka
//! outage ([`relay_probe`]), SDK clients with persistent outboxes keeping ledgers
//! ([`ledger`]), and a run that injects faults and checks the delivery contract
//! ([`mod@run`]), and the reconnect storm ([`storm`]; the `messenger-chaos` binary runs it
//! and the soak). `messenger-server/tests/chaos.rs` runs the chaos profiles;
//! docs/reliability.md says what is guaranteed under which fault.

pub mod cluster;
pub mod cpu;
pub mod ledger;
pub mod presence;
pub mod proxy;
pub mod relay_probe;
pub mod run;
pub mod storm;

pub use cluster::{Cluster, ClusterConfig};
pub use proxy::{Fault, FaultProxy};
pub use run::{run, Profile, RelayResumed, Report, RELAY_RESUME_BOUND};
