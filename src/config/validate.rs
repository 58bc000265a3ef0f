//! Validation of loaded settings: every rule a value must meet, with the message an
//! operator sees.

use std::time::Duration;

use super::{ConfigError, Settings, MAX_TOKEN_LIFE_S};

impl Settings {
    /// Checks every value; the first rule broken is the error.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if !self.redis.url.is_empty() {
            if !switchboard_actors::store::postgres::is_postgres_url(&self.database.url) {
                return bad(
                    "redis.url joins a cluster, whose nodes share one PostgreSQL database: \
                     set database.url to a postgres:// URL (or leave redis.url empty)",
                );
            }
            let c = &self.cluster;
            if c.heartbeat.is_zero() || c.node_ttl < c.heartbeat * 2 {
                return bad("cluster.heartbeat must be > 0 and cluster.node_ttl at least twice it");
            }
            if c.gap_wait.is_zero() || c.late_window < c.gap_wait {
                return bad("cluster.gap_wait must be > 0 and cluster.late_window at least it");
            }
            if c.replay_window < c.late_window || c.replay_channels == 0 || c.outbox == 0 {
                return bad(
                    "cluster.replay_window must be at least cluster.late_window, and \
                     cluster.replay_channels and cluster.outbox at least 1",
                );
            }
            if c.rate_share_every.is_zero() {
                return bad("cluster.rate_share_every must be > 0");
            }
            if !c.node_id.is_empty() && !switchboard_actors::ids::valid_id(&c.node_id) {
                return bad("cluster.node_id may hold letters, digits and _ . @ - only");
            }
        }
        if self.limits.frames_per_second <= 0.0 || self.limits.frames_burst < 1.0 {
            return bad("limits.frames_per_second must be > 0 and limits.frames_burst >= 1");
        }
        if self.limits.max_frame_bytes < 128 {
            return bad("limits.max_frame_bytes must be at least 128");
        }
        if self.limits.outbound_queue == 0 {
            return bad("limits.outbound_queue must be at least 1");
        }
        if self.limits.frame_timeout.is_zero() {
            return bad("limits.frame_timeout must be > 0");
        }
        let hook = &self.push.webhook_url;
        if !(hook.is_empty() || hook.starts_with("http://") || hook.starts_with("https://")) {
            return bad("push.webhook_url must be an http:// or https:// URL");
        }
        let cmd = &self.command;
        if !(cmd.backend_url.is_empty()
            || cmd.backend_url.starts_with("http://")
            || cmd.backend_url.starts_with("https://"))
        {
            return bad("command.backend_url must be an http:// or https:// URL");
        }
        // An HTTP send waits 30 s for its answer: a call must end well before.
        if cmd.timeout.is_zero() || cmd.timeout > Duration::from_secs(25) {
            return bad("command.timeout must be > 0 and at most 25s");
        }
        if cmd.max_in_flight == 0 || cmd.breaker_failures == 0 || cmd.max_response_bytes == 0 {
            return bad(
                "command.max_in_flight, command.breaker_failures and command.max_response_bytes must be at least 1",
            );
        }
        if !(1..=128).contains(&self.limits.max_json_depth) {
            return bad("limits.max_json_depth must be from 1 to 128");
        }
        if !(self.limits.pending_connections_share > 0.0
            && self.limits.pending_connections_share <= 1.0)
        {
            return bad("limits.pending_connections_share must be > 0 and <= 1");
        }
        if self.limits.upgrades_per_ip_per_second < 0.0
            || (self.limits.upgrades_per_ip_per_second > 0.0
                && self.limits.upgrades_per_ip_burst < 1.0)
        {
            return bad(
                "limits.upgrades_per_ip_per_second must be >= 0 (0: off), with \
                 limits.upgrades_per_ip_burst >= 1",
            );
        }
        if self.limits.requests_per_ip_per_second < 0.0
            || (self.limits.requests_per_ip_per_second > 0.0
                && self.limits.requests_per_ip_burst < 1.0)
        {
            return bad(
                "limits.requests_per_ip_per_second must be >= 0 (0: off), with \
                 limits.requests_per_ip_burst >= 1",
            );
        }

        let page = self.database.sqlite_page_size;
        if !(512..=65_536).contains(&page) || !page.is_power_of_two() {
            return bad("database.sqlite_page_size must be a power of two from 512 to 65536");
        }
        if self.session.heartbeat_interval.is_zero() || self.session.heartbeat_timeout.is_zero() {
            return bad("session.heartbeat_interval and session.heartbeat_timeout must be > 0");
        }
        if !matches!(
            self.auth.jwt_algorithm.as_str(),
            "HS256" | "RS256" | "ES256"
        ) {
            return bad("auth.jwt_algorithm must be HS256, RS256 or ES256");
        }
        if self.auth.refresh_ttl.is_zero() || self.auth.refresh_ttl.as_secs() > MAX_TOKEN_LIFE_S {
            return bad("auth.refresh_ttl must be > 0 and at most 90days");
        }
        if self.server.drain_window + Duration::from_secs(2) > self.server.shutdown_timeout {
            return bad(
                "server.drain_window must leave 2s of server.shutdown_timeout for the flush",
            );
        }
        for o in &self.server.allowed_origins {
            let well_formed = o == "*"
                || ((o.starts_with("https://") || o.starts_with("http://"))
                    && !o
                        .split_once("://")
                        .is_some_and(|(_, rest)| rest.is_empty() || rest.contains('/')));
            if !well_formed {
                return bad(
                    "server.allowed_origins entries must be \"*\" or scheme://host[:port] with no path",
                );
            }
        }
        if let Err(e) = self.encryption.sealer() {
            return bad(&e);
        }
        if self.server.tls_cert_file.is_empty() != self.server.tls_key_file.is_empty() {
            return bad("server.tls_cert_file and server.tls_key_file go together");
        }
        if self.auth.revocation_poll < Duration::from_millis(100) {
            return bad("auth.revocation_poll must be at least 100ms");
        }
        Ok(())
    }
}
