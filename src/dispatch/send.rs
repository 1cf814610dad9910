//! One dispatch attempt for one leased message: the route's carriers in order, failing over on
//! carrier failures within the attempt. A carrier is called only while the code is alive and
//! the lease still covers the whole call (its timeout plus a margin for the outcome write), so
//! no other worker can hold the message while this one sends it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::RngExt;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::admissions::{Admissions, Undecided};
use super::decide::{BUSY_PAUSE, Decision, RouteOutcome, Standing, decide};
use super::record::Recorder;
use super::retry::RetryPolicy;
use crate::db::Db;

use super::measured::MeasuredOrders;
use crate::carriers::{Accepted, CarrierHandle, FailureClass, OutboundSms, Routes, SendError};
use crate::config::{Config, WindowLimit};
use crate::db::queue::{Claimed, Completion, Disposition};
use crate::db::receipts::ResendPolicy;
use crate::db::recipient_sends;
use crate::db::route_stats::{RouteStats, country_of};
use crate::domain::{Channel, PhoneNumber, Status, TraceContext, redact_digits};
use crate::limits::pricing::Pricing;
use crate::limits::window::Admission;
use crate::metrics::Metrics;

/// Left of the lease after a call's timeout, for the outcome to reach the database: a second,
/// or a tenth of a short lease (validation already makes the lease outlast every route).
pub fn lease_margin(lease: Duration) -> Duration {
    (lease / 10).min(Duration::from_secs(1))
}

/// What every send needs, shared by all workers of a process.
pub struct SendContext {
    pub routes: Routes,
    /// What each send cost (`smsgate_estimated_spend_total`).
    pub pricing: Pricing,
    pub retry: RetryPolicy,
    pub metrics: Metrics,
    pub shutdown: CancellationToken,
    pub lease: Duration,
    pub pool: Db,
    /// `[[limits.recipient]]`: each send is admitted against them right before its call.
    pub windows: Vec<WindowLimit>,
    /// Admits sends against `windows` (none without windows).
    pub admissions: Option<Admissions>,
    /// When a route failure sends the code again (the body is kept only then).
    pub resend: ResendPolicy,
    /// Each send a carrier took is counted for the route measurements.
    pub route_stats: RouteStats,
    /// The carrier order of `order = "measured"` routes, per country.
    pub measured: Option<Arc<MeasuredOrders>>,
}

/// The clocks of one claimed message, started when the claim was sent: the database's
/// `now()` is later than that, so both ends come early rather than late.
#[derive(Debug, Clone, Copy)]
pub struct Clocks {
    /// The code expires.
    pub deadline: Instant,
    /// The lease runs out, less the margin for the outcome write: a call must end by then.
    pub lease_end: Instant,
}

impl Clocks {
    pub fn new(claim_started: Instant, remaining_ms: i64, lease: Duration) -> Self {
        // A code lives minutes; the cap only keeps a corrupt row from overflowing the clock.
        let remaining = Duration::from_millis(u64::try_from(remaining_ms).unwrap_or(0))
            .min(Duration::from_secs(86_400));
        Self {
            deadline: claim_started + remaining,
            lease_end: claim_started + lease - lease_margin(lease),
        }
    }

    /// The last moment a call through `carrier` may start.
    fn latest_start(&self, carrier: &CarrierHandle) -> Option<Instant> {
        let latest = self.lease_end.checked_sub(carrier.timeout)?;
        Some(latest.min(self.deadline))
    }
}

/// Why a carrier of the route was not called.
enum Skip {
    /// Disabled or its breaker open: usable again after this long, if known.
    Unusable(Option<Duration>),
    /// No slot before the lease (or the code) would run out, or shutdown began.
    NoTurn,
}

/// The attempt in progress: which calls were made, and what the last failure was.
struct Attempt<'a> {
    context: &'a SendContext,
    message: &'a Claimed,
    clocks: Clocks,
    recorder: Recorder<'a>,
    last_error: String,
    retry_after: Option<Duration>,
    /// The route was not tried whole (a later carrier had no turn): the attempt does not count.
    uncounted: bool,
    /// When this attempt's send was logged in the number's window (database ms), if it was.
    logged_at: Option<i64>,
    /// A carrier took the message, or may have (a call that got no answer).
    maybe_sent: bool,
    /// Set when the attempt ends: a logged send that no carrier took, to take out again.
    unmade: &'a mut Option<i64>,
    /// The carrier that took it may yet report a route failure, and a resend would have a
    /// carrier and time: the body stays until then.
    keep_body: bool,
}

/// Runs the attempt and says what should happen to the message. `in_hand` is given back as
/// soon as a carrier call starts: the claimer counts messages claimed but not yet started.
/// A send logged in the number's window that no carrier took (none was called, or each
/// refused it) is taken out again: the window counts only sends that happen.
pub async fn dispatch(
    context: Arc<SendContext>,
    message: Claimed,
    clocks: Clocks,
    in_hand: Option<OwnedSemaphorePermit>,
) -> Completion {
    let mut unmade = None;
    let completion = attempt_route(&context, &message, clocks, in_hand, &mut unmade).await;
    if let Some(at_ms) = unmade
        && let Err(err) =
            recipient_sends::withdraw(&context.pool, &message.recipient, &context.windows, at_ms)
                .await
    {
        tracing::warn!(id = %message.id, error = %err, "cannot take an unmade send out of the recipient's log; it counts until its window passes");
    }
    completion
}

/// One carrier call of `message`, and its span (a child of the message's; its id goes to the
/// carrier as `traceparent`).
fn outbound(
    message: &Claimed,
    carrier: &str,
    recipient: &PhoneNumber,
    (route_sender, channel): (Option<&str>, Channel),
    validity: Duration,
) -> (OutboundSms, tracing::Span) {
    let call = tracing::info_span!("carrier call", carrier, otel.kind = "client");
    let trace = TraceContext::of_span(&call).or_else(|| message.trace().map(|t| t.child()));
    let sms = OutboundSms {
        id: message.message_id(),
        to: recipient.clone(),
        body: message.body.clone(),
        sender: message.sender.clone(),
        route_sender: route_sender.map(str::to_string),
        channel,
        locale: message.locale.clone(),
        validity,
        expires_at: message.expires_at,
        trace,
    };
    (sms, call)
}

async fn attempt_route(
    context: &SendContext,
    message: &Claimed,
    clocks: Clocks,
    in_hand: Option<OwnedSemaphorePermit>,
    unmade: &mut Option<i64>,
) -> Completion {
    let mut in_hand = in_hand;
    let mut attempt = Attempt {
        context,
        message,
        clocks,
        recorder: Recorder::new(&context.metrics, &context.pricing, message),
        last_error: String::from("no carrier is routed for this number"),
        retry_after: None,
        uncounted: false,
        logged_at: None,
        maybe_sent: false,
        unmade,
        keep_body: false,
    };
    let recipient = PhoneNumber::from_e164_unchecked(message.recipient.clone());
    let mut skipped_until: Option<Option<Duration>> = None;
    let mut no_turn = false;
    let mut admitted = context.windows.is_empty();
    let channel = Channel::parse(&message.channel);
    let route_sender = context.routes.sender_for(recipient.as_str());
    let carriers = attempt.candidates(recipient.as_str(), channel);
    if let Some(ended) = attempt.nothing_left(&carriers, channel) {
        return attempt.ended(ended);
    }
    for carrier in &carriers {
        let turn = match attempt.wait_for_turn(carrier).await {
            Ok(turn) => turn,
            Err(Skip::Unusable(usable_in)) => {
                // The soonest any skipped carrier may be usable (None: unknown).
                skipped_until = Some(match skipped_until {
                    None => usable_in,
                    Some(earlier) => earlier.zip(usable_in).map(|(a, b)| a.min(b)),
                });
                continue;
            }
            Err(Skip::NoTurn) => {
                no_turn = true;
                break;
            }
        };
        let now = match attempt.clear_to_call(&turn, &mut admitted).await {
            Ok(now) => now,
            Err(Blocked::Ended(disposition)) => return attempt.ended(disposition),
            Err(Blocked::NoTurn) => {
                no_turn = true;
                break;
            }
        };
        drop(in_hand.take());
        attempt.recorder.calling(&carrier.name);
        let validity = clocks.deadline - now;
        let how = (route_sender, channel);
        let (sms, call) = outbound(message, &carrier.name, &recipient, how, validity);
        let result = carrier.send(&sms).instrument(call).await;
        drop(turn);
        if let Some(disposition) = attempt.settle(carrier, now.elapsed(), result) {
            attempt.keep_body = attempt.may_resend(&disposition, carrier, &carriers);
            return attempt.ended(disposition);
        }
    }
    attempt.after_every_carrier(no_turn, skipped_until)
}

/// Why a carrier's turn did not lead to a call.
enum Blocked {
    /// The message is done with (expired, or refused by a per-number limit).
    Ended(Disposition),
    /// The turn ran out: the call would no longer end inside the lease.
    NoTurn,
}

/// A carrier's slot, held while its call runs, and the last moment the call may start.
struct Turn {
    _slot: Option<OwnedSemaphorePermit>,
    latest: Instant,
}

impl Attempt<'_> {
    /// The route's carriers for this message, in order (a measured route's order for its
    /// country): those that can carry its channel (a call goes only to carriers that place
    /// calls), less those that took it in an earlier send (a resend never goes through them).
    fn candidates(&self, recipient: &str, channel: Channel) -> Vec<Arc<CarrierHandle>> {
        let carried = self.message.carried_by.as_deref().unwrap_or_default();
        let usable: Vec<Arc<CarrierHandle>> = self
            .context
            .routes
            .carriers_for(recipient)
            .iter()
            .filter(|c| channel == Channel::Sms || c.calls())
            .filter(|c| !carried.contains(&c.name))
            .cloned()
            .collect();
        match (
            &self.context.measured,
            self.context.routes.measured_route(recipient),
        ) {
            (Some(measured), Some(prefix)) => {
                measured.order(prefix, &country_of(recipient), usable)
            }
            _ => usable,
        }
    }

    /// Why no carrier is left to try, if none is: a call with no carrier that places calls,
    /// or a resend whose route's every carrier carried it already (it ends undelivered).
    fn nothing_left(
        &mut self,
        candidates: &[Arc<CarrierHandle>],
        channel: Channel,
    ) -> Option<Disposition> {
        if !candidates.is_empty() {
            return None;
        }
        if self
            .message
            .carried_by
            .as_ref()
            .is_some_and(|c| !c.is_empty())
        {
            return Some(Disposition::Final {
                status: Status::Undelivered,
                carrier: None,
                carrier_message_id: None,
                error: Some(
                    "a carrier failed to deliver it, and every other carrier of its route \
                     carried it already"
                        .into(),
                ),
            });
        }
        if channel == Channel::Voice {
            self.last_error = String::from("no carrier of this number's route places calls");
        }
        None
    }

    /// Whether a message `carrier` just took may be sent again should it report a route
    /// failure: resends are on, the carrier will give a final word, a carrier of the route
    /// has not carried it (not this one, nor one called without an answer), the code has the
    /// time a resend needs, and `max_attempts` leaves an attempt for it.
    fn may_resend(
        &self,
        disposition: &Disposition,
        carrier: &CarrierHandle,
        route: &[Arc<CarrierHandle>],
    ) -> bool {
        let sent = matches!(
            disposition,
            Disposition::Final {
                status: Status::Sent,
                ..
            }
        );
        let Some(min_remaining) = self.context.resend.min_remaining else {
            return false;
        };
        let left = self
            .clocks
            .deadline
            .saturating_duration_since(Instant::now());
        let carried_now: Vec<&str> = self
            .recorder
            .calls
            .iter()
            .filter(|call| call.outcome == "sent" || call.outcome == "timeout")
            .map(|call| call.carrier.as_str())
            .collect();
        sent && carrier.awaits_receipts
            && left >= min_remaining
            && self.message.attempts + 1 < self.context.resend.max_attempts
            && route
                .iter()
                .any(|other| !carried_now.contains(&other.name.as_str()))
    }

    /// Admits the send to the number once per attempt (a failover within it is the same send),
    /// then checks, right before the call, that the lease still covers it and the code is
    /// still alive; the moment of the check.
    async fn clear_to_call(
        &mut self,
        turn: &Turn,
        admitted: &mut bool,
    ) -> Result<Instant, Blocked> {
        if !*admitted {
            // The number's counts are a lock many sends may queue on: no longer than the turn
            // lasts (a lock timeout the database enforces, so an admission is never cut off
            // after its commit; one that ends past the turn is taken out again).
            self.logged_at = self.admit(turn.latest).await?;
            *admitted = true;
        }
        let now = Instant::now();
        if now + MIN_VALIDITY > self.clocks.deadline {
            // Less than a second left: no carrier can be given a validity the code still has.
            return Err(Blocked::Ended(expired()));
        }
        if now > turn.latest {
            return Err(Blocked::NoTurn);
        }
        Ok(now)
    }

    /// Waits for the carrier's slot and rate, but only as long as a call started then would
    /// still end inside the lease and the code's life, and not past the start of shutdown.
    async fn wait_for_turn(&mut self, carrier: &CarrierHandle) -> Result<Turn, Skip> {
        if !carrier.allow() {
            let why = if carrier.is_disabled() {
                "disabled by an operator"
            } else {
                "circuit breaker open"
            };
            tracing::debug!(id = %self.message.id, carrier = %carrier.name, why, "carrier skipped");
            self.last_error = format!("{}: {why}", carrier.name);
            return Err(Skip::Unusable(carrier.usable_in()));
        }
        let Some(latest) = self.clocks.latest_start(carrier) else {
            return Err(Skip::NoTurn);
        };
        let shutdown = &self.context.shutdown;
        let slot = tokio::select! {
            slot = carrier.slot() => slot,
            _ = tokio::time::sleep_until(latest.into()) => return Err(Skip::NoTurn),
            _ = shutdown.cancelled() => return Err(Skip::NoTurn),
        };
        tokio::select! {
            _ = carrier.ready() => {}
            _ = tokio::time::sleep_until(latest.into()) => return Err(Skip::NoTurn),
            _ = shutdown.cancelled() => return Err(Skip::NoTurn),
        }
        if Instant::now() > latest {
            return Err(Skip::NoTurn);
        }
        Ok(Turn {
            _slot: slot,
            latest,
        })
    }

    /// Counts this send against the recipient's windows, right before the call, so the limits
    /// count the sends that really happen; the time it was logged at (`None` without windows).
    /// `Err` says what to do instead: wait for the window, or end the message when the window
    /// opens only after the code expires.
    async fn admit(&mut self, latest: Instant) -> Result<Option<i64>, Blocked> {
        let message = self.message;
        let Some(admissions) = &self.context.admissions else {
            return Ok(None);
        };
        let wait_ms = match admissions.admit(&message.recipient, latest).await {
            Ok((Admission::Allowed, at_ms)) => return Ok(Some(at_ms)),
            Ok((Admission::WaitMs(wait_ms), _)) => wait_ms,
            // The turn ran out first (the number's row stayed locked): nothing was counted.
            Err(Undecided::TurnOver) => return Err(Blocked::NoTurn),
            Err(Undecided::Database(err)) => {
                tracing::warn!(id = %message.id, error = %err, "cannot check the recipient's limits; handing the message back");
                return Err(Blocked::Ended(Disposition::Release {
                    delay_ms: BUSY_PAUSE.as_millis() as i64,
                }));
            }
        };
        self.recorder.recipient_limited();
        let wait = Duration::from_millis(u64::try_from(wait_ms).unwrap_or(0));
        if wait
            >= self
                .clocks
                .deadline
                .saturating_duration_since(Instant::now())
        {
            return Err(Blocked::Ended(Disposition::Final {
                status: Status::RateLimited,
                carrier: None,
                carrier_message_id: None,
                error: Some("over a per-recipient limit until after the code expires".into()),
            }));
        }
        // Not an attempt: the message waits for its window.
        Err(Blocked::Ended(Disposition::Release { delay_ms: wait_ms }))
    }

    /// What one call decides: `Some` when the message's fate is settled, `None` to fail over.
    fn settle(
        &mut self,
        carrier: &CarrierHandle,
        elapsed: Duration,
        result: Result<Accepted, SendError>,
    ) -> Option<Disposition> {
        self.recorder.call(&carrier.name, elapsed, &result);
        // A call that got no answer may have reached the carrier: it stays counted.
        if result.as_ref().map_or_else(|e| e.unanswered, |_| true) {
            self.maybe_sent = true;
        }
        match result {
            Ok(accepted) => Some(Disposition::Final {
                status: Status::Sent,
                carrier: Some(carrier.name.clone()),
                carrier_message_id: accepted.carrier_message_id,
                error: None,
            }),
            Err(error) => {
                self.last_error = format!("{}: {}", carrier.name, error.message);
                self.retry_after = self.retry_after.max(error.retry_after);
                (error.class == FailureClass::Recipient).then(|| Disposition::Final {
                    status: Status::Failed,
                    carrier: Some(carrier.name.clone()),
                    carrier_message_id: None,
                    error: Some(self.last_error.clone()),
                })
            }
        }
    }

    /// No carrier took the message this time: wait, retry, give back, fail or expire.
    /// The route is done without a final answer: what now (`decide`, a pure function) and the
    /// completion that says so.
    fn after_every_carrier(
        mut self,
        no_turn: bool,
        skipped_until: Option<Option<Duration>>,
    ) -> Completion {
        let route = RouteOutcome {
            called: !self.recorder.calls.is_empty(),
            no_turn,
            skipped_until,
            retry_after: self.retry_after,
        };
        let standing = Standing {
            attempts_before: self.message.attempts,
            left: self
                .clocks
                .deadline
                .saturating_duration_since(Instant::now()),
            shutting_down: self.context.shutdown.is_cancelled(),
        };
        let mut uniform = |low: Duration, high: Duration| {
            let to_ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
            Duration::from_millis(rand::rng().random_range(to_ms(low)..=to_ms(high)))
        };
        let as_ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        if !route.called {
            if route.no_turn {
                self.recorder.held("carrier_busy");
            } else if route.skipped_until.is_some() {
                self.recorder.held("no_usable_carrier");
            }
        }
        let left = standing.left;
        let decision = decide(route, &self.context.retry, standing, &mut uniform);
        // A route cut short by a busy carrier does not count, whatever becomes of the message.
        if let Decision::Retry { counted, .. } | Decision::Expire { counted } = decision {
            self.uncounted = !counted;
        }
        match decision {
            Decision::Release(wait) => self.ended(Disposition::Release {
                delay_ms: as_ms(wait),
            }),
            Decision::Retry { delay, .. } => self.ended(Disposition::Retry {
                delay_ms: as_ms(delay),
            }),
            Decision::GiveUp { attempts } => {
                let error = format!(
                    "gave up after {attempts} attempts; last: {}",
                    self.last_error
                );
                self.ended(Disposition::Final {
                    status: Status::Failed,
                    carrier: None,
                    carrier_message_id: None,
                    error: Some(error),
                })
            }
            // Ended before its time only when a carrier asked to wait past it: say so.
            Decision::Expire { .. } if self.retry_after.is_some_and(|wait| wait >= left) => self
                .ended(Disposition::Final {
                    status: Status::Expired,
                    carrier: None,
                    carrier_message_id: None,
                    error: Some(
                        "a carrier asked to wait (Retry-After) past the code's expiry".into(),
                    ),
                }),
            Decision::Expire { .. } => self.ended(expired()),
        }
    }

    fn ended(self, disposition: Disposition) -> Completion {
        if !self.maybe_sent {
            *self.unmade = self.logged_at;
        }
        // A call made counts as an attempt; a message given back untried keeps its count.
        let calls = self.recorder.calls;
        let attempts = if calls.is_empty() || self.uncounted {
            self.message.attempts
        } else {
            self.message.attempts + 1
        };
        Completion {
            id: self.message.id,
            lease_token: self.message.lease_token,
            attempts,
            disposition,
            calls,
            keep_body: self.keep_body,
        }
    }
}

/// The least validity a carrier is given: carriers take a validity period or an expiry in
/// whole seconds, so a code with less left is not sent (it would be delivered late).
const MIN_VALIDITY: Duration = Duration::from_secs(1);

fn expired() -> Disposition {
    Disposition::Final {
        status: Status::Expired,
        carrier: None,
        carrier_message_id: None,
        error: Some("the code expired before a carrier took it".into()),
    }
}

/// One log line per outcome that is not a send (sends are logged with their latency where they
/// happen). Carrier texts can quote the number, so their digits are masked.
pub fn log_outcome(completion: &Completion) {
    match &completion.disposition {
        Disposition::Final {
            status,
            carrier,
            error,
            ..
        } if *status != Status::Sent => {
            tracing::info!(
                id = %completion.id, outcome = status.as_str(), carrier = carrier.as_deref().unwrap_or("-"),
                attempts = completion.attempts, error = %redact_digits(error.as_deref().unwrap_or("")),
                "message finished"
            );
        }
        Disposition::Retry { delay_ms } => tracing::info!(
            id = %completion.id, outcome = "retry", attempts = completion.attempts, delay_ms,
            "message will be retried"
        ),
        Disposition::Release { delay_ms } => tracing::debug!(
            id = %completion.id, outcome = "released", delay_ms,
            "message handed back untried"
        ),
        Disposition::Final { .. } => {}
    }
}

/// A claimed message that must not be sent at all: its code expired in the queue, or a login
/// completed with it while its resend waited (it ends `delivered`).
pub fn ended_before_sending(message: &Claimed) -> Option<Completion> {
    if message.verified {
        let why = "its login completed before the resend went out";
        return Some(finalise(message, Status::Delivered, why));
    }
    (message.remaining_ms <= 0)
        .then(|| finalise(message, Status::Expired, "the code expired in the queue"))
}

/// Used by the claimer for rows that are already past their expiry or their limits, and for
/// a send that panicked.
pub fn finalise(message: &Claimed, status: Status, error: &str) -> Completion {
    Completion {
        id: message.id,
        lease_token: message.lease_token,
        attempts: message.attempts,
        disposition: Disposition::Final {
            status,
            carrier: None,
            carrier_message_id: None,
            error: Some(error.to_string()),
        },
        calls: Vec::new(),
        keep_body: false,
    }
}

/// Shared handle type for the context.
pub type SharedContext = Arc<SendContext>;

impl SendContext {
    /// What every send of a process shares.
    pub fn build(
        config: &Config,
        handles: &std::collections::HashMap<String, Arc<CarrierHandle>>,
        pool: &Db,
        metrics: &Metrics,
        measures: (&RouteStats, Option<Arc<MeasuredOrders>>),
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Arc<SendContext>> {
        let (route_stats, measured) = measures;
        let d = &config.dispatch;
        Ok(Arc::new(SendContext {
            routes: Routes::new(&config.routes, &config.test_numbers, handles)?,
            pricing: Pricing::new(config),
            retry: RetryPolicy {
                base: d.retry_base_ms.duration(),
                max: d.retry_max_ms.duration(),
                max_attempts: d.max_attempts.get(),
            },
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
            lease: d.lease_seconds.duration(),
            pool: pool.clone(),
            windows: config.limits.recipient_pacing.clone(),
            admissions: (!config.limits.recipient_pacing.is_empty())
                .then(|| Admissions::start(pool.clone(), config.limits.recipient_pacing.clone())),
            resend: ResendPolicy::of(d),
            route_stats: route_stats.clone(),
            measured,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks_survive_an_absurd_remaining_life() {
        let clocks = Clocks::new(Instant::now(), i64::MIN, Duration::from_secs(30));
        assert!(clocks.deadline <= Instant::now());
        let clocks = Clocks::new(Instant::now(), i64::MAX, Duration::from_secs(30));
        assert!(clocks.deadline > clocks.lease_end);
    }
}
