//! `kiln worker`'s command line: where the server is, how many slots, and
//! how actions are confined (sandbox, uids, images, limits).

use std::path::PathBuf;

/// Command-line options of `kiln worker`.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// kiln's gRPC endpoint: grpc://HOST:PORT, or grpcs:// with --tls-ca.
    #[arg(long, default_value = "grpc://127.0.0.1:50051")]
    pub server: String,
    /// The instance whose actions to run.
    #[arg(long, default_value = "")]
    pub instance: String,
    /// Actions run at once (one bot session each).
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// On SIGTERM or SIGINT: stop taking leases, let running actions finish
    /// for up to this long, then give the rest back to the server (which
    /// re-queues them at once), e.g. 30s.
    #[arg(long, default_value = "30s")]
    pub drain_timeout: String,
    /// Where input roots are built and the file cache lives.
    #[arg(long, default_value = "kiln-worker")]
    pub work_dir: PathBuf,
    /// Bytes the local input-file cache may hold (least recently used
    /// files go first), e.g. 10GiB.
    #[arg(long, default_value = "10GiB")]
    pub cache_size: String,
    /// A platform property this worker offers, as key=value; repeat it.
    /// Actions run here only if it offers every property they require.
    #[arg(long = "property", value_parser = parse_property)]
    pub properties: Vec<(String, String)>,
    /// The bot id reported to the server (default: hostname and pid).
    #[arg(long)]
    pub bot_id: Option<String>,
    /// A file holding a bearer token (a JWT or static token with the
    /// `worker`, `read` and `write` roles) when kiln requires auth.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) to trust for grpcs://.
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// Run each command through this prefix, inside the sandbox, e.g.
    /// "/usr/bin/env LANG=C" (the command's arguments follow).
    #[arg(long)]
    pub runner: Option<String>,
    /// How actions are confined: `bwrap` (each in a bubblewrap sandbox of its
    /// own: PID, mount, network, IPC and UTS namespaces, a read-only view of
    /// the host) or `none` (unconfined: a warning at start, and the worker is
    /// shown as unsandboxed on /operations).
    #[arg(long, default_value = "bwrap")]
    pub sandbox: String,
    /// The bubblewrap program.
    #[arg(long, default_value = "bwrap")]
    pub bwrap: String,
    /// A host path actions see read-only; repeat it. Default: /usr, /bin,
    /// /sbin, /lib*, /opt and /etc (credentials under /etc masked).
    #[arg(long = "sandbox-ro")]
    pub sandbox_ro: Vec<PathBuf>,
    /// A host path every action may write (a shared cache the operator
    /// trusts all actions with, such as a ccache directory); repeat it.
    /// Nothing is writable by default but the action's own exec root and /tmp.
    #[arg(long = "sandbox-rw")]
    pub sandbox_rw: Vec<PathBuf>,
    /// A directory of OCI image layouts (each a subdirectory, as `skopeo
    /// copy ... oci:DIR/NAME` writes them) that actions may name in their
    /// `container-image` platform property; repeat it.
    #[arg(long = "image-dir")]
    pub image_dirs: Vec<PathBuf>,
    /// Let actions that ask for it (platform property network=on,
    /// dockerNetwork=standard or requires-network) reach the network.
    #[arg(long)]
    pub allow_network: bool,
    /// Who actions run as: `self` (the worker's own user), a user name, or
    /// `UID[:GID]`, for every slot. Default: when the worker runs as root, a
    /// uid of its own per slot from --action-uids (so concurrent actions
    /// cannot reach each other, the shared input cache or the token file);
    /// `self` otherwise (inputs are then copied and re-verified).
    #[arg(long)]
    pub action_user: Option<String>,
    /// The pool of uids (and equal gids) a root worker runs actions as, one
    /// per slot: FIRST-LAST.
    #[arg(long, default_value = "1000000-1000255")]
    pub action_uids: String,
    /// Most bytes of outputs one action may leave (apparent sizes: a sparse
    /// file counts at its length), e.g. 16GiB.
    #[arg(long, default_value = "16GiB")]
    pub max_output_size: String,
    /// Run commands unmeasured: no `kiln-measure` helper, so results carry
    /// no kiln.v1.ResourceUsage (saves about a millisecond per action).
    #[arg(long)]
    pub no_usage: bool,
    /// OTLP/gRPC collector for the worker's spans (they join the client's
    /// trace through kiln).
    #[arg(long)]
    pub otlp_endpoint: Option<String>,
}

fn parse_property(text: &str) -> std::result::Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{text:?} is not key=value"))
}
