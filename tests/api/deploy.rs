//! Deployment safety with the real binary: the embedded database belongs to the gateway that
//! started it and to nobody else.

use std::process::Command;
use std::time::Duration;

use crate::cli::{
    BINARY, post_with_smsgate_token, postgres_processes_for, start_serve, terminate,
    wait_until_healthy,
};

#[tokio::test]
async fn operator_commands_beside_a_live_gateway_never_stop_its_embedded_database() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (child, port) = start_serve(dir.path());
    let client = wait_until_healthy(port).await;
    let config = dir.path().join("smsgate.toml");

    for args in [
        vec!["messages", "list"],
        vec!["migrate"],
        vec!["messages", "show", "0190b8a4-0000-7000-8000-000000000000"],
    ] {
        let output = Command::new(BINARY)
            .args(&args)
            .arg("--config")
            .arg(&config)
            .env_remove("DATABASE_URL")
            .output()
            .expect("run");
        assert!(
            output.status.code().is_some_and(|c| c <= 1),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        // The command's exit would have stopped the cluster: give a watchdog time to act.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let ready = client
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            .expect("sent");
        assert_eq!(ready.status().as_u16(), 200, "still ready after {args:?}");
        let accepted = post_with_smsgate_token(&client, dir.path(), port).await;
        assert_eq!(
            accepted.status().as_u16(),
            200,
            "still accepting after {args:?}"
        );
    }

    assert!(terminate(child).await.success());
    assert_eq!(
        postgres_processes_for(dir.path()),
        0,
        "the owner stopped it"
    );
}

#[tokio::test]
async fn no_other_local_account_can_open_a_session_on_the_embedded_database() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (child, port) = start_serve(dir.path());
    wait_until_healthy(port).await;
    let socket_dir = dir.path().join("pg");

    let output = Command::new("runuser")
        .args(["-u", "nobody", "--", "psql", "-h"])
        .arg(&socket_dir)
        .args(["-U", "postgres", "-d", "postgres", "-c", "SELECT 1"])
        .output()
        .expect("run psql as nobody");

    assert!(!output.status.success(), "nobody must not connect");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("Permission denied"), "{stderr}");
    assert!(terminate(child).await.success());
}
