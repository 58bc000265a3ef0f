//! Three broker processes on one PostgreSQL database and one Redis (docs/CLUSTER.md), and
//! the faults of a node: `kill -9` while messages flow (nothing acked is lost, a reader on
//! the killed node resumes on another exactly once, a sender there resends its un-acked
//! frames elsewhere and each is stored once), and SIGTERM (its clients drained with 1012
//! over the drain window to the other nodes, the node gone from the node list at once).
//!
//! Like `crate::cluster`, they use PostgreSQL and the tests' Redis in either pass of the
//! suite, so they run in the SQLite pass only.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::rc::Rc;

use super::*;
use crate::helpers::{on_postgres, redis_url, PgDatabase};

/// How long a process test waits for something that must happen (a loaded 2-core VM).
const LONG: Duration = Duration::from_secs(60);

/// Three nodes of one cluster, their database and data dirs.
struct Cluster {
    /// The nodes, `node-0`, `node-1`…; `None` once a test ended one.
    nodes: Vec<Option<Broker>>,
    pg: PgDatabase,
    _dirs: Vec<tempfile::TempDir>,
}

impl Cluster {
    /// `n` broker processes on a fresh PostgreSQL database and the tests' Redis under a
    /// key prefix of their own, each with `extra` settings; returns once every node lists
    /// all `n` and hears the bus.
    async fn start(n: usize, extra: &[(&str, &str)]) -> Cluster {
        let pg = PgDatabase::create();
        let prefix = format!("sbproc-{}", uuid::Uuid::new_v4().simple());
        let redis = redis_url();
        let mut nodes = Vec::new();
        let mut dirs = Vec::new();
        for i in 0..n {
            let dir = tempfile::tempdir().expect("temp dir");
            let id = format!("node-{i}");
            let mut env: Vec<(&str, &str)> = vec![
                ("SWITCHBOARD__DATABASE__URL", pg.url.as_str()),
                ("SWITCHBOARD__REDIS__URL", redis.as_str()),
                ("SWITCHBOARD__CLUSTER__KEY_PREFIX", prefix.as_str()),
                ("SWITCHBOARD__CLUSTER__NODE_ID", id.as_str()),
                ("SWITCHBOARD__CLUSTER__HEARTBEAT", "500ms"),
                ("SWITCHBOARD__LIMITS__MAX_REPLAY", "100000"),
            ];
            env.extend_from_slice(extra);
            nodes.push(Some(start_broker_with(dir.path(), &env)));
            dirs.push(dir);
        }
        let cluster = Cluster {
            nodes,
            pg,
            _dirs: dirs,
        };
        for i in 0..n {
            let node = cluster.node(i);
            wait_for(&format!("node-{i} lists {n} nodes"), LONG, || async {
                let status = node.status().await;
                let c = &status["cluster"];
                c["bus_up"] == true && c["publisher_up"] == true && listed(c).len() == n
            })
            .await;
        }
        cluster
    }

    fn node(&self, i: usize) -> &Broker {
        self.nodes[i].as_ref().expect("node still running")
    }

    fn port(&self, i: usize) -> u16 {
        self.node(i).port
    }

    /// `kill -9` of node `i`, reaped.
    fn kill(&mut self, i: usize) {
        let mut broker = self.nodes[i].take().expect("node running");
        broker.child.kill().expect("SIGKILL");
        broker.child.wait().expect("reaped");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for broker in self.nodes.iter_mut().filter_map(Option::take) {
            stop(broker);
        }
    }
}

/// The node ids a `/status` `cluster` part lists.
fn listed(cluster: &Value) -> Vec<String> {
    cluster["nodes"]
        .as_array()
        .map(|nodes| {
            nodes
                .iter()
                .filter_map(|n| n["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Polls `check` until it holds, for at most `limit`.
async fn wait_for<F, Fut>(what: &str, limit: Duration, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A WebSocket to `port` as `user`, with `client_id`.
async fn connect_as(port: u16, user: &str, client_id: &str) -> WsClient {
    let (_, framed) = awc::Client::builder()
        .timeout(WAIT)
        .finish()
        .ws(format!("ws://127.0.0.1:{port}/ws?client_id={client_id}"))
        .bearer_auth(token(user))
        .connect()
        .await
        .expect("upgrade");
    let mut c = WsClient::from_framed(framed);
    let first = c.recv().await;
    assert_eq!(first["type"], "connected", "{first}");
    c
}

/// Reads every JSON frame into `got` until the connection ends; how it ended.
async fn read_into(mut c: WsClient, got: Rc<RefCell<Vec<Value>>>) -> Ended {
    loop {
        match c.try_recv_or_end(Duration::from_secs(3600)).await {
            Ok(f) => got.borrow_mut().push(f),
            Err(end) => return end,
        }
    }
}

/// The `chat_message` deliveries among `frames`.
fn deliveries(frames: &[Value]) -> Vec<Value> {
    frames
        .iter()
        .filter(|f| f["type"] == "chat_message")
        .cloned()
        .collect()
}

fn seq_of(f: &Value) -> u64 {
    f["meta"]["seq"].as_u64().expect("seq")
}

/// What an ack named: the seq and the message id.
#[derive(Debug, Clone, PartialEq)]
struct Acked {
    seq: u64,
    message_id: String,
}

fn acked(ack: &Value) -> Acked {
    Acked {
        seq: ack["payload"]["seq"].as_u64().expect("seq"),
        message_id: ack["payload"]["message_id"]
            .as_str()
            .expect("message_id")
            .to_owned(),
    }
}

/// Sends DMs from `from` to `to` in windows of 5 (a steady stream, about a few hundred a
/// second at most) until `stop`, then waits for the last acks; the acks in order of seq.
async fn steady_stream(
    mut c: WsClient,
    to: &'static str,
    acks: Rc<RefCell<Vec<Acked>>>,
    stop: Rc<Cell<bool>>,
) {
    let mut n = 0;
    while !stop.get() {
        for k in n..n + 5 {
            c.send(chat(to, &format!("s-{k}"), &format!("m{k}"))).await;
        }
        n += 5;
        let mut left = 5;
        while left > 0 {
            let f = c
                .try_recv(LONG)
                .await
                .unwrap_or_else(|| panic!("a frame unanswered for {LONG:?}"));
            match f["type"].as_str() {
                Some("ack") => {
                    acks.borrow_mut().push(acked(&f));
                    left -= 1;
                }
                Some("error") => panic!("refused: {f}"),
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A reader on node B while alice on node A writes to it without pause; node B is killed
/// with SIGKILL. Every message alice got an ack for is stored once, under its acked seq;
/// bob, back on node C, resumes with `subscribe` + `since_seq` (the last seq he saw), and
/// his tablet, back on node A, with `sync`: each ends up with every acked message in seq
/// order, none twice, none missing; node B leaves the node list once its heartbeat expires.
#[actix_web::test]
async fn a_node_killed_under_load_loses_nothing_acked_and_its_reader_resumes_on_another_node() {
    if on_postgres() {
        return;
    }
    let mut cluster = Cluster::start(3, &[("SWITCHBOARD__CLUSTER__NODE_TTL", "3s")]).await;
    let (a, c) = (cluster.port(0), cluster.port(2));
    let bob = connect_as(cluster.port(1), "bob", "bob-phone").await;
    let on_b = Rc::new(RefCell::new(Vec::new()));
    let bob_on_b = actix_web::rt::spawn(read_into(bob, on_b.clone()));
    let tablet = connect_as(cluster.port(1), "bob", "bob-tablet").await;
    let tablet_on_b = Rc::new(RefCell::new(Vec::new()));
    let tablet_ended = actix_web::rt::spawn(read_into(tablet, tablet_on_b.clone()));

    let acks = Rc::new(RefCell::new(Vec::new()));
    let stop = Rc::new(Cell::new(false));
    let alice = connect_as(a, "alice", "alice-laptop").await;
    let sender = actix_web::rt::spawn(steady_stream(alice, "bob", acks.clone(), stop.clone()));

    let count = |v: &Rc<RefCell<Vec<Value>>>| deliveries(&v.borrow()).len();
    wait_for("bob hears alice on node B", LONG, || async {
        count(&on_b) >= 150
    })
    .await;
    cluster.kill(1);
    let end = bob_on_b.await.expect("reader");
    assert_eq!(end, Ended::Dropped, "a killed node sends no close frame");
    let first: Vec<Value> = deliveries(&on_b.borrow());
    let last = first.last().map(seq_of).expect("some deliveries");
    // What bob saw on node B: 1..=last, in order, once each.
    let seen: Vec<u64> = first.iter().map(seq_of).collect();
    assert_eq!(seen, (1..=last).collect::<Vec<u64>>(), "bob on node B");
    tablet_ended.await.expect("reader");
    let tablet_last = deliveries(&tablet_on_b.borrow()).last().map_or(0, seq_of);

    // Messages go on while bob is away.
    let at_kill = acks.borrow().len();
    wait_for("alice acked while bob is away", LONG, || async {
        acks.borrow().len() >= at_kill + 100
    })
    .await;

    // bob comes back on node C and asks for what followed the last seq he saw. Deliveries
    // of the DM that reach the new connection before `subscribed` (it gets them without a
    // subscribe) are repeated by the replay, which covers every seq up to the channel's
    // head when the subscription took effect: a resuming client leaves them aside.
    let mut bob = connect_as(c, "bob", "bob-phone").await;
    bob.send(serde_json::json!({"type": "subscribe", "id": "resume",
        "payload": {"channel": "dm:alice:bob", "since_seq": last}}))
        .await;
    let mut early = Vec::new();
    let subscribed = loop {
        let f = bob.recv().await;
        match f["type"].as_str() {
            Some("subscribed") => break f,
            Some("chat_message") => early.push(seq_of(&f)),
            Some("error") => panic!("subscribe refused: {f}"),
            _ => {}
        }
    };
    assert_eq!(subscribed["payload"]["recovered"], true, "{subscribed}");
    assert!(early.iter().all(|s| *s > last), "{early:?} after {last}");
    let on_c = Rc::new(RefCell::new(Vec::new()));
    let _bob_on_c = actix_web::rt::spawn(read_into(bob, on_c.clone()));
    // bob's tablet comes back on node A and catches up with `sync` from what it saw.
    let mut tablet = connect_as(a, "bob", "bob-tablet").await;
    tablet
        .send(serde_json::json!({"type": "sync", "id": "resume",
            "payload": {"cursors": {"dm:alice:bob": tablet_last}}}))
        .await;
    let on_a = Rc::new(RefCell::new(Vec::new()));
    let _tablet_on_a = actix_web::rt::spawn(read_into(tablet, on_a.clone()));

    // Live traffic goes on through node C, then alice stops and has every ack.
    let at_resume = acks.borrow().len();
    wait_for("alice acked after bob resumed", LONG, || async {
        acks.borrow().len() >= at_resume + 100
    })
    .await;
    stop.set(true);
    sender.await.expect("sender");
    let acks = acks.take();
    let n = acks.len() as u64;
    // alice is the channel's only writer: her acks hold every seq once.
    let acked_seqs: Vec<u64> = acks.iter().map(|a| a.seq).collect();
    assert_eq!(acked_seqs, (1..=n).collect::<Vec<u64>>());

    wait_for("bob has the last acked message", LONG, || async {
        deliveries(&on_c.borrow()).last().map(seq_of) == Some(n)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let resumed = deliveries(&on_c.borrow());
    let resumed_seqs: Vec<u64> = resumed.iter().map(seq_of).collect();
    assert_eq!(
        resumed_seqs,
        (last + 1..=n).collect::<Vec<u64>>(),
        "bob on node C after the subscribe ({} early deliveries left aside)",
        early.len()
    );
    // The tablet: live deliveries that came before its sync was read (all after what it
    // had, ascending), then from the seq after what it had to the last, once each.
    wait_for("the tablet has the last acked message", LONG, || async {
        deliveries(&on_a.borrow()).last().map(seq_of) == Some(n)
    })
    .await;
    let synced: Vec<u64> = deliveries(&on_a.borrow()).iter().map(seq_of).collect();
    let from = synced
        .iter()
        .position(|s| *s == tablet_last + 1)
        .expect("the sync sent what followed");
    assert!(
        synced[..from].windows(2).all(|w| w[0] < w[1])
            && synced[..from].iter().all(|s| *s > tablet_last),
        "{:?} before the sync",
        &synced[..from]
    );
    assert_eq!(
        synced[from..],
        (tablet_last + 1..=n).collect::<Vec<u64>>(),
        "bob's tablet on node A after the sync ({from} early deliveries left aside)"
    );
    // Each delivery is the message alice's ack named.
    for m in first.iter().chain(&resumed) {
        let seq = seq_of(m);
        assert_eq!(
            m["id"].as_str(),
            Some(acks[seq as usize - 1].message_id.as_str()),
            "seq {seq}"
        );
    }
    // The store holds each acked message once, under its seq.
    let stored = cluster.pg.query_texts(
        "SELECT seq || ' ' || id AS v FROM messages WHERE channel = 'dm:alice:bob' ORDER BY seq",
    );
    let expected: Vec<String> = acks
        .iter()
        .map(|a| format!("{} {}", a.seq, a.message_id))
        .collect();
    assert_eq!(stored, expected);
    eprintln!(
        "killed node B after bob saw {last}; {n} acked; {} deliveries reached node C \
         before the subscribe took effect",
        early.len()
    );

    // Node B leaves the others' node list once its heartbeat expires (node_ttl 3 s).
    for i in [0, 2] {
        let node = cluster.node(i);
        wait_for("node-1 gone from the node list", LONG, || async {
            !listed(&node.status().await["cluster"]).contains(&"node-1".to_owned())
        })
        .await;
    }
}

/// A writer on node B with frames in flight when node B is killed: it reconnects to node
/// C and sends every frame it has no ack for again, with the same ids. Each frame id is
/// stored once (a frame node B committed gets its original ack), and dave, connected on
/// nodes A and C, receives every stored message once, in seq order, without a further
/// message to show what node B committed last.
#[actix_web::test]
async fn a_writer_on_a_killed_node_resends_elsewhere_and_each_frame_is_stored_once() {
    if on_postgres() {
        return;
    }
    let mut cluster = Cluster::start(3, &[]).await;
    let (a, b, c) = (cluster.port(0), cluster.port(1), cluster.port(2));
    let readers: Vec<Rc<RefCell<Vec<Value>>>> = vec![Default::default(), Default::default()];
    for (port, client, got) in [(a, "dave-a", &readers[0]), (c, "dave-c", &readers[1])] {
        let dave = connect_as(port, "dave", client).await;
        actix_web::rt::spawn(read_into(dave, got.clone()));
    }

    // carol keeps 20 frames in flight on node B, the next one sent as each ack comes.
    const WINDOW: usize = 20;
    let mut carol = connect_as(b, "carol", "carol-laptop").await;
    let mut sent: Vec<String> = Vec::new();
    let mut acks: HashMap<String, Acked> = HashMap::new();
    for k in 0..WINDOW {
        let id = format!("c-{k}");
        carol.send(chat("dave", &id, &id)).await;
        sent.push(id);
    }
    let mut killed = false;
    loop {
        match carol.try_recv_or_end(LONG).await {
            Ok(f) if f["type"] == "ack" => {
                let id = f["payload"]["ref_id"].as_str().expect("ref_id").to_owned();
                acks.insert(id, acked(&f));
                if killed {
                    continue;
                }
                let id = format!("c-{}", sent.len());
                carol.send(chat("dave", &id, &id)).await;
                sent.push(id);
                if acks.len() == 300 {
                    // Killed while frames are on their way and the node commits.
                    cluster.kill(1);
                    killed = true;
                }
            }
            Ok(f) if f["type"] == "error" => panic!("refused: {f}"),
            Ok(_) => {}
            Err(end) => {
                assert!(killed, "carol's connection ended before the kill: {end:?}");
                break;
            }
        }
    }
    let unacked: Vec<String> = sent
        .iter()
        .filter(|id| !acks.contains_key(*id))
        .cloned()
        .collect();
    assert!(!unacked.is_empty(), "frames in flight at the kill");

    // Back on node C, carol sends each un-acked frame again, same id, same content.
    let mut carol = connect_as(c, "carol", "carol-laptop").await;
    for id in &unacked {
        let f = carol.request(chat("dave", id, id)).await;
        assert_eq!(f["type"], "ack", "{id}: {f}");
        acks.insert(id.clone(), acked(&f));
    }
    // A resend of a frame acked before the kill gets its original ack, through another node.
    let again = carol.request(chat("dave", "c-7", "c-7")).await;
    assert_eq!(acked(&again), acks["c-7"]);

    // The store: each frame id once, under the seq and message id its (last) ack named.
    let stored: HashMap<String, Acked> = cluster
        .pg
        .query_texts(
            "SELECT client_msg_id || ' ' || seq || ' ' || id AS v FROM messages \
             WHERE channel = 'dm:carol:dave'",
        )
        .into_iter()
        .map(|row| {
            let f: Vec<&str> = row.split(' ').collect();
            let seq = f[1].parse().expect("seq");
            (
                f[0].to_owned(),
                Acked {
                    seq,
                    message_id: f[2].to_owned(),
                },
            )
        })
        .collect();
    let dupes = cluster
        .pg
        .query_texts("SELECT (count(*) - count(DISTINCT client_msg_id))::text AS v FROM messages");
    assert_eq!(dupes, ["0"], "a frame id stored twice");
    assert_eq!(stored.len(), sent.len(), "every frame sent is stored");
    for (id, ack) in &acks {
        assert_eq!(stored.get(id), Some(ack), "frame {id}");
    }
    let m = stored.len() as u64;
    let mut seqs: Vec<u64> = stored.values().map(|a| a.seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=m).collect::<Vec<u64>>());

    // dave, on nodes A and C, gets every stored message once, in seq order: what node B
    // committed but may not have published before it died included.
    for (name, got) in [("dave on A", &readers[0]), ("dave on C", &readers[1])] {
        wait_for(
            &format!("{name} has every stored message"),
            LONG,
            || async { deliveries(&got.borrow()).len() as u64 >= m },
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (name, got) in [("dave on A", &readers[0]), ("dave on C", &readers[1])] {
        let got = deliveries(&got.borrow());
        let seqs: Vec<u64> = got.iter().map(seq_of).collect();
        assert_eq!(seqs, (1..=m).collect::<Vec<u64>>(), "{name}");
        let ids: HashSet<&str> = got
            .iter()
            .map(|f| f["payload"]["content"].as_str().expect("content"))
            .collect();
        assert_eq!(ids.len(), sent.len(), "{name}: each frame once");
    }
    eprintln!(
        "carol: {} frames sent, {} un-acked at the kill and sent again",
        sent.len(),
        unacked.len()
    );
}

/// SIGTERM on node B of three, with 40 clients on it: they are closed with 1012 at times
/// spread over `server.drain_window` (2 s), node B exits 0 and is gone from the others'
/// node list at once (node_ttl is 30 s: it removed itself), and the clients, reconnected
/// to nodes A and C in turn, write to each other across the two.
#[actix_web::test]
async fn sigterm_drains_a_nodes_clients_to_the_other_nodes_and_it_leaves_the_node_list() {
    if on_postgres() {
        return;
    }
    let mut cluster = Cluster::start(
        3,
        &[
            ("SWITCHBOARD__SERVER__DRAIN_WINDOW", "2s"),
            ("SWITCHBOARD__CLUSTER__NODE_TTL", "30s"),
        ],
    )
    .await;
    let (a, c) = (cluster.port(0), cluster.port(2));
    const CLIENTS: usize = 40;
    let mut open = Vec::new();
    for i in 0..CLIENTS {
        let user = format!("u{i}");
        open.push((
            i,
            connect_as(cluster.port(1), &user, &format!("{user}-dev")).await,
        ));
    }

    let sent_at = std::time::Instant::now();
    cluster.node(1).terminate();
    // Each client closed with 1012 reconnects at once, to node A and node C in turn.
    let mut closed_at = Vec::new();
    let mut moved: Vec<Option<(u16, WsClient)>> = (0..CLIENTS).map(|_| None).collect();
    while !open.is_empty() {
        let mut still = Vec::new();
        for (i, mut client) in open {
            match client.end_within(Duration::from_millis(5)).await {
                Some(end) => {
                    assert_eq!(end, Ended::Closed(1012), "u{i}");
                    closed_at.push(sent_at.elapsed());
                    let port = if closed_at.len() % 2 == 0 { a } else { c };
                    let user = format!("u{i}");
                    moved[i] = Some((port, connect_as(port, &user, &format!("{user}-dev")).await));
                }
                None => still.push((i, client)),
            }
        }
        assert!(
            sent_at.elapsed() < LONG,
            "{} clients never closed",
            still.len()
        );
        open = still;
    }
    let mut broker = cluster.nodes[1].take().expect("node B");
    assert_eq!(broker.exited().await.code(), Some(0));
    // Spread over the window: not all at once, the last near its end.
    closed_at.sort();
    let (first, last) = (closed_at[0], closed_at[CLIENTS - 1]);
    assert!(
        last >= Duration::from_millis(1500),
        "last close after {last:?}"
    );
    assert!(
        last - first >= Duration::from_millis(1000),
        "closes between {first:?} and {last:?}"
    );
    let spread: HashSet<u128> = closed_at.iter().map(|t| t.as_millis() / 250).collect();
    assert!(
        spread.len() >= 4,
        "closes in {} quarter-second slots: {closed_at:?}",
        spread.len()
    );
    // Gone from the others' lists long before its entry would expire.
    for i in [0, 2] {
        let node = cluster.node(i);
        wait_for(
            "node-1 gone from the node list",
            Duration::from_secs(5),
            || async {
                let ids = listed(&node.status().await["cluster"]);
                ids.len() == 2 && !ids.contains(&"node-1".to_owned())
            },
        )
        .await;
    }
    assert!(
        broker.log_lines(" ERROR ").is_empty(),
        "{:#?}",
        broker.log_lines(" ERROR ")
    );

    // Every moved client writes to one on the other remaining node, and hears back.
    let mut on_a: Vec<(usize, WsClient)> = Vec::new();
    let mut on_c: Vec<(usize, WsClient)> = Vec::new();
    for (i, m) in moved.into_iter().enumerate() {
        match m.expect("reconnected") {
            (port, client) if port == a => on_a.push((i, client)),
            (_, client) => on_c.push((i, client)),
        }
    }
    assert_eq!(on_a.len(), CLIENTS / 2);
    assert_eq!(on_c.len(), CLIENTS / 2);
    for ((i, x), (j, y)) in on_a.iter_mut().zip(on_c.iter_mut()) {
        let (ui, uj) = (format!("u{i}"), format!("u{j}"));
        let ack = x.dm(&uj, &format!("to-{uj}"), "from node A").await;
        let m = y.recv_type("chat_message").await;
        assert_eq!(m["id"], ack["message_id"]);
        assert_eq!(m["payload"]["content"], "from node A");
        let ack = y.dm(&ui, &format!("to-{ui}"), "from node C").await;
        let m = x.recv_type("chat_message").await;
        assert_eq!(m["id"], ack["message_id"]);
        assert_eq!(m["payload"]["content"], "from node C");
    }
}
