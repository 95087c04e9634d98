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
    /// Most bytes the CAS's disk store may hold, e.g. 50GiB (least recently
    /// used blobs are evicted past it).
    #[arg(long)]
    max_size: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the REAPI cache (the embedded default config without --config).
    Serve(ServeArgs),
    /// Measure a REAPI endpoint (kiln or any other) with synthetic workloads.
    Bench(kiln::client::bench::BenchArgs),
    /// Query invocations recorded by a running kiln's Build Event Service.
    #[command(subcommand)]
    Invocations(kiln::client::invocations::InvocationsCommand),
    /// Run actions for a kiln server (a Remote Workers API bot).
    Worker(Box<kiln::client::worker::WorkerArgs>),
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
        Command::Worker(args) => match worker(*args) {
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
        max_size,
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
    if let Some(size) = max_size {
        let size =
            kiln::config::ByteSize::parse(&size).map_err(|e| anyhow::anyhow!("--max-size: {e}"))?;
        config.set_cas_max_size(size);
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
        let hint = StartHint {
            tls: config.tls.is_some(),
            execution: config.execution.enabled,
            downloader: config.remote_asset.enabled,
            auth: config.auth.tokens_file.is_some() || config.auth.jwt.is_some(),
        };
        let server = kiln::app::start(config, data_dir).await?;
        println!("{}", hint.text(server.addr, server.http_addr));
        shutdown_signal().await;
        server.stop().await?;
        tracing::info!("stopped");
        // Flushes the last spans before the runtime goes away.
        drop(telemetry);
        Ok(())
    })
}

/// What `kiln serve` prints once it listens: the Bazel flags that use it
/// and where its pages are.
struct StartHint {
    tls: bool,
    execution: bool,
    downloader: bool,
    auth: bool,
}

impl StartHint {
    fn text(&self, grpc: std::net::SocketAddr, http: std::net::SocketAddr) -> String {
        // A wildcard address is reachable here as localhost.
        let host = |a: std::net::SocketAddr| {
            if a.ip().is_unspecified() {
                format!("localhost:{}", a.port())
            } else {
                a.to_string()
            }
        };
        let scheme = if self.tls { "grpcs" } else { "grpc" };
        let g = format!("{scheme}://{}", host(grpc));
        let web = format!("http://{}", host(http));
        let mut flags = vec![format!("--remote_cache={g}")];
        if self.execution {
            flags.push(format!("--remote_executor={g}"));
        }
        flags.push(format!("--bes_backend={g}"));
        flags.push(format!("--bes_results_url={web}/invocation/"));
        if self.downloader {
            flags.push(format!("--experimental_remote_downloader={g}"));
        }
        if self.auth {
            flags.push("--remote_header=authorization=\"Bearer YOUR_TOKEN\"".into());
        }
        let mut out = String::from("kiln is serving. Point Bazel at it (e.g. in .bazelrc):\n");
        for f in &flags {
            out.push_str(&format!("  build {f}\n"));
        }
        out.push_str(&format!("Web UI: {web}/"));
        out
    }
}

fn worker(args: kiln::client::worker::WorkerArgs) -> anyhow::Result<()> {
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
        kiln::client::worker::run(args).await?;
        drop(telemetry);
        Ok(())
    })
}

fn invocations(cmd: kiln::client::invocations::InvocationsCommand) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    let out = runtime.block_on(kiln::client::invocations::run(&cmd))?;
    print!("{out}");
    if !out.ends_with('\n') {
        println!();
    }
    Ok(())
}

fn bench(args: &kiln::client::bench::BenchArgs) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    let progress = !args.json && std::io::stderr().is_terminal();
    let reports = runtime.block_on(kiln::client::bench::run(args, progress))?;
    if args.json {
        for r in &reports {
            println!("{}", serde_json::to_string(r)?);
        }
        return Ok(());
    }
    print!("{}", kiln::client::bench::table(&reports));
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
