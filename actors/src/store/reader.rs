//! `StoreReader`: blocking reads on a SyncArbiter, so no async thread waits for the disk.
//!
//! Owns nothing but the pool; a restart loses nothing. The rest of the broker reads through
//! [`Reads`], whose methods are the store's read operations: no code outside the store
//! names a connection.

use std::sync::Arc;

use actix::prelude::*;

use super::models::Page;
use super::models::{GroupRow, StoredMessage};
use super::sqlite::channel_index::ChannelIndex;
use super::sqlite::queries;
use super::sqlite::{DbConn, DbPool};
use super::StoreError;
use crate::health::{ActorHealth, Probe};

type Work<R> = Box<dyn FnOnce(&mut DbConn) -> Result<R, StoreError> + Send>;

/// A read to run on a pooled connection.
pub struct Query<R: Send + 'static>(pub Work<R>);

impl<R: Send + 'static> Message for Query<R> {
    type Result = Result<R, StoreError>;
}

/// One of the reader threads.
pub struct StoreReader {
    /// The shared pool.
    pub pool: DbPool,
    /// Shared by every reader thread.
    pub health: Arc<ActorHealth>,
}

impl Actor for StoreReader {
    type Context = SyncContext<Self>;
}

impl<R: Send + 'static> Handler<Query<R>> for StoreReader {
    type Result = Result<R, StoreError>;
    fn handle(&mut self, q: Query<R>, _: &mut SyncContext<Self>) -> Self::Result {
        self.health.handled();
        let mut conn = self.pool.get()?;
        (q.0)(&mut conn)
    }
}

impl Handler<Probe> for StoreReader {
    type Result = u64;
    fn handle(&mut self, _: Probe, _: &mut SyncContext<Self>) -> u64 {
        self.health.handled_count()
    }
}

/// What [`Reads::channel_start`] finds.
#[derive(Debug, Clone)]
pub struct ChannelStart {
    /// The channel's last seq (0 when empty).
    pub head: u64,
    /// For a group channel: its members, or `None` if the group does not exist.
    pub members: Option<Option<Vec<String>>>,
}

/// A cheap handle for running reads from async code.
#[derive(Clone)]
pub struct Reads {
    addr: Addr<StoreReader>,
    index: ChannelIndex,
}

impl Reads {
    /// Wraps the reader pool's address; `index` is the writer's, for reads by seq.
    pub fn new(addr: Addr<StoreReader>, index: ChannelIndex) -> Self {
        Reads { addr, index }
    }

    /// The places of recent messages by channel (for reads by seq inside [`Reads::run`]).
    pub fn index(&self) -> &ChannelIndex {
        &self.index
    }

    /// A page of `channel`'s history ([`queries::history`]).
    pub fn history(
        &self,
        channel: String,
        page: Page,
    ) -> impl std::future::Future<Output = Result<(Vec<StoredMessage>, bool), StoreError>> + 'static
    {
        let index = self.index.clone();
        self.run(move |c| {
            // Memory first, then the table (store::channel_index).
            let recent = index.recent(&channel);
            Ok(queries::history(c, &channel, &recent, page)?)
        })
    }

    /// A group and its members, or `None` if there is no such group.
    pub fn group(
        &self,
        id: String,
    ) -> impl std::future::Future<Output = Result<Option<(GroupRow, Vec<String>)>, StoreError>> + 'static
    {
        self.run(move |c| Ok(queries::group(c, &id)?))
    }

    /// What a channel actor starts from: the channel's last seq, and for a group channel
    /// (`group` is its id) the members, or `None` if the group does not exist.
    pub fn channel_start(
        &self,
        channel: String,
        group: Option<String>,
    ) -> impl std::future::Future<Output = Result<ChannelStart, StoreError>> + 'static {
        let index = self.index.clone();
        self.run(move |c| {
            let (head, _) = index.head_seq(c, &channel)?;
            let members = match group {
                Some(g) => Some(queries::group(c, &g)?.map(|(_, m)| m)),
                None => None,
            };
            Ok(ChannelStart {
                head: head.max(0) as u64,
                members,
            })
        })
    }

    /// Whether the database answers a trivial query (readiness).
    pub fn ping(&self) -> impl std::future::Future<Output = Result<(), StoreError>> + 'static {
        self.run(|c| Ok(queries::ping(c)?))
    }

    /// Runs `f` on a reader thread.
    pub(crate) fn run<R, F>(
        &self,
        f: F,
    ) -> impl std::future::Future<Output = Result<R, StoreError>> + 'static
    where
        R: Send + 'static,
        F: FnOnce(&mut DbConn) -> Result<R, StoreError> + Send + 'static,
    {
        let req = self.addr.send(Query(Box::new(f)));
        async move { req.await.map_err(|_| StoreError::WriterGone)? }
    }
}
