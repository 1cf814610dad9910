//! Carriers switched off at runtime, shared by every process through the database.

use std::collections::HashSet;

use super::Db;

/// Switches `carrier` off (or on) and says whether that changed anything: a second
/// `disable` finds it already off, and the operator's audit line must not claim otherwise.
/// Each statement decides on the row it locks, so two switches at once cannot both change it.
pub async fn set_disabled(pool: &Db, carrier: &str, disabled: bool) -> Result<bool, sqlx::Error> {
    // No row means switched on: enabling then has nothing to write.
    let statement = if disabled {
        "INSERT INTO carrier_states (carrier, disabled) VALUES ($1, true)
         ON CONFLICT (carrier) DO UPDATE SET disabled = true, updated_at = now()
         WHERE NOT carrier_states.disabled
         RETURNING carrier"
    } else {
        "UPDATE carrier_states SET disabled = false, updated_at = now()
         WHERE carrier = $1 AND disabled
         RETURNING carrier"
    };
    let changed = sqlx::query(statement)
        .bind(carrier)
        .fetch_optional(pool)
        .await?;
    Ok(changed.is_some())
}

pub async fn disabled(pool: &Db) -> Result<HashSet<String>, sqlx::Error> {
    let names: Vec<String> =
        sqlx::query_scalar("SELECT carrier FROM carrier_states WHERE disabled")
            .fetch_all(pool)
            .await?;
    Ok(names.into_iter().collect())
}
