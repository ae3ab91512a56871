//! Dev-only test harnesses shared by the workspace's tests (never published): a real
//! Redis ([`redis`]), a real HBase ([`hbase`]), a real Kafka ([`kafka`]), HAProxy in
//! front of server processes ([`haproxy`]) and child processes ([`process`]).
//! See README.md for the rules every harness follows and how to add one.

pub mod haproxy;
pub mod hbase;
pub mod kafka;
pub mod process;
pub mod redis;
