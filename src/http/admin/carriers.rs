//! Carrier switches, for holders of the admin token: `POST /v1/carriers/{name}/disable` and
//! `/enable`.

use axum::Json;
use axum::extract::State;

use super::params::{PathParams, QueryParams};
use crate::db;
use crate::http::extract::Admin;
use crate::http::{ApiError, AppState};

#[derive(serde::Serialize)]
pub struct CarrierSwitch {
    carrier: String,
    disabled: bool,
}

/// `POST /v1/carriers/{name}/disable` and `/enable`: takes a carrier out of (or back into)
/// every route at once, on every worker within a second; its state shows as
/// `smsgate_carrier_disabled`.
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
