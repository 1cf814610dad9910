//! `GET /v1/spend`: today's estimated spend (UTC day, all processes), against the ceilings.

use axum::Json;
use axum::extract::State;
use chrono::NaiveDate;

use super::params::QueryParams;
use crate::db;
use crate::http::extract::Admin;
use crate::http::{ApiError, AppState};
use crate::limits::pricing::amount;

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct SpendToday {
    day: NaiveDate,
    currency: String,
    /// Estimates of the messages accepted today, all countries together.
    spent: f64,
    daily_limit: Option<f64>,
    country_daily_limit: Option<f64>,
    /// Each country's own total, when `country_daily_limit` is set ("ZZ": no country).
    countries: Vec<CountrySpend>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct CountrySpend {
    country: String,
    spent: f64,
}

#[utoipa::path(
    get, path = "/v1/spend", tag = "operator",
    summary = "Today's estimated spend (UTC day of the database), against the ceilings",
    security(("admin" = [])),
    responses(
        (status = 200, description = "Today's spend", body = SpendToday),
        crate::http::error::AdminRefusals,
    )
)]
pub async fn spend_today(
    State(state): State<AppState>,
    _: Admin,
    query: QueryParams,
) -> Result<Json<SpendToday>, ApiError> {
    query.known(&[])?;
    let (day, all, countries) = db::spend::today(&state.pool).await?;
    let ceiling = state.spend;
    Ok(Json(SpendToday {
        day,
        currency: state.pricing.currency.clone(),
        spent: amount(all),
        daily_limit: ceiling.daily.map(amount),
        country_daily_limit: ceiling.country_daily.map(amount),
        countries: countries
            .into_iter()
            .map(|(country, spent)| CountrySpend {
                country,
                spent: amount(spent),
            })
            .collect(),
    }))
}
