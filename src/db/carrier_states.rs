//! Carriers switched off at runtime, shared by every process through the database.

use std::collections::HashSet;

use super::Db;

pub async fn set_disabled(pool: &Db, carrier: &str, disabled: bool) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO carrier_states (carrier, disabled) VALUES ($1, $2)
         ON CONFLICT (carrier) DO UPDATE SET disabled = $2, updated_at = now()",
    )
    .bind(carrier)
    .bind(disabled)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn disabled(pool: &Db) -> Result<HashSet<String>, sqlx::Error> {
    let names: Vec<String> =
        sqlx::query_scalar("SELECT carrier FROM carrier_states WHERE disabled")
            .fetch_all(pool)
            .await?;
    Ok(names.into_iter().collect())
}
