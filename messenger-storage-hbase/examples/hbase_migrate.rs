//! Migrates a messages table from schema v1 (one row per message) to schema v2 (block
//! rows). Stop every server first. See `docs/hbase-schema.md`, "Migration".
//!
//! ```text
//! cargo run --release -p messenger-storage-hbase --example hbase_migrate -- \
//!     HOST:PORT [--prefix messenger_] [--delete-v1]
//! ```
//!
//! Safe to run again after an interruption (it writes fixed cells only). Prints what it
//! did; exits non-zero with the reason when it cannot.

use messenger_storage_hbase::{migrate_v1, HBaseOptions};

const USAGE: &str = "usage: hbase_migrate HOST:PORT [--prefix TABLE_PREFIX] [--delete-v1]";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(addr) = args.next().filter(|a| !a.starts_with('-')) else {
        eprintln!("{USAGE}");
        return std::process::ExitCode::from(2);
    };
    let mut opts = HBaseOptions::new(addr);
    let mut delete_v1 = false;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--prefix" => match args.next() {
                Some(p) => opts = opts.with_table_prefix(p),
                None => {
                    eprintln!("--prefix needs a value\n{USAGE}");
                    return std::process::ExitCode::from(2);
                }
            },
            "--delete-v1" => delete_v1 = true,
            other => {
                eprintln!("unknown argument {other}\n{USAGE}");
                return std::process::ExitCode::from(2);
            }
        }
    }
    eprintln!(
        "migrating {}messages at {} to schema v2{} ...",
        opts.table_prefix,
        opts.addr,
        if delete_v1 {
            ", deleting v1 rows after"
        } else {
            ""
        }
    );
    match migrate_v1(opts, delete_v1).await {
        Ok(r) => {
            println!(
                "migrated {} threads, {} messages; {} threads had gaps in their v1 seqs; {} v1 rows deleted",
                r.threads, r.messages, r.threads_with_gaps, r.v1_rows_deleted
            );
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("migration failed: {e}\nNothing is lost: fix the cause and run it again.");
            std::process::ExitCode::FAILURE
        }
    }
}
