//! The delivery simulation of issue 26: two carriers on one route, the first of which silently
//! drops 30 % of one country's messages (a third of those with a failed receipt, a third with
//! none, a third with a false "delivered"), and a population of users who complete their login
//! when their code arrives (through `POST /v1/verifications`, as the post-login Action does).
//! With the static route and no resends about 70 % of the logins complete; with resends and
//! `order = "measured"` at least 95 % must. Every message is checked: none sent after its
//! expiry, none twice through one carrier, none past the per-recipient limit.
//!
//! `cargo test` runs one seed of the measured route (the suite runs its tests side by side, so
//! it is kept short); both routes over several seeds, which docs/carriers.md reports:
//! `SIM_SEEDS=1-5 cargo test --test api delivery_simulation::seeds -- --ignored --nocapture`.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::json;
use uuid::Uuid;

use crate::dispatch::queue;
use crate::helpers::token;
use crate::resends::TwoCarriers;

/// Messages per run (the suite's run is shorter), and the pace they are accepted at.
const MESSAGES: usize = 600;
const SUITE_MESSAGES: usize = 250;
const PER_SECOND: u64 = 20;

/// What the flaky carrier does with a message to the simulated country.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Delivered,
    FailedReceipt,
    NoReceipt,
    FalseDelivered,
}

fn flaky_fate(rng: &mut StdRng) -> Fate {
    match rng.random_range(0..100) {
        0..70 => Fate::Delivered,
        70..80 => Fate::FailedReceipt,
        80..90 => Fate::NoReceipt,
        _ => Fate::FalseDelivered,
    }
}

/// One run's outcome.
#[derive(Debug)]
struct Run {
    messages: usize,
    completed: usize,
    problems: Vec<String>,
}

impl Run {
    fn share(&self) -> f64 {
        self.completed as f64 / self.messages as f64
    }
}

/// The configuration of a run: resends and measured order, or today's static route without.
fn setup(measured: bool) -> String {
    let mut extra = String::from(
        "[[limits.recipient]]\nmax = 2\nwindow_seconds = 600\n\
         [carriers.first]\nreceipt_timeout_seconds = 2\n",
    );
    if !measured {
        extra += "[dispatch]\nresend_on_route_failure = false\n";
    }
    extra
}

async fn simulate(seed: u64, measured: bool, messages: usize) -> Run {
    let carriers = TwoCarriers::start_with(&setup(measured), |config| {
        if measured {
            config
                .route_setting("", "order", "measured")
                .route_setting("", "min_samples", 15)
        } else {
            config
        }
    })
    .await;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut users = Users::default();
    let started = Instant::now();
    let mut queued = 0;
    // Accept at the pace, and play carriers and users as the sends happen.
    while queued < messages || !users.settled(&carriers, started).await {
        let due = (started.elapsed().as_millis() as u64 * PER_SECOND / 1000) as usize;
        while queued < messages.min(due + 1) {
            let number = format!("+447400{:06}", seed % 1000 * 1000 + queued as u64);
            queue(&carriers.app, &number).await;
            queued += 1;
        }
        users.play(&carriers, &mut rng).await;
        // The suite runs tests side by side: its shorter run polls gently, leaving the others
        // their CPU; the seeds that docs/carriers.md reports poll every 50 ms.
        let poll = if messages == SUITE_MESSAGES { 150 } else { 50 };
        tokio::time::sleep(Duration::from_millis(poll)).await;
    }
    let problems = audit(&carriers).await;
    Run {
        messages,
        completed: users.logged_in.len(),
        problems,
    }
}

/// The carriers' and the users' side: which sends were answered, who logged in.
#[derive(Default)]
struct Users {
    seen: HashSet<i64>,
    logged_in: HashSet<Uuid>,
    last_send: Option<Instant>,
}

impl Users {
    /// Answers every send not answered yet, as its carrier would, and logs in the users whose
    /// code arrived.
    async fn play(&mut self, carriers: &TwoCarriers, rng: &mut StdRng) {
        let sends: Vec<(i64, Uuid, String, String, String)> = sqlx::query_as(
            "SELECT a.id, a.message_id, a.carrier, a.carrier_message_id, m.recipient
             FROM message_attempts a JOIN messages m ON m.id = a.message_id
             WHERE a.outcome = 'sent' ORDER BY a.id",
        )
        .fetch_all(&carriers.app.pool)
        .await
        .expect("sends");
        for (attempt, message, carrier, sid, recipient) in sends {
            if !self.seen.insert(attempt) {
                continue;
            }
            self.last_send = Some(Instant::now());
            let fate = if carrier == "first" {
                flaky_fate(rng)
            } else {
                Fate::Delivered
            };
            let answer = match fate {
                Fate::Delivered | Fate::FalseDelivered => Some(("delivered", None)),
                Fate::FailedReceipt => Some(("undelivered", Some("30008"))),
                Fate::NoReceipt => None,
            };
            if let Some((status, code)) = answer {
                assert_eq!(carriers.receipt(&carrier, &sid, status, code).await, 204);
            }
            if fate == Fate::Delivered && self.logged_in.insert(message) {
                verify(carriers, &recipient).await;
            }
        }
    }

    /// Every message is final and no send came for a few seconds (a silent carrier's timeout
    /// and the resend it starts included), or the run is far too long.
    async fn settled(&self, carriers: &TwoCarriers, started: Instant) -> bool {
        if started.elapsed() > Duration::from_secs(120) {
            return true;
        }
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM messages
             WHERE status IN ('queued', 'sending') OR (status = 'sent' AND body <> '')",
        )
        .fetch_one(&carriers.app.pool)
        .await
        .expect("open");
        let quiet = self
            .last_send
            .is_none_or(|at| at.elapsed() > Duration::from_secs(4));
        open == 0 && quiet
    }
}

async fn verify(carriers: &TwoCarriers, recipient: &str) {
    let response = carriers
        .app
        .client
        .post(carriers.app.url("/v1/verifications"))
        .bearer_auth(token())
        .json(&json!({"phone_number": recipient}))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status().as_u16(), 200);
}

/// What must hold for every message, whatever the route did.
async fn audit(carriers: &TwoCarriers) -> Vec<String> {
    let pool = &carriers.app.pool;
    let mut problems = Vec::new();
    let late: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM message_attempts a JOIN messages m ON m.id = a.message_id
         WHERE a.outcome = 'sent' AND a.created_at > m.expires_at",
    )
    .fetch_one(pool)
    .await
    .expect("late");
    if late > 0 {
        problems.push(format!("{late} sends after expiry"));
    }
    let twice: Vec<(Uuid, String, i64)> = sqlx::query_as(
        "SELECT message_id, carrier, count(*) FROM message_attempts
         WHERE outcome IN ('sent', 'timeout') GROUP BY 1, 2 HAVING count(*) > 1",
    )
    .fetch_all(pool)
    .await
    .expect("twice");
    if !twice.is_empty() {
        problems.push(format!("sent twice through one carrier: {twice:?}"));
    }
    let sends: HashMap<String, i64> = sqlx::query_as(
        "SELECT m.recipient, count(*) FROM message_attempts a JOIN messages m ON m.id = a.message_id
         WHERE a.outcome = 'sent' GROUP BY 1",
    )
    .fetch_all(pool)
    .await
    .expect("per number")
    .into_iter()
    .collect();
    if let Some((number, n)) = sends.iter().find(|(_, n)| **n > 2) {
        problems.push(format!("{number} got {n} sends, over its limit of 2"));
    }
    problems
}

fn seed_list() -> Vec<u64> {
    let spec = std::env::var("SIM_SEEDS").unwrap_or_else(|_| "1-3".into());
    match spec.split_once('-') {
        Some((a, b)) => (a.parse().unwrap_or(1)..=b.parse().unwrap_or(3)).collect(),
        None => vec![spec.parse().unwrap_or(1)],
    }
}

#[tokio::test]
async fn resends_and_measured_routing_complete_at_least_95_percent_of_the_logins() {
    let measured = simulate(7, true, SUITE_MESSAGES).await;
    assert_eq!(measured.problems, Vec::<String>::new());
    assert!(
        measured.share() >= 0.95,
        "{:.1} % of the logins completed with resends and a measured route",
        measured.share() * 100.0
    );
}

#[tokio::test]
#[ignore = "several seeds, both routes: run by hand (see the module comment)"]
async fn seeds() {
    for seed in seed_list() {
        let fixed = simulate(seed, false, MESSAGES).await;
        assert_eq!(fixed.problems, Vec::<String>::new());
        assert!(
            (0.60..0.80).contains(&fixed.share()),
            "static: {:.3}",
            fixed.share()
        );
        let measured = simulate(seed, true, MESSAGES).await;
        assert_eq!(measured.problems, Vec::<String>::new());
        assert!(
            measured.share() >= 0.95,
            "measured: {:.3}",
            measured.share()
        );
        println!(
            "seed {seed}: static {:.1} %, measured with resends {:.1} % (problems: {:?} {:?})",
            fixed.share() * 100.0,
            measured.share() * 100.0,
            fixed.problems,
            measured.problems
        );
    }
}
