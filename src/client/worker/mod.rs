//! `kiln worker`: a bot for the Remote Workers API. Each of its
//! `--concurrency` slots keeps one bot session with kiln (or any server of
//! that protocol): it takes a lease, builds the input root from the CAS
//! (through a local hard-linked file cache), runs the command, uploads the
//! outputs and reports the ActionResult, renewing the lease meanwhile and
//! stopping when the server says the lease was cancelled.

mod action;
mod args;
mod cas;
mod chunked;
mod confine;
mod images;
mod inputs;
mod measure;
mod outputs;
mod resident;
mod run;
mod sandbox;

pub use args::WorkerArgs;
pub use measure::measure_action;
pub use resident::helper::main as resident_helper;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::proto::remoteworkers::bots_client::BotsClient;
use crate::proto::remoteworkers::{
    BotSession, BotStatus, CreateBotSessionRequest, Lease, LeaseState, UpdateBotSessionRequest,
    Worker, worker,
};
use inputs::FileCache;

/// How often a busy slot renews its lease when the server answers
/// renewals at once (kiln holds them open until a cancellation).
const KEEPALIVE: Duration = Duration::from_secs(1);
/// When the first renewal of a lease goes out: late enough that short
/// actions need none, early enough that a cancellation still stops any
/// action well within a second.
const FIRST_RENEWAL: Duration = Duration::from_millis(200);

/// Adds the bearer token to every call.
#[derive(Clone)]
pub struct Auth(Option<tonic::metadata::AsciiMetadataValue>);

impl tonic::service::Interceptor for Auth {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        Ok(request)
    }
}

/// The worker's connection to the server.
pub type Conn = InterceptedService<Channel, Auth>;

async fn connect(args: &WorkerArgs) -> Result<Conn> {
    let (uri, tls) = if let Some(rest) = args.server.strip_prefix("grpcs://") {
        (format!("https://{rest}"), true)
    } else if let Some(rest) = args.server.strip_prefix("grpc://") {
        (format!("http://{rest}"), false)
    } else {
        (args.server.clone(), args.server.starts_with("https://"))
    };
    let mut endpoint = Endpoint::from_shared(uri.clone())
        .map_err(|e| Error::InvalidArgument(format!("bad --server {}: {e}", args.server)))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(16 << 20));
    if tls {
        crate::tls::install_crypto_provider();
        let ca = args.tls_ca.as_ref().ok_or_else(|| {
            Error::InvalidArgument(
                "grpcs:// needs --tls-ca (the CA that signed kiln's certificate)".into(),
            )
        })?;
        let pem =
            std::fs::read(ca).map_err(|e| Error::io(format!("reading {}", ca.display()), e))?;
        endpoint = endpoint
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
            .map_err(|e| Error::InvalidArgument(format!("TLS: {e}")))?;
    }
    let token =
        match &args.token_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
                Some(format!("Bearer {}", text.trim()).parse().map_err(|_| {
                    Error::InvalidArgument("the token is not valid header text".into())
                })?)
            }
            None => None,
        };
    // Connects lazily, so a worker started before kiln keeps retrying.
    Ok(InterceptedService::new(
        endpoint.connect_lazy(),
        Auth(token),
    ))
}

/// What every slot shares.
struct Ctx {
    conn: Conn,
    instance: String,
    bot_id: String,
    properties: Vec<(String, String)>,
    cache: FileCache,
    runs: PathBuf,
    runner: Vec<String>,
    /// How actions are confined.
    sandbox: sandbox::Sandbox,
    /// Each slot's resident sandbox, for the actions it fits.
    resident: Option<resident::Resident>,
    /// Container images actions may run in.
    images: images::Images,
    /// Most bytes of outputs one action may leave.
    max_output: u64,
    /// `kiln-measure`, when actions run measured.
    measure: Option<PathBuf>,
    /// Who each slot's actions run as, when not the worker itself.
    users: Vec<Option<confine::ActionUser>>,
    /// Turns to `Some(deadline)` when the worker drains: no new leases, and
    /// running ones are given back once the deadline passes.
    drain: tokio::sync::watch::Receiver<Option<tokio::time::Instant>>,
    /// Commands by digest (verified when fetched).
    commands: moka::future::Cache<Digest, bytes::Bytes>,
    /// How the server cuts blobs for SpliceBlob, asked at the first large
    /// output (None: it does not splice).
    splicing: cas::Splicing,
}

/// Runs the worker until SIGINT or SIGTERM.
pub async fn run(args: WorkerArgs) -> Result<()> {
    let concurrency = args.concurrency.max(1);
    let users = confine::action_users(args.action_user.as_deref(), &args.action_uids, concurrency)?;
    let user = users[0];
    if let Some(path) = &args.token_file {
        confine::check_token_file(path, user)?;
    }
    let sandbox = sandbox::Sandbox::new(
        &args.sandbox,
        &args.bwrap,
        &args.sandbox_ro,
        &args.sandbox_rw,
        &args
            .token_file
            .iter()
            .chain([&args.work_dir])
            .cloned()
            .collect::<Vec<_>>(),
        args.allow_network,
    )?;
    if let sandbox::Sandbox::None = sandbox {
        tracing::warn!(
            "--sandbox none: actions run unconfined; they can see the host, each other's processes and the network, and a process they leave behind can outlive them"
        );
    }
    let max_output = crate::config::ByteSize::parse(&args.max_output_size)
        .map_err(|e| Error::InvalidArgument(format!("--max-output-size: {e}")))?
        .0;
    let conn = connect(&args).await?;
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "worker".into());
    let runs = args.work_dir.join("runs");
    // Leftovers of a previous run (killed mid-action) are not inputs of anything.
    let _ = std::fs::remove_dir_all(&runs);
    std::fs::create_dir_all(&runs)
        .map_err(|e| Error::io(format!("creating {}", runs.display()), e))?;
    let cache = FileCache::new(
        args.work_dir.join("cache"),
        crate::config::ByteSize::parse(&args.cache_size)
            .map_err(|e| Error::InvalidArgument(format!("--cache-size: {e}")))?
            .0,
        user.is_some(),
    )?;
    confine::prepare_dirs(&args.work_dir, &runs, cache.dir(), user)?;
    let scratch = runs.join("sandbox-self-test");
    std::fs::create_dir_all(&scratch)
        .map_err(|e| Error::io(format!("creating {}", scratch.display()), e))?;
    confine::hand_over(&scratch, user)?;
    let tested = sandbox.self_test(&scratch, user);
    let _ = std::fs::remove_dir_all(&scratch);
    tested?;
    let helper = measure::helper();
    let resident = match &helper {
        Some(h) => resident::Resident::new(&runs, &users, |dir| sandbox.resident(dir, h))?,
        None => None,
    };
    if let Some(r) = &resident {
        r.self_test().await?;
    }
    match user {
        Some(u) => tracing::info!(
            uid = u.uid,
            gid = u.gid,
            slots = concurrency,
            sandbox = sandbox.name(),
            "actions run as other users; inputs are hard-linked"
        ),
        None => tracing::warn!(
            "actions run as the worker's own user; inputs are copied and re-verified (run the worker as root for hard links)"
        ),
    }
    let drain_timeout = crate::config::Duration::parse(&args.drain_timeout)
        .map_err(|e| Error::InvalidArgument(format!("--drain-timeout: {e}")))?
        .0;
    let (drain_tx, drain) = tokio::sync::watch::channel(None);
    let ctx = Arc::new(Ctx {
        drain,
        conn,
        instance: args.instance.clone(),
        bot_id: args
            .bot_id
            .clone()
            .unwrap_or_else(|| format!("{host}-{}", std::process::id())),
        properties: args.properties.clone(),
        cache,
        users,
        sandbox,
        images: images::Images::new(args.image_dirs.clone(), args.work_dir.join("images"))?,
        max_output,
        commands: moka::future::Cache::builder()
            .max_capacity(32 << 20)
            .weigher(|_: &Digest, b: &bytes::Bytes| u32::try_from(b.len()).unwrap_or(u32::MAX))
            .build(),
        runs,
        splicing: Default::default(),
        measure: if args.no_usage { None } else { helper },
        resident,
        runner: args
            .runner
            .as_deref()
            .map(|r| r.split_whitespace().map(String::from).collect())
            .unwrap_or_default(),
    });
    tracing::info!(server = %args.server, instance = %args.instance, concurrency = args.concurrency, bot = %ctx.bot_id, "kiln worker starting");
    let slots: Vec<_> = (0..concurrency)
        .map(|n| tokio::spawn(slot(ctx.clone(), n)))
        .collect();
    shutdown_signal().await;
    let deadline = tokio::time::Instant::now() + drain_timeout;
    tracing::info!(
        ?drain_timeout,
        "draining: no new leases; running actions may finish"
    );
    let _ = drain_tx.send(Some(deadline));
    // Slots end once they reported their last lease; a slot stuck on an
    // unreachable server is abandoned (its lease then times out).
    let grace = deadline + Duration::from_secs(10);
    for s in slots {
        if tokio::time::timeout_at(grace, s).await.is_err() {
            tracing::warn!("a slot did not finish draining; its lease will time out on the server");
        }
    }
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

impl Ctx {
    fn bots(&self) -> BotsClient<Conn> {
        BotsClient::new(self.conn.clone()).max_decoding_message_size(64 << 20)
    }

    fn worker(&self) -> Worker {
        let property = |k: &str, v: &str| worker::Property {
            key: k.into(),
            value: v.into(),
        };
        let mut properties: Vec<worker::Property> = self
            .properties
            .iter()
            .map(|(k, v)| property(k, v))
            .collect();
        // What the worker itself takes care of: its sandbox, and network
        // requests (any value: the worker refuses what it does not allow).
        properties.push(property(
            crate::execution::bots::SANDBOX_PROPERTY,
            self.sandbox.name(),
        ));
        for name in sandbox::NETWORK_PROPERTIES
            .iter()
            .chain([&images::IMAGE_PROPERTY])
        {
            properties.push(property(name, crate::execution::job::ANY_VALUE));
        }
        Worker {
            configs: vec![worker::Config {
                key: crate::execution::bots::RENEWAL_WAITS.0.into(),
                value: crate::execution::bots::RENEWAL_WAITS.1.into(),
            }],
            properties,
            ..Default::default()
        }
    }
}

/// Retries `call` with capped back-off while the server is unreachable.
async fn with_retry<F, Fut, T>(what: &str, mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, tonic::Status>>,
{
    let mut backoff = Duration::from_millis(100);
    loop {
        match call().await {
            Ok(v) => return v,
            Err(s) => {
                tracing::warn!(code = ?s.code(), message = s.message(), "{what} failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// One slot: a bot session taking one lease at a time, forever.
async fn slot(ctx: Arc<Ctx>, n: usize) {
    let bot_id = format!("{}-{n}", ctx.bot_id);
    let create = || {
        let mut bots = ctx.bots();
        let request = CreateBotSessionRequest {
            parent: ctx.instance.clone(),
            bot_session: Some(BotSession {
                bot_id: bot_id.clone(),
                status: BotStatus::Ok as i32,
                worker: Some(ctx.worker()),
                ..Default::default()
            }),
        };
        async move { bots.create_bot_session(request).await }
    };
    let mut response = with_retry("creating a bot session", create).await;
    loop {
        let trace = response
            .metadata()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let mut session = response.into_inner();
        let mut next = session
            .leases
            .iter()
            .find(|l| l.state == LeaseState::Pending as i32)
            .cloned();
        session.leases.clear();
        let mut trace = trace;
        // A lease handed out with the news that the previous one was
        // cancelled is run next, not dropped.
        while let Some(lease) = next.take() {
            let span = tracing::info_span!("worker.run", otel.name = "run action", lease = %lease.id, bot = %bot_id);
            if let Some(tp) = trace.take() {
                let mut carrier = std::collections::HashMap::new();
                carrier.insert("traceparent".to_string(), tp);
                let parent =
                    opentelemetry::global::get_text_map_propagator(|p| p.extract(&carrier));
                let _ = span.set_parent(parent);
            }
            let ended = work(&ctx, &session, lease, n).instrument(span).await;
            session.leases.extend(ended.report);
            next = ended.next;
        }
        // A draining bot reports BOT_TERMINATING: the server hands it no
        // new lease and answers at once.
        let update = |status: BotStatus| {
            let mut bots = ctx.bots();
            let request = UpdateBotSessionRequest {
                name: session.name.clone(),
                bot_session: Some(BotSession {
                    worker: Some(ctx.worker()),
                    status: status as i32,
                    ..session.clone()
                }),
                update_mask: None,
            };
            async move { bots.update_bot_session(request).await }
        };
        // A draining bot reports what it finished with BOT_TERMINATING: the
        // server hands it no new lease and answers at once. Then it ends.
        if ctx.drain.borrow().is_some() {
            let _ = update(BotStatus::BotTerminating).await;
            return;
        }
        // An idle bot's update waits for work; a drain cuts the wait short.
        let mut drain = ctx.drain.clone();
        tokio::select! {
            r = with_retry("updating the bot session", || update(BotStatus::Ok)) => response = r,
            () = async { let _ = drain.wait_for(Option::is_some).await; } => {
                let _ = update(BotStatus::BotTerminating).await;
                return;
            }
        }
    }
}

/// How a lease's run ended.
struct Ended {
    /// What to report: the finished or given-back lease (none when the
    /// server cancelled it).
    report: Vec<Lease>,
    /// A lease the server handed out in the answer that cancelled this one.
    next: Option<Lease>,
}

/// Runs a lease while renewing it. Renewals are held open by kiln (the
/// worker says it may, see `execution::bots::RENEWAL_WAITS`), so one is
/// always in flight and a cancellation arrives the moment it happens; the
/// run is then dropped, which kills the action's whole process tree.
async fn work(ctx: &Ctx, session: &BotSession, lease: Lease, slot: usize) -> Ended {
    let id = lease.id.clone();
    let run = action::execute(ctx, &lease, slot);
    tokio::pin!(run);
    let mut drain = ctx.drain.clone();
    let given_back = async move {
        let _ = drain.wait_for(Option::is_some).await;
        let deadline = (*drain.borrow()).expect("set");
        tokio::time::sleep_until(deadline).await;
    };
    tokio::pin!(given_back);
    // Leases handed to this busy slot by mistake go back at the next renewal.
    let mut strays: Vec<Lease> = Vec::new();
    let renew = |after: Duration, strays: Vec<Lease>| {
        let mut leases = vec![Lease {
            id: id.clone(),
            state: LeaseState::Active as i32,
            ..Default::default()
        }];
        leases.extend(strays);
        let request = UpdateBotSessionRequest {
            name: session.name.clone(),
            bot_session: Some(BotSession {
                worker: Some(ctx.worker()),
                status: BotStatus::Ok as i32,
                leases,
                ..session.clone()
            }),
            update_mask: None,
        };
        let mut bots = ctx.bots();
        async move {
            tokio::time::sleep(after).await;
            let sent = tokio::time::Instant::now();
            (bots.update_bot_session(request).await, sent)
        }
    };
    let mut renewal = Box::pin(renew(FIRST_RENEWAL, Vec::new()));
    loop {
        tokio::select! {
            () = &mut given_back => {
                tracing::info!(lease = %id, "drain timeout: giving the lease back");
                // Dropping the run kills the action's process tree; the
                // server re-queues a given-back lease at once.
                let mut report = vec![Lease {
                    id,
                    state: LeaseState::Cancelled as i32,
                    ..Default::default()
                }];
                report.extend(strays);
                return Ended { report, next: None };
            }
            done = &mut run => {
                let (result, status) = match done {
                    Ok((result, status)) => (Some(result), status),
                    Err(e) => {
                        tracing::warn!(lease = %id, error = %e, "action could not be run");
                        (None, e.to_rpc_status())
                    }
                };
                let mut report = vec![Lease {
                    id,
                    state: LeaseState::Completed as i32,
                    result: result.map(|r| prost_types::Any {
                        type_url: "type.googleapis.com/build.bazel.remote.execution.v2.ActionResult".into(),
                        value: r.encode_to_vec(),
                    }),
                    status: Some(status),
                    ..Default::default()
                }];
                report.extend(strays);
                return Ended { report, next: None };
            }
            (answer, sent) = &mut renewal => {
                let mut cancelled = false;
                let mut pending = Vec::new();
                match answer {
                    Ok(r) => {
                        for l in r.into_inner().leases {
                            if l.id == id {
                                cancelled |= l.state == LeaseState::Cancelled as i32;
                            } else if l.state == LeaseState::Pending as i32 {
                                pending.push(l);
                            }
                        }
                    }
                    // The server may be restarting: keep running, report later.
                    Err(s) => tracing::warn!(lease = %id, code = ?s.code(), "lease renewal failed"),
                }
                if cancelled {
                    tracing::info!(lease = %id, "lease cancelled by the server; stopping the action");
                    let next = pending.pop();
                    let report = strays.into_iter().chain(pending).map(give_back).collect();
                    return Ended { report, next };
                }
                strays.extend(pending.into_iter().map(give_back));
                // A server that answers at once is asked again a keepalive later.
                let after = KEEPALIVE.saturating_sub(sent.elapsed());
                renewal = Box::pin(renew(after, std::mem::take(&mut strays)));
            }
        }
    }
}

/// A lease this slot will not run, as it reports it back.
fn give_back(lease: Lease) -> Lease {
    Lease {
        id: lease.id,
        state: LeaseState::Cancelled as i32,
        ..Default::default()
    }
}
