//! The `tollgate` command: the local dev stack, the local Upstash REST
//! server, the private Redis and Postgres instances, migrations, the
//! management of API keys, bans and root keys, the audit log, deletion of
//! events on request, and the rebuild of event rollups.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tollgate::{
    admin::{
        self, audit, endpoints,
        root_keys::{self, Scope},
        usage, Actor, AdminError, Ban, BanSubject, Changed, KeyFilter, KeySummary, Metadata,
        Origin, Override, OwnerId, RedisSync,
    },
    alerts::WebhookUrl,
    apikeys::{KeyStatus, NewKey, Tier},
    config::{parse_duration, DatabaseConfig, UpstashConfig},
    db::Db,
    events::{
        erase::{self, Criterion, EraseError},
        rollup,
    },
    redis_keys::RedisKeys,
    secret::Secret,
    upstash::Upstash,
};
use tollgate_cli::{
    dev::{self, DevOptions},
    services::{Layout, Services},
    upstash_local,
};
use url::Url;
use uuid::Uuid;

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
    UpstashLocal(upstash_local::Args),
    /// Apply pending migrations to DATABASE_URL.
    Migrate {
        /// Use the direct (unpooled) URL: migrations hold a session lock.
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
    },
    /// Start or stop private Redis and PostgreSQL instances, and a PgBouncer
    /// in transaction mode in front of that PostgreSQL.
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
        /// PgBouncer's port [default: the PostgreSQL port + 10000].
        #[arg(long, global = true)]
        pgbouncer_port: Option<u16>,
        /// Start no PgBouncer.
        #[arg(long, global = true, conflicts_with = "pgbouncer_port")]
        no_pgbouncer: bool,
    },
    /// Create, list, revoke and rotate API keys, and change their limits.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
        #[command(flatten)]
        env: AdminEnv,
    },
    /// Create, list and revoke root keys, the credentials of /api/keys.
    RootKeys {
        #[command(subcommand)]
        action: RootKeysAction,
        #[command(flatten)]
        env: AdminEnv,
    },
    /// Set, show or delete the webhook endpoint a key owner's alerts go to.
    Webhooks {
        #[command(subcommand)]
        action: WebhooksAction,
        #[command(flatten)]
        env: AdminEnv,
    },
    /// Print the audit log of management actions, oldest first.
    Audit {
        /// Only the actions on this key.
        #[arg(long)]
        key: Option<Uuid>,
        /// Only entries after this entry id.
        #[arg(long)]
        after: Option<i64>,
        /// At most this many entries.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        env: AdminEnv,
    },
    /// List, add and lift bans of API keys and client IPs.
    Bans {
        #[command(subcommand)]
        action: BansAction,
        #[command(flatten)]
        env: AdminEnv,
    },
    /// Delete a key's events on request (GDPR).
    Events {
        #[command(subcommand)]
        action: EventsAction,
        #[command(flatten)]
        env: AdminEnv,
    },
    /// Recompute the analytics rollups from the stored events.
    Rollups {
        #[command(subcommand)]
        action: RollupsAction,
        #[command(flatten)]
        env: AdminEnv,
    },
}

#[derive(Subcommand)]
enum EventsAction {
    /// Delete a key's events by user id, by visitor, or before a date;
    /// corrects the key's rollups and records the deletion.
    Delete {
        #[arg(long)]
        key: Uuid,
        #[command(flatten)]
        criterion: CriterionArgs,
    },
}

/// Exactly one of the three.
#[derive(Args)]
#[group(required = true, multiple = false)]
struct CriterionArgs {
    /// The events sent with this user id.
    #[arg(long)]
    user_id: Option<String>,
    /// The events of this visitor id.
    #[arg(long)]
    visitor: Option<String>,
    /// The events before this day (YYYY-MM-DD) began, in the key's time zone.
    #[arg(long, value_name = "YYYY-MM-DD")]
    before: Option<chrono::NaiveDate>,
}

impl CriterionArgs {
    fn criterion(&self) -> Result<Criterion, EraseError> {
        match (&self.user_id, &self.visitor, self.before) {
            (Some(id), _, _) => Criterion::user_id(id),
            (None, Some(id), _) => Criterion::visitor(id),
            (None, None, Some(day)) => Ok(Criterion::Before(day)),
            (None, None, None) => unreachable!("clap requires one criterion"),
        }
    }
}

#[derive(Subcommand)]
enum RollupsAction {
    /// Rebuild one key's rollups, or every key's: run it once after
    /// upgrading a deployment that already stores events.
    Rebuild {
        /// Only this key.
        #[arg(long)]
        key: Option<Uuid>,
    },
}

/// Where `keys` and `bans` make their changes. Postgres is required; without
/// Upstash the change is recorded but Redis is not told (see `admin.rs`).
#[derive(Args)]
struct AdminEnv {
    #[arg(long, global = true, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    #[arg(long, global = true, env = "UPSTASH_REDIS_REST_URL")]
    upstash_url: Option<Url>,
    #[arg(
        long,
        global = true,
        env = "UPSTASH_REDIS_REST_TOKEN",
        hide_env_values = true
    )]
    upstash_token: Option<String>,
    #[arg(long, global = true, env = "TOLLGATE_KEY_PREFIX", default_value = tollgate::config::DEFAULT_KEY_PREFIX)]
    key_prefix: String,
    #[arg(long, global = true, env = "TOLLGATE_UPSTASH_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    upstash_timeout: Duration,
}

#[derive(Subcommand)]
enum KeysAction {
    /// Create a key; prints its secret and publishable halves once.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        tier: Tier,
        /// The owner id: your own name for the customer the key is for.
        #[arg(long)]
        owner: Option<OwnerId>,
        /// Requests per minute, instead of the tier's.
        #[arg(long)]
        rate_limit: Option<u32>,
        /// Requests per day, instead of the tier's.
        #[arg(long)]
        daily: Option<u64>,
        /// Requests per month, instead of the tier's.
        #[arg(long)]
        monthly: Option<u64>,
        /// Browser origins allowed to use the publishable key, comma-separated
        /// (e.g. https://a.com,https://b.com); any origin when omitted.
        #[arg(long, value_delimiter = ',')]
        origins: Vec<Origin>,
        /// IANA time zone of the quota days and months (default UTC).
        #[arg(long)]
        timezone: Option<String>,
        /// When the key stops working (RFC 3339, e.g. 2027-01-31T00:00:00Z).
        #[arg(long)]
        expires_at: Option<chrono::DateTime<chrono::Utc>>,
        /// A JSON object of at most 4 KB kept with the key.
        #[arg(long)]
        metadata: Option<Metadata>,
    },
    /// List keys with their limits in force (`*` marks the key's own values).
    List {
        /// Only this owner's keys.
        #[arg(long)]
        owner: Option<OwnerId>,
        #[arg(long)]
        json: bool,
    },
    /// Show a key with its usage today and this month.
    Get { id: Uuid },
    /// Revoke a key: both halves stop working at once.
    Revoke { id: Uuid },
    /// Give a key new halves under the same id; the old ones stop working at
    /// once, or after the overlap.
    Rotate {
        id: Uuid,
        /// How long the old halves keep working, e.g. 1h; at most 24h.
        #[arg(long, value_parser = parse_duration)]
        overlap: Option<Duration>,
    },
    /// Change a key's tier, limits, origins, time zone, metadata or expiry.
    #[command(
        alias = "set-limits",
        group(clap::ArgGroup::new("change").required(true).multiple(true))
    )]
    Update {
        id: Uuid,
        /// Requests per minute, or `default` for the tier's.
        #[arg(long, group = "change")]
        rate_limit: Option<Override<u32>>,
        /// Requests per day, or `default` for the tier's.
        #[arg(long, group = "change")]
        daily: Option<Override<u64>>,
        /// Requests per month, or `default` for the tier's.
        #[arg(long, group = "change")]
        monthly: Option<Override<u64>>,
        /// Allowed origins, comma-separated, replacing the current ones; `any` allows every origin.
        #[arg(long, value_delimiter = ',', group = "change")]
        origins: Option<Vec<String>>,
        #[arg(long, group = "change")]
        tier: Option<Tier>,
        #[arg(long, group = "change")]
        timezone: Option<String>,
        /// A JSON object replacing the metadata.
        #[arg(long, group = "change")]
        metadata: Option<Metadata>,
        /// When the key stops working (RFC 3339), or `never`.
        #[arg(long, group = "change")]
        expires_at: Option<Expiry>,
    },
}

/// `--expires-at`: a time, or `never`.
#[derive(Clone, Copy)]
struct Expiry(Option<chrono::DateTime<chrono::Utc>>);

impl std::str::FromStr for Expiry {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "never" {
            return Ok(Self(None));
        }
        s.parse()
            .map(|at| Self(Some(at)))
            .map_err(|e| format!("expected an RFC 3339 time or `never`: {e}"))
    }
}

#[derive(Subcommand)]
enum WebhooksAction {
    /// Send this owner's alerts to a URL; prints the signing secret once.
    Set {
        #[arg(long)]
        owner: OwnerId,
        #[arg(long)]
        url: WebhookUrl,
    },
    /// Show the owner's endpoint (never its secret).
    Get {
        #[arg(long)]
        owner: OwnerId,
    },
    /// Delete the owner's endpoint: its alerts go to the deployment's again.
    Delete {
        #[arg(long)]
        owner: OwnerId,
    },
}

#[derive(Subcommand)]
enum RootKeysAction {
    /// Make a root key; prints its secret once.
    Create {
        #[arg(long)]
        name: String,
        /// Comma-separated: keys:read, keys:write, bans:write, analytics:read.
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<Scope>,
    },
    /// List the root keys (never their secrets).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a root key: its next call is refused.
    Revoke { id: Uuid },
}

#[derive(Subcommand)]
enum BansAction {
    /// List the bans in force.
    List {
        /// Also list lifted and expired bans.
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Ban a key or an IP; replaces a ban already on it.
    Add {
        #[command(flatten)]
        subject: SubjectArgs,
        #[arg(long)]
        reason: String,
        /// How long, e.g. 5m, 12h or 7d; permanent when omitted.
        #[arg(long, value_parser = parse_duration)]
        duration: Option<Duration>,
    },
    /// Lift the ban on a key or an IP and clear its violation history.
    Lift {
        #[command(flatten)]
        subject: SubjectArgs,
    },
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct SubjectArgs {
    /// A key id.
    #[arg(long)]
    key: Option<Uuid>,
    /// A client IP address.
    #[arg(long)]
    ip: Option<IpAddr>,
}

impl SubjectArgs {
    fn subject(&self) -> BanSubject {
        match (self.key, self.ip) {
            (Some(id), _) => BanSubject::Key(id),
            (None, Some(ip)) => BanSubject::Ip(ip),
            (None, None) => unreachable!("clap requires --key or --ip"),
        }
    }
}

#[derive(Subcommand)]
enum ServicesAction {
    /// Start them (or reuse running ones) and print REDIS_URL, DATABASE_URL and
    /// POOLED_DATABASE_URL (the database through PgBouncer).
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
        Command::UpstashLocal(args) => {
            let shutdown = async {
                let _ = tokio::signal::ctrl_c().await;
            };
            upstash_local::run(args, shutdown).await
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
            pgbouncer_port,
            no_pgbouncer,
        } => {
            let pgbouncer_port = match pgbouncer_port {
                _ if no_pgbouncer => None,
                Some(port) => Some(port),
                None => Some(Layout::default_pgbouncer_port(postgres_port).context(
                    "the PostgreSQL port + 10000 is no port number; pass --pgbouncer-port",
                )?),
            };
            let layout = Layout {
                dir,
                redis_port,
                postgres_port,
                pgbouncer_port,
                durable: false,
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
        Command::Keys { action, env } => operator_error(keys(action, &Admin::connect(env)?).await),
        Command::Webhooks { action, env } => {
            operator_error(webhooks(action, &Admin::connect(env)?).await)
        }
        Command::RootKeys { action, env } => {
            operator_error(root_keys_command(action, &Admin::connect(env)?).await)
        }
        Command::Audit {
            key,
            after,
            limit,
            json,
            env,
        } => {
            let admin = Admin::connect(env)?;
            let filter = audit::Filter {
                key_id: key,
                after,
                limit: Some(limit),
            };
            operator_error(print_audit(&admin, &filter, json).await)
        }
        Command::Bans { action, env } => operator_error(bans(action, &Admin::connect(env)?).await),
        Command::Events { action, env } => {
            operator_error(events(action, &Admin::connect(env)?).await)
        }
        Command::Rollups { action, env } => {
            operator_error(rollups(action, &Admin::connect(env)?).await)
        }
    }
}

/// Expected failures (no such key, a value out of range) are the operator's
/// to fix: they get one line and exit code 1, not a backtrace.
fn operator_error(result: anyhow::Result<()>) -> anyhow::Result<()> {
    let Err(error) = result else {
        return Ok(());
    };
    let expected = match (
        error.downcast_ref::<AdminError>(),
        error.downcast_ref::<EraseError>(),
    ) {
        (Some(AdminError::Unexpected(_)), _) | (_, Some(EraseError::Unexpected(_))) => None,
        (Some(admin), _) => Some(admin.to_string()),
        (_, Some(erase)) => Some(erase.to_string()),
        (None, None) => None,
    };
    match expected {
        None => Err(error),
        Some(expected) => {
            eprintln!("error: {expected}");
            std::process::exit(1)
        }
    }
}

/// Postgres, and Upstash when it is configured.
struct Admin {
    db: Db,
    upstash: Option<Upstash>,
    keys: RedisKeys,
}

impl Admin {
    fn connect(env: AdminEnv) -> anyhow::Result<Self> {
        let database_url = env
            .database_url
            .context("DATABASE_URL is not set; it names the Postgres database to change")?;
        // Unnamed statements work both directly and behind a transaction-mode
        // pooler, and a command runs too few statements to gain from caching.
        let db = Db::connect_lazy(&DatabaseConfig {
            url: Secret::new(database_url),
            max_connections: 1,
            transaction_pooler: true,
        })?;
        let upstash = match (env.upstash_url, env.upstash_token) {
            (Some(url), Some(token)) => Some(
                Upstash::new(&UpstashConfig {
                    url,
                    token: Secret::new(token),
                    timeout: env.upstash_timeout,
                })
                .context("building the Upstash client")?,
            ),
            (None, None) => None,
            _ => anyhow::bail!(
                "set both UPSTASH_REDIS_REST_URL and UPSTASH_REDIS_REST_TOKEN, or neither"
            ),
        };
        Ok(Self {
            db,
            upstash,
            // The CLI names no shard key: key and ban state only.
            keys: RedisKeys::new(&env.key_prefix, tollgate::config::DEFAULT_SHARDS),
        })
    }

    /// Applies a change's Redis side, or says what not doing so means.
    /// `without` completes "Redis was not updated: …".
    async fn sync<T>(&self, change: Changed<T>, without: &str) -> anyhow::Result<T> {
        match &self.upstash {
            Some(upstash) => apply(upstash, &change.redis, without).await?,
            None => eprintln!(
                "warning: UPSTASH_REDIS_REST_URL/TOKEN are not set, so Redis was not updated: {without}"
            ),
        }
        Ok(change.value)
    }
}

async fn apply(upstash: &Upstash, redis: &RedisSync, without: &str) -> anyhow::Result<()> {
    redis.apply(upstash).await.with_context(|| {
        format!("the change is saved in Postgres, but updating Redis failed ({without})")
    })
}

const CACHE_NOTE: &str = "cached copies of the key expire within 5 minutes; run the command again with Upstash reachable to apply it at once";

async fn keys(action: KeysAction, admin: &Admin) -> anyhow::Result<()> {
    match action {
        KeysAction::Create {
            name,
            tier,
            owner,
            rate_limit,
            daily,
            monthly,
            origins,
            timezone,
            expires_at,
            metadata,
        } => {
            let key = admin::create_key(
                &admin.db,
                &Actor::Cli,
                admin::CreateKey {
                    name: name.clone(),
                    owner,
                    tier,
                    rate_limit,
                    daily,
                    monthly,
                    origins,
                    timezone,
                    expires_at,
                    metadata: metadata.unwrap_or_default(),
                },
            )
            .await?;
            println!("Created key {} ({name}, tier {tier}).\n", key.id);
            print_halves(&key);
        }
        KeysAction::List { owner, json } => {
            let filter = KeyFilter {
                owner,
                ..KeyFilter::default()
            };
            let keys = admin::list_keys(&admin.db, &filter).await?.keys;
            if json {
                println!("{}", serde_json::to_string_pretty(&keys)?);
            } else {
                print_keys(&keys);
            }
        }
        KeysAction::Get { id } => {
            let key = admin::get_key(&admin.db, id).await?;
            let sources = usage::Sources {
                db: &admin.db,
                upstash: admin.upstash.as_ref(),
                keys: &admin.keys,
            };
            let usage =
                usage::of(&sources, id, &key.timezone, &key.limits, chrono::Utc::now()).await?;
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({ "key": key, "usage": usage }))?
            );
            if !usage.exact {
                eprintln!("note: Upstash was not read, so requests not yet synced are missing");
            }
        }
        KeysAction::Revoke { id } => {
            let change = admin::revoke_key(&admin.db, &admin.keys, &Actor::Cli, id).await?;
            admin.sync(change, CACHE_NOTE).await?;
            println!("Revoked key {id}.");
        }
        KeysAction::Rotate { id, overlap } => {
            let change =
                admin::rotate_key(&admin.db, &admin.keys, &Actor::Cli, id, overlap).await?;
            let rotated = admin
                .sync(
                    change,
                    "the old halves keep working until their cached copies expire, within 5 minutes",
                )
                .await?;
            match rotated.previous_expires_at {
                Some(until) => println!(
                    "Rotated key {id}; the old halves keep working until {}.\n",
                    until.format("%Y-%m-%d %H:%M:%S UTC")
                ),
                None => println!("Rotated key {id}; the old halves no longer work.\n"),
            }
            print_halves(&rotated.key);
        }
        KeysAction::Update {
            id,
            rate_limit,
            daily,
            monthly,
            origins,
            tier,
            timezone,
            metadata,
            expires_at,
        } => {
            let origins = origins.map(parse_origins).transpose()?;
            let change = admin::update_key(
                &admin.db,
                &admin.keys,
                &Actor::Cli,
                id,
                admin::KeyChange {
                    rate_limit,
                    daily,
                    monthly,
                    origins,
                    tier,
                    timezone,
                    metadata,
                    expires_at: expires_at.map(|e| e.0),
                },
            )
            .await?;
            let key = admin.sync(change, CACHE_NOTE).await?;
            println!("Updated key {id}:");
            print_keys(&[key]);
        }
    }
    Ok(())
}

/// `any` (or `default`) alone clears the list: every origin is allowed.
fn parse_origins(list: Vec<String>) -> anyhow::Result<Vec<Origin>> {
    if let [only] = list.as_slice() {
        if only == "any" || only == "default" {
            return Ok(Vec::new());
        }
    }
    Ok(list
        .iter()
        .map(|o| Origin::parse(o))
        .collect::<Result<_, _>>()?)
}

fn print_halves(key: &NewKey) {
    println!("  secret key:      {}", key.secret.expose());
    println!("  publishable key: {}", key.publishable);
    println!();
    println!("Save the secret key now: tollgate stores only its SHA-256 and cannot show it again.");
    println!("The secret key is for servers and SDKs; the publishable key may go in web pages.");
}

fn print_keys(keys: &[KeySummary]) {
    let limit = |value: Option<String>, own: bool| {
        let value = value.unwrap_or_else(|| "unlimited".to_owned());
        if own {
            format!("{value}*")
        } else {
            value
        }
    };
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|k| {
            vec![
                k.id.to_string(),
                k.name.clone(),
                k.owner.clone().unwrap_or_else(|| "-".to_owned()),
                k.tier.to_string(),
                match k.status {
                    KeyStatus::Active => "active".to_owned(),
                    _ => "revoked".to_owned(),
                },
                limit(
                    k.limits.per_minute.map(|n| n.to_string()),
                    k.overrides.per_minute.is_some(),
                ),
                limit(
                    k.limits.per_day.map(|n| n.to_string()),
                    k.overrides.per_day.is_some(),
                ),
                limit(
                    k.limits.per_month.map(|n| n.to_string()),
                    k.overrides.per_month.is_some(),
                ),
                if k.origins.is_empty() {
                    "any".to_owned()
                } else {
                    k.origins.join(",")
                },
                k.timezone.clone(),
                minute(k.created_at),
                when(k.last_used_at, "never"),
                k.total_requests.to_string(),
            ]
        })
        .collect();
    print_table(
        &[
            "ID",
            "NAME",
            "OWNER",
            "TIER",
            "STATUS",
            "PER MIN",
            "PER DAY",
            "PER MONTH",
            "ORIGINS",
            "TIMEZONE",
            "CREATED",
            "LAST USED",
            "REQUESTS",
        ],
        &rows,
    );
    if keys.is_empty() {
        println!("(no keys; create one with `tollgate keys create`)");
    }
}

fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

async fn bans(action: BansAction, admin: &Admin) -> anyhow::Result<()> {
    match action {
        BansAction::List { all, json } => {
            let bans = admin::list_bans(&admin.db, all).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&bans)?);
            } else {
                print_bans(&bans);
            }
        }
        BansAction::Add {
            subject,
            reason,
            duration,
        } => {
            let change = admin::add_ban(
                &admin.db,
                &admin.keys,
                &Actor::Cli,
                admin::NewBan {
                    subject: subject.subject(),
                    reason,
                    duration,
                },
            )
            .await?;
            let ban = admin
                .sync(
                    change,
                    "requests are not refused until the ban reaches Redis; run the command again with Upstash reachable",
                )
                .await?;
            match ban.expires_at {
                None => println!("Banned {} permanently (ban {}).", ban.subject, ban.id),
                Some(until) => println!(
                    "Banned {} until {} (ban {}).",
                    ban.subject,
                    until.format("%Y-%m-%d %H:%M:%S UTC"),
                    ban.id
                ),
            }
        }
        BansAction::Lift { subject } => {
            let subject = subject.subject();
            let change = admin::lift_ban(&admin.db, &admin.keys, &Actor::Cli, subject).await?;
            let lifted = admin
                .sync(
                    change,
                    "a ban marker in Redis stays until it expires; run the command again with Upstash reachable",
                )
                .await?;
            match lifted {
                Some(ban) => println!("Lifted ban {} on {subject}.", ban.id),
                None => println!(
                    "Postgres had no ban in force on {subject}; cleared any ban and violation history in Redis."
                ),
            }
        }
    }
    Ok(())
}

async fn root_keys_command(action: RootKeysAction, admin: &Admin) -> anyhow::Result<()> {
    match action {
        RootKeysAction::Create { name, scopes } => {
            let key = root_keys::create(&admin.db, &Actor::Cli, &name, &scopes).await?;
            println!("Created root key {} ({name}).\n", key.id);
            println!("  root key: {}", key.secret.expose());
            println!();
            println!("Save it now: tollgate stores only its SHA-256 and cannot show it again.");
            println!("It manages every tenant's keys: keep it on your servers, never in a page.");
        }
        RootKeysAction::List { json } => {
            let keys = root_keys::list(&admin.db).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&keys)?);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = keys
                .iter()
                .map(|k| {
                    vec![
                        k.id.to_string(),
                        k.name.clone(),
                        k.scopes
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(","),
                        minute(k.created_at),
                        when(k.last_used_at, "never"),
                        when(k.revoked_at, "-"),
                    ]
                })
                .collect();
            print_table(
                &["ID", "NAME", "SCOPES", "CREATED", "LAST USED", "REVOKED"],
                &rows,
            );
            if keys.is_empty() {
                println!("(no root keys; create one with `tollgate root-keys create`)");
            }
        }
        RootKeysAction::Revoke { id } => {
            root_keys::revoke(&admin.db, &Actor::Cli, id).await?;
            println!("Revoked root key {id}.");
        }
    }
    Ok(())
}

async fn webhooks(action: WebhooksAction, admin: &Admin) -> anyhow::Result<()> {
    match action {
        WebhooksAction::Set { owner, url } => {
            let secret = endpoints::set(&admin.db, &Actor::Cli, &owner, &url).await?;
            println!("Alerts of owner {owner}'s keys now go to {}.\n", url.as_str());
            println!("  signing secret: {}", secret.expose());
            println!();
            println!("Verify each delivery with it (Standard Webhooks); it is not shown again.");
        }
        WebhooksAction::Get { owner } => match endpoints::get(&admin.db, &owner).await? {
            Some(endpoint) => println!("{}", serde_json::to_string_pretty(&endpoint)?),
            None => println!(
                "Owner {owner} has no endpoint of its own; its alerts go to TOLLGATE_ALERT_WEBHOOK_URL."
            ),
        },
        WebhooksAction::Delete { owner } => {
            if endpoints::delete(&admin.db, &Actor::Cli, &owner).await? {
                println!("Deleted owner {owner}'s endpoint.");
            } else {
                println!("Owner {owner} had no endpoint of its own.");
            }
        }
    }
    Ok(())
}

async fn print_audit(admin: &Admin, filter: &audit::Filter, json: bool) -> anyhow::Result<()> {
    let entries = audit::list(&admin.db, filter).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                e.id.to_string(),
                e.at.format("%Y-%m-%d %H:%M:%S").to_string(),
                e.actor.clone(),
                e.action.clone(),
                e.key_id.map_or_else(|| "-".to_owned(), |id| id.to_string()),
                e.detail.to_string(),
            ]
        })
        .collect();
    print_table(
        &["ID", "AT (UTC)", "ACTOR", "ACTION", "KEY", "DETAIL"],
        &rows,
    );
    if entries.is_empty() {
        println!("(no entries)");
    }
    Ok(())
}

async fn events(action: EventsAction, admin: &Admin) -> anyhow::Result<()> {
    match action {
        EventsAction::Delete { key, criterion } => {
            let criterion = criterion.criterion()?;
            let erased = erase::erase(&admin.db, key, &criterion).await?;
            println!(
                "Deleted {} events of key {key} ({criterion}); recorded as deletion {} at {}.",
                erased.events_removed,
                erased.id,
                erased.deleted_at.format("%Y-%m-%d %H:%M:%S UTC")
            );
            match erased.rebuilt_from {
                Some(day) => println!("Rollups recomputed from {day} on."),
                None => println!("The key has no events left; its rollups hold only days past retention, if any."),
            }
            println!("The deleted events' ids are kept, so a redelivered queue entry is not stored again.");
        }
    }
    Ok(())
}

async fn rollups(action: RollupsAction, admin: &Admin) -> anyhow::Result<()> {
    match action {
        RollupsAction::Rebuild { key } => {
            let keys = match key {
                Some(key) => {
                    admin::get_key(&admin.db, key).await?;
                    vec![key]
                }
                None => admin::list_keys(&admin.db, &KeyFilter::default())
                    .await?
                    .keys
                    .into_iter()
                    .map(|k| k.id)
                    .collect(),
            };
            for key in keys {
                let rebuilt = rollup::rebuild(&admin.db, key)
                    .await
                    .with_context(|| format!("rebuilding the rollups of key {key}"))?;
                match rebuilt.from {
                    Some(day) => println!(
                        "Key {key}: replayed {} events, rollups recomputed from {day} on.",
                        rebuilt.events
                    ),
                    None => println!("Key {key}: no events stored; nothing to rebuild."),
                }
            }
        }
    }
    Ok(())
}

/// A time as the tables show it.
fn minute(time: chrono::DateTime<chrono::Utc>) -> String {
    time.format("%Y-%m-%d %H:%M").to_string()
}

/// An optional time as the tables show it, or `none` when there is none.
fn when(time: Option<chrono::DateTime<chrono::Utc>>, none: &str) -> String {
    time.map_or_else(|| none.to_owned(), minute)
}

fn print_bans(bans: &[Ban]) {
    let rows: Vec<Vec<String>> = bans
        .iter()
        .map(|b| {
            vec![
                b.id.to_string(),
                b.subject.to_string(),
                format!("{:?}", b.status).to_lowercase(),
                minute(b.created_at),
                when(b.expires_at, "permanent"),
                when(b.lifted_at, "-"),
                b.reason.clone(),
            ]
        })
        .collect();
    print_table(
        &[
            "ID", "SUBJECT", "STATUS", "CREATED", "ENDS", "LIFTED", "REASON",
        ],
        &rows,
    );
    if bans.is_empty() {
        println!("(no bans)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once(&"tollgate").chain(args))
    }

    const KEY: &str = "7d1c2a8e-52c4-4f6f-9b1e-3f4a5b6c7d8e";

    #[test]
    fn events_delete_takes_exactly_one_criterion() {
        for (args, problem) in [
            (vec!["events", "delete", "--key", KEY], "no criterion"),
            (
                vec![
                    "events",
                    "delete",
                    "--key",
                    KEY,
                    "--user-id",
                    "u",
                    "--visitor",
                    "v",
                ],
                "two criteria",
            ),
            (
                vec!["events", "delete", "--key", KEY, "--before", "yesterday"],
                "a date that is not YYYY-MM-DD",
            ),
            (vec!["events", "delete", "--user-id", "u"], "no key"),
        ] {
            assert!(parse(&args).is_err(), "accepted {problem}");
        }
        let Command::Events {
            action: EventsAction::Delete { criterion, .. },
            ..
        } = parse(&["events", "delete", "--key", KEY, "--before", "2031-03-01"])
            .unwrap()
            .command
        else {
            panic!("parsed as another command")
        };
        assert_eq!(
            criterion.criterion().unwrap(),
            Criterion::Before(chrono::NaiveDate::from_ymd_opt(2031, 3, 1).unwrap())
        );
    }

    #[test]
    fn rollups_rebuild_takes_an_optional_key() {
        assert!(parse(&["rollups", "rebuild"]).is_ok());
        assert!(parse(&["rollups", "rebuild", "--key", KEY]).is_ok());
        assert!(parse(&["rollups", "rebuild", "--key", "nope"]).is_err());
    }
}
