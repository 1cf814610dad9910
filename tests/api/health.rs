//! Liveness and readiness.

use crate::helpers::TestApp;
use crate::test_config::TestConfig;

#[tokio::test]
async fn healthz_and_readyz_answer_200_on_a_migrated_database() {
    let app = TestApp::spawn().await;

    let health = app.get("/healthz").await;
    let ready = app.get("/readyz").await;

    assert_eq!(health.status().as_u16(), 200);
    assert_eq!(ready.status().as_u16(), 200);
}

/// `/livez` is Kubernetes' current name for the liveness probe; `/healthz` stays for
/// existing probes. Both answer without the database.
#[tokio::test]
async fn livez_and_healthz_say_the_process_is_up() {
    let app = TestApp::spawn().await;

    for path in ["/livez", "/healthz"] {
        let response = app.get(path).await;
        assert_eq!(response.status().as_u16(), 200, "{path}");
        let body: serde_json::Value = response.json().await.expect("JSON");
        assert_eq!(body, serde_json::json!({"status": "ok"}), "{path}");
    }
}

#[tokio::test]
async fn readyz_is_503_until_migrations_are_applied() {
    let config = TestConfig::base().set("database.migrate_on_start", false);
    let app = TestApp::spawn_with(&config).await;
    // Every table, whatever later migrations add.
    sqlx::raw_sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
        .execute(&app.pool)
        .await
        .expect("unmigrate");

    let ready = app.get("/readyz").await;
    assert_eq!(ready.status().as_u16(), 503);
    let gauge = crate::observability::sample(&app.metrics().await, "smsgate_ready");
    assert_eq!(gauge, Some(0.0), "smsgate_ready says what /readyz says");

    smsgate::db::migrate(&app.pool.connect_options())
        .await
        .expect("migrate");
    // The verdict is cached for a second.
    crate::dispatch::wait_until("ready", std::time::Duration::from_secs(3), async || {
        let ready = app.client.get(app.url("/readyz")).send().await;
        ready.is_ok_and(|r| r.status().as_u16() == 200)
    })
    .await;
    crate::helpers::until_metric(&app, "smsgate_ready", 1.0).await;
}

#[tokio::test]
async fn a_binary_older_than_the_database_still_migrates_and_is_ready() {
    let app = TestApp::spawn().await;
    // What the next release's migration leaves behind, as this binary would find it.
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (99990101000000, 'from the next release', true, '\\x00', 1)",
    )
    .execute(&app.pool)
    .await
    .expect("a newer migration");

    smsgate::db::migrate(&app.pool.connect_options())
        .await
        .expect("an older binary restarted mid-upgrade starts");
    assert!(
        smsgate::db::is_ready(&smsgate::db::Db::direct(app.pool.clone()))
            .await
            .expect("ready check")
    );
}
