//! Attacks on commit 7acf042: the ingress reservation commits without its write when the
//! decisions left nothing to write. A refused message to a new number, a repeat within a
//! batch and two messages to one new number must leave the counts exactly as decided.

use smsgate::config::{LimitsConfig, SpendConfig, WindowLimit};
use smsgate::db::ingress_hits::{Verdict, admit_batch, checks_of};
use smsgate::domain::{MessageBody, MessageId, NewMessage, PhoneNumber, RequestInfo};
use smsgate::limits::ingress::IngressLimits;
use smsgate::limits::slices::Slices;

use crate::helpers::TestApp;

fn message(to: &str, ip: &str, key: Option<&str>) -> NewMessage {
    NewMessage {
        id: MessageId::new(),
        recipient: PhoneNumber::parse(to).expect("number"),
        body: MessageBody::parse("Your code is 123456".into()).expect("body"),
        sender: None,
        request: RequestInfo {
            ip: Some(ip.parse().expect("ip")),
            user_agent: None,
        },
        signer: None,
        idempotency_key: key.map(str::to_string),
        fingerprint: None,
        guard: Default::default(),
        channel: Default::default(),
        locale: None,
        trace: None,
    }
}

async fn keys(app: &TestApp) -> Vec<String> {
    sqlx::query_scalar("SELECT key FROM ingress_hits ORDER BY key")
        .fetch_all(&app.pool)
        .await
        .expect("keys")
}

#[tokio::test]
async fn attack_skip_write_refused_new_number_leaves_no_row_and_counts_stay_exact() {
    let app = TestApp::spawn().await;
    let limits = IngressLimits::new(
        &LimitsConfig {
            ip: vec![WindowLimit::new(1, 3600)],
            number_cap: vec![WindowLimit::new(2, 3600)],
            ..LimitsConfig::default()
        },
        &SpendConfig::default(),
    );
    let db = smsgate::db::Db::direct(app.pool.clone());
    let slices = Slices::default();

    // First message of the IP to a new number: counted; the second (another new number,
    // same IP): refused by the IP's cap after its number's row was created.
    let a = message("+14155550001", "192.0.2.1", None);
    let b = message("+14155550002", "192.0.2.1", None);
    let (verdicts, _) = admit_batch(
        None,
        &db,
        &limits,
        &slices,
        &[&a, &b],
        checks_of(&limits, &slices, &[&a, &b], tokio::time::Instant::now()),
    )
    .await
    .expect("admitted");
    assert!(matches!(verdicts[0], Verdict::Counted(_)), "{verdicts:?}");
    assert!(matches!(verdicts[1], Verdict::Refused(_)), "{verdicts:?}");
    assert!(
        !keys(&app).await.iter().any(|k| k.contains("+14155550002")),
        "a refused request counts nowhere: {:?}",
        keys(&app).await
    );

    // A batch from new IPs only, all to new numbers: nothing but created rows, so the write
    // is skipped. Two to one number, a repeat by key, the number cap of 2 then full.
    let c1 = message("+14155550003", "198.51.100.1", Some("k1"));
    let c2 = message("+14155550003", "198.51.100.2", Some("k1"));
    let c3 = message("+14155550004", "198.51.100.3", None);
    let (verdicts, _) = admit_batch(
        None,
        &db,
        &limits,
        &slices,
        &[&c1, &c2, &c3],
        checks_of(
            &limits,
            &slices,
            &[&c1, &c2, &c3],
            tokio::time::Instant::now(),
        ),
    )
    .await
    .expect("admitted");
    assert!(matches!(verdicts[0], Verdict::Counted(_)), "{verdicts:?}");
    assert!(matches!(verdicts[2], Verdict::Counted(_)), "{verdicts:?}");
    // c2 had no key look-up (no tx): decided as new, to an IP of its own.
    let counted_to_3 = verdicts[..2]
        .iter()
        .filter(|v| matches!(v, Verdict::Counted(_)))
        .count();

    // The cap of 2 per number holds exactly on the next batch.
    let more: Vec<NewMessage> = (0..3)
        .map(|i| message("+14155550003", &format!("203.0.113.{}", i + 1), None))
        .collect();
    let refs: Vec<&NewMessage> = more.iter().collect();
    let (verdicts, _) = admit_batch(
        None,
        &db,
        &limits,
        &slices,
        &refs,
        checks_of(&limits, &slices, &refs, tokio::time::Instant::now()),
    )
    .await
    .expect("admitted");
    let counted = verdicts
        .iter()
        .filter(|v| matches!(v, Verdict::Counted(_)))
        .count();
    assert_eq!(
        counted_to_3 + counted,
        2,
        "never one past the number cap: {verdicts:?}"
    );
    // The refused IPs of that batch leave no rows.
    let rows = keys(&app).await;
    let ips = rows
        .iter()
        .filter(|k| k.starts_with("ip:203.0.113"))
        .count();
    assert_eq!(ips, counted, "only counted IPs have rows: {rows:?}");
}
