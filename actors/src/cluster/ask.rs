//! Questions one node asks every other (an operator's request that spans the cluster),
//! and the answers they send back over the bus.

use std::sync::Arc;

use actix::prelude::*;

use super::{ClusterLink, Envelope, Question, ASK_TIMEOUT};

/// The answers to one question: from which node, what (JSON).
pub type Answers = Vec<(Arc<str>, String)>;

/// A question waiting for its answers.
pub(super) struct Asked {
    /// Answers still expected.
    waiting: usize,
    answers: Answers,
    done: tokio::sync::oneshot::Sender<ClusterAnswers>,
}

/// What the other nodes answered, and how many were asked.
#[derive(Debug, Default)]
pub struct ClusterAnswers {
    /// Nodes asked (every other node of the node list).
    pub asked: usize,
    /// Their answers (fewer than `asked` when some did not answer in time).
    pub answers: Answers,
}

/// Asks every other node `question`; answered with what they said within a couple of
/// seconds (nothing at all while Redis is down).
#[derive(Message)]
#[rtype(result = "ClusterAnswers")]
pub struct AskCluster(pub Question);

impl Handler<AskCluster> for ClusterLink {
    type Result = ResponseFuture<ClusterAnswers>;
    fn handle(&mut self, msg: AskCluster, ctx: &mut Context<Self>) -> Self::Result {
        self.health.handled();
        let others = self
            .stats
            .nodes()
            .iter()
            .filter(|n| *n.id != *self.cfg.node_id)
            .count();
        if others == 0 || self.conn.is_none() {
            return Box::pin(async { ClusterAnswers::default() });
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.next_ask += 1;
        let id = self.next_ask;
        self.asked.insert(
            id,
            Asked {
                waiting: others,
                answers: Vec::new(),
                done: tx,
            },
        );
        self.queue(
            &Envelope::Ask {
                id,
                question: msg.0,
            },
            ctx,
        );
        ctx.run_later(ASK_TIMEOUT, move |act, _| act.answered(id, None));
        Box::pin(async move {
            let mut answers = rx.await.unwrap_or_default();
            answers.asked = others;
            answers
        })
    }
}

impl ClusterLink {
    /// Records an answer to question `id` (`None`: its time is up) and hands the answers
    /// over once all came or the time is up.
    pub(super) fn answered(&mut self, id: u64, answer: Option<(Arc<str>, String)>) {
        let Some(asked) = self.asked.get_mut(&id) else {
            return;
        };
        let complete = match answer {
            Some(a) => {
                asked.answers.push(a);
                asked.waiting = asked.waiting.saturating_sub(1);
                asked.waiting == 0
            }
            None => true,
        };
        if complete {
            if let Some(asked) = self.asked.remove(&id) {
                let _ = asked.done.send(ClusterAnswers {
                    asked: 0,
                    answers: asked.answers,
                });
            }
        }
    }
}
