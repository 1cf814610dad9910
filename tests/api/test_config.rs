//! The configuration of a test, built as a TOML table rather than by editing text: a key set
//! twice is set, not duplicated, and a key that is not where the test thinks it is fails the
//! test instead of leaving the configuration silently unchanged.

use std::fmt;

use toml::{Table, Value};

use crate::helpers::base_config;

#[derive(Debug, Clone)]
pub struct TestConfig(Table);

impl TestConfig {
    /// One signer, an admin token, the `log` carrier on the default route, ports chosen by the
    /// system: what every test starts from.
    pub fn base() -> Self {
        Self(
            base_config()
                .parse()
                .expect("the base configuration is TOML"),
        )
    }

    /// The base with a TOML fragment merged in.
    pub fn with(fragment: &str) -> Self {
        Self::base().merge(fragment)
    }

    /// `key` (dotted: `dispatch.workers`, `carriers.twilio.timeout_ms`) set to `value`; the
    /// tables on the way are created.
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> Self {
        let (table, last) = self.parent_of(key);
        table.insert(last.to_string(), value.into());
        self
    }

    /// `key` removed; it must be there.
    pub fn without(mut self, key: &str) -> Self {
        let (table, last) = self.parent_of(key);
        assert!(table.remove(last).is_some(), "{key} is not in the config");
        self
    }

    /// A TOML fragment merged in: its tables into ours key by key, its arrays of tables
    /// (`[[limits.ip]]`, `[[routes]]`) appended.
    pub fn merge(mut self, fragment: &str) -> Self {
        let fragment: Table = fragment.parse().expect("the fragment is TOML");
        merge_into(&mut self.0, fragment);
        self
    }

    /// A carrier table (as the stand-ins write it, `[carriers.<name>]` included) in place of
    /// the `log` carrier, and the default route sending through it alone.
    pub fn only_carrier(self, table: &str, name: &str) -> Self {
        self.only_carriers(table, &[name])
    }

    /// Carrier tables in place of the `log` carrier, the default route through `route`.
    pub fn only_carriers(self, tables: &str, route: &[&str]) -> Self {
        self.without("carriers.console")
            .merge(tables)
            .route("", route)
    }

    /// The base with these window limits: `(name, max, window_seconds)` each.
    pub fn with_limits(limits: &[(&str, u32, u32)]) -> Self {
        limits
            .iter()
            .fold(Self::base(), |config, &(name, max, window)| {
                config.limit(name, max, window)
            })
    }

    /// A window limit appended to `[[limits.<name>]]` (`ip`, `ingress_recipient`, `recipient`).
    pub fn limit(self, name: &str, max: u32, window_seconds: u32) -> Self {
        self.merge(&format!(
            "[[limits.{name}]]\nmax = {max}\nwindow_seconds = {window_seconds}\n"
        ))
    }

    /// The route for `prefix` sends through `carriers`, replacing any route of that prefix.
    pub fn route(mut self, prefix: &str, carriers: &[&str]) -> Self {
        let routes = self
            .0
            .entry("routes")
            .or_insert_with(|| Value::Array(Vec::new()))
            .as_array_mut()
            .expect("routes is an array");
        routes.retain(|route| route.get("prefix").and_then(Value::as_str) != Some(prefix));
        let mut route = Table::new();
        route.insert("prefix".into(), prefix.into());
        route.insert("carriers".into(), carriers.to_vec().into());
        routes.push(Value::Table(route));
        self
    }

    /// `key` of the route for `prefix` set to `value` (`order`, `explore`, …).
    pub fn route_setting(mut self, prefix: &str, key: &str, value: impl Into<Value>) -> Self {
        let route = self
            .0
            .get_mut("routes")
            .and_then(Value::as_array_mut)
            .and_then(|routes| {
                routes
                    .iter_mut()
                    .find(|r| r.get("prefix").and_then(Value::as_str) == Some(prefix))
            })
            .and_then(Value::as_table_mut)
            .unwrap_or_else(|| panic!("no route for {prefix:?}"));
        route.insert(key.to_string(), value.into());
        self
    }

    /// The route for `prefix` removed.
    pub fn without_route(mut self, prefix: &str) -> Self {
        if let Some(routes) = self.0.get_mut("routes").and_then(Value::as_array_mut) {
            routes.retain(|route| route.get("prefix").and_then(Value::as_str) != Some(prefix));
        }
        self
    }

    fn parent_of<'a>(&mut self, key: &'a str) -> (&mut Table, &'a str) {
        let mut parts: Vec<&str> = key.split('.').collect();
        let last = parts.pop().expect("a key");
        let mut table = &mut self.0;
        for part in parts {
            table = table
                .entry(part)
                .or_insert_with(|| Value::Table(Table::new()))
                .as_table_mut()
                .unwrap_or_else(|| panic!("{part} of {key} is not a table"));
        }
        (table, last)
    }
}

fn merge_into(ours: &mut Table, theirs: Table) {
    for (key, value) in theirs {
        match (ours.get_mut(&key), value) {
            (Some(Value::Table(mine)), Value::Table(more)) => merge_into(mine, more),
            (Some(Value::Array(mine)), Value::Array(more))
                if more.iter().all(Value::is_table) && mine.iter().all(Value::is_table) =>
            {
                mine.extend(more)
            }
            (_, value) => {
                ours.insert(key, value);
            }
        }
    }
}

impl fmt::Display for TestConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&toml::to_string(&self.0).map_err(|_| fmt::Error)?)
    }
}
