//! Broker processes on PostgreSQL: migrations and TLS, two brokers on one database, and
//! the database restarted under load.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use super::*;

#[test]
fn migrate_applies_the_postgres_schema_and_serve_runs_on_it() {
    let pg = crate::helpers::PgDatabase::create();
    let dir = tempfile::tempdir().expect("temp dir");
    let env = [("SWITCHBOARD__DATABASE__URL", pg.url.as_str())];
    let out = run_cli(&["migrate"], &env, dir.path());
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("20261204000001"), "{stdout}");
    let tables = pg.query_texts(
        "SELECT table_name::text AS v FROM information_schema.tables \
         WHERE table_schema = 'public' ORDER BY 1",
    );
    for t in [
        "channels",
        "messages",
        "resend_keys",
        "groups",
        "group_members",
        "revoked_tokens",
    ] {
        assert!(tables.iter().any(|x| x == t), "{t} missing from {tables:?}");
    }
    // The database enforces one message per (channel, seq).
    let keys = pg.query_texts(
        "SELECT string_agg(a.attname, ',' ORDER BY a.attnum)::text AS v FROM pg_index i \
         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
         WHERE i.indrelid = 'messages'::regclass AND i.indisprimary",
    );
    assert_eq!(keys, ["channel,seq"]);
    // Again, over TLS (the bundled libpq has OpenSSL): nothing pending.
    let tls = format!("{}?sslmode=require", pg.url);
    let out = run_cli(
        &["migrate"],
        &[("SWITCHBOARD__DATABASE__URL", &tls)],
        dir.path(),
    );
    let server_tls = pg.query_texts("SELECT current_setting('ssl') AS v");
    if server_tls == ["on"] {
        assert!(out.status.success(), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("none pending"));
    } else {
        // A server without TLS: refused with libpq's reason, not a crash.
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("SSL"),
            "{out:?}"
        );
        let out = run_cli(&["migrate"], &env, dir.path());
        assert!(String::from_utf8_lossy(&out.stdout).contains("none pending"));
    }
    // A broker serves from it, and what it acks is in the database.
    let rt = actix_web::rt::System::new();
    rt.block_on(async {
        let mut broker = start_broker_with(dir.path(), &env);
        let mut alice = connect(broker.port, "alice").await;
        let ack = alice.dm("bob", "pg-1", "stored in postgres").await;
        assert_eq!(ack["seq"], 1);
        let status = broker.status().await;
        assert_eq!(status["database"]["backend"], "postgres", "{status}");
        broker.child.kill().expect("SIGKILL");
        let _ = broker.child.wait();
    });
    let rows = pg.query_texts("SELECT channel || ':' || seq AS v FROM messages");
    assert_eq!(rows, ["dm:alice:bob:1"]);
}

/// Two broker processes on one PostgreSQL database, a sender on each writing into one
/// group at full speed: every seq is given out once, history holds every message once
/// under the seq its ack named, and a resend through the other node gets the original ack.
#[test]
fn two_brokers_on_one_postgres_database_give_out_each_seq_once() {
    let pg = crate::helpers::PgDatabase::create();
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("temp dir"),
        tempfile::tempdir().expect("temp dir"),
    );
    let env = [("SWITCHBOARD__DATABASE__URL", pg.url.as_str())];
    actix_web::rt::System::new().block_on(async {
        let mut a = start_broker_with(dir_a.path(), &env);
        let mut b = start_broker_with(dir_b.path(), &env);
        let admin = token_with_roles("admin", &["admin"]);
        let resp = awc::Client::default()
            .post(format!("http://127.0.0.1:{}/api/groups", a.port))
            .bearer_auth(&admin)
            .send_json(&serde_json::json!({"id": "team", "name": "Team",
                "members": ["alice", "bob"]}))
            .await
            .expect("create group");
        assert_eq!(resp.status().as_u16(), 201);
        let n = 300;
        let send = |port: u16, user: &'static str| async move {
            let mut c = connect(port, user).await;
            for i in 0..n {
                c.send(crate::helpers::group_msg(
                    "team",
                    &format!("{user}-{i}"),
                    "x",
                ))
                .await;
            }
            let mut acks = HashMap::new();
            while acks.len() < n {
                let f = c.recv().await;
                if f["type"] == "ack" {
                    let p = &f["payload"];
                    let id = p["ref_id"].as_str().expect("ref_id").to_owned();
                    acks.insert(
                        id,
                        (p["seq"].as_u64().expect("seq"), p["message_id"].clone()),
                    );
                }
            }
            acks
        };
        let (from_a, from_b) = tokio::join!(send(a.port, "alice"), send(b.port, "bob"));
        let mut seqs: Vec<u64> = from_a
            .values()
            .chain(from_b.values())
            .map(|v| v.0)
            .collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=2 * n as u64).collect::<Vec<_>>());
        // History, read through node B, holds every message once under its acked seq.
        let client = awc::Client::builder().timeout(WAIT).finish();
        let mut stored = HashMap::new();
        let mut after = 0;
        loop {
            let page: Value = client
                .get(format!(
                    "http://127.0.0.1:{}/api/messages/group/team?after_seq={after}&limit=200",
                    b.port
                ))
                .bearer_auth(token("alice"))
                .send()
                .await
                .expect("history")
                .json()
                .limit(16 << 20)
                .await
                .expect("json");
            for m in page["messages"].as_array().expect("messages") {
                let seq = m["meta"]["seq"].as_u64().expect("seq");
                assert!(
                    stored.insert(seq, m["id"].clone()).is_none(),
                    "seq {seq} twice"
                );
                after = seq;
            }
            if page["has_more"] != true {
                break;
            }
        }
        assert_eq!(stored.len(), 2 * n);
        for (seq, id) in from_a.values().chain(from_b.values()) {
            assert_eq!(stored.get(seq), Some(id), "seq {seq}");
        }
        // Alice resends her first frame through node B: the original ack comes back.
        let mut again = connect(b.port, "alice").await;
        again
            .send(crate::helpers::group_msg("team", "alice-0", "x"))
            .await;
        let ack = again.recv_type("ack").await;
        let (seq, id) = &from_a["alice-0"];
        assert_eq!(ack["payload"]["seq"].as_u64(), Some(*seq));
        assert_eq!(&ack["payload"]["message_id"], id);
        for broker in [&mut a, &mut b] {
            let _ = broker.child.kill();
            let _ = broker.child.wait();
        }
    });
}

/// PostgreSQL restarted under load: publishers are answered `unavailable` (never left
/// waiting), `/ready` fails and `/status` says why meanwhile, the broker recovers alone
/// when the database is back, every acked message is in the database under its acked seq,
/// and a resend of each frame answered `unavailable` is stored once.
#[test]
fn postgres_restarted_under_load_loses_nothing_acked_and_recovers_alone() {
    let server = PgServer::start();
    let url = server.url();
    let dir = tempfile::tempdir().expect("temp dir");
    let env = [
        ("SWITCHBOARD__DATABASE__URL", url.as_str()),
        ("SWITCHBOARD__DATABASE__STATEMENT_TIMEOUT", "2s"),
    ];
    actix_web::rt::System::new().block_on(async {
        let broker = start_broker_with(dir.path(), &env);
        let answers = Rc::new(RefCell::new(Answers::default()));
        let done = Rc::new(Cell::new(false));
        let users = ["alice", "carol", "dave"];
        let tasks: Vec<_> = users
            .iter()
            .map(|u| {
                actix_web::rt::spawn(publish_until(broker.port, u, answers.clone(), done.clone()))
            })
            .collect();
        let acked = || answers.borrow().acked.len();
        wait_until("load flows", || acked() >= 300).await;

        server.stop();
        wait_until("every publisher told to retry", || {
            let a = answers.borrow();
            users
                .iter()
                .all(|u| a.unavailable.iter().any(|id| id.starts_with(u)))
        })
        .await;
        let (code, ready) = get_json(broker.port, "/ready").await;
        assert_eq!(code, 503, "{ready}");
        assert!(ready["database"]["error"].is_string(), "{ready}");
        let status = broker.status().await;
        let db = &status["database"];
        assert_eq!(db["backend"], "postgres", "{status}");
        assert_eq!(db["health"]["state"], "failing", "{status}");
        assert!(
            db["health"]["last_error"]["message"].is_string(),
            "{status}"
        );
        assert!(db["pool"]["max"].as_u64() > Some(0), "{status}");

        server.start_again();
        let before = acked();
        wait_until("acks again after the restart", || acked() >= before + 300).await;
        done.set(true);
        for t in tasks {
            t.await.expect("publisher");
        }
        let (code, ready) = get_json(broker.port, "/ready").await;
        assert_eq!(code, 200, "{ready}");
        assert_eq!(broker.status().await["database"]["health"]["state"], "ok");

        let answers = answers.take();
        assert!(answers.other.is_empty(), "{:?}", answers.other);
        let stored: HashMap<String, (String, u64, String)> = crate::helpers::pg_query_texts(
            &url,
            "SELECT client_msg_id || ' ' || channel || ' ' || seq || ' ' || id AS v \
             FROM messages",
        )
        .into_iter()
        .map(|row| {
            let f: Vec<&str> = row.split(' ').collect();
            let seq = f[2].parse().expect("seq");
            (f[0].to_owned(), (f[1].to_owned(), seq, f[3].to_owned()))
        })
        .collect();
        for (id, ack) in &answers.acked {
            assert_eq!(stored.get(id), Some(ack), "acked frame {id}");
        }
        // Each frame answered `unavailable`, sent again, is acked: stored once, whether or
        // not its first try was committed before the connection went.
        for user in users {
            let mut c = connect(broker.port, user).await;
            for id in answers.unavailable.iter().filter(|id| id.starts_with(user)) {
                let f = c.request(chat("bob", id, "kept")).await;
                assert_eq!(f["type"], "ack", "{id}: {f}");
            }
        }
        let dupes = crate::helpers::pg_query_texts(
            &url,
            "SELECT (count(*) - count(DISTINCT client_msg_id))::text AS v FROM messages",
        );
        assert_eq!(dupes, ["0"]);
        assert!(!broker.log_lines("database failing").is_empty());
        assert!(!broker.log_lines("database answers again").is_empty());
        let errors = broker.log_lines(" ERROR ");
        assert!(errors.is_empty(), "{errors:#?}");
        stop(broker);
    });
}

/// What the publishers of the restart test were answered.
#[derive(Default)]
struct Answers {
    /// Frame id → the channel, seq and message id its ack named.
    acked: HashMap<String, (String, u64, String)>,
    /// Frame ids answered `unavailable`.
    unavailable: Vec<String>,
    /// Any other answer.
    other: Vec<Value>,
}

/// Sends DMs from `user` to bob in windows of 8 until `stop`; each frame must be answered
/// within 20 s.
async fn publish_until(port: u16, user: &str, answers: Rc<RefCell<Answers>>, stop: Rc<Cell<bool>>) {
    let mut c = connect(port, user).await;
    let mut n = 0;
    while !stop.get() {
        for k in 0..8 {
            c.send(chat("bob", &format!("{user}-{}", n + k), "kept"))
                .await;
        }
        n += 8;
        let mut left = 8;
        while left > 0 {
            let f = c
                .try_recv(Duration::from_secs(20))
                .await
                .unwrap_or_else(|| panic!("{user}: a frame left unanswered for 20 s"));
            let p = &f["payload"];
            let id = p["ref_id"].as_str().unwrap_or_default().to_owned();
            let mut a = answers.borrow_mut();
            match (f["type"].as_str(), p["code"].as_str()) {
                (Some("ack"), _) => {
                    let channel = p["channel"].as_str().unwrap_or_default().to_owned();
                    let seq = p["seq"].as_u64().expect("seq");
                    let msg = p["message_id"].as_str().expect("message_id").to_owned();
                    a.acked.insert(id, (channel, seq, msg));
                }
                (Some("error"), Some("unavailable")) => a.unavailable.push(id),
                (Some("error"), _) => a.other.push(f.clone()),
                _ => continue,
            }
            left -= 1;
        }
    }
}

/// Waits up to 60 s for `done`.
async fn wait_until(what: &str, done: impl Fn() -> bool) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{what}: not within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `GET path`: the status code and the JSON body.
async fn get_json(port: u16, path: &str) -> (u16, Value) {
    let mut resp = awc::Client::builder()
        .timeout(WAIT)
        .finish()
        .get(format!("http://127.0.0.1:{port}{path}"))
        .send()
        .await
        .expect("request");
    (resp.status().as_u16(), resp.json().await.expect("json"))
}

/// A PostgreSQL server of the test's own (initdb into a temporary directory, a spare
/// port), which the test stops and starts. Runs as the `postgres` user when the test runs
/// as root (PostgreSQL refuses root); removed when dropped.
struct PgServer {
    dir: tempfile::TempDir,
    port: u16,
    bin: std::path::PathBuf,
}

impl PgServer {
    fn start() -> PgServer {
        let bin = Command::new("pg_config")
            .arg("--bindir")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .expect("pg_config --bindir names PostgreSQL's programs (initdb, pg_ctl)");
        let dir = tempfile::tempdir().expect("temp dir");
        if Self::as_root() {
            let id = |flag: &str| -> u32 {
                let out = Command::new("id")
                    .args([flag, "postgres"])
                    .output()
                    .expect("id");
                String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .parse()
                    .expect("the postgres user exists")
            };
            std::os::unix::fs::chown(dir.path(), Some(id("-u")), Some(id("-g"))).expect("chown");
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("spare port")
            .port();
        let server = PgServer {
            dir,
            port,
            bin: bin.into(),
        };
        server.run(
            "initdb",
            &[
                "-D",
                &server.data(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        );
        server.start_again();
        server
    }

    fn as_root() -> bool {
        Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout.trim_ascii() == b"0")
            .unwrap_or(false)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// One of PostgreSQL's programs, to run as `postgres` when root.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if Self::as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        }
    }

    /// Runs one of PostgreSQL's programs and asserts it succeeded.
    fn run(&self, program: &str, args: &[&str]) {
        let out = self
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("PostgreSQL program runs");
        assert!(out.status.success(), "{program} {args:?}: {out:?}");
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the server and waits until it accepts connections.
    fn start_again(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log").display().to_string();
        self.run(
            "pg_ctl",
            &["start", "-w", "-D", &self.data(), "-l", &log, "-o", &opts],
        );
    }

    /// Stops the server as an operator's restart does: open connections are ended and
    /// transactions in flight are rolled back.
    fn stop(&self) {
        self.run("pg_ctl", &["stop", "-w", "-m", "fast", "-D", &self.data()]);
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self
            .command("pg_ctl")
            .args(["stop", "-m", "immediate", "-D", &data])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
