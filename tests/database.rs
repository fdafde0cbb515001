//! Postgres: migrations and the transaction-pooler setting.

use sqlx::{Connection, PgConnection};
use tollgate::{config::DatabaseConfig, db::Db, secret::Secret};

use crate::helpers::fresh_database;

#[tokio::test]
async fn migrations_create_every_table_of_the_record() {
    let url = fresh_database().await.unwrap();
    let mut conn = PgConnection::connect(&url).await.unwrap();

    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT relname::text FROM pg_class
         WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p')
           AND NOT relispartition
         ORDER BY 1",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();

    for table in [
        "api_key_usage_daily",
        "api_keys",
        "api_requests_log",
        "bans",
        "dead_letter_events",
        "events",
        "provider_usage",
        "provider_usage_daily",
        "sync_batches",
        "uploads_log",
    ] {
        assert!(
            tables.iter().any(|t| t == table),
            "{table} missing from {tables:?}"
        );
    }
}

#[tokio::test]
async fn events_are_partitioned_by_month_with_partitions_made_ahead() {
    let url = fresh_database().await.unwrap();
    let mut conn = PgConnection::connect(&url).await.unwrap();

    // The migration made this month's and next month's partitions.
    let covered: bool = sqlx::query_scalar(
        "SELECT count(*) = 2 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'events'::regclass
           AND c.relname IN (format('events_%s', to_char(now(), 'YYYY_MM')),
                             format('events_%s', to_char(now() + interval '1 month', 'YYYY_MM')))",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert!(covered);

    // Making them again is a no-op; a far month is made on demand.
    let created: i32 = sqlx::query_scalar("SELECT ensure_event_partitions('2031-05-17', 1)")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(created, 1);
    let again: i32 = sqlx::query_scalar("SELECT ensure_event_partitions('2031-05-01', 1)")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(again, 0);
    let partition: Option<String> =
        sqlx::query_scalar("SELECT to_regclass('events_2031_05')::text")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(partition.as_deref(), Some("events_2031_05"));
}

#[tokio::test]
async fn transaction_pooler_mode_leaves_no_named_prepared_statement_behind() {
    let url = fresh_database().await.unwrap();
    let pooled = |transaction_pooler| {
        Db::connect_lazy(&DatabaseConfig {
            url: Secret::new(url.clone()),
            // One connection, so every query below runs on the same session.
            max_connections: 1,
            transaction_pooler,
        })
        .unwrap()
    };
    let count = "SELECT count(*) FROM pg_prepared_statements";

    let db = pooled(true);
    for _ in 0..3 {
        db.ping().await.unwrap();
    }
    let named: i64 = db
        .query(count)
        .fetch_one(db.pool())
        .await
        .map(|row| {
            use sqlx::Row;
            row.get(0)
        })
        .unwrap();
    assert_eq!(named, 0, "pooler mode must not leave named statements");

    // The direct mode does cache them, which is what makes the check meaningful.
    let db = pooled(false);
    db.ping().await.unwrap();
    let named: i64 = db
        .query(count)
        .fetch_one(db.pool())
        .await
        .map(|row| {
            use sqlx::Row;
            row.get(0)
        })
        .unwrap();
    assert!(named >= 1, "direct mode caches statements, found {named}");
}

#[tokio::test]
async fn migrating_twice_is_a_no_op() {
    let url = fresh_database().await.unwrap();
    let db = Db::connect_lazy(&DatabaseConfig {
        url: Secret::new(url),
        max_connections: 1,
        transaction_pooler: false,
    })
    .unwrap();
    db.migrate().await.unwrap();
    db.migrate().await.unwrap();
}
