//! The pool as smsgate uses it, directly or behind a transaction pooler (PgBouncer,
//! `pool_mode = transaction`).
//!
//! A transaction pooler lends a server connection for one transaction and takes it back at
//! the next idle moment. Three things follow (docs/design.md, "Behind a transaction pooler"):
//! - sqlx sends a parameterised statement in two round trips (prepare, then execute), and
//!   outside a transaction the pooler may run the halves on different servers: every
//!   statement runs inside BEGIN/COMMIT;
//! - a named prepared statement outlives the transaction on a server other clients share,
//!   where another client's statement of the same name collides with it: statements are
//!   unnamed (`persistent(false)`) and the statement cache is off;
//! - session settings would leak to other clients: the timeouts are `SET LOCAL` in each
//!   transaction instead of startup `options`;
//! - a lent session may carry a LISTEN another client left on it, and a notification arriving
//!   at our commit breaks sqlx's reading of the answer (after the commit took effect): each
//!   transaction starts with `UNLISTEN *`, which takes effect at our commit, before any
//!   notification would be delivered;
//! - BEGIN is where a client waits for a server session, so it is the step most often cut
//!   short by a caller giving up: it runs on a task of its own, so a BEGIN that completes after
//!   its caller left is rolled back instead of leaving the server session idle in a
//!   transaction (pinned until `idle_in_transaction_session_timeout`).
//!
//! [`Db`] and [`Tx`] are sqlx executors that apply this when pooling is on and cost nothing
//! when it is off, so the queries in `db::*` are written once for both.

use std::fmt;
use std::ops::DerefMut;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgQueryResult, PgRow, PgStatement, PgTypeInfo};
use sqlx::{Describe, Either, Execute, Executor, PgConnection, PgPool, Postgres, Transaction};

/// How the connections reach PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Each connection is a server session of its own.
    Direct,
    /// Through a transaction pooler: nothing may outlive a transaction.
    TransactionPooler,
}

/// The pool and how to use it.
#[derive(Clone)]
pub struct Db {
    pool: PgPool,
    reach: Reach,
    /// BEGIN plus the per-transaction settings, when they cannot be session settings.
    begin: Option<String>,
    usage: super::pool_use::PoolUse,
}

impl fmt::Debug for Db {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Db").field("reach", &self.reach).finish()
    }
}

/// For transactions that read and write the rows of a batch's keys (window counts, spend
/// totals): every statement is a look-up by key. Prepared statements get generic plans, made
/// once from the statistics of the moment: planned on a near-empty table (a fresh database,
/// after a sweep) an `UPDATE … FROM unnest(…)` becomes a hash join over a sequential scan,
/// whose cost then grows with the table. Index look-ups are always right here.
const BY_KEY: &str = "SET LOCAL enable_seqscan = off; SET LOCAL enable_hashjoin = off; \
                      SET LOCAL enable_mergejoin = off";

impl Db {
    /// A pool whose connections are sessions of their own.
    pub fn direct(pool: PgPool) -> Self {
        Self {
            pool,
            reach: Reach::Direct,
            begin: None,
            usage: Default::default(),
        }
    }

    /// A pool behind a transaction pooler; `settings` are applied to every transaction.
    pub fn behind_pooler(pool: PgPool, settings: &[(&str, &str)]) -> Self {
        let mut begin = String::from("BEGIN; UNLISTEN *");
        for (name, value) in settings {
            // Constants of ours; quoted anyway.
            begin.push_str(&format!(
                "; SET LOCAL {name} = '{}'",
                value.replace('\'', "''")
            ));
        }
        Self {
            pool,
            reach: Reach::TransactionPooler,
            begin: Some(begin),
            usage: Default::default(),
        }
    }

    pub fn reach(&self) -> Reach {
        self.reach
    }

    /// The underlying pool, for its statistics and for closing it; queries go through `self`.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Waits for connections and their times, for the metrics.
    pub fn usage(&self) -> &super::pool_use::PoolUse {
        &self.usage
    }

    /// A transaction (with the per-transaction settings behind a pooler).
    pub async fn begin(&self) -> Result<Tx<'static>, sqlx::Error> {
        self.begin_as(self.begin.clone()).await
    }

    /// A transaction whose lock waits give up after `lock_wait` (lock_not_available): the
    /// setting travels in the BEGIN message, so it costs no round trip of its own.
    pub async fn begin_waiting_at_most(
        &self,
        lock_wait: std::time::Duration,
    ) -> Result<Tx<'static>, sqlx::Error> {
        let ms = lock_wait.as_millis().clamp(1, 3_600_000);
        let begin = self.begin.as_deref().unwrap_or("BEGIN");
        self.begin_as(Some(format!(
            "{begin}; SET LOCAL lock_timeout = '{ms}ms'; {BY_KEY}"
        )))
        .await
    }

    /// A transaction whose commit does not wait for its WAL flush, for a short reservation
    /// that a later, flushed commit depends on: WAL is flushed in order, so that later commit
    /// is never durable without this one (a crash can lose both, never only this one). Its
    /// locks are released without waiting for the disk.
    pub async fn begin_without_flush_wait(&self) -> Result<Tx<'static>, sqlx::Error> {
        let begin = self.begin.as_deref().unwrap_or("BEGIN");
        self.begin_as(Some(format!(
            "{begin}; SET LOCAL synchronous_commit = off; {BY_KEY}"
        )))
        .await
    }

    async fn begin_as(&self, statement: Option<String>) -> Result<Tx<'static>, sqlx::Error> {
        self.usage.timed(self.begin_untimed(statement)).await
    }

    async fn begin_untimed(&self, statement: Option<String>) -> Result<Tx<'static>, sqlx::Error> {
        let transaction = match statement {
            Some(begin) => {
                // Not cancelled with its caller: see the module's notes.
                let pool = self.pool.clone();
                tokio::spawn(async move { pool.begin_with(sqlx::AssertSqlSafe(begin)).await })
                    .await
                    .map_err(|_| sqlx::Error::WorkerCrashed)??
            }
            None => self.pool.begin().await?,
        };
        Ok(Tx {
            held: Held::Transaction(transaction),
            reach: self.reach,
        })
    }

    /// A connection for a single statement that commits on its own: a plain connection when
    /// direct (no BEGIN/COMMIT round trips), a transaction behind a pooler.
    pub async fn for_one_statement(&self) -> Result<Tx<'static>, sqlx::Error> {
        match self.reach {
            Reach::Direct => Ok(Tx {
                held: Held::Connection(self.usage.timed(self.pool.acquire()).await?),
                reach: self.reach,
            }),
            Reach::TransactionPooler => self.begin().await,
        }
    }
}

/// A transaction, or (from [`Db::for_one_statement`], direct) a plain connection.
pub struct Tx<'c> {
    held: Held<'c>,
    reach: Reach,
}

enum Held<'c> {
    Connection(PoolConnection<Postgres>),
    Transaction(Transaction<'c, Postgres>),
}

impl fmt::Debug for Tx<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tx").field("reach", &self.reach).finish()
    }
}

impl Tx<'_> {
    /// A transaction inside this one (a savepoint), or the transaction a plain connection
    /// lacked; it ends with its own `commit` or is rolled back when dropped.
    pub async fn nested(&mut self) -> Result<Tx<'_>, sqlx::Error> {
        let reach = self.reach;
        let transaction = sqlx::Connection::begin(self.connection()).await?;
        Ok(Tx {
            held: Held::Transaction(transaction),
            reach,
        })
    }

    /// Commits (a plain connection has nothing to commit).
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        match self.held {
            Held::Connection(_) => Ok(()),
            Held::Transaction(transaction) => transaction.commit().await,
        }
    }

    fn connection(&mut self) -> &mut PgConnection {
        match &mut self.held {
            Held::Connection(connection) => connection.deref_mut(),
            Held::Transaction(transaction) => transaction.deref_mut(),
        }
    }
}

/// A query as the reach allows it: never a named (cached) statement behind a pooler.
struct Prepared<E> {
    query: E,
    named: bool,
}

impl<'q, E: Execute<'q, Postgres>> Execute<'q, Postgres> for Prepared<E> {
    fn sql(self) -> sqlx::SqlStr {
        self.query.sql()
    }

    fn statement(&self) -> Option<&PgStatement> {
        self.query.statement()
    }

    fn take_arguments(
        &mut self,
    ) -> Result<Option<sqlx::postgres::PgArguments>, sqlx::error::BoxDynError> {
        self.query.take_arguments()
    }

    fn persistent(&self) -> bool {
        self.named && self.query.persistent()
    }
}

fn prepared<E>(query: E, reach: Reach) -> Prepared<E> {
    Prepared {
        query,
        named: reach == Reach::Direct,
    }
}

type Fetched = Either<PgQueryResult, PgRow>;

impl<'t, 'c> Executor<'t> for &'t mut Tx<'c> {
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(self, query: E) -> BoxStream<'e, Result<Fetched, sqlx::Error>>
    where
        't: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        let reach = self.reach;
        self.connection().fetch_many(prepared(query, reach))
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, Result<Option<PgRow>, sqlx::Error>>
    where
        't: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        let reach = self.reach;
        self.connection().fetch_optional(prepared(query, reach))
    }

    fn prepare_with<'e>(
        self,
        sql: sqlx::SqlStr,
        parameters: &'e [PgTypeInfo],
    ) -> BoxFuture<'e, Result<PgStatement, sqlx::Error>>
    where
        't: 'e,
    {
        self.connection().prepare_with(sql, parameters)
    }

    fn describe<'e>(
        self,
        sql: sqlx::SqlStr,
    ) -> BoxFuture<'e, Result<Describe<Postgres>, sqlx::Error>>
    where
        't: 'e,
    {
        self.connection().describe(sql)
    }
}

impl<'d> Executor<'d> for &'_ Db {
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(self, query: E) -> BoxStream<'e, Result<Fetched, sqlx::Error>>
    where
        'd: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        if self.reach == Reach::Direct {
            return self.pool.fetch_many(query);
        }
        // One statement, one transaction: the results are gathered before the COMMIT.
        let db = self.clone();
        futures_util::stream::once(async move {
            let mut tx = db.begin().await?;
            let fetched: Vec<Fetched> = (&mut tx).fetch_many(query).try_collect().await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(futures_util::stream::iter(fetched.into_iter().map(Ok)))
        })
        .try_flatten()
        .boxed()
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, Result<Option<PgRow>, sqlx::Error>>
    where
        'd: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        if self.reach == Reach::Direct {
            return self.pool.fetch_optional(query);
        }
        // The statement in its own transaction, as `fetch_many` runs it: its first row.
        let rows = self.fetch_many(query);
        Box::pin(async move {
            let rows: Vec<Fetched> = rows.try_collect().await?;
            Ok(rows.into_iter().find_map(|fetched| fetched.right()))
        })
    }

    fn prepare_with<'e>(
        self,
        sql: sqlx::SqlStr,
        parameters: &'e [PgTypeInfo],
    ) -> BoxFuture<'e, Result<PgStatement, sqlx::Error>>
    where
        'd: 'e,
    {
        // A prepared statement object is a session's: smsgate never keeps one, and behind a
        // pooler it would outlive its transaction.
        if self.reach == Reach::TransactionPooler {
            return Box::pin(async { Err(sqlx::Error::Protocol(POOLED_PREPARE.into())) });
        }
        self.pool.prepare_with(sql, parameters)
    }

    fn describe<'e>(
        self,
        sql: sqlx::SqlStr,
    ) -> BoxFuture<'e, Result<Describe<Postgres>, sqlx::Error>>
    where
        'd: 'e,
    {
        if self.reach == Reach::TransactionPooler {
            return Box::pin(async { Err(sqlx::Error::Protocol(POOLED_PREPARE.into())) });
        }
        self.pool.describe(sql)
    }
}

const POOLED_PREPARE: &str = "statements are not prepared ahead behind a transaction pooler";
