//! The operators' API (and the carriers' callback routes) read their paths and query strings
//! themselves, so a bad one is answered with the API's JSON error like every other refusal
//! (axum's own rejections are plain text), and no answer repeats what the caller sent.

use std::collections::BTreeMap;

use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::http::ApiError;

/// A path's parameters; one that cannot be read (not UTF-8) names nothing here: 404.
pub struct PathParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(params)) => Ok(Self(params)),
            Err(_) => Err(ApiError::RouteNotFound),
        }
    }
}

/// The query string's parameters, each one named at most once and all of them known.
pub struct QueryParams(Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Query::<Vec<(String, String)>>::from_request_parts(parts, state).await {
            Ok(Query(pairs)) => Ok(Self(pairs)),
            Err(_) => Err(invalid_query("the query string is not form-encoded")),
        }
    }
}

impl QueryParams {
    /// The parameters by name. An unknown one is refused without repeating it (it is the
    /// caller's text); a repeated one is refused because either value could be meant.
    pub fn known(self, names: &[&'static str]) -> Result<BTreeMap<&'static str, String>, ApiError> {
        let mut found = BTreeMap::new();
        for (name, value) in self.0 {
            let Some(&known) = names.iter().find(|known| **known == name) else {
                return Err(invalid_query(&match names {
                    [] => "unknown query parameter; this route takes none".to_string(),
                    _ => format!(
                        "unknown query parameter; this route takes {}",
                        names.join(", ")
                    ),
                }));
            };
            if found.insert(known, value).is_some() {
                return Err(invalid_query(&format!("{known} is given more than once")));
            }
        }
        Ok(found)
    }
}

/// A 400 `invalid_query` saying what is wrong, never quoting the value.
pub fn invalid_query(description: &str) -> ApiError {
    ApiError::InvalidField {
        code: "invalid_query",
        description: description.to_string(),
    }
}
