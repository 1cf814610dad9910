//! `[[routes]]`: E.164 prefix → ordered carriers; the longest matching prefix wins.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context;

use super::{CarrierHandle, test_numbers};
use crate::config::{RouteConfig, RouteOrder, TestNumberConfig};
use crate::domain::PrefixTable;

/// One route: its carriers as listed, its own sender, and its prefix when it orders its
/// carriers by measurement.
type Route = (Vec<Arc<CarrierHandle>>, Option<String>, Option<String>);

pub struct Routes {
    routes: PrefixTable<Route>,
    /// `[[test_numbers]]`, matched whole before any prefix: answered by their stand-in.
    test_numbers: HashMap<String, Vec<Arc<CarrierHandle>>>,
}

impl Routes {
    pub fn new(
        config: &[RouteConfig],
        numbers: &[TestNumberConfig],
        carriers: &HashMap<String, Arc<CarrierHandle>>,
    ) -> anyhow::Result<Self> {
        let routes = config
            .iter()
            .map(|route| {
                let handles = route
                    .carriers
                    .iter()
                    .map(|name| {
                        carriers
                            .get(name)
                            .cloned()
                            .with_context(|| format!("route names unknown carrier {name}"))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let measured = (route.order == RouteOrder::Measured).then(|| route.prefix.clone());
                Ok((
                    route.prefix.clone(),
                    (handles, route.sender.clone(), measured),
                ))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let test_numbers = match carriers.get(test_numbers::NAME) {
            Some(stand_in) => numbers
                .iter()
                .map(|t| (t.number.clone(), vec![stand_in.clone()]))
                .collect(),
            None => HashMap::new(),
        };
        Ok(Self {
            routes: PrefixTable::new(routes),
            test_numbers,
        })
    }

    /// The sender of the route `recipient` takes, if it has one.
    pub fn sender_for(&self, recipient: &str) -> Option<&str> {
        if self.test_numbers.contains_key(recipient) {
            return None;
        }
        self.routes.get(recipient)?.1.as_deref()
    }

    /// The prefix of the route `recipient` takes, when that route orders its carriers by
    /// measurement (`dispatch::measured`).
    pub fn measured_route(&self, recipient: &str) -> Option<&str> {
        if self.test_numbers.contains_key(recipient) {
            return None;
        }
        self.routes.get(recipient)?.2.as_deref()
    }

    /// The carriers for `recipient` (E.164), in the order to try them.
    pub fn carriers_for(&self, recipient: &str) -> &[Arc<CarrierHandle>] {
        if let Some(stand_in) = self.test_numbers.get(recipient) {
            return stand_in;
        }
        self.routes
            .get(recipient)
            .map(|(carriers, _, _)| carriers.as_slice())
            .unwrap_or_default()
    }
}
