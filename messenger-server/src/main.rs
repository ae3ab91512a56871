//! The `messenger-server` binary (feature `cli`): configuration from a TOML file, the
//! environment and flags; messages and threads in the SQLite store in `./messenger-data`
//! by default (`--data-dir`, `--sync`), in memory with `--store memory`, on HBase with
//! `--hbase`; sessions in memory, or on Redis (`--redis`) in cluster mode. Run
//! `messenger-server --help`.
//!
//! Exit codes: 0 after a clean shutdown, 2 for a refused configuration, 3 when the node
//! id is claimed by another live node, 4 when Redis, HBase or the data directory cannot
//! be used at start, 5 when another instance took this node's id while running, 1
//! otherwise.

use clap::Parser;
use messenger_server::cli::{BinarySettings, Cli, JWT_SECRET_ENV};
use messenger_server::config::StoreKind;
use messenger_server::{Server, ServerConfig, ServerError};
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let (config, bin) = match cli.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("messenger-server: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let filter = match EnvFilter::try_from_default_env() {
        Ok(f) => f,
        Err(_) => match EnvFilter::try_new(&bin.log) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("messenger-server: invalid log filter `{}`: {e}", bin.log);
                return std::process::ExitCode::from(2);
            }
        },
    };
    tracing_subscriber::fmt().with_env_filter(filter).init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("messenger-server: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(config, bin)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "messenger-server stopped");
            eprintln!("messenger-server: {e}");
            std::process::ExitCode::from(match e {
                ServerError::Config(_) | ServerError::Auth(_) => 2,
                ServerError::NodeIdConflict { .. } => 3,
                ServerError::Backend { .. } | ServerError::DataDir(_) => 4,
                ServerError::LostNodeId(_) => 5,
                _ => 1,
            })
        }
    }
}

async fn run(config: ServerConfig, bin: BinarySettings) -> Result<(), ServerError> {
    let listener = messenger_server::bind_listener(bin.listen).map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot listen on {}: {e}", bin.listen))
    })?;
    let addr = listener.local_addr()?;
    if config.auth.is_dev() {
        let notice = format!(
            "\n  DEV AUTH IS ON: the token is the user id, anyone can be anyone.\n  \
             Connect:  ws://{addr}/ws?token=alice   (or header `Authorization: Bearer alice`)\n  \
             Chat:     open http://{addr}/ in two browser windows and sign in as two names\n  \
             For real use set {JWT_SECRET_ENV}, --jwt-secret-file, --jwt-public-key or --jwks-url (JWTs, sub = user id).\n"
        );
        eprintln!("{notice}");
        tracing::warn!(%addr, "dev auth is on: the token is the user id");
    } else {
        tracing::info!(%addr, "JWT auth: connect to ws://{addr}/ws with Authorization: Bearer <jwt>; browser chat at http://{addr}/");
    }
    let data = data_notice(&config);
    let server = Server::builder().config(config).build().await?;
    eprintln!("{data}");
    // The chat server's routes and the browser chat next to them, on one listener.
    let routes = server.router().merge(messenger_server::web::router());
    server
        .serve_router(listener, routes, shutdown_signal())
        .await?;
    Ok(())
}

/// Where messages and threads are kept, said once at start.
fn data_notice(config: &ServerConfig) -> String {
    if let Some(addr) = &config.hbase.address {
        return format!(
            "  Data: on HBase at {addr} (tables {}*).\n",
            config.hbase.table_prefix
        );
    }
    match config.store.kind {
        StoreKind::Memory => "  Data: IN MEMORY ONLY (--store memory): every message is lost when \
             the server stops.\n"
            .to_string(),
        _ => {
            let dir = std::path::absolute(&config.store.data_dir)
                .unwrap_or_else(|_| config.store.data_dir.clone());
            format!(
                "  Data: SQLite store in {} (sync {}); it survives restarts. \
                 --data-dir DIR moves it, --store memory keeps nothing.\n",
                dir.display(),
                config.store.sync.as_str()
            )
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received"),
        _ = term => tracing::info!("SIGTERM received"),
    }
}
