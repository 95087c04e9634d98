//! The `kiln` binary: parses arguments and hands over to the library.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use kiln::config::Config;

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "A remote build cache for Bazel (REAPI v2)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Options of `kiln serve`; flags override the config file.
#[derive(clap::Args)]
struct ServeArgs {
    /// YAML config file (default: the embedded default, config/default.yaml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// gRPC listen address.
    #[arg(long)]
    listen: Option<String>,
    /// HTTP listen address for /metrics.
    #[arg(long)]
    http_listen: Option<String>,
    /// Directory for on-disk stores and upload spools (default ./kiln-data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum InvocationsCommand {
    /// The newest invocations, one line each.
    List {
        /// kiln's HTTP address.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        server: String,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Only this status (IN_PROGRESS, SUCCEEDED, FAILED, DISCONNECTED).
        #[arg(long)]
        status: Option<String>,
        /// Only this user.
        #[arg(long)]
        user: Option<String>,
    },
    /// One invocation's whole summary, as JSON.
    Show {
        /// The invocation id Bazel printed.
        id: String,
        /// kiln's HTTP address.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        server: String,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Serve the REAPI cache (the embedded default config without --config).
    Serve(ServeArgs),
    /// Measure a REAPI endpoint (kiln or any other) with synthetic workloads.
    Bench(kiln::bench::BenchArgs),
    /// Query invocations recorded by a running kiln's Build Event Service.
    #[command(subcommand)]
    Invocations(InvocationsCommand),
    /// Run actions for a kiln server (a Remote Workers API bot).
    Worker(kiln::worker::WorkerArgs),
    /// Validate a config file; prints every error with its YAML path.
    CheckConfig {
        /// YAML config file.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(errors) => {
                for e in errors {
                    eprintln!("{e}");
                }
                ExitCode::FAILURE
            }
        },
        Command::Invocations(cmd) => match invocations(cmd) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("kiln invocations: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Bench(args) => match bench(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("kiln bench: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Worker(args) => match worker(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("kiln worker: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Serve(args) => match serve(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("kiln: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let ServeArgs {
        config,
        listen,
        http_listen,
        data_dir,
    } = args;
    let mut config = match config {
        Some(path) => Config::load(&path)
            .map_err(|errs| anyhow::anyhow!("invalid config:\n{}", errs.join("\n")))?,
        None => Config::embedded_default(),
    };
    if let Some(listen) = listen {
        config.listen = listen;
    }
    if let Some(http_listen) = http_listen {
        config.http_listen = http_listen;
    }
    config
        .validate()
        .map_err(|errs| anyhow::anyhow!("invalid config:\n{}", errs.join("\n")))?;
    let data_dir = data_dir
        .or_else(|| config.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from("kiln-data"));
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    runtime.block_on(async {
        let telemetry = kiln::telemetry::init(&config.log, config.tracing.as_ref());
        let server = kiln::app::start(config, data_dir).await?;
        shutdown_signal().await;
        server.stop().await?;
        tracing::info!("stopped");
        // Flushes the last spans before the runtime goes away.
        drop(telemetry);
        Ok(())
    })
}

fn worker(args: kiln::worker::WorkerArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    runtime.block_on(async {
        let tracing = args
            .otlp_endpoint
            .as_ref()
            .map(|endpoint| kiln::config::TracingConfig {
                otlp_endpoint: endpoint.clone(),
                service_name: "kiln-worker".into(),
                sampling_ratio: 1.0,
            });
        let telemetry = kiln::telemetry::init(&Default::default(), tracing.as_ref());
        kiln::worker::run(args).await?;
        drop(telemetry);
        Ok(())
    })
}

fn invocations(cmd: InvocationsCommand) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    runtime.block_on(async {
        let (url, show) = match &cmd {
            InvocationsCommand::List {
                server,
                limit,
                status,
                user,
            } => {
                let mut url = format!(
                    "{}/api/v1/invocations?limit={limit}",
                    server.trim_end_matches('/')
                );
                if let Some(s) = status {
                    url.push_str(&format!("&status={s}"));
                }
                if let Some(u) = user {
                    url.push_str(&format!("&user={u}"));
                }
                (url, false)
            }
            InvocationsCommand::Show { id, server } => (
                format!("{}/api/v1/invocations/{id}", server.trim_end_matches('/')),
                true,
            ),
        };
        let response = reqwest::get(&url)
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = response.status();
        let body: serde_json::Value = serde_json::from_str(&response.text().await?)
            .context("kiln answered something other than JSON")?;
        if !status.is_success() {
            anyhow::bail!(
                "{status}: {}",
                body["error"].as_str().unwrap_or("unknown error")
            );
        }
        if show {
            println!("{}", serde_json::to_string_pretty(&body)?);
            return Ok(());
        }
        println!(
            "{:<38} {:<13} {:<8} {:>5} {:>10}  user",
            "invocation", "status", "command", "exit", "duration"
        );
        for inv in body["invocations"].as_array().into_iter().flatten() {
            println!(
                "{:<38} {:<13} {:<8} {:>5} {:>10}  {}",
                inv["invocation_id"].as_str().unwrap_or(""),
                inv["status"].as_str().unwrap_or(""),
                inv["command"].as_str().unwrap_or(""),
                inv["exit_code"]
                    .as_i64()
                    .map(|c| c.to_string())
                    .unwrap_or_default(),
                inv["duration_ms"]
                    .as_i64()
                    .map(|d| format!("{:.1}s", d as f64 / 1000.0))
                    .unwrap_or_default(),
                inv["user"].as_str().unwrap_or(""),
            );
        }
        Ok(())
    })
}

fn bench(args: &kiln::bench::BenchArgs) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    let progress = !args.json && std::io::stderr().is_terminal();
    let reports = runtime.block_on(kiln::bench::run(args, progress))?;
    if args.json {
        for r in &reports {
            println!("{}", serde_json::to_string(r)?);
        }
        return Ok(());
    }
    println!(
        "{:<18} {:>9} {:>11} {:>10} {:>9} {:>9} {:>9} {:>9} {:>7}",
        "workload", "ops", "ops/s", "MB/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "errors"
    );
    for r in &reports {
        println!(
            "{:<18} {:>9} {:>11.1} {:>10.1} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>7}",
            r.workload,
            r.ops,
            r.ops_per_sec,
            r.bytes_per_sec / 1e6,
            r.p50_ms,
            r.p90_ms,
            r.p99_ms,
            r.max_ms,
            r.errors
        );
        if let Some(e) = &r.first_error {
            println!("  first error: {e}");
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
