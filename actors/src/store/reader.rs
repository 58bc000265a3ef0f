//! `StoreReader`: blocking reads on a SyncArbiter, so no async thread waits for the disk.
//!
//! Owns nothing but the pool; a restart loses nothing. The rest of the broker reads through
//! [`Reads`], whose methods are the store's read operations: no code outside the store
//! names a connection.

use std::future::Future;
use std::sync::Arc;

use actix::prelude::*;
use diesel::pg::PgConnection;
use diesel::r2d2::{ConnectionManager, Pool, R2D2Connection};
use diesel::sqlite::SqliteConnection;

use super::credentials_sql::ApiKeyRow;
use super::health::DatabaseHealth;
use super::models::{GroupRow, Page, SearchQuery, StateDoc, StoredMessage, SyncPlan};
use super::sealing::Sealer;
use super::sqlite::channel_index::ChannelIndex;
use super::sqlite::queries;
use super::{postgres, StoreError};
use crate::health::{ActorHealth, Probe};
use crate::seq::Seq;

type Work<C, R> = Box<dyn FnOnce(&mut C) -> Result<R, StoreError> + Send>;

/// A read to run on a pooled connection of type `C`.
pub struct Query<C, R: Send + 'static>(pub Work<C, R>);

impl<C: 'static, R: Send + 'static> Message for Query<C, R> {
    type Result = Result<R, StoreError>;
}

/// One of the reader threads, over a pool of `C` connections.
pub struct StoreReader<C: R2D2Connection + 'static> {
    /// The shared pool.
    pub pool: Pool<ConnectionManager<C>>,
    /// Shared by every reader thread.
    pub health: Arc<ActorHealth>,
    /// Whether the database answers, shared with the writers.
    pub database: Arc<DatabaseHealth>,
}

impl<C: R2D2Connection + 'static> StoreReader<C> {
    /// Starts `threads` reader threads on `pool`, sharing `health` and `database`.
    pub fn start(
        threads: usize,
        pool: Pool<ConnectionManager<C>>,
        health: Arc<ActorHealth>,
        database: Arc<DatabaseHealth>,
    ) -> Addr<Self> {
        SyncArbiter::start(threads.max(1), move || StoreReader {
            pool: pool.clone(),
            health: health.clone(),
            database: database.clone(),
        })
    }
}

impl<C: R2D2Connection + 'static> Actor for StoreReader<C> {
    type Context = SyncContext<Self>;
}

impl<C: R2D2Connection + 'static, R: Send + 'static> Handler<Query<C, R>> for StoreReader<C> {
    type Result = Result<R, StoreError>;
    fn handle(&mut self, q: Query<C, R>, _: &mut SyncContext<Self>) -> Self::Result {
        self.health.handled();
        let done = self
            .pool
            .get()
            .map_err(StoreError::from)
            .and_then(|mut conn| (q.0)(&mut conn));
        match &done {
            Ok(_) => self.database.ok(),
            Err(e) => self.database.failed(e),
        }
        done
    }
}

impl<C: R2D2Connection + 'static> Handler<Probe> for StoreReader<C> {
    type Result = u64;
    fn handle(&mut self, _: Probe, _: &mut SyncContext<Self>) -> u64 {
        self.health.handled_count()
    }
}

/// What [`Reads::channel_start`] finds.
#[derive(Debug, Clone)]
pub struct ChannelStart {
    /// The channel's last seq (0 when empty).
    pub head: Seq,
    /// For a group channel: its members, or `None` if the group does not exist.
    pub members: Option<Option<Vec<String>>>,
    /// The last seq stored before the time asked for (the head when not asked).
    pub settled: Seq,
}

/// A channel's messages stored lately ([`Reads::stored_since`]).
#[derive(Debug, Clone)]
pub struct StoredSince {
    /// The channel's name.
    pub channel: String,
    /// The seq before the first of them.
    pub after: Seq,
    /// The last of them.
    pub head: Seq,
}

/// A cheap handle for running reads from async code: the store's read operations, each
/// answered by the backend's own queries.
#[derive(Clone)]
pub enum Reads {
    /// SQLite readers, and the writer's places of recent messages (reads by seq look in
    /// memory first).
    Sqlite {
        /// The reader threads.
        addr: Addr<StoreReader<SqliteConnection>>,
        /// The writer's channel index.
        index: ChannelIndex,
        /// Opens sealed payloads and documents (encryption at rest).
        sealer: Option<Arc<Sealer>>,
    },
    /// PostgreSQL readers.
    Postgres {
        /// The reader threads.
        addr: Addr<StoreReader<PgConnection>>,
        /// Opens sealed payloads and documents (encryption at rest).
        sealer: Option<Arc<Sealer>>,
    },
}

/// Sends `f` to `addr`'s reader threads.
fn run<C, R, F>(
    addr: &Addr<StoreReader<C>>,
    f: F,
) -> impl Future<Output = Result<R, StoreError>> + 'static
where
    C: R2D2Connection + 'static,
    R: Send + 'static,
    F: FnOnce(&mut C) -> Result<R, StoreError> + Send + 'static,
{
    let req = addr.send(Query(Box::new(f)));
    async move { req.await.map_err(|_| StoreError::StoreGone)? }
}

/// Runs query `$f`, which both backends' `queries` modules define alike, on `$reads`'
/// reader threads.
macro_rules! on_either_backend {
    ($reads:expr, $f:ident ( $($arg:expr),* )) => {{
        let fut: std::pin::Pin<Box<dyn Future<Output = _>>> = match $reads {
            Reads::Sqlite { addr, .. } => {
                Box::pin(run(addr, move |c| Ok(queries::$f(c, $($arg),*)?)))
            }
            Reads::Postgres { addr, .. } => {
                Box::pin(run(addr, move |c| Ok(postgres::queries::$f(c, $($arg),*)?)))
            }
        };
        fut
    }};
}

impl Reads {
    /// The SQLite writer's places of recent messages, for `/status`.
    pub fn index(&self) -> Option<&ChannelIndex> {
        match self {
            Reads::Sqlite { index, .. } => Some(index),
            Reads::Postgres { .. } => None,
        }
    }

    /// A page of `channel`'s history, and whether more lie beyond it.
    pub fn history(
        &self,
        channel: String,
        page: Page,
    ) -> impl Future<Output = Result<(Vec<StoredMessage>, bool), StoreError>> + 'static {
        let sealer = self.sealer().cloned();
        let fut: std::pin::Pin<Box<dyn Future<Output = _>>> = match self {
            Reads::Sqlite { addr, index, .. } => {
                let index = index.clone();
                Box::pin(run(addr, move |c| {
                    // Memory first, then the table (store::sqlite::channel_index).
                    let recent = index.recent(&channel);
                    let (mut rows, more) = queries::history(c, &channel, &recent, page)?;
                    if let Some(s) = &sealer {
                        s.open_rows(&mut rows)?;
                    }
                    Ok((rows, more))
                }))
            }
            Reads::Postgres { addr, .. } => Box::pin(run(addr, move |c| {
                let (mut rows, more) = postgres::queries::history(c, &channel, page)?;
                if let Some(s) = &sealer {
                    s.open_rows(&mut rows)?;
                }
                Ok((rows, more))
            })),
        };
        fut
    }

    /// The sealer of encryption at rest, when it is on.
    pub fn sealer(&self) -> Option<&Arc<Sealer>> {
        match self {
            Reads::Sqlite { sealer, .. } | Reads::Postgres { sealer, .. } => sealer.as_ref(),
        }
    }

    /// The documents of `user`'s `collection` written after revision `since` (at most
    /// `limit`, oldest first), and the collection's revision now.
    pub fn state_since(
        &self,
        user: String,
        collection: String,
        since: i64,
        limit: i64,
    ) -> impl Future<Output = Result<(Vec<StateDoc>, i64), StoreError>> + 'static {
        let sealer = self.sealer().cloned();
        let fut: std::pin::Pin<Box<dyn Future<Output = _>>> = match self {
            Reads::Sqlite { addr, .. } => Box::pin(run(addr, move |c| {
                Ok(queries::state_since(c, &user, &collection, since, limit)?)
            })),
            Reads::Postgres { addr, .. } => Box::pin(run(addr, move |c| {
                Ok(postgres::queries::state_since(
                    c,
                    &user,
                    &collection,
                    since,
                    limit,
                )?)
            })),
        };
        async move {
            let (mut docs, revision) = fut.await?;
            if let Some(s) = &sealer {
                s.open_docs(docs.iter_mut())?;
            }
            Ok((docs, revision))
        }
    }

    /// Names of the channels `user` may read (DM names may include others; see
    /// `queries::readable_channels`).
    pub fn readable_channels(
        &self,
        user: String,
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + 'static {
        let fut: std::pin::Pin<Box<dyn Future<Output = _>>> = match self {
            Reads::Sqlite { addr, .. } => Box::pin(run(addr, move |c| {
                Ok(queries::readable_channels(c, &user)?)
            })),
            Reads::Postgres { addr, .. } => Box::pin(run(addr, move |c| {
                Ok(postgres::queries::readable_channels(c, &user)?)
            })),
        };
        fut
    }

    /// What `sync` of device `client_id` of `user` starts from: the user's channels that
    /// hold messages (not broadcasts), each with its last seq and the device's cursor.
    pub fn sync_plan(
        &self,
        user: String,
        client_id: String,
    ) -> impl Future<Output = Result<SyncPlan, StoreError>> + 'static {
        let fut: std::pin::Pin<Box<dyn Future<Output = _>>> = match self {
            Reads::Sqlite { addr, index, .. } => {
                let index = index.clone();
                Box::pin(run(addr, move |c| {
                    let names = queries::readable_channels(c, &user)?;
                    let cursors = queries::delivery_cursors(c, &user, &client_id)?;
                    plan(names, cursors, &user, |name| Ok(index.head_seq(c, name)?.0))
                }))
            }
            Reads::Postgres { addr, .. } => Box::pin(run(addr, move |c| {
                let names = postgres::queries::readable_channels(c, &user)?;
                let cursors = postgres::queries::delivery_cursors(c, &user, &client_id)?;
                plan(names, cursors, &user, |name| {
                    Ok(postgres::queries::head_seq(c, name)?)
                })
            })),
        };
        fut
    }

    /// The furthest any device of `user` has marked `channel` delivered (0: none).
    pub fn max_delivered(
        &self,
        user: String,
        channel: String,
    ) -> impl Future<Output = Result<i64, StoreError>> + 'static {
        let fut: std::pin::Pin<Box<dyn Future<Output = _>>> = match self {
            Reads::Sqlite { addr, .. } => Box::pin(run(addr, move |c| {
                Ok(queries::max_delivered(c, &user, &channel)?)
            })),
            Reads::Postgres { addr, .. } => Box::pin(run(addr, move |c| {
                Ok(postgres::queries::max_delivered(c, &user, &channel)?)
            })),
        };
        fut
    }

    /// A user's read cursors: (channel, last seq read).
    pub fn read_cursors(
        &self,
        user: String,
    ) -> impl Future<Output = Result<Vec<(String, i64)>, StoreError>> + 'static {
        let fut: std::pin::Pin<Box<dyn Future<Output = _>>> = match self {
            Reads::Sqlite { addr, .. } => {
                Box::pin(run(addr, move |c| Ok(queries::read_cursors(c, &user)?)))
            }
            Reads::Postgres { addr, .. } => Box::pin(run(addr, move |c| {
                Ok(postgres::queries::read_cursors(c, &user)?)
            })),
        };
        fut
    }

    /// The messages matching `q`, newest first (from what the index holds).
    pub fn search(
        &self,
        q: SearchQuery,
    ) -> impl Future<Output = Result<Vec<StoredMessage>, StoreError>> + 'static {
        let fut: std::pin::Pin<Box<dyn Future<Output = _>>> = match self {
            Reads::Sqlite { addr, .. } => Box::pin(run(addr, move |c| Ok(queries::search(c, &q)?))),
            Reads::Postgres { addr, .. } => Box::pin(run(addr, move |c| {
                postgres::queries::search(c, &q)?
                    .into_iter()
                    .map(|r| r.into_stored())
                    .collect()
            })),
        };
        fut
    }

    /// The users `user` follows, sorted.
    pub fn following(
        &self,
        user: String,
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + 'static {
        let fut: std::pin::Pin<Box<dyn Future<Output = _>>> = match self {
            Reads::Sqlite { addr, .. } => {
                Box::pin(run(addr, move |c| Ok(queries::following_of(c, &user)?)))
            }
            Reads::Postgres { addr, .. } => Box::pin(run(addr, move |c| {
                Ok(postgres::queries::following_of(c, &user)?)
            })),
        };
        fut
    }

    /// A group and its members, or `None` if there is no such group.
    pub fn group(
        &self,
        id: String,
    ) -> impl Future<Output = Result<Option<(GroupRow, Vec<String>)>, StoreError>> + 'static {
        let fut: std::pin::Pin<Box<dyn Future<Output = _>>> = match self {
            Reads::Sqlite { addr, .. } => Box::pin(run(addr, move |c| Ok(queries::group(c, &id)?))),
            Reads::Postgres { addr, .. } => {
                Box::pin(run(addr, move |c| Ok(postgres::queries::group(c, &id)?)))
            }
        };
        fut
    }

    /// What a channel actor starts from: the channel's last seq, for a group channel
    /// (`group` is its id) the members, or `None` if the group does not exist, and with
    /// `settled_before` (ms) the last seq stored before then.
    pub fn channel_start(
        &self,
        channel: String,
        group: Option<String>,
        settled_before: Option<i64>,
    ) -> impl Future<Output = Result<ChannelStart, StoreError>> + 'static {
        let fut: std::pin::Pin<Box<dyn Future<Output = _>>> = match self {
            Reads::Sqlite { addr, index, .. } => {
                let index = index.clone();
                Box::pin(run(addr, move |c| {
                    let (head, _) = index.head_seq(c, &channel)?;
                    let members = match group {
                        Some(g) => Some(queries::group(c, &g)?.map(|(_, m)| m)),
                        None => None,
                    };
                    // One SQLite file has one broker: what is stored was delivered here.
                    let _ = settled_before;
                    Ok(ChannelStart {
                        head: Seq::from_stored(head),
                        members,
                        settled: Seq::from_stored(head),
                    })
                }))
            }
            Reads::Postgres { addr, .. } => Box::pin(run(addr, move |c| {
                let head = postgres::queries::head_seq(c, &channel)?;
                let members = match group {
                    Some(g) => Some(postgres::queries::group(c, &g)?.map(|(_, m)| m)),
                    None => None,
                };
                let settled = match settled_before {
                    Some(ms) => postgres::queries::last_seq_before(c, &channel, ms)?,
                    None => head,
                };
                Ok(ChannelStart {
                    head: Seq::from_stored(head),
                    members,
                    settled: Seq::from_stored(settled.min(head)),
                })
            })),
        };
        fut
    }

    /// The channels that got messages stored at or after `since_ms` (by their ids' time,
    /// as the committing node's clock gave it), at most `limit`: each with the seq before
    /// the first of them and its last. Only other nodes write a shared database, so on
    /// SQLite (one broker per file) the answer is empty.
    pub fn stored_since(
        &self,
        since_ms: i64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<StoredSince>, StoreError>> + 'static {
        let fut: std::pin::Pin<Box<dyn Future<Output = _>>> = match self {
            Reads::Sqlite { .. } => Box::pin(std::future::ready(Ok(Vec::new()))),
            Reads::Postgres { addr, .. } => Box::pin(run(addr, move |c| {
                let floor = crate::ids::MessageId::floor(since_ms);
                let rows = postgres::queries::stored_since(c, floor.as_str(), limit as i64)?;
                Ok(rows
                    .into_iter()
                    .map(|(channel, first, last)| StoredSince {
                        channel,
                        after: Seq::from_stored(first.saturating_sub(1)),
                        head: Seq::from_stored(last),
                    })
                    .collect())
            })),
        };
        fut
    }

    /// Token ids revoked at or after `since` (ms) and not yet expired, with their tokens'
    /// expiry (ms).
    pub fn revoked_since(
        &self,
        since: i64,
    ) -> impl Future<Output = Result<Vec<(String, i64)>, StoreError>> + 'static {
        let now = crate::ids::now_ms();
        on_either_backend!(self, revoked_since(since, now))
    }

    /// API key `id`, revoked or not.
    pub fn api_key(
        &self,
        id: String,
    ) -> impl Future<Output = Result<Option<ApiKeyRow>, StoreError>> + 'static {
        on_either_backend!(self, api_key(&id))
    }

    /// Every API key, newest first.
    pub fn api_keys(&self) -> impl Future<Output = Result<Vec<ApiKeyRow>, StoreError>> + 'static {
        on_either_backend!(self, api_keys())
    }

    /// Ids of API keys revoked at or after `since` (ms).
    pub fn api_keys_revoked_since(
        &self,
        since: i64,
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + 'static {
        on_either_backend!(self, api_keys_revoked_since(since))
    }

    /// Whether the database answers a trivial query (readiness).
    pub fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + 'static {
        let fut: std::pin::Pin<Box<dyn Future<Output = _>>> = match self {
            Reads::Sqlite { addr, .. } => Box::pin(run(addr, |c| Ok(queries::ping(c)?))),
            Reads::Postgres { addr, .. } => {
                Box::pin(run(addr, |c| Ok(postgres::queries::ping(c)?)))
            }
        };
        fut
    }
}

/// A sync plan from the user's readable channel names (broadcasts left out), the device's
/// cursors and each channel's last seq (`head`); channels without messages are left out,
/// the rest sorted by name.
fn plan(
    names: Vec<String>,
    cursors: Vec<(String, i64)>,
    user: &str,
    mut head: impl FnMut(&str) -> Result<i64, StoreError>,
) -> Result<SyncPlan, StoreError> {
    let known_device = !cursors.is_empty();
    let cursors: std::collections::HashMap<String, i64> = cursors.into_iter().collect();
    let mut channels = Vec::new();
    for name in names {
        if name.starts_with("broadcast:") || !crate::ids::names_a_readable_channel(user, &name) {
            continue;
        }
        let last = head(&name)?;
        if last > 0 {
            let cursor = cursors.get(&name).copied();
            channels.push((name, last, cursor));
        }
    }
    channels.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    Ok(SyncPlan {
        channels,
        known_device,
    })
}
