//! `switchboard-bench`: the load tool of issue 3. It speaks the wire contract (tokens minted
//! with the broker's secret) or, with `--mode floor`, the bare broadcast protocol of the floor
//! server, and prints a table (or `--json`). Every run is bounded in count and in time
//! (`--timeout`) and exits by itself: 0 when it passed, 1 when it measured loss, errors or a
//! timeout, 2 when it could not run (server unreachable, bad options).

mod common;
mod conn;
mod report;
mod scenarios;
mod stats;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::common::{BenchError, Mode};
use crate::report::Report;

/// Command line.
#[derive(Parser)]
#[command(
    name = "switchboard-bench",
    version,
    about = "Load tool for Switchboard and the floor server"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Options every scenario takes.
#[derive(Args, Clone, Debug)]
pub struct Common {
    /// Server address (loopback only); the HTTP base is derived from it.
    #[arg(long, default_value = "ws://127.0.0.1:8080")]
    pub url: String,
    /// The broker's HS256 secret (SWITCHBOARD__AUTH__JWT_SECRET), to mint tokens.
    #[arg(
        long,
        env = "SWITCHBOARD__AUTH__JWT_SECRET",
        default_value = "",
        hide_env_values = true
    )]
    pub secret: String,
    /// Hard limit on the whole run, in seconds.
    #[arg(long, default_value_t = 120.0)]
    pub timeout: f64,
    /// Give up waiting for deliveries when nothing has arrived for this many seconds.
    #[arg(long, default_value_t = 3.0)]
    pub stall: f64,
    /// Tokio worker threads of the tool.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Timeout of one connection attempt (TCP, upgrade and first frame), in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

impl Common {
    /// `--timeout` as a duration.
    pub fn timeout(&self) -> Duration {
        secs(self.timeout)
    }
    /// `--stall` as a duration.
    pub fn stall(&self) -> Duration {
        secs(self.stall)
    }
    /// `--connect-timeout` as a duration.
    pub fn connect_timeout(&self) -> Duration {
        secs(self.connect_timeout)
    }
    /// Fails when contract mode has no secret to mint tokens with.
    pub fn need_secret(&self, mode: Mode) -> Result<(), BenchError> {
        if mode == Mode::Contract && self.secret.is_empty() {
            return Err("--secret (or SWITCHBOARD__AUTH__JWT_SECRET) is required to mint tokens for the broker".into());
        }
        Ok(())
    }
}

/// A duration from seconds, negative and NaN counting as zero.
pub fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s).unwrap_or(Duration::ZERO)
}

#[derive(Subcommand)]
enum Cmd {
    /// N subscribers in one group, one publisher, M messages: deliveries/s, latency, loss.
    Fanout(scenarios::fanout::FanoutArgs),
    /// C idle connections held with heartbeats: connect rate, server RSS per connection.
    Conns(scenarios::conns::ConnsArgs),
    /// K pairs of users exchanging DMs: messages/s delivered, latency.
    Pairs(scenarios::pairs::PairsArgs),
    /// P publishers at full speed (or a fixed total rate): acked messages/s, ack latency.
    Durable(scenarios::durable::DurableArgs),
    /// C clients drop at once and resume with subscribe + since_seq: resume time, loss.
    Storm(scenarios::storm::StormArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let common = match &cli.cmd {
        Cmd::Fanout(a) => &a.common,
        Cmd::Conns(a) => &a.common,
        Cmd::Pairs(a) => &a.common,
        Cmd::Durable(a) => &a.common,
        Cmd::Storm(a) => &a.common,
    }
    .clone();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(common.threads.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    common::now_ns();
    // The hard limit: scenarios stop themselves at --timeout; this is the backstop.
    let hard = common.timeout() + Duration::from_secs(15);
    let run = async {
        let fut = async {
            match &cli.cmd {
                Cmd::Fanout(a) => scenarios::fanout::run(a).await,
                Cmd::Conns(a) => scenarios::conns::run(a).await,
                Cmd::Pairs(a) => scenarios::pairs::run(a).await,
                Cmd::Durable(a) => scenarios::durable::run(a).await,
                Cmd::Storm(a) => scenarios::storm::run(a).await,
            }
        };
        match tokio::time::timeout(hard, fut).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "the run did not finish within --timeout + 15 s ({:?})",
                hard
            )),
        }
    };
    let result: Result<Report, BenchError> = rt.block_on(run);
    // Do not wait for lingering connection tasks.
    rt.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(report) => {
            if common.json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.to_table());
            }
            if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            if common.json {
                println!("{}", serde_json::json!({"ok": false, "error": e}));
            }
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
