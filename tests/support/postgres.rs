//! A PostgreSQL schema of its own per test, or a visible skip without `DATABASE_URL`.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

/// A pool whose connections use a fresh schema, or `None` (and a skip recorded, see
/// [`super::skips`]) when `DATABASE_URL` is not set or PostgreSQL does not answer within
/// a second. Under CI (`TOWER_API_KEYS_REQUIRE_POSTGRES=1`) a missing or unreachable
/// database fails the test instead.
pub async fn schema_pool(test: &str) -> Option<(PgPool, String)> {
    let required = std::env::var("TOWER_API_KEYS_REQUIRE_POSTGRES").is_ok_and(|v| v == "1");
    let url = match std::env::var("DATABASE_URL") {
        Ok(url) if url.starts_with("postgres") => url,
        _ => {
            assert!(!required, "DATABASE_URL must point to PostgreSQL under CI");
            super::skips::skip(test, "set DATABASE_URL=postgres://… to run it");
            return None;
        }
    };
    // An unreachable server is told in under a second, not after sqlx's 30 s.
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_millis(900))
        .connect(&url)
        .await;
    let admin = match admin {
        Ok(pool) => pool,
        Err(error) => {
            assert!(
                !required,
                "PostgreSQL at DATABASE_URL is unreachable: {error}"
            );
            super::skips::skip(test, &format!("PostgreSQL unreachable ({error})"));
            return None;
        }
    };
    let schema = format!("tak_{test}");
    sqlx::raw_sql(&format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
    ))
    .execute(&admin)
    .await
    .unwrap();
    admin.close().await;
    Some((pool_in(&url, &schema).await, schema))
}

/// Another pool (another "instance") on the same schema.
pub async fn pool_in(url: &str, schema: &str) -> PgPool {
    let options: PgConnectOptions = url.parse().unwrap();
    PgPoolOptions::new()
        .max_connections(10)
        .connect_with(
            options
                .options([("search_path", schema)])
                .application_name(schema),
        )
        .await
        .unwrap()
}

pub fn url() -> String {
    std::env::var("DATABASE_URL").unwrap()
}
