//! A cluster of brokers for the tests: nodes on one fresh PostgreSQL database and one
//! Redis (the tests', or a private one a test stops and starts).

use std::time::Duration;

use serde_json::Value;

use super::{serve, test_settings, PgDatabase, Settings, TestApp, WAIT};

/// Where the tests' Redis is: `SWITCHBOARD_TEST_REDIS`, or the local one CI starts.
pub fn redis_url() -> String {
    std::env::var("SWITCHBOARD_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A Redis server of a test's own, on a spare port, that the test stops and starts again
/// (the faults of a cluster). Needs `redis-server` on the PATH (CI installs it).
pub struct PrivateRedis {
    port: u16,
    child: Option<std::process::Child>,
}

impl PrivateRedis {
    /// Starts one on a free port, keeping nothing on disk.
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut r = PrivateRedis { port, child: None };
        r.resume().await;
        r
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it again on its port (empty, as a Redis that keeps nothing restarts).
    pub async fn resume(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server on the PATH (CI installs it)");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + WAIT;
        while !self.answers().await {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            actix_web::rt::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills it (as a crash would).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    async fn answers(&self) -> bool {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await else {
            return false;
        };
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").await.is_ok()
            && s.read_exact(&mut buf).await.is_ok()
            && &buf == b"+PONG\r\n"
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `n` nodes of one cluster (whatever backend the suite runs on): one fresh PostgreSQL
/// database, one Redis at `redis` with keys under a prefix of their own (tests run side by
/// side on one Redis), node ids `node-0`, `node-1`…; each adjusted by `adjust`. Returns
/// once every node hears the bus and lists all `n`.
pub async fn spawn_cluster_on(
    redis: &str,
    n: usize,
    adjust: impl Fn(&mut Settings),
) -> Vec<TestApp> {
    let _ = env_logger::builder().is_test(true).try_init();
    let prefix = format!("sbtest-{}", uuid::Uuid::new_v4().simple());
    let mut pg = Some(PgDatabase::create());
    let url = pg.as_ref().map(|p| p.url.clone()).unwrap_or_default();
    let mut nodes = Vec::with_capacity(n);
    for i in 0..n {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut s = test_settings(dir.path());
        s.database.url = url.clone();
        s.redis.url = redis.to_owned();
        s.cluster.key_prefix = prefix.clone();
        s.cluster.node_id = format!("node-{i}");
        s.cluster.heartbeat = Duration::from_millis(200);
        s.cluster.node_ttl = Duration::from_secs(2);
        adjust(&mut s);
        // The first node keeps the database (dropped with it).
        nodes.push(serve(s, Some(dir), pg.take()).await);
    }
    for node in &nodes {
        node.wait_for_cluster(n).await;
    }
    nodes
}

/// `n` nodes of one cluster on the tests' Redis (see [`spawn_cluster_on`]).
pub async fn spawn_cluster(n: usize) -> Vec<TestApp> {
    spawn_cluster_on(&redis_url(), n, |_| {}).await
}

impl TestApp {
    /// `GET /status`'s `cluster` part.
    pub async fn cluster_status(&self) -> Value {
        let (code, body) = self.call("GET", "/status", None, None).await;
        assert_eq!(code, 200, "{body}");
        body["cluster"].clone()
    }

    /// Another node of this node's cluster, `node_id`, started now.
    pub async fn join_cluster(&self, node_id: &str) -> TestApp {
        self.join_cluster_with(node_id, |_| {}).await
    }

    /// Another node on this node's database and Redis, `node_id`, with its settings
    /// adjusted by `adjust` (another `key_prefix` makes it a cluster of its own).
    pub async fn join_cluster_with(
        &self,
        node_id: &str,
        adjust: impl Fn(&mut Settings),
    ) -> TestApp {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut s = self.settings.clone();
        s.server.data_dir = dir.path().to_path_buf();
        s.cluster.node_id = node_id.to_owned();
        adjust(&mut s);
        serve(s, Some(dir), None).await
    }

    /// Lists a node `id` that does not run in this node's cluster, as its heartbeat would,
    /// until `for_ms` from now: then it drops out of the list as a node killed does.
    pub async fn list_phantom_node(&self, id: &str, for_ms: i64) {
        use deadpool_redis::redis;
        let prefix = &self.settings.cluster.key_prefix;
        let client = redis::Client::open(self.settings.redis.url.as_str()).expect("redis url");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("redis");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as i64;
        let info = serde_json::json!({"id": id, "url": "http://127.0.0.1:9", "started_at": now, "seen_at": now});
        // The list drops entries older than node_ttl: this one is dated so that it goes
        // `for_ms` from now.
        let ttl = self.settings.cluster.node_ttl.as_millis() as i64;
        let _: ((), ()) = redis::pipe()
            .cmd("SET")
            .arg(format!("{prefix}:node:{id}"))
            .arg(info.to_string())
            .arg("PX")
            .arg(60_000)
            .cmd("ZADD")
            .arg(format!("{prefix}:nodes"))
            .arg(now + for_ms - ttl)
            .arg(id)
            .query_async(&mut conn)
            .await
            .expect("listed");
    }

    /// Waits until this node hears the bus and lists `n` nodes.
    pub async fn wait_for_cluster(&self, n: usize) {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let c = self.cluster_status().await;
            let listed = c["nodes"].as_array().map_or(0, Vec::len);
            if c["bus_up"] == true && c["publisher_up"] == true && listed == n {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "cluster of {n} not formed: {c}"
            );
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
