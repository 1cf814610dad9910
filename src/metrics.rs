//! The Prometheus registry and every metric smsgate exports. Names are a contract (dashboards
//! and alerts use them); labels are bounded: carrier names, outcomes and statuses, never a
//! number, an id or a body. Known label values start at 0 so alerts and rate() work at once.

use std::sync::{Arc, LazyLock};

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use crate::config::Config;
use crate::domain::{LimitKind, Status};

/// Outcomes of an ingress request (`POST /v1/auth0/sms` or `/v1/auth0/phone-provider`):
/// `timeout` is a 408 (the whole request took longer than `server.request_timeout_ms`), `error`
/// a 500 (a handler panicked).
pub const INGRESS_OUTCOMES: [&str; 9] = [
    "accepted",
    "unauthorized",
    "invalid",
    "too_large",
    "rate_limited",
    "blocked",
    "unavailable",
    "timeout",
    "error",
];
/// The ingress endpoints, as the `endpoint` label names them.
pub const INGRESS_ENDPOINTS: [&str; 2] = ["sms", "phone_provider"];
/// The `signer` label of a request no configured signer signed (refused before, or unsigned).
pub use crate::domain::NO_SIGNER;
/// Outcomes of one carrier call.
pub const ATTEMPT_OUTCOMES: [&str; 5] = [
    "sent",
    "recipient_failure",
    "carrier_failure",
    "timeout",
    "throttled",
];
/// Final statuses counted by `smsgate_messages_finished_total`.
pub const FINISHED_STATUSES: [Status; 4] = [
    Status::Sent,
    Status::Failed,
    Status::Expired,
    Status::RateLimited,
];
/// Where a message can be held back by a limit: `recipient` is a worker waiting for a number's
/// window (`[[limits.recipient]]`); the others are ingress refusals (429): one per kind of
/// ingress limit, `limits.max_in_flight`, and the two spend ceilings.
fn rate_limit_scopes() -> impl Iterator<Item = &'static str> {
    ["recipient"]
        .into_iter()
        .chain(LimitKind::ALL.map(LimitKind::refusal_scope))
        .chain(["in_flight", "spend_daily", "spend_country"])
}
/// The limits whose `monitor` mode `smsgate_limit_monitored_total` counts: every kind of
/// ingress limit, and the destination policy.
fn monitored_limits() -> impl Iterator<Item = &'static str> {
    LimitKind::ALL
        .map(LimitKind::label)
        .into_iter()
        .chain(["destinations"])
}
/// States of a queued message, as `smsgate_queue_depth` reports them.
pub const QUEUE_STATES: [&str; 2] = ["queued", "sending"];
/// Why a worker handed a message back untried (`smsgate_dispatch_held_total`): every carrier
/// of its route was unusable (breaker open, disabled by an operator), or the usable ones had no
/// free turn within the lease.
pub const HELD_REASONS: [&str; 2] = ["no_usable_carrier", "carrier_busy"];
/// `smsgate_queue_messages`: due now (or its lease ran out), waiting for its time (a retry's
/// backoff, a number's window), or leased by a worker.
pub const QUEUE_PHASES: [&str; 3] = ["due", "waiting", "sending"];

/// The `currency` label of spend: `[spend] currency`, or ISO 4217's "no currency" code `XXX`
/// when none is set (an empty label would be no label at all).
pub fn currency_label(currency: &str) -> &str {
    if currency.trim().is_empty() {
        "XXX"
    } else {
        currency
    }
}

/// Cheap to clone; every clone updates the same registry.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

pub struct Inner {
    registry: Registry,
    pub ingress_requests: IntCounterVec,
    pub ingress_duration: HistogramVec,
    pub attempts: IntCounterVec,
    pub carrier_duration: HistogramVec,
    pub accept_latency: Histogram,
    pub delivery_latency_deprecated: Histogram,
    pub failovers: IntCounterVec,
    pub finished: IntCounterVec,
    pub rate_limited: IntCounterVec,
    pub queue_depth: IntGaugeVec,
    pub queue_oldest_age: Gauge,
    pub queue_messages: IntGaugeVec,
    pub queue_due_age: Gauge,
    pub breaker_open: IntGaugeVec,
    pub receipts: IntCounterVec,
    pub receipt_latency: Histogram,
    pub resends: IntCounterVec,
    pub verifications: IntCounterVec,
    pub route_order_changes: IntCounterVec,
    pub route_messages: IntGaugeVec,
    pub route_receipt_latency: prometheus::GaugeVec,
    pub carrier_disabled: IntGaugeVec,
    pub ingress_in_flight: IntGaugeVec,
    pub ready: prometheus::IntGauge,
    pub held: IntCounterVec,
    pub monitored: IntCounterVec,
    pub segments: IntCounterVec,
    pub spend: prometheus::CounterVec,
    pub pool_connections: IntGaugeVec,
    pub pool_max: prometheus::IntGauge,
    pub pool_waiting: prometheus::IntGauge,
}

/// What a delivery receipt said, as `smsgate_delivery_receipts_total` counts it.
pub const RECEIPT_STATUSES: [&str; 3] = ["delivered", "undelivered", "other"];

impl std::ops::Deref for Metrics {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// Latency buckets from 1 ms to 30 s (Auth0's whole budget).
const SECONDS_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0,
];

/// A labelled counter or gauge: its name, help and label names.
struct Spec {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
}

/// A histogram: its name, help and bucket bounds in seconds.
struct HistogramSpec {
    name: &'static str,
    help: &'static str,
    buckets: &'static [f64],
}

/// Creates metrics and registers each with the registry it holds.
struct Registrar {
    registry: Registry,
}

impl Registrar {
    fn register<M: prometheus::core::Collector + Clone + 'static>(
        &self,
        metric: M,
    ) -> Result<M, prometheus::Error> {
        self.registry.register(Box::new(metric.clone()))?;
        Ok(metric)
    }

    fn counter(&self, spec: &Spec) -> Result<IntCounterVec, prometheus::Error> {
        self.register(IntCounterVec::new(
            Opts::new(spec.name, spec.help),
            spec.labels,
        )?)
    }

    fn gauge(&self, spec: &Spec) -> Result<IntGaugeVec, prometheus::Error> {
        self.register(IntGaugeVec::new(
            Opts::new(spec.name, spec.help),
            spec.labels,
        )?)
    }

    /// What the process is: its build, and the `process_*` families (RSS, CPU, descriptors).
    fn process(&self) -> Result<(), prometheus::Error> {
        let build_info = self.gauge(&BUILD_INFO)?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), env!("SMSGATE_COMMIT")])
            .set(1);
        let process = prometheus::process_collector::ProcessCollector::for_self();
        self.registry.register(Box::new(process))
    }

    fn int_gauge(&self, name: &str, help: &str) -> Result<prometheus::IntGauge, prometheus::Error> {
        self.register(prometheus::IntGauge::new(name, help)?)
    }

    /// Latency (`SECONDS_BUCKETS`) by `labels`.
    fn seconds_by(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<HistogramVec, prometheus::Error> {
        let opts = HistogramOpts::new(name, help).buckets(SECONDS_BUCKETS.to_vec());
        self.register(HistogramVec::new(opts, labels)?)
    }

    fn histogram(&self, spec: &HistogramSpec) -> Result<Histogram, prometheus::Error> {
        let opts = HistogramOpts::new(spec.name, spec.help).buckets(spec.buckets.to_vec());
        self.register(Histogram::with_opts(opts)?)
    }
}

// The metrics' names and help: a contract with dashboards and alerts.
const BUILD_INFO: Spec = Spec {
    name: "smsgate_build_info",
    help: "The running smsgate version and the commit it was built from.",
    labels: &["version", "commit"],
};
const INGRESS_REQUESTS: Spec = Spec {
    name: "smsgate_ingress_requests_total",
    help: "Requests to the Auth0 ingress, by endpoint, signer and outcome.",
    labels: &["endpoint", "signer", "outcome"],
};
const INGRESS_DURATION: &str = "smsgate_ingress_request_duration_seconds";
const ATTEMPTS: Spec = Spec {
    name: "smsgate_dispatch_attempts_total",
    help: "Carrier calls, by carrier, outcome and channel (sms, or voice for a call).",
    labels: &["carrier", "outcome", "channel"],
};
const ACCEPT_LATENCY: HistogramSpec = HistogramSpec {
    name: "smsgate_carrier_accept_latency_seconds",
    help: "From the ingress commit to a carrier accepting the message (not its delivery: \
           smsgate_receipt_latency_seconds).",
    buckets: &SECONDS_BUCKETS,
};
/// The name `ACCEPT_LATENCY` had until 0.2.0, which said "delivery" of what is the carrier's
/// acceptance. Still exported, with the same observations, until 0.3.0 (docs/metrics.md).
const DELIVERY_LATENCY_DEPRECATED: HistogramSpec = HistogramSpec {
    name: "smsgate_delivery_latency_seconds",
    help: "Deprecated: smsgate_carrier_accept_latency_seconds, under its old name until 0.3.0.",
    buckets: &SECONDS_BUCKETS,
};
const SPEND: Spec = Spec {
    name: "smsgate_estimated_spend_total",
    help: "Estimated spend of the messages carriers accepted, by carrier, in the currency its \
           label names ([spend] currency; [[prices]] times segments).",
    labels: &["carrier", "currency"],
};
const POOL_CONNECTIONS: Spec = Spec {
    name: "smsgate_db_pool_connections",
    help: "Connections this process's pool holds open, idle or in use.",
    labels: &["state"],
};
const FAILOVERS: Spec = Spec {
    name: "smsgate_failovers_total",
    help: "Moves to the next carrier of a route after a carrier failure.",
    labels: &["from", "to"],
};
const FINISHED: Spec = Spec {
    name: "smsgate_messages_finished_total",
    help: "Messages that reached a final status.",
    labels: &["status"],
};
const RATE_LIMITED: Spec = Spec {
    name: "smsgate_rate_limited_total",
    help: "Messages held back or ended by a limit, by scope.",
    labels: &["scope"],
};
const QUEUE_DEPTH: Spec = Spec {
    name: "smsgate_queue_depth",
    help: "Messages not final yet, by state.",
    labels: &["status"],
};
const QUEUE_MESSAGES: Spec = Spec {
    name: "smsgate_queue_messages",
    help: "Messages not final yet, by phase: due, waiting for their time, or being sent. \
           Database-wide: aggregate with max, not sum.",
    labels: &["phase"],
};
const BREAKER_OPEN: Spec = Spec {
    name: "smsgate_carrier_breaker_open",
    help: "1 while a carrier's circuit breaker is open or probing.",
    labels: &["carrier"],
};
const RECEIPTS: Spec = Spec {
    name: "smsgate_delivery_receipts_total",
    help: "Delivery receipts from the carriers, by carrier and what they said.",
    labels: &["carrier", "status"],
};
const RECEIPT_LATENCY: HistogramSpec = HistogramSpec {
    name: "smsgate_receipt_latency_seconds",
    help: "From the ingress commit to the carrier's receipt saying delivered.",
    buckets: &RECEIPT_BUCKETS,
};
const RESENDS: Spec = Spec {
    name: "smsgate_resends_total",
    help: "Messages sent again through another carrier, by the carrier that failed to deliver \
           and why (route_failure: its receipt said so; no_receipt: none came in time).",
    labels: &["carrier", "reason"],
};
/// Why a message was sent again (`smsgate_resends_total`).
pub const RESEND_REASONS: [&str; 2] = ["route_failure", "no_receipt"];
const ROUTE_MESSAGES: Spec = Spec {
    name: "smsgate_route_messages",
    help: "Messages each carrier took per destination country over the route measurement window \
           (dispatch.route_stats_window_seconds), by what became of them: sent, delivered, \
           failed_route, failed_recipient, no_receipt. Database-wide: aggregate with max, not sum.",
    labels: &["carrier", "country", "outcome"],
};
const VERIFICATIONS: Spec = Spec {
    name: "smsgate_verifications_total",
    help: "Logins completed with a phone code, told by POST /v1/verifications, by signer and \
           outcome: attributed to a message, repeated, or no_message of ours.",
    labels: &["signer", "outcome"],
};
const ROUTE_ORDER_CHANGES: Spec = Spec {
    name: "smsgate_route_order_changes_total",
    help: "Changes of a measured route's carrier order (order = \"measured\"), by route prefix \
           and destination country.",
    labels: &["route", "country"],
};
const ROUTE_RECEIPT_LATENCY: &str = "smsgate_route_receipt_latency_seconds";
const CARRIER_DISABLED: Spec = Spec {
    name: "smsgate_carrier_disabled",
    help: "1 while an operator has disabled the carrier (POST /v1/carriers/{name}/disable).",
    labels: &["carrier"],
};

const HELD: Spec = Spec {
    name: "smsgate_dispatch_held_total",
    help: "Messages a worker handed back untried, by reason.",
    labels: &["reason"],
};
const MONITORED: Spec = Spec {
    name: "smsgate_limit_monitored_total",
    help: "Requests a limit in monitor mode would have refused, by limit and destination country.",
    labels: &["limit", "country"],
};
const SEGMENTS: Spec = Spec {
    name: "smsgate_segments_total",
    help: "SMS segments carriers accepted, by carrier (what they bill).",
    labels: &["carrier"],
};
const INGRESS_IN_FLIGHT: Spec = Spec {
    name: "smsgate_ingress_in_flight",
    help: "Ingress requests of a signer being handled by this process (with limits.max_in_flight).",
    labels: &["signer"],
};

/// Receipts come seconds to minutes after the message.
const RECEIPT_BUCKETS: [f64; 11] = [
    1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
];

/// Batches of spans the OTLP collector did not take, counted by the exporter `telemetry`
/// installs: one exporter per process, so one count, which every registry of the process shows.
pub static TRACE_EXPORT_FAILURES: LazyLock<IntCounter> = LazyLock::new(|| {
    IntCounter::new(
        "smsgate_trace_export_failures_total",
        "Batches of spans the OTLP collector did not take after the exporter's retries (an \
         error status, unreachable, or no answer in time); their spans are lost.",
    )
    .expect("a valid metric name")
});

impl Metrics {
    /// Builds the registry for `config`'s carriers and routes. Registration can only fail on a
    /// duplicate name, which is a programming error caught by the tests.
    pub fn new(config: &Config) -> Result<Self, prometheus::Error> {
        let r = Registrar {
            registry: Registry::new(),
        };
        let inner = Inner {
            ingress_requests: r.counter(&INGRESS_REQUESTS)?,
            ingress_duration: r.seconds_by(
                INGRESS_DURATION,
                "Time to answer an ingress request (a 200 includes the commit), by endpoint and \
                 outcome.",
                &["endpoint", "outcome"],
            )?,
            attempts: r.counter(&ATTEMPTS)?,
            accept_latency: r.histogram(&ACCEPT_LATENCY)?,
            delivery_latency_deprecated: r.histogram(&DELIVERY_LATENCY_DEPRECATED)?,
            failovers: r.counter(&FAILOVERS)?,
            finished: r.counter(&FINISHED)?,
            rate_limited: r.counter(&RATE_LIMITED)?,
            queue_depth: r.gauge(&QUEUE_DEPTH)?,
            queue_messages: r.gauge(&QUEUE_MESSAGES)?,
            breaker_open: r.gauge(&BREAKER_OPEN)?,
            receipts: r.counter(&RECEIPTS)?,
            receipt_latency: r.histogram(&RECEIPT_LATENCY)?,
            resends: r.counter(&RESENDS)?,
            verifications: r.counter(&VERIFICATIONS)?,
            route_order_changes: r.counter(&ROUTE_ORDER_CHANGES)?,
            route_messages: r.gauge(&ROUTE_MESSAGES)?,
            route_receipt_latency: r.register(prometheus::GaugeVec::new(
                Opts::new(
                    ROUTE_RECEIPT_LATENCY,
                    "Mean time from a send to its final receipt over the route measurement \
                     window, per carrier and destination country. Database-wide.",
                ),
                &["carrier", "country"],
            )?)?,
            carrier_disabled: r.gauge(&CARRIER_DISABLED)?,
            ingress_in_flight: r.gauge(&INGRESS_IN_FLIGHT)?,
            held: r.counter(&HELD)?,
            monitored: r.counter(&MONITORED)?,
            segments: r.counter(&SEGMENTS)?,
            spend: r.register(prometheus::CounterVec::new(
                Opts::new(SPEND.name, SPEND.help),
                SPEND.labels,
            )?)?,
            pool_connections: r.gauge(&POOL_CONNECTIONS)?,
            pool_max: r.int_gauge(
                "smsgate_db_pool_max_connections",
                "Connections this process's pool may open (database.max_connections).",
            )?,
            pool_waiting: r.int_gauge(
                "smsgate_db_pool_waiting",
                "Tasks of this process taking a pooled connection: waiting for one, then its BEGIN.",
            )?,
            ready: r.int_gauge(
                "smsgate_ready",
                "1 while /readyz would answer 200 (the database answers, migrations applied).",
            )?,
            carrier_duration: r.seconds_by(
                "smsgate_carrier_request_duration_seconds",
                "Duration of one carrier call.",
                &["carrier"],
            )?,
            queue_oldest_age: r.register(Gauge::new(
                "smsgate_queue_oldest_age_seconds",
                "Age of the oldest message not final yet.",
            )?)?,
            queue_due_age: r.register(Gauge::new(
                "smsgate_queue_due_age_seconds",
                "How long the message due the longest has been due and not taken (0: none).",
            )?)?,
            // A clone shares the registry it was taken from.
            registry: r.registry.clone(),
        };
        r.process()?;
        r.register(TRACE_EXPORT_FAILURES.clone())?;
        let metrics = Self(Arc::new(inner));
        metrics.initialise(config);
        Ok(metrics)
    }

    /// Creates every known series at 0.
    fn initialise(&self, config: &Config) {
        let signers = config.auth0.keys().map(String::as_str).chain([NO_SIGNER]);
        for signer in signers {
            for endpoint in INGRESS_ENDPOINTS {
                for outcome in INGRESS_OUTCOMES {
                    self.ingress_requests
                        .with_label_values(&[endpoint, signer, outcome]);
                }
            }
        }
        for endpoint in INGRESS_ENDPOINTS {
            for outcome in INGRESS_OUTCOMES {
                self.ingress_duration
                    .with_label_values(&[endpoint, outcome]);
            }
        }
        for carrier in config.carriers.keys() {
            for outcome in ATTEMPT_OUTCOMES {
                self.attempts
                    .with_label_values(&[carrier.as_str(), outcome, "sms"]);
            }
            self.carrier_duration.with_label_values(&[carrier.as_str()]);
            self.breaker_open
                .with_label_values(&[carrier.as_str()])
                .set(0);
            self.carrier_disabled
                .with_label_values(&[carrier.as_str()])
                .set(0);
            for reason in RESEND_REASONS {
                self.resends.with_label_values(&[carrier.as_str(), reason]);
            }
            for status in RECEIPT_STATUSES {
                self.receipts.with_label_values(&[carrier.as_str(), status]);
            }
        }
        // Every ordered pair of carriers, so a route added later needs no new series names.
        // (With a single carrier there is no pair, and the family has no series.)
        for from in config.carriers.keys() {
            for to in config.carriers.keys().filter(|to| *to != from) {
                self.failovers
                    .with_label_values(&[from.as_str(), to.as_str()]);
            }
        }
        for status in FINISHED_STATUSES {
            self.finished.with_label_values(&[status.as_str()]);
        }
        for scope in rate_limit_scopes() {
            self.rate_limited.with_label_values(&[scope]);
        }
        // The country is known only once a request is monitored; an empty label is no label.
        for limit in monitored_limits() {
            self.monitored.with_label_values(&[limit, ""]);
        }
        for carrier in config.carriers.keys() {
            self.segments.with_label_values(&[carrier.as_str()]);
            self.spend
                .with_label_values(&[carrier.as_str(), currency_label(&config.spend.currency)]);
        }
        for state in QUEUE_STATES {
            self.queue_depth.with_label_values(&[state]).set(0);
        }
        for reason in HELD_REASONS {
            self.held.with_label_values(&[reason]);
        }
        for phase in QUEUE_PHASES {
            self.queue_messages.with_label_values(&[phase]).set(0);
        }
    }

    /// Registers a collector made elsewhere (the pool's acquire times) with this process's
    /// metrics; a second registration of the same name is refused and ignored.
    pub fn add(&self, collector: Box<dyn prometheus::core::Collector>) {
        if let Err(err) = self.registry.register(collector) {
            tracing::debug!(error = %err, "collector already registered");
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut buffer = Vec::new();
        if let Err(err) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::warn!(error = %err, "cannot encode metrics");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }

    /// Every metric family name currently exported (for tests of dashboards and alerts).
    pub fn family_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .registry
            .gather()
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        // Their labels are the routes' countries, known only once traffic is measured.
        for later in [
            ROUTE_MESSAGES.name,
            ROUTE_RECEIPT_LATENCY,
            ROUTE_ORDER_CHANGES.name,
        ] {
            if !names.iter().any(|n| n == later) {
                names.push(later.to_string());
            }
        }
        names
    }
}
