//! `[[routes]]`: E.164 prefix → ordered carriers; the longest matching prefix wins.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context;

use super::CarrierHandle;
use crate::config::RouteConfig;

pub struct Routes {
    /// Longest prefix first, so the first match is the best one.
    routes: Vec<(String, Vec<Arc<CarrierHandle>>)>,
}

impl Routes {
    pub fn new(
        config: &[RouteConfig],
        carriers: &HashMap<String, Arc<CarrierHandle>>,
    ) -> anyhow::Result<Self> {
        let mut routes = config
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
                Ok((route.prefix.clone(), handles))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        routes.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        Ok(Self { routes })
    }

    /// The carriers for `recipient` (E.164), in the order to try them.
    pub fn carriers_for(&self, recipient: &str) -> &[Arc<CarrierHandle>] {
        self.routes
            .iter()
            .find(|(prefix, _)| recipient.starts_with(prefix.as_str()))
            .map(|(_, carriers)| carriers.as_slice())
            .unwrap_or_default()
    }
}
