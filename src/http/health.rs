//! Liveness and readiness for load balancers and orchestrators.

use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use super::AppState;
use crate::db;

/// A probe's verdict is reused this long: probes from many balancers cost the database one
/// query a second, not one each.
const READINESS_TTL: Duration = Duration::from_secs(1);

/// What the last readiness check found, and when.
#[derive(Default)]
pub struct Readiness {
    last: Mutex<Option<(Instant, Verdict)>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Ready,
    NotMigrated,
    Unreachable,
}

impl Readiness {
    /// The cached verdict, or a fresh one when it is older than `READINESS_TTL`; concurrent
    /// probes wait for the one check in flight instead of each querying.
    async fn verdict(&self, pool: &crate::db::Db) -> Verdict {
        let mut last = self.last.lock().await;
        if let Some((at, verdict)) = *last
            && at.elapsed() < READINESS_TTL
        {
            return verdict;
        }
        let verdict = match db::is_ready(pool).await {
            Ok(true) => Verdict::Ready,
            Ok(false) => {
                tracing::warn!("readiness check: migrations not applied");
                Verdict::NotMigrated
            }
            Err(err) => {
                tracing::warn!(error = %err, "readiness check: database unreachable");
                Verdict::Unreachable
            }
        };
        *last = Some((Instant::now(), verdict));
        verdict
    }
}

impl Readiness {
    /// What `/readyz` would answer now, for the `smsgate_ready` gauge.
    pub(super) async fn is_ready(&self, pool: &crate::db::Db) -> bool {
        self.verdict(pool).await == Verdict::Ready
    }
}

/// The process is up and serving HTTP.
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// The database answers and its schema is the one this binary expects.
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    match state.readiness.verdict(&state.pool).await {
        Verdict::Ready => (StatusCode::OK, Json(json!({"status": "ready"}))),
        Verdict::NotMigrated => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not_ready", "reason": "database migrations are not applied"})),
        ),
        Verdict::Unreachable => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not_ready", "reason": "database unreachable"})),
        ),
    }
}
