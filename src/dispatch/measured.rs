//! `order = "measured"` routes: per destination country, the route's carriers in the order of
//! their recent success, from the route measurements (`db::route_stats`) every process reads.
//! A carrier is judged by conversion (logins completed out of its sends) once the route has
//! `min_samples` logins in that country, by its delivery ratio otherwise, and only once it has
//! `min_samples` of its own; until any carrier has, the listed order holds. A carrier takes the
//! lead only past `margin`, so the order does not flap; `explore` of the messages still go
//! first to another carrier, so a recovering one is noticed. Each change is logged and counted.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rand::RngExt;

use crate::carriers::CarrierHandle;
use crate::config::{Config, RouteOrder};
use crate::db::route_stats::RouteWindow;
use crate::metrics::Metrics;

/// A measured route's settings.
#[derive(Debug, Clone)]
struct Settings {
    carriers: Vec<String>,
    min_samples: i64,
    explore: f64,
    margin: f64,
}

/// The order each measured route keeps per country, shared by a process's workers.
pub struct MeasuredOrders {
    /// By route prefix.
    routes: HashMap<String, Settings>,
    /// (prefix, country) → the carriers, best first; absent: the listed order.
    orders: RwLock<HashMap<(String, String), Vec<String>>>,
    /// (prefix, country) pairs messages asked an order for: only those are ranked (a route
    /// is not ordered for countries it never carries).
    asked: RwLock<std::collections::HashSet<(String, String)>>,
    /// (prefix, country, carrier) → the last score the carrier had once measured: a carrier
    /// whose samples left the window keeps it, so only one never measured gets the benefit
    /// of the doubt (and a poor carrier cannot take the lead back once a window).
    last_scores: RwLock<HashMap<(String, String, String), f64>>,
    metrics: Metrics,
}

/// How carriers are compared in one country.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    Conversion,
    Delivery,
}

impl MeasuredOrders {
    pub fn new(config: &Config, metrics: &Metrics) -> Arc<Self> {
        let routes = config
            .routes
            .iter()
            .filter(|r| r.order == RouteOrder::Measured)
            .map(|r| {
                let settings = Settings {
                    carriers: r.carriers.clone(),
                    min_samples: i64::from(r.min_samples),
                    explore: r.explore,
                    margin: r.margin,
                };
                (r.prefix.clone(), settings)
            })
            .collect();
        Arc::new(Self {
            routes,
            orders: RwLock::default(),
            asked: RwLock::default(),
            last_scores: RwLock::default(),
            metrics: metrics.clone(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Takes a new read of the window: each measured route's order per country, changed only
    /// past the margin; every change logged and counted.
    pub fn refresh(&self, window: &[RouteWindow]) {
        let mut by_country: HashMap<&str, HashMap<&str, &RouteWindow>> = HashMap::new();
        for row in window {
            by_country
                .entry(row.country.as_str())
                .or_default()
                .insert(row.carrier.as_str(), row);
        }
        let asked = self.asked.read().unwrap_or_else(|e| e.into_inner()).clone();
        let mut orders = self.orders.write().unwrap_or_else(|e| e.into_inner());
        let mut last = self.last_scores.write().unwrap_or_else(|e| e.into_inner());
        for key in asked {
            let (prefix, country) = (&key.0, &key.1);
            let (Some(settings), Some(figures)) =
                (self.routes.get(prefix), by_country.get(country.as_str()))
            else {
                continue;
            };
            let current = orders
                .get(&key)
                .cloned()
                .unwrap_or_else(|| settings.carriers.clone());
            let remembered = |carrier: &str| {
                last.get(&(prefix.clone(), country.clone(), carrier.to_string()))
                    .copied()
            };
            let (next, scores) = rank(settings, &current, figures, remembered);
            for (carrier, score) in scores {
                last.insert((prefix.clone(), country.clone(), carrier), score);
            }
            if next != current {
                tracing::info!(
                    route = %prefix, %country, from = ?current, to = ?next,
                    "route order changed by measurement"
                );
                self.metrics
                    .route_order_changes
                    .with_label_values(&[prefix.as_str(), country.as_str()])
                    .inc();
                orders.insert(key.clone(), next);
            }
        }
    }

    /// `carriers` (the route's, less those passed over) in the measured order for `country`;
    /// with probability `explore`, another carrier is put first.
    pub fn order(
        &self,
        prefix: &str,
        country: &str,
        carriers: Vec<Arc<CarrierHandle>>,
    ) -> Vec<Arc<CarrierHandle>> {
        let Some(settings) = self.routes.get(prefix) else {
            return carriers;
        };
        let key = (prefix.to_string(), country.to_string());
        let known = self
            .asked
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&key);
        if !known {
            self.asked
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key.clone());
        }
        let mut sorted = carriers;
        if let Some(order) = self
            .orders
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            let place = |c: &Arc<CarrierHandle>| order.iter().position(|n| *n == c.name);
            sorted.sort_by_key(|c| place(c).unwrap_or(usize::MAX));
        }
        if sorted.len() > 1 && rand::rng().random_bool(settings.explore) {
            let other = rand::rng().random_range(1..sorted.len());
            let explored = sorted.remove(other);
            sorted.insert(0, explored);
        }
        sorted
    }
}

/// The route's carriers ranked by `figures` (one country), keeping `current`'s leader unless
/// another does better by more than the margin.
fn rank(
    settings: &Settings,
    current: &[String],
    figures: &HashMap<&str, &RouteWindow>,
    remembered: impl Fn(&str) -> Option<f64>,
) -> (Vec<String>, Vec<(String, f64)>) {
    let logins: i64 = settings
        .carriers
        .iter()
        .filter_map(|c| figures.get(c.as_str()))
        .map(|f| f.verified)
        .sum();
    let signal = if logins >= settings.min_samples {
        Signal::Conversion
    } else {
        Signal::Delivery
    };
    let measured = |carrier: &str| {
        score(figures.get(carrier).copied(), signal, settings.min_samples)
            .or_else(|| remembered(carrier))
    };
    let scores: Vec<(String, f64)> = settings
        .carriers
        .iter()
        .filter_map(|c| {
            let now = score(
                figures.get(c.as_str()).copied(),
                signal,
                settings.min_samples,
            );
            now.map(|s| (c.clone(), s))
        })
        .collect();
    if settings.carriers.iter().all(|c| measured(c).is_none()) {
        // Nothing measured (yet, or any more): the order stays as it is.
        return (current.to_vec(), scores);
    }
    // Once one carrier is measured, one never measured is given the benefit of the doubt (a
    // perfect score): a leader doing measurably badly then hands its traffic to it, and it is
    // measured in turn, instead of waiting for explore to find it.
    let score = |carrier: &str| Some(measured(carrier).unwrap_or(1.0));
    let mut ranked = settings.carriers.clone();
    // Best first; equal scores keep their listed order.
    ranked.sort_by(|a, b| {
        let (a, b) = (score(a), score(b));
        b.partial_cmp(&a).unwrap_or(std::cmp::Ordering::Equal)
    });
    let (Some(leader), Some(best)) = (current.first(), ranked.first()) else {
        return (ranked, scores);
    };
    if leader == best {
        return (ranked, scores);
    }
    let order = match (score(leader), score(best)) {
        // The leader keeps its place unless the best does better by more than the margin.
        (Some(kept), Some(challenger)) if challenger <= kept + settings.margin => {
            let mut kept_order = vec![leader.clone()];
            kept_order.extend(ranked.into_iter().filter(|c| c != leader));
            kept_order
        }
        _ => ranked,
    };
    (order, scores)
}

/// A carrier's success in one country by `signal`, once it has `min_samples` of its own.
fn score(figures: Option<&RouteWindow>, signal: Signal, min_samples: i64) -> Option<f64> {
    let figures = figures?;
    match signal {
        Signal::Conversion if figures.sent >= min_samples => figures.conversion_ratio(),
        Signal::Delivery => {
            let judged = figures.delivered + figures.failed_route + figures.no_receipt;
            (judged >= min_samples)
                .then(|| figures.delivery_ratio())
                .flatten()
        }
        Signal::Conversion => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            carriers: vec!["a".into(), "b".into()],
            min_samples: 10,
            explore: 0.0,
            margin: 0.05,
        }
    }

    fn figures(carrier: &str, sent: i64, delivered: i64, verified: i64) -> RouteWindow {
        RouteWindow {
            carrier: carrier.into(),
            country: "GB".into(),
            sent,
            delivered,
            failed_route: sent - delivered,
            failed_recipient: 0,
            no_receipt: 0,
            receipt_latency_ms: None,
            verified,
        }
    }

    fn ranked(a: &RouteWindow, b: &RouteWindow, current: &[&str]) -> Vec<String> {
        let figures = HashMap::from([("a", a), ("b", b)]);
        let current: Vec<String> = current.iter().map(|c| c.to_string()).collect();
        rank(&settings(), &current, &figures, |_| None).0
    }

    #[test]
    fn the_listed_order_holds_until_a_carrier_has_enough_samples() {
        let (a, b) = (figures("a", 9, 1, 0), figures("b", 9, 9, 0));
        assert_eq!(ranked(&a, &b, &["a", "b"]), ["a", "b"]);
    }

    #[test]
    fn a_poor_leader_hands_over_to_a_carrier_not_measured_yet() {
        let (a, b) = (figures("a", 20, 14, 0), figures("b", 3, 3, 0));
        assert_eq!(
            ranked(&a, &b, &["a", "b"]),
            ["b", "a"],
            "70 % against the doubt"
        );
        let (a, b) = (figures("a", 20, 20, 0), figures("b", 3, 0, 0));
        assert_eq!(
            ranked(&a, &b, &["a", "b"]),
            ["a", "b"],
            "a perfect leader stays"
        );
    }

    #[test]
    fn delivery_decides_without_logins_and_conversion_with_them() {
        let (a, b) = (figures("a", 100, 70, 0), figures("b", 20, 20, 0));
        assert_eq!(ranked(&a, &b, &["a", "b"]), ["b", "a"], "by delivery");
        // A lies ("delivered" for all) but its codes complete fewer logins.
        let (a, b) = (figures("a", 100, 100, 70), figures("b", 20, 20, 19));
        assert_eq!(ranked(&a, &b, &["a", "b"]), ["b", "a"], "by conversion");
    }

    #[test]
    fn the_leader_keeps_its_place_within_the_margin() {
        let (a, b) = (figures("a", 100, 93, 0), figures("b", 100, 96, 0));
        assert_eq!(
            ranked(&a, &b, &["a", "b"]),
            ["a", "b"],
            "3 points is within 5"
        );
        let (a, b) = (figures("a", 100, 90, 0), figures("b", 100, 96, 0));
        assert_eq!(
            ranked(&a, &b, &["a", "b"]),
            ["b", "a"],
            "6 points is past it"
        );
    }
}
