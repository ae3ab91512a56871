//! Every `ClientStore` passes the conformance suite; the SQLite one also keeps its file
//! to one client at a time.

use messenger_client::store::conformance;
use messenger_client::{ClientStore, MemoryStore, SqliteStore};

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "messenger-client-{name}-{}-{}",
        std::process::id(),
        fastrand_suffix()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn fastrand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_conforms() {
    let store = MemoryStore::new();
    conformance::run(|| {
        let store = store.clone();
        async move { store }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_conforms() {
    let dir = temp_dir("conformance");
    let path = dir.join("client.db");
    conformance::run(|| {
        let path = path.clone();
        async move { SqliteStore::open(&path).await.expect("open") }
    })
    .await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_is_one_client_at_a_time_and_says_so() {
    let dir = temp_dir("exclusive");
    let path = dir.join("client.db");
    let first = SqliteStore::open(&path).await.expect("open");
    first.load().await.expect("load");
    let second = SqliteStore::open(&path).await.expect_err("in use");
    assert!(
        second.message().contains("in use by another client"),
        "{second}"
    );
    drop(first);
    // Closed by the last handle: free again.
    let mut reopened = None;
    for _ in 0..100 {
        match SqliteStore::open(&path).await {
            Ok(s) => {
                reopened = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
        }
    }
    assert!(
        reopened.is_some(),
        "the file is released when the store is dropped"
    );
    // Garbage is refused with a clear error, not a crash.
    let junk = dir.join("junk.db");
    std::fs::write(
        &junk,
        b"this is not a database, just some bytes long enough",
    )
    .expect("write");
    let e = SqliteStore::open(&junk).await.expect_err("not a store");
    assert!(!e.message().is_empty());
    let _ = std::fs::remove_dir_all(dir);
}
