//! The `tollgate` command: the local dev stack, the local Upstash REST
//! server, the private Redis and Postgres instances, and migrations.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tollgate::{config::DatabaseConfig, db::Db, secret::Secret};
use tollgate_cli::{
    dev::{self, DevOptions},
    services::{Layout, Services},
    upstash_local,
};

#[derive(Parser)]
#[command(
    name = "tollgate",
    version,
    about = "API metering, rate limiting and event analytics for Vercel"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole stack on localhost: routes, crons, local Upstash, Postgres.
    Dev {
        #[arg(long, default_value_t = 3000)]
        port: u16,
        /// Port of the embedded local Upstash REST server.
        #[arg(long, default_value_t = 8079)]
        upstash_port: u16,
        /// The repository root, holding public/ and vercel.json.
        #[arg(long, default_value = ".")]
        root: PathBuf,
        /// Do not run the crons of vercel.json.
        #[arg(long)]
        no_crons: bool,
    },
    /// Serve the Upstash REST protocol in front of a Redis server.
    UpstashLocal {
        #[arg(long, default_value_t = 8079)]
        port: u16,
        /// The bearer token clients must send.
        #[arg(long, env = "UPSTASH_REDIS_REST_TOKEN", hide_env_values = true)]
        token: String,
        #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
        redis_url: String,
    },
    /// Apply pending migrations to DATABASE_URL.
    Migrate {
        /// Use the direct (unpooled) URL: migrations hold a session lock.
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
    },
    /// Start or stop private Redis and PostgreSQL instances.
    Services {
        #[command(subcommand)]
        action: ServicesAction,
        /// Where the instances keep their data, logs and pid files.
        #[arg(long, global = true, default_value = ".tollgate/dev")]
        dir: PathBuf,
        #[arg(long, global = true, default_value_t = tollgate_cli::services::DEFAULT_REDIS_PORT)]
        redis_port: u16,
        #[arg(long, global = true, default_value_t = tollgate_cli::services::DEFAULT_POSTGRES_PORT)]
        postgres_port: u16,
    },
}

#[derive(Subcommand)]
enum ServicesAction {
    /// Start them (or reuse running ones) and print REDIS_URL and DATABASE_URL.
    Start,
    /// Stop them.
    Stop,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tollgate::telemetry::init();
    match Cli::parse().command {
        Command::Dev {
            port,
            upstash_port,
            root,
            no_crons,
        } => {
            dev::run(DevOptions {
                port,
                upstash_port,
                root,
                crons: !no_crons,
            })
            .await
        }
        Command::UpstashLocal {
            port,
            token,
            redis_url,
        } => {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                .await
                .with_context(|| format!("binding port {port}"))?;
            println!(
                "Upstash REST server on http://{} in front of {redis_url}",
                listener.local_addr()?
            );
            let shutdown = async {
                let _ = tokio::signal::ctrl_c().await;
            };
            upstash_local::serve(
                listener,
                upstash_local::Options { token, redis_url },
                shutdown,
            )
            .await
        }
        Command::Migrate { database_url } => {
            let db = Db::connect_lazy(&DatabaseConfig {
                url: Secret::new(database_url),
                max_connections: 1,
                transaction_pooler: false,
            })?;
            db.migrate().await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Services {
            action,
            dir,
            redis_port,
            postgres_port,
        } => {
            let layout = Layout {
                dir,
                redis_port,
                postgres_port,
            };
            match action {
                ServicesAction::Start => {
                    let services = Services::start(&layout).await?;
                    print!("{}", services.env_lines());
                }
                ServicesAction::Stop => Services::stop(&layout).await?,
            }
            Ok(())
        }
    }
}
