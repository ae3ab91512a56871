//! `messenger-bench`: the load generator and the floor relay. See the library docs.

use clap::Parser;
use messenger_bench::cli::{Args, Scenario};
use tokio_util::sync::CancellationToken;

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("messenger-bench: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        if args.scenario == Scenario::Floor {
            messenger_bench::sys::raise_nofile(1 << 20);
            let shutdown = CancellationToken::new();
            let s = shutdown.clone();
            tokio::spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                s.cancel();
            });
            messenger_bench::floor::run(args.listen, shutdown)
                .await
                .map_err(Into::into)
        } else {
            messenger_bench::run_scenario(args).await.map(|_| ())
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("messenger-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
