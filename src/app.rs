//! Wiring: database, state, listener. `App::build` binds (port 0 works for tests) and
//! `App::run` serves until the shutdown token is cancelled.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::db::Db;
use anyhow::Context;
use sqlx::postgres::PgConnectOptions;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth0::Verifier;
use crate::config::{Config, DatabaseConfig};
use crate::db;
use crate::db::batcher::Batcher;
use crate::db::embedded::{Durability, EmbeddedPostgres};
use crate::dispatch::Dispatcher;
use crate::dispatch::measured::MeasuredOrders;
use crate::dispatch::route_measure::RouteMeasure;
use crate::dispatch::wake::{Wake, run_notifier};
use crate::http::server::ConnectionLimits;
use crate::http::{self, AppHandles, AppState, InFlight, MetricsState, metrics_router};
use crate::limits::destinations::DestinationPolicy;
use crate::limits::ingress::IngressLimits;
use crate::limits::pricing::Pricing;
use crate::metrics::Metrics;

/// The database the embedded cluster serves smsgate from.
const EMBEDDED_DATABASE: &str = "smsgate";

/// Why migrations cannot run behind a transaction pooler alone.
pub const NO_SESSION: &str = "migrations need a session on PostgreSQL itself, which a transaction \
                          pooler does not give: set database.direct_url";

/// An open pool, and the embedded cluster behind it when we started one.
pub struct Database {
    pub pool: Db,
    /// PostgreSQL itself, for migrations and LISTEN; none behind a pooler without
    /// `database.direct_url`.
    session: Option<PgConnectOptions>,
    embedded: Option<EmbeddedPostgres>,
}

impl Database {
    /// Connects to `database.url` / `DATABASE_URL`, or to the embedded cluster when empty:
    /// starting it, or connecting to the one another process runs (operator commands).
    pub async fn open(config: &DatabaseConfig) -> anyhow::Result<Self> {
        Self::open_as(config, false).await
    }

    /// As [`Database::open`], but the embedded cluster must be this process's own: a gateway
    /// waits until no other process holds it.
    pub async fn open_owned(config: &DatabaseConfig) -> anyhow::Result<Self> {
        Self::open_as(config, true).await
    }

    async fn open_as(config: &DatabaseConfig, owned: bool) -> anyhow::Result<Self> {
        if !config.url.is_empty() {
            let options = db::options_from_url("database.url", config.url.expose())?;
            let session = Self::session_options_for(config)?;
            let pool = db::connect(options, config).await?;
            return Ok(Self {
                pool,
                session,
                embedded: None,
            });
        }
        let home = config.data_dir.clone();
        let embedded = tokio::task::spawn_blocking(move || {
            if owned {
                EmbeddedPostgres::start_owned(&home, Durability::Durable)
            } else {
                EmbeddedPostgres::start(&home, Durability::Durable)
            }
        })
        .await
        .context("embedded PostgreSQL start-up panicked")??;
        tracing::info!(url = %embedded.url(EMBEDDED_DATABASE), "embedded PostgreSQL is running");
        let bootstrap = db::connect(embedded.connect_options("postgres"), config).await?;
        db::ensure_database(&bootstrap, EMBEDDED_DATABASE).await?;
        bootstrap.pool().close().await;
        let session = embedded.connect_options(EMBEDDED_DATABASE);
        let pool = db::connect(session.clone(), config).await?;
        Ok(Self {
            pool,
            session: Some(session),
            embedded: Some(embedded),
        })
    }

    /// True when the embedded cluster belongs to another process: this one only connects.
    pub fn is_embedded_guest(&self) -> bool {
        self.embedded.as_ref().is_some_and(|e| !e.is_owner())
    }

    /// Where migrations and LISTEN reach PostgreSQL itself, when they can.
    pub fn session_options(&self) -> Option<&PgConnectOptions> {
        self.session.as_ref()
    }

    /// PostgreSQL itself for an external database: `direct_url`, else `url` unless that is
    /// a transaction pooler (then none).
    pub fn session_options_for(
        config: &DatabaseConfig,
    ) -> anyhow::Result<Option<PgConnectOptions>> {
        let (key, url) = if !config.direct_url.is_empty() {
            ("database.direct_url", &config.direct_url)
        } else if config.transaction_pooling {
            return Ok(None);
        } else {
            ("database.url", &config.url)
        };
        db::options_from_url(key, url.expose()).map(Some)
    }

    /// Applies pending migrations on a session of their own.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        db::migrate(self.session.as_ref().context(NO_SESSION)?).await
    }

    /// Closes the pool, then stops the embedded cluster if we started it.
    pub async fn close(self) {
        self.pool.pool().close().await;
        // The cluster says "stopping" itself, and only when it is this process's to stop.
        if let Some(embedded) = self.embedded
            && tokio::task::spawn_blocking(move || embedded.stop())
                .await
                .is_err()
        {
            tracing::warn!("stopping embedded PostgreSQL panicked");
        }
    }
}

/// Which parts of smsgate a process runs; operators scale ingress and workers apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    /// Accept messages over HTTP only.
    Ingress,
    /// Dispatch messages only (health endpoints stay up).
    Worker,
    #[default]
    All,
}

impl Role {
    fn ingress(self) -> bool {
        matches!(self, Role::Ingress | Role::All)
    }

    fn workers(self) -> bool {
        matches!(self, Role::Worker | Role::All)
    }
}

/// A built gateway: bound, connected, not yet serving.
pub struct App {
    listener: TcpListener,
    metrics_listener: TcpListener,
    admin_listener: Option<TcpListener>,
    state: AppState,
    database: Database,
    config: Config,
    role: Role,
    /// The carrier order of measured routes, refreshed from the measurements.
    measured: Arc<MeasuredOrders>,
}

impl App {
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        Self::build_with_role(config, Role::All).await
    }

    pub async fn build_with_role(config: &Config, role: Role) -> anyhow::Result<Self> {
        for warning in config.warnings() {
            tracing::warn!("{warning}");
        }
        let warming = tokio::task::spawn_blocking(crate::domain::warm_up);
        let database = Database::open_owned(&config.database).await?;
        warming.await?;
        if database.is_embedded_guest() {
            // It would lose its database whenever the owner stops: one gateway per embedded
            // cluster (operator commands may still connect beside it).
            anyhow::bail!(
                "database.data_dir {} is the embedded database of another running smsgate; \
                 run one gateway per embedded database, or use an external PostgreSQL \
                 (database.url) for several",
                config.database.data_dir.display()
            );
        }
        if config.database.migrate_on_start {
            database.migrate().await?;
        }
        let state = app_state(config, role, &database)?;
        let (listener, metrics_listener, admin_listener) = bind_listeners(config).await?;
        let measured = MeasuredOrders::new(config, &state.metrics);
        Ok(Self {
            listener,
            metrics_listener,
            admin_listener,
            state,
            database,
            config: config.clone(),
            role,
            measured,
        })
    }

    /// The task that adds this process's route measurements and exports the window.
    fn route_measure(&self) -> RouteMeasure {
        RouteMeasure {
            pool: self.database.pool.clone(),
            stats: self.state.route_stats.clone(),
            metrics: self.state.metrics.clone(),
            window_seconds: self.config.dispatch.route_stats_window_seconds.get(),
            settle_seconds: self.config.dispatch.message_ttl_seconds,
            measured: self.measured.clone(),
        }
    }

    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    pub fn metrics_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.metrics_listener.local_addr()?)
    }

    /// The admin listener's address, when `admin.listen` is set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_listener.as_ref()?.local_addr().ok()
    }

    /// Serves (and dispatches, by role) until `shutdown` is cancelled; then lets in-flight
    /// requests and sends finish, and closes the database (stopping the embedded cluster).
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let address = self.local_addr()?;
        let pool = self.database.pool.clone();
        let wake = self.state.wake.clone();
        let mut background = tokio::task::JoinSet::new();
        if self.role.ingress() {
            let interval = self.config.dispatch.notify_interval_ms.duration();
            background.spawn(run_notifier(
                pool.clone(),
                wake.clone(),
                interval,
                shutdown.clone(),
            ));
        }
        background.spawn(self.route_measure().run(shutdown.clone()));
        let dispatcher = if self.role.workers() {
            let metrics = self.state.metrics.clone();
            Some(
                Dispatcher::start(
                    &self.config,
                    pool.clone(),
                    self.database.session_options().cloned(),
                    wake,
                    metrics,
                    (self.state.route_stats.clone(), self.measured.clone()),
                    shutdown.clone(),
                )
                .await?,
            )
        } else {
            None
        };
        let metrics_state = MetricsState::new(
            self.state.metrics.clone(),
            pool,
            self.state.in_flight.clone(),
            self.state.readiness.clone(),
        );
        let metrics_server = axum::serve(self.metrics_listener, metrics_router(metrics_state))
            .with_graceful_shutdown(shutdown.clone().cancelled_owned());
        background.spawn(async move {
            if let Err(err) = metrics_server.await {
                tracing::error!(error = %err, "metrics listener failed");
            }
        });
        tracing::info!(%address, role = ?self.role, "smsgate is listening");
        let limits = ConnectionLimits::new(&self.config.server);
        let request_timeout = self.config.server.request_timeout_ms.duration();
        if let Some(listener) = self.admin_listener {
            let admin = http::harden(http::admin_router(self.state.clone()), request_timeout);
            // The public listener's defences (header timeout and size, connection cap) on the
            // admin one too: a slow client must not hold it open either.
            let admin_server = http::server::serve(listener, admin, limits, shutdown.clone());
            background.spawn(admin_server);
        }
        let admin_apart = self.config.admin.listen.is_some();
        let batcher = self.state.batcher.clone();
        let route_stats = self.state.route_stats.clone();
        let router = http::public_router(self.state, admin_apart, request_timeout);
        let server = http::server::serve(self.listener, router, limits, shutdown.clone());
        let workers = async {
            if let Some(dispatcher) = dispatcher {
                shutdown.cancelled().await;
                dispatcher.stop().await;
            }
        };
        tokio::join!(server, workers);
        batcher.give_back_slices().await;
        background.abort_all();
        // The counts of the last sends and receipts, which the measuring task may not have had
        // the time to add.
        if let Err(err) = route_stats.flush(&self.database.pool).await {
            tracing::warn!(error = %err, "the last route measurements could not be added");
        }
        self.database.close().await;
        Ok(())
    }
}

/// What every request handler shares.
fn app_state(config: &Config, role: Role, database: &Database) -> anyhow::Result<AppState> {
    let verifier = Verifier::new(&config.auth0);
    if verifier.is_empty() {
        tracing::warn!("no [auth0.*] signer: accepting unauthenticated requests");
    }
    let metrics = Metrics::new(config).context("cannot register metrics")?;
    metrics.add(Box::new(database.pool.usage().acquire_histogram()));
    let limits = IngressLimits::new(&config.limits, &config.spend);
    let destinations = DestinationPolicy::new(&config.destinations);
    let state = AppState::new(AppHandles {
        pool: database.pool.clone(),
        accept_unsigned: verifier.is_empty() && config.server.allow_unauthenticated,
        verifier: Arc::new(verifier),
        admin_token: config.admin.token.clone().map(Arc::new),
        message_ttl_seconds: config.dispatch.message_ttl_seconds,
        wake: Wake::default(),
        accept_messages: role.ingress(),
        metrics,
        batcher: Batcher::start(
            database.pool.clone(),
            config.dispatch.message_ttl_seconds,
            config.database.ingress_writers.get(),
            limits.clone(),
        ),
        need_country: limits.need_country() || destinations.monitors(),
        spend: limits.spend,
        config: Arc::new(config.clone()),
        destinations: Arc::new(destinations),
        pricing: Arc::new(Pricing::new(config)),
        require_request_info: config.server.require_request_info,
        in_flight: InFlight::new(
            config.auth0.keys().map(String::as_str),
            config.limits.max_in_flight,
        ),
        store_wait: config.database.acquire_timeout_ms.duration(),
        callbacks: http::callbacks::CallbackKeys::new(config),
        carriers: Arc::new(config.carriers.keys().cloned().collect()),
        readiness: Arc::default(),
        route_stats: Default::default(),
    });
    Ok(state)
}

/// The public, metrics and (when set) admin listeners.
async fn bind_listeners(
    config: &Config,
) -> anyhow::Result<(TcpListener, TcpListener, Option<TcpListener>)> {
    let listener = TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("cannot listen on server.listen {}", config.server.listen))?;
    let metrics_listener = TcpListener::bind(config.metrics.listen)
        .await
        .with_context(|| format!("cannot listen on metrics.listen {}", config.metrics.listen))?;
    let admin_listener = match config.admin.listen {
        Some(address) => Some(
            TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot listen on admin.listen {address}"))?,
        ),
        None => None,
    };
    Ok((listener, metrics_listener, admin_listener))
}
