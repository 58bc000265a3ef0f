//! Unit tests of `channel`.

use super::*;

#[test]
fn a_reply_dropped_unanswered_tells_its_caller_unavailable() {
    let (reply, mut answer) = Reply::caller(Some("f1".into()));
    assert_eq!(reply.ref_id(), Some("f1"));
    drop(reply);
    assert!(matches!(
        answer.try_recv(),
        Ok(Err(ChannelError::Unavailable))
    ));
}

/// A stand-in session that records what it is sent.
struct Recorder(std::sync::Arc<std::sync::Mutex<Vec<Outbound>>>);

impl Actor for Recorder {
    type Context = Context<Self>;
}

impl Handler<Outbound> for Recorder {
    type Result = ();
    fn handle(&mut self, msg: Outbound, _: &mut Context<Self>) {
        self.0.lock().expect("recorder").push(msg);
    }
}

/// Answered once everything sent to the recorder before it has been handled.
#[derive(Message)]
#[rtype(result = "()")]
struct Handled;

impl Handler<Handled> for Recorder {
    type Result = ();
    fn handle(&mut self, _: Handled, _: &mut Context<Self>) {}
}

fn texts(msg: &Outbound) -> Vec<&str> {
    match msg {
        Outbound::Frame(f) => vec![&**f],
        Outbound::Frames(fs) => fs.iter().map(|f| &**f).collect(),
        other => panic!("not frames: {other:?}"),
    }
}

#[actix::test]
async fn a_commits_acks_reach_each_session_in_one_slot_and_in_order() {
    let (mut seen, mut handles, mut addrs) = (Vec::new(), Vec::new(), Vec::new());
    for user in ["alice", "bob"] {
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let addr = Recorder(log.clone()).start();
        handles.push(Arc::new(SessionHandle::new(
            ConnId::next(),
            UserId::new(user),
            Arc::from(user),
            None,
            crate::session_handle::Transport::WebSocket,
            addr.clone().recipient(),
            Arc::new(crate::session_handle::OutboundGauge::new(64)),
        )));
        seen.push(log);
        addrs.push(addr);
    }
    let mut acks = AckBatch::default();
    for (who, frame) in [(0, "a1"), (1, "b1"), (0, "a2"), (0, "a3"), (1, "b2")] {
        acks.0
            .push((handles[who].clone(), ByteString::from_static(frame)));
    }
    acks.send();
    assert!(acks.0.is_empty());
    for addr in &addrs {
        addr.send(Handled).await.expect("recorder running");
    }
    let alice = seen[0].lock().expect("alice");
    let bob = seen[1].lock().expect("bob");
    assert_eq!(alice.len(), 1, "one mailbox slot");
    assert_eq!(texts(&alice[0]), ["a1", "a2", "a3"]);
    assert_eq!(bob.len(), 1);
    assert_eq!(texts(&bob[0]), ["b1", "b2"]);
}

#[test]
fn a_reply_answers_once() {
    let (reply, mut answer) = Reply::caller(None);
    reply.answer(Err(ChannelError::NotFound));
    assert!(matches!(answer.try_recv(), Ok(Err(ChannelError::NotFound))));
}
