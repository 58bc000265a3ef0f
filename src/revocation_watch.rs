//! `RevocationWatch`: brings revocations made on other brokers sharing the database into
//! this one.
//!
//! A revocation writes its row first, then acts on the node that made it (the token is
//! refused and its connections close at once). Every `auth.revocation_poll` this actor reads
//! the rows revoked since its last look, marks the new ones revoked here and closes the
//! connections holding them, and drops revoked API keys from the key cache. Each look
//! reaches back a margin before the last one, so that a row committed late, or stamped by a
//! node whose clock runs behind, is still seen; rows seen before are known and cost nothing.
//! In a cluster another node's revocation also comes over the bus, and the watch looks at
//! once.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_web::web;
use switchboard_actors::cluster::RevokedElsewhere;
use switchboard_actors::health::ActorHealth;
use switchboard_actors::ids::now_ms;
use switchboard_actors::router::CloseRevoked;
use switchboard_actors::store::StoreError;

use crate::state::AppState;

/// How far before its last look each look reaches back, ms.
const OVERLAP_MS: i64 = 60_000;

/// The watching actor.
pub struct RevocationWatch {
    app: web::Data<AppState>,
    /// When the last look that succeeded began, ms since epoch.
    last_look: i64,
    /// A look is under way.
    looking: bool,
    /// Health reported by `/status`.
    pub health: Arc<ActorHealth>,
}

impl RevocationWatch {
    /// A watch over `app`'s store, starting from now (start-up read what came before).
    pub fn new(app: web::Data<AppState>, health: Arc<ActorHealth>) -> Self {
        RevocationWatch {
            app,
            last_look: now_ms(),
            looking: false,
            health,
        }
    }

    fn look(&mut self, ctx: &mut Context<Self>) {
        if self.looking {
            return;
        }
        self.looking = true;
        let began = now_ms();
        let since = self.last_look - OVERLAP_MS;
        let reads = self.app.tree.reads.clone();
        let work = async move {
            let tokens = reads.revoked_since(since).await?;
            let keys = reads.api_keys_revoked_since(since).await?;
            Ok::<_, StoreError>((tokens, keys))
        };
        ctx.spawn(work.into_actor(self).map(move |res, act, _| {
            act.looking = false;
            match res {
                Ok((tokens, keys)) => {
                    act.last_look = began;
                    act.apply(tokens, keys);
                }
                Err(e) => {
                    log::warn!("revocation watch: {e}");
                    act.health.failed(e.to_string());
                }
            }
        }));
    }

    /// Acts on what a look found.
    fn apply(&mut self, tokens: Vec<(String, i64)>, keys: Vec<String>) {
        let new = self.app.auth.revoke_all(tokens);
        if !new.is_empty() {
            log::info!("{} token(s) revoked on another node", new.len());
            let jtis: Arc<[Arc<str>]> = new.iter().map(|j| Arc::from(j.as_str())).collect();
            self.app.tree.router.do_send(CloseRevoked {
                jtis,
                announce: false,
            });
        }
        self.app.auth.forget_expired();
        for id in keys {
            self.app.api_keys.forget(&id);
        }
    }
}

impl Actor for RevocationWatch {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.health.started();
        let every = self
            .app
            .settings
            .auth
            .revocation_poll
            .max(Duration::from_millis(100));
        ctx.run_interval(every, |act, ctx| {
            act.health.handled();
            act.look(ctx);
        });
    }
}

impl Supervised for RevocationWatch {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.health.restarting();
        self.looking = false;
    }
}

switchboard_actors::health_handlers!(RevocationWatch);

impl Handler<RevokedElsewhere> for RevocationWatch {
    type Result = ();
    fn handle(&mut self, _: RevokedElsewhere, ctx: &mut Context<Self>) {
        self.health.handled();
        self.look(ctx);
    }
}
