//! The `tiergate` binary: parses the command line, loads config, builds the runtime, and
//! hands over to `tiergate::server`. Exit codes: 0 clean shutdown, 64 bad config or usage,
//! 1 runtime failure.

use clap::{Parser, Subcommand};
use std::{path::PathBuf, process::ExitCode};

mod allocator;

/// EX_USAGE from sysexits.h.
const EXIT_USAGE: u8 = 64;

/// `--help`: what a newcomer needs to start it and to put Redis behind it.
const LONG_ABOUT: &str = "\
High-concurrency data gateway. Serves keyed data over HTTP (default :8080, /v1/kv/{key}) and
over the Redis protocol, RESP2/RESP3 (default :6380; any Redis client, redis-cli -p 6380),
from an in-process L1 cache in front of an L2 Redis. Admin (metrics, /healthz, /readyz) on
127.0.0.1:9090.

Without Redis it runs in standalone memory mode (L1 is the store). To put Redis behind it,
set TIERGATE_L2_URL=redis://HOST:6379 (or l2.url in the config file); with it, every Redis
command works through the RESP port. Any config key can be set as TIERGATE_<SECTION>_<KEY>;
config/tiergate.toml lists them all.";

#[derive(Parser)]
#[command(
    name = "tiergate",
    version,
    about = "High-concurrency data gateway: serves HTTP and the Redis protocol (RESP) over L1 (memory) + L2 (Redis)",
    long_about = LONG_ABOUT
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// TOML config file; `TIERGATE_<SECTION>_<KEY>` variables override it.
    #[arg(long, short, global = true, env = "TIERGATE_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (the default).
    Run,
    /// Validate the config, print every problem, exit 64 if there is one.
    CheckConfig,
}

/// The `TIERGATE_*` overrides. TIERGATE_CONFIG names the file, it is not a config key.
fn env() -> impl Iterator<Item = (String, String)> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, _)| k != "TIERGATE_CONFIG")
}

fn main() -> ExitCode {
    allocator::tune();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let usage_error = e.use_stderr();
            let _ = e.print();
            return if usage_error {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    // The file and the environment are read again on SIGHUP.
    let path = cli.config.clone();
    let load = move || tiergate::config::load(path.as_deref(), env());
    let config = match load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tiergate: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if let Some(Command::CheckConfig) = cli.command {
        println!("config ok");
        for (door, listen, keys) in config.protected_doors() {
            if listen.ip().to_canonical().is_loopback() {
                continue;
            }
            println!(
                "note: protected mode is on for {door} ({listen}): no auth is configured there, \
                 so only loopback clients will be served; configure {keys}, or set \
                 auth.protected_mode = false"
            );
        }
        return ExitCode::SUCCESS;
    }

    tiergate::logging::init(&config.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.worker_threads())
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tiergate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(tiergate::server::run(config, load)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "tiergate failed");
            eprintln!("tiergate: {e}");
            ExitCode::FAILURE
        }
    }
}
