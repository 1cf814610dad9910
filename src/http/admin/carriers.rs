//! Carrier switches, for holders of the admin token: `POST /v1/carriers/{name}/disable` and
//! `/enable`.

use axum::Json;
use axum::extract::State;

use super::params::{PathParams, QueryParams};
use crate::db;
use crate::http::extract::Admin;
use crate::http::{ApiError, AppState};

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct CarrierSwitch {
    carrier: String,
    disabled: bool,
}

/// `POST /v1/carriers/{name}/disable` and `/enable`: takes a carrier out of (or back into)
/// every route at once, on every worker within a second; its state shows as
/// `smsgate_carrier_disabled`.
#[utoipa::path(
    post, path = "/v1/carriers/{name}/{action}", tag = "operator",
    summary = "Takes a carrier out of every route, or puts it back, in every process",
    security(("admin" = [])),
    params(
        ("name" = String, Path, description = "A configured carrier"),
        ("action" = String, Path, description = "`disable` or `enable`"),
    ),
    responses(
        (status = 200, description = "The carrier's switch as it now stands", body = CarrierSwitch),
        crate::http::error::AdminRefusals,
    )
)]
pub async fn switch_carrier(
    State(state): State<AppState>,
    _: Admin,
    path: Result<PathParams<(String, String)>, ApiError>,
    query: QueryParams,
) -> Result<Json<CarrierSwitch>, ApiError> {
    // Refused before anything is switched: the caller may have meant something else.
    query.known(&[])?;
    // A name that is not even UTF-8 names no configured carrier.
    let PathParams((name, action)) = path.map_err(|_| ApiError::CarrierNotFound)?;
    let disabled = match action.as_str() {
        "disable" => true,
        "enable" => false,
        _ => return Err(ApiError::RouteNotFound),
    };
    if !state.carriers.contains(&name) {
        return Err(ApiError::CarrierNotFound);
    }
    let changed = db::carrier_states::set_disabled(&state.pool, &name, disabled).await?;
    crate::audit::carrier_switched(&name, disabled, changed, crate::audit::Actor::AdminApi);
    Ok(Json(CarrierSwitch {
        carrier: name,
        disabled,
    }))
}

/// What each route delivered over the measurement window.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct CarrierStats {
    window_seconds: u32,
    /// A send without a receipt counts as `no_receipt` once it is this old.
    settle_seconds: u32,
    routes: Vec<RouteStat>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct RouteStat {
    #[serde(flatten)]
    window: db::route_stats::RouteWindow,
    /// Delivered out of the sends with a verdict; none before the first.
    delivery_ratio: Option<f64>,
    /// Logins completed out of the sends.
    conversion_ratio: Option<f64>,
}

/// `GET /v1/carriers/stats`: per carrier and destination country, over
/// `dispatch.route_stats_window_seconds`, the sends, what their receipts said and how fast,
/// from every process.
#[utoipa::path(
    get, path = "/v1/carriers/stats", tag = "operator",
    summary = "What each carrier delivered per destination country over the window",
    security(("admin" = [])),
    responses(
        (status = 200, description = "The window's measurements", body = CarrierStats),
        crate::http::error::AdminRefusals,
    )
)]
pub async fn carrier_stats(
    State(state): State<AppState>,
    _: Admin,
    query: QueryParams,
) -> Result<Json<CarrierStats>, ApiError> {
    query.known(&[])?;
    let d = &state.config.dispatch;
    let (window_seconds, settle_seconds) =
        (d.route_stats_window_seconds.get(), d.message_ttl_seconds);
    let routes = db::route_stats::window(&state.pool, window_seconds, settle_seconds).await?;
    Ok(Json(CarrierStats {
        window_seconds,
        settle_seconds,
        routes: routes
            .into_iter()
            .map(|window| RouteStat {
                delivery_ratio: window.delivery_ratio(),
                conversion_ratio: window.conversion_ratio(),
                window,
            })
            .collect(),
    }))
}
