//! Opening a data directory: persistence across reopen, the lock, the schema version,
//! bad directories, online backup.

mod common;

use messenger_core::model::{HistoryQuery, NewMessage, NewThread, ThreadKind};
use messenger_core::push::{PushPlatform, PushRegistration, ThreadMute};
use messenger_core::testkit::{unique_message_id, unique_thread, unique_user};
use messenger_core::{MessageStore, PushRegistry, ThreadStore};
use messenger_storage_sqlite::{
    OpenError, SqliteOptions, SqliteStore, SyncMode, DB_FILE, SCHEMA_VERSION,
};

fn msg(
    thread: &messenger_core::ThreadId,
    sender: &messenger_core::UserId,
    temp: &str,
) -> NewMessage {
    NewMessage {
        thread_id: thread.clone(),
        message_id: unique_message_id(),
        sender_id: sender.clone(),
        temp_id: temp.into(),
        text: format!("text {temp}"),
        sent_at: 1_700_000_000_000,
    }
}

async fn open(dir: &std::path::Path) -> Result<SqliteStore, OpenError> {
    SqliteStore::open(SqliteOptions::new(dir)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_survives_a_reopen() {
    let dir = common::fresh_dir("reopen");
    let (alice, bob) = (unique_user("alice"), unique_user("bob"));
    let thread = unique_thread("dm");
    let sent = {
        let s = SqliteStore::open(SqliteOptions::new(&dir).sync(SyncMode::Normal))
            .await
            .expect("open");
        s.create_thread(NewThread {
            thread_id: thread.clone(),
            kind: ThreadKind::Group,
            title: Some("t".into()),
            members: vec![alice.clone(), bob.clone()],
            created_at: 5,
        })
        .await
        .expect("create");
        let batch = (0..10)
            .map(|i| msg(&thread, &alice, &format!("m{i}")))
            .collect();
        let out = s.append_batch(&thread, batch).await.expect("append");
        s.advance_watermark(&thread, &bob, messenger_core::model::AckStatus::Read, 4)
            .await
            .expect("ack");
        out
    };
    let s = open(&dir).await.expect("reopen");
    let page = s
        .fetch(&thread, HistoryQuery::latest(50))
        .await
        .expect("fetch");
    let stored: Vec<_> = sent.into_iter().map(|a| a.message).collect();
    assert_eq!(page.messages, stored);
    let again = s.append(msg(&thread, &alice, "m3")).await.expect("resend");
    assert!(again.duplicate);
    assert_eq!(again.message, stored[3]);
    let next = s.append(msg(&thread, &alice, "new")).await.expect("append");
    assert_eq!(next.message.seq, 11);
    let list = s.list_user_threads(&bob).await.expect("list");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].thread.title.as_deref(), Some("t"));
    let bob_wm = list[0]
        .receipts
        .iter()
        .find(|(u, _)| u == &bob)
        .expect("bob")
        .1;
    assert_eq!((bob_wm.delivered_seq, bob_wm.read_seq), (4, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_directory_is_refused_and_released_on_drop() {
    let dir = common::fresh_dir("lock");
    let first = open(&dir).await.expect("open");
    match open(&dir).await {
        Err(OpenError::Locked { holder, .. }) => {
            assert_eq!(holder, Some(std::process::id()), "names the holder");
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    let e = open(&dir).await.expect_err("still held").to_string();
    assert!(
        e.contains("in use by another running process") && e.contains("--data-dir"),
        "{e}"
    );
    drop(first);
    open(&dir)
        .await
        .expect("released when the store is dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_schema_is_refused() {
    let dir = common::fresh_dir("newer");
    drop(open(&dir).await.expect("create"));
    let c = rusqlite_conn(&dir);
    c.pragma_update(None, "user_version", 99).expect("bump");
    drop(c);
    match open(&dir).await {
        Err(e @ OpenError::NewerSchema { found: 99, .. }) => {
            let m = e.to_string();
            assert!(
                m.contains("newer messenger-server") && m.contains("backup"),
                "{m}"
            );
        }
        other => panic!("expected NewerSchema, got {other:?}"),
    }
}

/// A version 1 file (before push targets) is migrated at open: its messages stay, the
/// push tables appear, the version is bumped, and push data then survives a reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_store_is_migrated() {
    let dir = common::fresh_dir("v1");
    let (thread, alice) = (unique_thread("m"), unique_user("alice"));
    {
        let s = open(&dir).await.expect("create");
        let batch = (0..5)
            .map(|i| msg(&thread, &alice, &format!("v{i}")))
            .collect();
        s.append_batch(&thread, batch).await.expect("append");
    }
    let c = rusqlite_conn(&dir);
    c.execute_batch("DROP TABLE push_targets; DROP TABLE push_mutes; PRAGMA user_version = 1;")
        .expect("make it a version 1 file");
    drop(c);

    let s = open(&dir).await.expect("migrates");
    let version: i64 = rusqlite_conn(&dir)
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .expect("version");
    assert_eq!(version, SCHEMA_VERSION);
    let page = s
        .fetch(&thread, HistoryQuery::latest(50))
        .await
        .expect("fetch");
    assert_eq!(page.messages.len(), 5, "the messages stay");
    let reg = PushRegistration::validate(
        alice.clone(),
        PushPlatform::Fcm,
        Some("fcm-token-0123456789abcdefghijklmnop".into()),
        None,
        None,
        None,
        false,
        1_700_000_000_000,
    )
    .expect("valid");
    s.register_target(reg.clone(), 10).await.expect("register");
    s.set_mute(
        &alice,
        ThreadMute {
            thread_id: thread.clone(),
            until: None,
        },
    )
    .await
    .expect("mute");
    drop(s);
    let s = open(&dir).await.expect("reopen");
    let t = s.push_targets(&alice, &thread).await.expect("targets");
    assert_eq!(t.targets, vec![reg]);
    assert_eq!(t.mute.map(|m| m.until), Some(None));
}

fn rusqlite_conn(dir: &std::path::Path) -> rusqlite::Connection {
    rusqlite::Connection::open(dir.join(DB_FILE)).expect("sqlite")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_directories_say_what_to_do() {
    let file = common::fresh_dir("file");
    std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
    std::fs::write(&file, b"x").expect("file");
    let e = open(&file).await.expect_err("a file");
    assert!(matches!(e, OpenError::NotADirectory { .. }), "{e:?}");
    assert!(e.to_string().contains("not a directory"), "{e}");

    let other = common::fresh_dir("other-db");
    std::fs::create_dir_all(&other).expect("mkdir");
    let c = rusqlite_conn(&other);
    c.execute_batch("CREATE TABLE notes (x TEXT)")
        .expect("other schema");
    drop(c);
    let e = open(&other).await.expect_err("someone else's database");
    assert!(matches!(e, OpenError::NotAStore { .. }), "{e:?}");

    let garbage = common::fresh_dir("garbage");
    std::fs::create_dir_all(&garbage).expect("mkdir");
    std::fs::write(garbage.join(DB_FILE), vec![7u8; 8192]).expect("garbage");
    let e = open(&garbage).await.expect_err("not a database");
    assert!(matches!(e, OpenError::NotAStore { .. }), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_backup_is_a_store_of_its_own() {
    let dir = common::fresh_dir("live");
    let s = open(&dir).await.expect("open");
    let (thread, alice) = (unique_thread("b"), unique_user("alice"));
    let batch = (0..20)
        .map(|i| msg(&thread, &alice, &format!("t{i}")))
        .collect();
    s.append_batch(&thread, batch).await.expect("append");
    let copy_dir = common::fresh_dir("copy");
    std::fs::create_dir_all(&copy_dir).expect("mkdir");
    s.backup(copy_dir.join(DB_FILE))
        .await
        .expect("backup while open");
    let e = s
        .backup(copy_dir.join(DB_FILE))
        .await
        .expect_err("never overwrites");
    assert!(e.to_string().contains("exists"), "{e}");
    // The live store keeps going.
    s.append(msg(&thread, &alice, "after"))
        .await
        .expect("append");
    let copy = open(&copy_dir).await.expect("the copy opens");
    let page = copy
        .fetch(&thread, HistoryQuery::latest(100))
        .await
        .expect("fetch");
    assert_eq!(page.messages.len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_is_folded_into_the_database_while_the_store_is_open() {
    // Checkpoints run on a background thread (not in a commit): while the store stays
    // open and takes writes, the database file grows and the WAL is started over, so
    // neither the WAL nor a restart's replay grows with the history.
    let dir = common::fresh_dir("checkpoint");
    let s = SqliteStore::open(SqliteOptions::new(&dir).sync(SyncMode::Normal))
        .await
        .expect("open");
    let alice = unique_user("alice");
    let thread = unique_thread("ck");
    s.create_thread(NewThread {
        thread_id: thread.clone(),
        kind: ThreadKind::Group,
        title: None,
        members: vec![alice.clone()],
        created_at: 1,
    })
    .await
    .expect("create");
    let db_len = || std::fs::metadata(dir.join(DB_FILE)).map_or(0, |m| m.len());
    let before = db_len();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let mut batches = 0;
    // Keep writing until a checkpoint has moved pages into the database file.
    while db_len() < before + 1024 * 1024 {
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint in 120 s ({batches} batches written; db {} bytes)",
            db_len()
        );
        let batch = (0..200)
            .map(|i| msg(&thread, &alice, &format!("b{batches}m{i}")))
            .collect();
        s.append_batch(&thread, batch).await.expect("append");
        batches += 1;
    }
    let wal = std::fs::metadata(dir.join(format!("{DB_FILE}-wal"))).map_or(0, |m| m.len());
    eprintln!(
        "db grew to {} bytes after {batches} batches of 200; wal {wal} bytes",
        db_len()
    );
    // Everything written is there, in order.
    let page = s
        .fetch(&thread, HistoryQuery::latest(1))
        .await
        .expect("fetch");
    assert_eq!(page.messages[0].seq, batches * 200);
}
