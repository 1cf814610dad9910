//! Liveness and readiness for load balancers and orchestrators.

use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
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

/// A probe's answer.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok` (alive), `ready`, or `not_ready`.
    status: &'static str,
    /// Why it is not ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
}

impl Health {
    const fn up(status: &'static str) -> Json<Self> {
        Json(Self {
            status,
            reason: None,
        })
    }

    fn not_ready(reason: &'static str) -> (StatusCode, Json<Self>) {
        let health = Self {
            status: "not_ready",
            reason: Some(reason),
        };
        (StatusCode::SERVICE_UNAVAILABLE, Json(health))
    }
}

/// The process is up and serving HTTP (`/livez`, and `/healthz` as before).
#[utoipa::path(
    get, path = "/livez", tag = "health",
    responses((status = 200, description = "The process serves HTTP", body = Health))
)]
pub async fn livez() -> Json<Health> {
    Health::up("ok")
}

/// `/healthz`: the older name of `/livez`, kept for existing probes.
#[utoipa::path(
    get, path = "/healthz", tag = "health",
    responses((status = 200, description = "The process serves HTTP", body = Health))
)]
pub async fn healthz() -> Json<Health> {
    Health::up("ok")
}

/// The database answers and its schema is the one this binary expects.
#[utoipa::path(
    get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "Ready to take traffic", body = Health),
        (status = 503, description = "The database is unreachable or not migrated", body = Health),
    )
)]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    match state.readiness.verdict(&state.pool).await {
        Verdict::Ready => (StatusCode::OK, Health::up("ready")),
        Verdict::NotMigrated => Health::not_ready("database migrations are not applied"),
        Verdict::Unreachable => Health::not_ready("database unreachable"),
    }
}
