//! Stores in fresh directories under the target's temporary folder (never in the repo).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

use messenger_storage_sqlite::{SqliteOptions, SqliteStore};

/// This test binary's folder under `target/tmp`, emptied of earlier runs' stores once.
fn root() -> PathBuf {
    static CLEAN: Once = Once::new();
    let exe = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "tests".into());
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("sqlite-{exe}"));
    CLEAN.call_once(|| {
        let _ = std::fs::remove_dir_all(&root);
    });
    root
}

/// A fresh, empty directory path (not created).
pub fn fresh_dir(name: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    root().join(format!("{name}-{}-{n}", std::process::id()))
}

/// A store in a fresh directory.
#[allow(
    dead_code,
    reason = "each test binary compiles this module; open.rs does not use it"
)]
pub async fn fresh_store(name: &str) -> SqliteStore {
    SqliteStore::open(SqliteOptions::new(fresh_dir(name)))
        .await
        .unwrap_or_else(|e| panic!("open: {e}"))
}
