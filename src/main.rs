//! The `confab` command: run a node, mint a token, or migrate the embedded store to MongoDB.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use confab::config::Config;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// confab: an instant-messaging engine. One-to-one and group chat over WebSocket.
#[derive(Parser)]
#[command(name = "confab", version, about, long_about = None)]
struct Cli {
    /// A TOML file overriding config/default.toml (environment CONFAB__SECTION__KEY wins over both).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node (the default).
    Serve,
    /// Print a signed access token for a user, for trying things out and for operators.
    Token {
        /// The user id.
        #[arg(long)]
        user: String,
        /// The device id.
        #[arg(long, default_value = confab::auth::DEFAULT_DEVICE)]
        device: String,
        /// Lifetime in seconds (default: auth.token_ttl_secs).
        #[arg(long)]
        ttl: Option<u64>,
    },
    /// Print the OpenAPI 3 description of the HTTP integration API (docs/openapi.json).
    Openapi,
    /// Copy this node's embedded store (storage.path) into MongoDB. Stop the node first. Only
    /// adds what is missing, never overwrites: re-running it is harmless.
    Migrate {
        /// The target backend (only "mongodb").
        #[arg(long, value_name = "BACKEND")]
        to: String,
        /// MongoDB connection string (default: storage.mongodb.uri).
        #[arg(long)]
        uri: Option<String>,
        /// Database name (default: storage.mongodb.database).
        #[arg(long)]
        database: Option<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let cfg = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("confab: {e}");
            std::process::exit(2);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Token { user, device, ttl } => {
            let (t, _) = confab::auth::Tokens::from_config(&cfg)
                .mint(&user, &device, ttl.unwrap_or(cfg.auth.token_ttl_secs), 0)
                .map_err(|e| anyhow::anyhow!("{}", e.message))?;
            println!("{t}");
            Ok(())
        }
        Command::Serve => serve(cfg),
        Command::Openapi => {
            print!("{}", confab::http::api::openapi::json());
            Ok(())
        }
        Command::Migrate { to, uri, database } => migrate(cfg, &to, uri, database),
    }
}

fn migrate(cfg: Config, to: &str, uri: Option<String>, database: Option<String>) -> anyhow::Result<()> {
    if to != "mongodb" {
        anyhow::bail!("--to {to:?}: only \"mongodb\" is supported");
    }
    let mut opts = confab::store::MongoOptions::from_config(&cfg.storage.mongodb);
    if let Some(uri) = uri {
        opts.uri = uri;
    }
    if let Some(db) = database {
        opts.database = db;
    }
    if opts.uri.is_empty() {
        anyhow::bail!("give --uri mongodb://… (or set storage.mongodb.uri)");
    }
    let database = opts.database.clone();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let report = rt.block_on(confab::store::mongo::migrate_from_embedded(&cfg.storage.path, opts))?;
    print!("{report}");
    println!("migrated {} into MongoDB database {database:?}", cfg.storage.path.display());
    if report.refused() > 0 {
        anyhow::bail!(
            "{} documents collided with different data already in {database:?} and were not copied",
            report.refused()
        );
    }
    Ok(())
}

fn serve(cfg: Config) -> anyhow::Result<()> {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| cfg.log.level.clone());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&filter).context("log.level is not a valid filter")?)
        .with_writer(std::io::stderr)
        .init();
    if cfg.uses_default_secret() {
        tracing::warn!(
            "auth.secret is the built-in development secret: set CONFAB__AUTH__SECRET before exposing this node"
        );
    }
    let listener =
        std::net::TcpListener::bind(cfg.bind_addr()?).with_context(|| format!("binding {}", cfg.server.bind))?;
    let addr = listener.local_addr()?;
    actix::System::new().block_on(async move {
        confab::server::serve(cfg, listener, true, move |_| {
            // One machine-readable line on stdout, so scripts (and tests) can find the port.
            println!("confab listening on {addr}");
            let _ = std::io::stdout().flush();
            tracing::info!(%addr, "listening");
        })
        .await
    })
}
