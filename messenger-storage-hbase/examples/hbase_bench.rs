//! Appends per second, append latency and latest-50 read latency on a real HBase, through
//! the adapter and through raw Thrift2 calls in the same run; and the raw ceilings the
//! adapter is measured against.
//!
//! ```text
//! scripts/hbase.sh start          # prints HBASE_THRIFT=127.0.0.1:PORT
//! cargo run --release -p messenger-storage-hbase --example hbase_bench -- 127.0.0.1:PORT
//! cargo run --release -p messenger-storage-hbase --example hbase_bench -- 127.0.0.1:PORT \
//!     ceiling [--connections 32] [--rows 25] [--secs 10] [--cas] [--json PATH]
//! cargo run --release -p messenger-storage-hbase --example hbase_bench -- 127.0.0.1:PORT \
//!     batches [--threads 50] [--rows 25] [--secs 10] [--json PATH]
//! ```
//!
//! Default mode: an append is the adapter's `append` against one raw put-if-absent
//! `checkAndPut` of a message row at a seq the benchmark already knows (the least a
//! durable, race-free append can cost); a read is one reversed `getScannerResults` with
//! limit 50.
//!
//! `ceiling`: the raw write ceiling. `--connections` blocking Thrift connections, each
//! sending `putMultiple` of `--rows` message-sized rows back to back (with `--cas`,
//! `checkAndPut` of one row holding `--rows` cells: the shape of the adapter's seq
//! claim). Prints rows/s.
//!
//! `batches`: the adapter alone, without the engine: `--threads` threads, each with one
//! task appending batches of `--rows` messages back to back.

use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use messenger_core::model::{HistoryQuery, NewMessage};
use messenger_core::time::now_ms;
use messenger_core::{MessageId, MessageStore, ThreadId, UserId};
use messenger_storage_hbase::gen::hbase::{
    TColumnValue, THBaseServiceSyncClient, TPut, TScan, TTHBaseServiceSyncClient,
};
use messenger_storage_hbase::{HBaseOptions, HBaseStore};
use thrift::protocol::{TBinaryInputProtocol, TBinaryOutputProtocol};
use thrift::transport::{TBufferedReadTransport, TBufferedWriteTransport, TIoChannel, TTcpChannel};

const SEQ_APPENDS: usize = 300;
const CONC_TASKS: usize = 8;
const CONC_APPENDS_PER_TASK: usize = 100;
const READS: usize = 300;

type BoxResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn raw_client(addr: &str) -> BoxResult<impl TTHBaseServiceSyncClient> {
    let stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    let (r, w) = TTcpChannel::with_stream(stream).split()?;
    Ok(THBaseServiceSyncClient::new(
        TBinaryInputProtocol::new(TBufferedReadTransport::new(r), true),
        TBinaryOutputProtocol::new(TBufferedWriteTransport::new(w), true),
    ))
}

fn cv(q: &[u8], v: Vec<u8>) -> TColumnValue {
    TColumnValue {
        family: b"m".to_vec(),
        qualifier: q.to_vec(),
        value: v,
        timestamp: None,
        tags: None,
        type_: None,
    }
}

/// Same key layout as the adapter (hash prefix, thread, kind byte, big-endian seq).
fn raw_key(thread: &str, seq: u64) -> Vec<u8> {
    let mut h: u32 = 0x811c_9dc5;
    for b in thread.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let mut k = h.to_be_bytes().to_vec();
    k.extend_from_slice(thread.as_bytes());
    k.extend_from_slice(&[0, 1]);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn raw_append(
    c: &mut impl TTHBaseServiceSyncClient,
    table: &[u8],
    thread: &str,
    seq: u64,
) -> BoxResult<()> {
    let row = raw_key(thread, seq);
    let put = TPut {
        row: row.clone(),
        column_values: vec![
            cv(b"i", seq.to_be_bytes().to_vec()),
            cv(b"s", b"bench-user".to_vec()),
            cv(b"t", format!("t{seq}").into_bytes()),
            cv(b"x", b"hello from the benchmark".to_vec()),
            cv(b"a", now_ms().to_be_bytes().to_vec()),
        ],
        timestamp: None,
        attributes: None,
        durability: None,
        cell_visibility: None,
    };
    let won = c.check_and_put(
        table.to_vec(),
        row,
        b"m".to_vec(),
        b"i".to_vec(),
        Vec::new(),
        put,
    )?;
    if !won {
        return Err("raw append lost its row".into());
    }
    Ok(())
}

fn raw_latest(
    c: &mut impl TTHBaseServiceSyncClient,
    table: &[u8],
    thread: &str,
    n: i32,
) -> BoxResult<usize> {
    let scan = TScan {
        start_row: Some(raw_key(thread, u64::MAX)),
        stop_row: Some(raw_key(thread, 0)),
        columns: None,
        caching: Some(n + 1),
        max_versions: Some(1),
        time_range: None,
        filter_string: None,
        batch_size: None,
        attributes: None,
        authorizations: None,
        reversed: Some(true),
        cache_blocks: None,
        col_fam_time_range_map: None,
        read_type: None,
        limit: Some(n + 1),
        consistency: None,
        target_replica_id: None,
        filter_bytes: None,
    };
    Ok(c.get_scanner_results(table.to_vec(), scan, n + 1)?.len())
}

fn msg(thread: &ThreadId, i: u64) -> NewMessage {
    NewMessage {
        thread_id: thread.clone(),
        message_id: MessageId(i),
        sender_id: UserId::new("bench-user").unwrap_or_else(|e| panic!("{e}")),
        temp_id: format!("t{i}"),
        text: "hello from the benchmark".into(),
        sent_at: now_ms(),
    }
}

struct Stats {
    p50: Duration,
    p99: Duration,
    mean: Duration,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    let pick = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    Stats {
        p50: pick(0.5),
        p99: pick(0.99),
        mean: v.iter().sum::<Duration>() / v.len() as u32,
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

/// Options of the `ceiling` and `batches` modes (`--name value` pairs after the mode).
struct Load {
    connections: usize,
    rows: usize,
    secs: f64,
    cas: bool,
    threads: usize,
    json: Option<String>,
}

impl Load {
    fn parse(args: &[String]) -> BoxResult<Load> {
        let mut l = Load {
            connections: 32,
            rows: 25,
            secs: 10.0,
            cas: false,
            threads: 50,
            json: None,
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut val = || -> BoxResult<&String> {
                it.next().ok_or_else(|| format!("{a} needs a value").into())
            };
            match a.as_str() {
                "--connections" => l.connections = val()?.parse()?,
                "--rows" => l.rows = val()?.parse()?,
                "--secs" => l.secs = val()?.parse()?,
                "--threads" => l.threads = val()?.parse()?,
                "--json" => l.json = Some(val()?.clone()),
                "--cas" => l.cas = true,
                other => return Err(format!("unknown option {other}").into()),
            }
        }
        if l.connections == 0 || l.rows == 0 || l.threads == 0 || l.secs <= 0.0 {
            return Err("--connections, --rows, --threads and --secs must be positive".into());
        }
        Ok(l)
    }

    fn report(&self, v: serde_json::Value) -> BoxResult<()> {
        println!("{}", serde_json::to_string_pretty(&v)?);
        if let Some(p) = &self.json {
            std::fs::write(p, serde_json::to_string_pretty(&v)?)?;
        }
        Ok(())
    }
}

/// A message-sized row: the same key shape and about the same cell size as a message in
/// the adapter's block rows (a ~90-byte record).
fn ceiling_put(run: &str, conn: usize, n: u64) -> TPut {
    let thread = format!("ceiling-{run}-{conn}");
    TPut {
        row: raw_key(&thread, n),
        column_values: vec![cv(
            &n.to_be_bytes(),
            format!(
                "{:0>90}",
                format!("bench-user/t{n}/hello from the benchmark")
            )
            .into_bytes(),
        )],
        timestamp: None,
        attributes: None,
        durability: None,
        cell_visibility: None,
    }
}

/// The raw ceiling: `connections` blocking Thrift connections, each sending `putMultiple`
/// of `rows` message-sized rows back to back for `secs` (with `--cas`: `checkAndPut` of
/// one row holding `rows` cells, put-if-absent, the shape of the adapter's seq claim).
fn ceiling(addr: &str, table: &[u8], run: &str, l: &Load) -> BoxResult<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs_f64(l.secs);
    let t0 = Instant::now();
    let handles: Vec<_> = (0..l.connections)
        .map(|conn| {
            let (addr, table, run, rows, cas) = (
                addr.to_owned(),
                table.to_vec(),
                run.to_owned(),
                l.rows,
                l.cas,
            );
            std::thread::spawn(move || -> BoxResult<(u64, u64)> {
                let mut c = raw_client(&addr)?;
                let (mut calls, mut written) = (0u64, 0u64);
                let mut n = 0u64;
                while Instant::now() < deadline {
                    if cas {
                        n += 1;
                        let row = raw_key(&format!("ceiling-cas-{run}-{conn}"), n);
                        let cells: Vec<TColumnValue> = (0..rows as u64)
                            .map(|k| cv(&k.to_be_bytes(), vec![b'x'; 90]))
                            .collect();
                        let put = TPut {
                            row: row.clone(),
                            column_values: cells,
                            timestamp: None,
                            attributes: None,
                            durability: None,
                            cell_visibility: None,
                        };
                        let won = c.check_and_put(
                            table.clone(),
                            row,
                            b"m".to_vec(),
                            b"l".to_vec(),
                            Vec::new(),
                            put,
                        )?;
                        if !won {
                            return Err("a put-if-absent on a fresh row lost".into());
                        }
                    } else {
                        let puts: Vec<TPut> = (0..rows)
                            .map(|_| {
                                n += 1;
                                ceiling_put(&run, conn, n)
                            })
                            .collect();
                        c.put_multiple(table.clone(), puts)?;
                    }
                    calls += 1;
                    written += rows as u64;
                }
                Ok((calls, written))
            })
        })
        .collect();
    let (mut calls, mut written) = (0u64, 0u64);
    for h in handles {
        let (c, w) = h.join().map_err(|_| "a ceiling thread panicked")??;
        calls += c;
        written += w;
    }
    let secs = t0.elapsed().as_secs_f64();
    Ok(serde_json::json!({
        "mode": if l.cas { "checkAndPut" } else { "putMultiple" },
        "connections": l.connections,
        "rows_per_call": l.rows,
        "secs": (secs * 1000.0).round() / 1000.0,
        "calls_per_sec": (calls as f64 / secs).round(),
        "rows_per_sec": (written as f64 / secs).round(),
    }))
}

/// The adapter alone: `threads` threads, each with one task appending batches of `rows`
/// messages back to back for `secs` (concurrent batches of different threads share
/// coalesced calls, as under the engine).
async fn batches(store: Arc<HBaseStore>, run: &str, l: &Load) -> BoxResult<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(l.secs);
    let t0 = Instant::now();
    let mut hs = Vec::new();
    for k in 0..l.threads {
        let store = store.clone();
        let t = ThreadId::new(format!("bench-batches-{run}-{k}"))?;
        let rows = l.rows as u64;
        hs.push(tokio::spawn(async move {
            let (mut calls, mut n) = (0u64, 0u64);
            while tokio::time::Instant::now() < deadline {
                let batch: Vec<NewMessage> = (0..rows)
                    .map(|_| {
                        n += 1;
                        msg(&t, n)
                    })
                    .collect();
                store.append_batch(&t, batch).await?;
                calls += 1;
            }
            Ok::<_, messenger_core::Error>((calls, n))
        }));
    }
    let (mut calls, mut written) = (0u64, 0u64);
    for h in hs {
        let (c, w) = h.await??;
        calls += c;
        written += w;
    }
    let secs = t0.elapsed().as_secs_f64();
    Ok(serde_json::json!({
        "mode": "append_batch",
        "threads": l.threads,
        "messages_per_batch": l.rows,
        "secs": (secs * 1000.0).round() / 1000.0,
        "batches_per_sec": (calls as f64 / secs).round(),
        "messages_per_sec": (written as f64 / secs).round(),
    }))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> BoxResult<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr = args
        .first()
        .cloned()
        .or_else(|| std::env::var("HBASE_THRIFT").ok())
        .ok_or("usage: hbase_bench HOST:PORT [ceiling|batches [options]] (or HBASE_THRIFT)")?;
    let store =
        Arc::new(HBaseStore::connect(HBaseOptions::new(&addr).with_table_prefix("mbench_")).await?);
    let table = b"mbench_messages".to_vec();
    let run = format!("{}-{}", std::process::id(), now_ms());
    match args.get(1).map(String::as_str) {
        None => {}
        Some("ceiling") => {
            let l = Load::parse(&args[2..])?;
            let (addr, table, run2) = (addr.clone(), table.clone(), run.clone());
            let out = tokio::task::spawn_blocking(move || {
                ceiling(&addr, &table, &run2, &l).map(|v| (v, l))
            })
            .await??;
            return out.1.report(out.0);
        }
        Some("batches") => {
            let l = Load::parse(&args[2..])?;
            let v = batches(store, &run, &l).await?;
            return l.report(v);
        }
        Some(other) => return Err(format!("unknown mode {other}: ceiling or batches").into()),
    }
    let id = |s: &str| ThreadId::new(format!("bench-{s}-{run}"));

    // Warm-up (JIT on the gateway and region server, connections).
    let warm = id("warm")?;
    for i in 1..=200u64 {
        store.append(msg(&warm, i)).await?;
    }
    let warm_raw = format!("raw-warm-{run}");
    {
        let (addr, table, t) = (addr.clone(), table.clone(), warm_raw.clone());
        tokio::task::spawn_blocking(move || -> BoxResult<()> {
            let mut c = raw_client(&addr)?;
            for s in 1..=200 {
                raw_append(&mut c, &table, &t, s)?;
            }
            Ok(())
        })
        .await??;
    }

    // 1. Sequential append latency.
    let t = id("seq")?;
    let mut lat = Vec::with_capacity(SEQ_APPENDS);
    for i in 1..=SEQ_APPENDS as u64 {
        let t0 = Instant::now();
        store.append(msg(&t, i)).await?;
        lat.push(t0.elapsed());
    }
    let adapter_append = stats(lat);
    let raw_thread = format!("raw-seq-{run}");
    let raw_append_lat = {
        let (addr, table, t) = (addr.clone(), table.clone(), raw_thread.clone());
        tokio::task::spawn_blocking(move || -> BoxResult<Vec<Duration>> {
            let mut c = raw_client(&addr)?;
            let mut lat = Vec::with_capacity(SEQ_APPENDS);
            for s in 1..=SEQ_APPENDS as u64 {
                let t0 = Instant::now();
                raw_append(&mut c, &table, &t, s)?;
                lat.push(t0.elapsed());
            }
            Ok(lat)
        })
        .await??
    };
    let raw_append_s = stats(raw_append_lat);

    // 2. Throughput: CONC_TASKS appenders, each on its own thread, at once.
    let t0 = Instant::now();
    let mut hs = Vec::new();
    for task in 0..CONC_TASKS {
        let store = store.clone();
        let t = id(&format!("conc{task}"))?;
        hs.push(tokio::spawn(async move {
            for i in 1..=CONC_APPENDS_PER_TASK as u64 {
                store.append(msg(&t, i)).await?;
            }
            Ok::<_, messenger_core::Error>(())
        }));
    }
    for h in hs {
        h.await??;
    }
    let adapter_tput = (CONC_TASKS * CONC_APPENDS_PER_TASK) as f64 / t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let mut hs = Vec::new();
    for task in 0..CONC_TASKS {
        let (addr, table, t) = (addr.clone(), table.clone(), format!("raw-conc{task}-{run}"));
        hs.push(tokio::task::spawn_blocking(move || -> BoxResult<()> {
            let mut c = raw_client(&addr)?;
            for s in 1..=CONC_APPENDS_PER_TASK as u64 {
                raw_append(&mut c, &table, &t, s)?;
            }
            Ok(())
        }));
    }
    for h in hs {
        h.await??;
    }
    let raw_tput = (CONC_TASKS * CONC_APPENDS_PER_TASK) as f64 / t0.elapsed().as_secs_f64();

    // 3. Latest-50 reads on the threads written in step 1.
    let mut lat = Vec::with_capacity(READS);
    for _ in 0..READS {
        let t0 = Instant::now();
        let page = store.fetch(&t, HistoryQuery::latest(50)).await?;
        lat.push(t0.elapsed());
        assert_eq!(page.messages.len(), 50);
    }
    let adapter_read = stats(lat);
    let raw_read = {
        let (addr, table, t) = (addr.clone(), table.clone(), raw_thread.clone());
        tokio::task::spawn_blocking(move || -> BoxResult<Vec<Duration>> {
            let mut c = raw_client(&addr)?;
            let mut lat = Vec::with_capacity(READS);
            for _ in 0..READS {
                let t0 = Instant::now();
                let n = raw_latest(&mut c, &table, &t, 50)?;
                lat.push(t0.elapsed());
                assert_eq!(n, 51);
            }
            Ok(lat)
        })
        .await??
    };
    let raw_read = stats(raw_read);

    println!("| metric | adapter | raw Thrift2 | adapter / raw |");
    println!("|---|---|---|---|");
    let row = |name: &str, a: &Stats, r: &Stats| {
        for (what, x, y) in [
            ("p50", a.p50, r.p50),
            ("p99", a.p99, r.p99),
            ("mean", a.mean, r.mean),
        ] {
            println!(
                "| {name} {what} (ms) | {} | {} | {:.2} |",
                ms(x),
                ms(y),
                x.as_secs_f64() / y.as_secs_f64()
            );
        }
    };
    row(
        &format!("append latency, 1 appender, {SEQ_APPENDS} appends,"),
        &adapter_append,
        &raw_append_s,
    );
    println!(
        "| appends/s, {CONC_TASKS} concurrent appenders x {CONC_APPENDS_PER_TASK} | {adapter_tput:.0} | {raw_tput:.0} | {:.2} (raw / adapter: {:.2}) |",
        adapter_tput / raw_tput,
        raw_tput / adapter_tput
    );
    row(
        &format!("latest-50 read, {READS} reads,"),
        &adapter_read,
        &raw_read,
    );
    Ok(())
}
