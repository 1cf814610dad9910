//! The OpenAPI 3.1 description of the HTTP API, derived from the handlers' own request and
//! response types (utoipa), so a changed type changes the description. It is served at
//! `GET /openapi.json` beside the status API, printed by `smsgate openapi`, and committed as
//! docs/openapi.json (a test fails when that file differs from what the code generates). CI
//! runs Schemathesis against the release binary with it.

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::request_body::RequestBody;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Content, HttpMethod, OpenApi as Document, Ref, Response, Schema};
use utoipa::{Modify, OpenApi};

use super::error::ErrorBody;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "smsgate",
        description = "Auth0's custom SMS gateway and phone provider, committed to PostgreSQL \
                       before the answer. docs/http-api.md explains each route. With \
                       admin.listen set, the operator routes (and this document, with only \
                       them and the probes) are served there, and the rest on server.listen."
    ),
    paths(
        super::ingress::parse_request,
        super::phone_provider::parse_action_request,
        super::verifications::verified,
        super::health::livez,
        super::health::healthz,
        super::health::readyz,
        super::admin::messages::list_messages,
        super::admin::messages::show_message,
        super::admin::spend::spend_today,
        super::admin::carriers::carrier_stats,
        super::admin::carriers::switch_carrier,
        served,
    ),
    components(schemas(ErrorBody)),
    modifiers(&Signers, &Callbacks),
    tags(
        (name = "ingress", description = "What Auth0 calls, signed with a signer's HS256 token"),
        (name = "callbacks", description = "Carriers' delivery receipts, proven per carrier kind"),
        (name = "operator", description = "The status and operator API (admin token)"),
        (name = "health", description = "Probes"),
    )
)]
struct ApiDoc;

/// What the admin listener serves (`admin.listen` set): only the routes it answers, the
/// operator API and the probes.
pub fn admin_document() -> String {
    let mut document = ApiDoc::openapi();
    document.paths.paths.retain(|path, _| {
        path.starts_with("/v1/messages")
            || path.starts_with("/v1/carriers/")
            || path.starts_with("/v1/spend")
            || matches!(
                path.as_str(),
                "/livez" | "/healthz" | "/readyz" | "/openapi.json"
            )
    });
    pretty(&document)
}

/// The description, as committed in docs/openapi.json.
pub fn document() -> String {
    pretty(&ApiDoc::openapi())
}

/// As committed: pretty JSON with a final newline.
fn pretty(document: &Document) -> String {
    let mut text = document
        .to_pretty_json()
        .unwrap_or_else(|_| "{}".to_string());
    text.push('\n');
    text
}

/// `GET /openapi.json`.
#[utoipa::path(
    get, path = "/openapi.json", tag = "health",
    summary = "This description",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json"))
)]
pub async fn served() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], document())
}

/// `GET /openapi.json` on the admin listener: the routes it answers.
pub async fn served_apart() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        admin_document(),
    )
}

/// The two bearer schemes: a signer's HS256 JWT (as Auth0 signs it) and the admin token.
struct Signers;

impl Modify for Signers {
    fn modify(&self, openapi: &mut Document) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut auth0 = Http::new(HttpAuthScheme::Bearer);
        auth0.bearer_format = Some("JWT".to_string());
        auth0.description =
            Some("HS256, signed with a signer's secret; audience and subject as configured".into());
        components.add_security_scheme("auth0", SecurityScheme::Http(auth0));
        let mut admin = Http::new(HttpAuthScheme::Bearer);
        admin.description = Some("`admin.token`".into());
        components.add_security_scheme("admin", SecurityScheme::Http(admin));
    }
}

/// One receipt route per carrier kind, as the router makes them (`carriers::KINDS`).
struct Callbacks;

impl Modify for Callbacks {
    fn modify(&self, openapi: &mut Document) {
        for kind in crate::carriers::KINDS {
            let path = format!("/v1/callbacks/{}/{{carrier}}", kind.name());
            let operation = callback_operation(kind.name(), kind.receipt_media_type());
            let item = PathItem::new(HttpMethod::Post, operation);
            openapi.paths.paths.insert(path, item);
        }
    }
}

/// A kind's receipt route: its reports in the kind's media type (a kind that sends none
/// still has the route, which answers 404).
fn callback_operation(kind: &str, media_type: Option<&str>) -> Operation {
    let report = Content::new(Some(Schema::Object(Default::default())));
    let body = RequestBody::builder()
        .description(Some(format!(
            "The report as {kind} sends it (docs/carriers.md, \"Delivery receipts\")"
        )))
        .content(media_type.unwrap_or("application/json"), report)
        .required(Some(utoipa::openapi::Required::True))
        .build();
    let carrier = utoipa::openapi::path::Parameter::builder()
        .name("carrier")
        .parameter_in(utoipa::openapi::path::ParameterIn::Path)
        .required(utoipa::openapi::Required::True)
        .description(Some(format!(
            "A configured {kind} carrier that asks for receipts"
        )))
        .schema(Some(Schema::Object(
            utoipa::openapi::schema::Object::with_type(utoipa::openapi::schema::Type::String),
        )))
        .build();
    let mut operation = Operation::builder()
        .tag("callbacks")
        .summary(Some(format!("A {kind} delivery receipt")))
        .parameter(carrier)
        .request_body(Some(body))
        .response("204", Response::new("Applied, or a repeat of one applied"))
        .build();
    for (status, description) in CALLBACK_REFUSALS {
        operation.responses.responses.insert(
            status.to_string(),
            Response::builder()
                .description(*description)
                .content(
                    "application/json",
                    Content::new(Some(Ref::from_schema_name("ErrorBody"))),
                )
                .build()
                .into(),
        );
    }
    operation
        .security
        .get_or_insert_with(Vec::new)
        .push(SecurityRequirement::default());
    operation
}

/// What a receipt route refuses, and why.
const CALLBACK_REFUSALS: &[(u16, &str)] = &[
    (400, "Not a report this kind sends"),
    (
        403,
        "The signature or key does not prove it came from this carrier",
    ),
    (
        404,
        "No carrier of this kind by that name asks for receipts",
    ),
    (408, "The request was not completed in time"),
    (413, "The body is larger than 16 KiB"),
    (415, "Content-Type is not the kind's"),
    (500, "Internal error"),
    (
        503,
        "Busy or the database is unavailable; the carrier retries",
    ),
];
