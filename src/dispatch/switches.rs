//! Operators' carrier switches (`smsgate carriers disable`), applied to a process's carriers.

use std::sync::Arc;

use crate::carriers::CarrierHandle;
use crate::db::Db;
use crate::metrics::Metrics;

/// Reads the operators' switches once and applies them to `carriers`.
pub async fn apply(pool: &Db, carriers: &[Arc<CarrierHandle>], metrics: &Metrics) {
    match crate::db::carrier_states::disabled(pool).await {
        Ok(disabled) => {
            for carrier in carriers {
                let off = disabled.contains(&carrier.name);
                if off != carrier.is_disabled() {
                    tracing::warn!(carrier = %carrier.name, disabled = off, "carrier switched");
                }
                carrier.set_disabled(off);
                metrics
                    .carrier_disabled
                    .with_label_values(&[carrier.name.as_str()])
                    .set(i64::from(off));
            }
        }
        Err(err) => tracing::debug!(error = %err, "cannot read carrier switches"),
    }
}
