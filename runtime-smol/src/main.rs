//! The `roomcast-smol` binary. See `--help`.

use std::process::ExitCode;

use async_signal::{Signal, Signals};
use clap::Parser;
use futures_util::StreamExt;
use roomcast_smol::{Cli, bind, redis_client, serve};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = redis_client(&cli) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let listener = match bind(cli.listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", cli.listen);
            return ExitCode::from(1);
        }
    };
    let result = smol::block_on(async move {
        let addr = listener.local_addr()?;
        let listener = smol::net::TcpListener::try_from(listener)?;
        tracing::info!("{}", cli.describe(addr));
        serve(cli, listener, shutdown_signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    match Signals::new([Signal::Int, Signal::Term]) {
        Ok(mut signals) => {
            signals.next().await;
        }
        Err(_) => std::future::pending().await,
    }
}
