//! `fake-node`: a deterministic mock Substrate chain on a WebSocket port. See `fake-node --help`.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use engine_shim::version::SemVer;
use fake_node::scenario::{parse_release, Scenario};
use fake_node::{metadata, ChainPreset, FakeNode, FakeNodeConfig};

/// Exit code for bad flags or a bad scenario (the same code clap uses for usage errors).
const USAGE: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "fake-node",
    version,
    about = "A deterministic mock Substrate chain for testing release-following software.",
    long_about = fake_node::REFERENCE
)]
struct Cli {
    /// Address to listen on (loopback unless told otherwise).
    #[arg(long, default_value = "127.0.0.1", value_parser = parse_host)]
    host: IpAddr,

    /// Port to listen on; 0 picks a free one (read it from the first stdout line).
    #[arg(long, default_value_t = 9944)]
    port: u16,

    /// Release at genesis, X.Y.Z, or "none" for no value [default: 1.0.0, or the scenario's].
    #[arg(long, value_parser = parse_release_arg)]
    release: Option<GenesisRelease>,

    /// Time between blocks, e.g. 6s or 500ms; 0 = manual (dev_newBlock only)
    /// [default: 6s, or the scenario's].
    #[arg(long, value_parser = humantime::parse_duration)]
    block_time: Option<Duration>,

    /// Finalized block = best − N [default: 0, or the scenario's].
    #[arg(long)]
    finality_lag: Option<u64>,

    /// Scenario file (TOML) scripting releases, finality, faults and drops by block number.
    #[arg(long)]
    scenario: Option<PathBuf>,

    /// Chain identity: fake-node or chainflip (name, properties, specName, SS58 prefix)
    /// [default: fake-node, or the scenario's].
    #[arg(long, value_parser = str::parse::<ChainPreset>)]
    chain: Option<ChainPreset>,

    /// Serve this metadata instead of fake-node's own: a real chain's state_getMetadata result
    /// as 0x hex, as the saved JSON-RPC response, or as raw SCALE bytes.
    #[arg(long)]
    metadata: Option<PathBuf>,
}

/// `--release` value: a version or explicitly none.
#[derive(Clone, Copy, Debug)]
struct GenesisRelease(Option<SemVer>);

fn parse_release_arg(text: &str) -> Result<GenesisRelease, String> {
    parse_release(text).map(GenesisRelease)
}

fn parse_host(text: &str) -> Result<IpAddr, String> {
    if text == "localhost" {
        return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    text.parse()
        .map_err(|_| format!("'{text}' is not an IP address (e.g. 127.0.0.1, 0.0.0.0, ::1)"))
}

/// Flags win over the scenario's top-level values, which win over the defaults.
fn config(cli: Cli) -> Result<FakeNodeConfig, String> {
    let mut config = FakeNodeConfig {
        host: cli.host,
        port: cli.port,
        block_time: Duration::from_secs(6),
        ..FakeNodeConfig::default()
    };
    if let Some(path) = &cli.scenario {
        config = config.with_scenario(Scenario::from_file(path).map_err(|e| e.to_string())?);
    }
    if let Some(GenesisRelease(release)) = cli.release {
        config.release = release;
    }
    if let Some(block_time) = cli.block_time {
        config.block_time = block_time;
    }
    if let Some(lag) = cli.finality_lag {
        config.finality_lag = lag;
    }
    if let Some(chain) = cli.chain {
        config.chain = chain;
    }
    if let Some(path) = &cli.metadata {
        config.metadata = Some(load_metadata(path)?);
    }
    Ok(config)
}

/// Reads `--metadata FILE`; the error names the file and how to get a good one.
fn load_metadata(path: &std::path::Path) -> Result<metadata::ServedMetadata, String> {
    let shown = path.display();
    let contents =
        std::fs::read(path).map_err(|e| format!("cannot read metadata file {shown}: {e}"))?;
    metadata::parse_file(&contents).map_err(|e| format!("metadata file {shown} {e}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse(); // usage errors exit 2, --help/--version exit 0
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let config = match config(cli) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("fake-node: {error}");
            return ExitCode::from(USAGE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("fake-node: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(config))
}

async fn run(config: FakeNodeConfig) -> ExitCode {
    // Handlers go in before the listening line: a supervisor may signal as soon as it reads it.
    let signals = match Signals::install() {
        Ok(signals) => signals,
        Err(error) => {
            eprintln!("fake-node: cannot install signal handlers: {error}");
            return ExitCode::FAILURE;
        }
    };
    let node = match FakeNode::spawn(config).await {
        Ok(node) => node,
        Err(error) => {
            eprintln!("fake-node: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    // The contract: the first stdout line names the URL. A closed stdout must not kill the node.
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "listening on {}", node.url());
    let _ = stdout.flush();
    drop(stdout);

    signals.recv().await;
    node.shutdown().await;
    ExitCode::SUCCESS
}

/// SIGTERM and SIGINT, both meaning "shut down cleanly".
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn recv(mut self) {
        tokio::select! {
            _ = self.term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = self.int.recv() => tracing::info!("SIGINT: shutting down"),
        }
    }
}
