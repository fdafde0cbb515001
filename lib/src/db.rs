//! Postgres: a small, lazy pool and the embedded migrations.
//!
//! A serverless instance may serve a request without touching Postgres, so
//! the pool opens connections only when asked and drops idle ones quickly.
//!
//! Behind a transaction-mode pooler (Neon's pooled endpoint, PgBouncer) a
//! server connection is ours only until a transaction ends, so:
//! - every statement is sent unnamed and nothing is cached, because the next
//!   transaction may run on another server; queries go through
//!   [`Db::query`] so that the setting applies everywhere;
//! - a statement outside a transaction runs inside one of its own, through
//!   [`Db::executor`]: sqlx parses and executes a statement in two round
//!   trips, and the pooler may hand the server to another client between
//!   them, where the execution fails with "unnamed prepared statement does
//!   not exist". A transaction holds the server from BEGIN to COMMIT, at the
//!   cost of those two round trips.

use std::{
    collections::HashSet,
    str::FromStr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use chrono::NaiveDate;

use anyhow::Context;
use futures::{future::BoxFuture, stream::BoxStream, TryStreamExt};
use sqlx::{
    migrate::Migrator,
    postgres::{
        PgArguments, PgConnectOptions, PgPoolOptions, PgQueryResult, PgRow, PgStatement, PgTypeInfo,
    },
    query::Query,
    Either, Execute, Executor, PgPool, Postgres,
};

use crate::config::DatabaseConfig;

/// The migrations under `migrations/`, compiled in.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// The Postgres pool and how statements must be prepared on it.
#[derive(Debug, Clone)]
pub struct Db {
    pool: PgPool,
    named_statements: bool,
    /// Statements built through [`Db::query`], so tests can hold a hot path to zero.
    statements: Arc<AtomicU64>,
    /// Months whose `events` partition this process has seen to exist.
    partitions: Arc<Mutex<HashSet<NaiveDate>>>,
}

impl Db {
    /// Builds the pool without connecting.
    pub fn connect_lazy(config: &DatabaseConfig) -> anyhow::Result<Self> {
        let mut options = PgConnectOptions::from_str(config.url.expose())
            .context("DATABASE_URL is not a valid Postgres URL")?
            .application_name("tollgate");
        if config.transaction_pooler {
            options = options.statement_cache_capacity(0);
        }
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .min_connections(0)
            .acquire_timeout(Duration::from_secs(5))
            .idle_timeout(Duration::from_secs(30))
            .connect_lazy_with(options);
        Ok(Self {
            pool,
            named_statements: !config.transaction_pooler,
            statements: Arc::default(),
            partitions: Arc::default(),
        })
    }

    /// The underlying pool, for transactions and bulk statements.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The pool as the executor of one statement at a time: the pool itself
    /// on a direct connection, a transaction per statement behind a pooler.
    pub fn executor(&self) -> Statements<'_> {
        Statements { db: self }
    }

    /// A query prepared the way this database allows: named and cached on a
    /// direct connection, unnamed behind a transaction-mode pooler.
    pub fn query<'q>(&self, sql: &'q str) -> Query<'q, Postgres, PgArguments> {
        self.statements.fetch_add(1, Ordering::Relaxed);
        sqlx::query(sql).persistent(self.named_statements)
    }

    /// How many statements have been built through [`Db::query`].
    pub fn statements(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }

    /// Whether the `events` partition of `month` is known to exist.
    pub fn knows_partition(&self, month: NaiveDate) -> bool {
        self.partitions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&month)
    }

    /// Notes that the `events` partition of `month` exists.
    pub fn remember_partition(&self, month: NaiveDate) {
        self.partitions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(month);
    }

    /// Whether a round trip to Postgres succeeds.
    pub async fn ping(&self) -> anyhow::Result<()> {
        self.query("SELECT 1")
            .execute(self.executor())
            .await
            .context("running SELECT 1")?;
        Ok(())
    }

    /// Applies every pending migration. Run it over a direct connection: the
    /// migrator holds a session-level advisory lock, which a transaction-mode
    /// pooler cannot keep.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        MIGRATOR
            .run(&self.pool)
            .await
            .context("applying migrations")?;
        Ok(())
    }
}

/// Runs statements on the pool, each in a transaction of its own behind a
/// transaction-mode pooler (see the module doc).
#[derive(Debug, Clone, Copy)]
pub struct Statements<'a> {
    db: &'a Db,
}

impl<'c> Executor<'c> for Statements<'c> {
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, Result<Either<PgQueryResult, PgRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        if self.db.named_statements {
            return self.db.pool.fetch_many(query);
        }
        let pool = self.db.pool.clone();
        Box::pin(
            futures::stream::once(async move {
                let mut transaction = pool.begin().await?;
                let results: Vec<_> = transaction.fetch_many(query).try_collect().await?;
                transaction.commit().await?;
                Ok::<_, sqlx::Error>(futures::stream::iter(results.into_iter().map(Ok)))
            })
            .try_flatten(),
        )
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, Result<Option<PgRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        if self.db.named_statements {
            return self.db.pool.fetch_optional(query);
        }
        let pool = self.db.pool.clone();
        Box::pin(async move {
            let mut transaction = pool.begin().await?;
            let row = transaction.fetch_optional(query).await?;
            transaction.commit().await?;
            Ok(row)
        })
    }

    fn prepare_with<'e, 'q: 'e>(
        self,
        sql: &'q str,
        parameters: &'e [PgTypeInfo],
    ) -> BoxFuture<'e, Result<PgStatement<'q>, sqlx::Error>>
    where
        'c: 'e,
    {
        self.db.pool.prepare_with(sql, parameters)
    }

    fn describe<'e, 'q: 'e>(
        self,
        sql: &'q str,
    ) -> BoxFuture<'e, Result<sqlx::Describe<Postgres>, sqlx::Error>>
    where
        'c: 'e,
    {
        self.db.pool.describe(sql)
    }
}
