//! `messenger-worker`: run a chat worker. `messenger-worker --help` lists the flags;
//! `docs/operations.md` the configuration file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use messenger_worker::{Overrides, WorkerConfig, WorkerError};

/// Reads messenger's event log from Kafka and hands off push notifications (APNs, FCM,
/// Web Push, the push webhook) and signed webhooks. Configuration: a TOML file
/// (--config), then MESSENGER_WORKER_* environment variables (nested keys joined with
/// __, e.g. MESSENGER_WORKER_KAFKA__BROKERS), then
/// these flags.
#[derive(Parser, Debug)]
#[command(name = "messenger-worker", version)]
struct Args {
    /// A TOML configuration file.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Kafka bootstrap brokers, HOST:PORT[,HOST:PORT...].
    #[arg(long = "kafka", value_name = "BROKERS")]
    kafka: Option<String>,
    /// The consumer group shared by every worker of a deployment.
    #[arg(long)]
    group: Option<String>,
    /// Where /metrics and /healthz listen (default 127.0.0.1:9100).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// The servers' HBase Thrift2 gateway, HOST:PORT: where users' push targets and
    /// thread mutes are read from (needed by [push.apns], [push.fcm], [push.webpush]).
    #[arg(long, value_name = "HOST:PORT")]
    hbase: Option<String>,
    /// An extra librdkafka property, KEY=VALUE (repeatable), e.g.
    /// security.protocol=SASL_SSL.
    #[arg(long = "kafka-property", value_name = "KEY=VALUE", value_parser = messenger_kafka::parse_property)]
    kafka_property: Vec<(String, String)>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let flags = Overrides {
        brokers: args.kafka,
        group: args.group,
        listen: args.listen,
        hbase: args.hbase,
        properties: args.kafka_property,
    };
    let cfg = match WorkerConfig::load(args.config.as_ref(), &flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("messenger-worker: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("messenger-worker: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = async {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(t) => t,
                    Err(_) => {
                        let _ = ctrl_c.await;
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => {},
                _ = term.recv() => {},
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
    };
    match rt.block_on(messenger_worker::run(cfg, shutdown)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ WorkerError::Config(_)) => {
            eprintln!("messenger-worker: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("messenger-worker: {e}");
            ExitCode::FAILURE
        }
    }
}
