//! The HBase Thrift2 client, generated from `thrift/hbase.thrift` (the IDL inside
//! `org.apache.hbase:hbase-thrift:2.6.1`, `org/apache/hadoop/hbase/thrift2/hbase.thrift`) by
//! the Thrift compiler 0.17.0 (Debian `thrift-compiler`):
//!
//! ```text
//! thrift -out messenger-storage-hbase/src/gen --gen rs messenger-storage-hbase/thrift/hbase.thrift
//! ```
//!
//! Checked in so that builds need no Thrift compiler. Do not edit; regenerate instead.

#[allow(
    missing_docs,
    dead_code,
    non_camel_case_types,
    unused_imports,
    unused_extern_crates,
    clippy::all,
    clippy::pedantic,
    rustdoc::all
)]
pub mod hbase;
