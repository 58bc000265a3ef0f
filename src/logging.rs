//! Log output: env_logger, in text or as one JSON object per line (`log.format`).

use std::io::Write;

use log::kv::{Error as KvError, Key, Value as KvValue, VisitSource};
use serde_json::{Map, Value};

use crate::config::{LogFormat, LogSettings};

/// Sets up the process's logger from `[log]` (`RUST_LOG` overrides the filter).
pub fn init(settings: &LogSettings) {
    let mut b = env_logger::Builder::new();
    b.parse_filters(&settings.filter).parse_env("RUST_LOG");
    if settings.format == LogFormat::Json {
        b.format(|buf, record| {
            let line = json_line(record, std::time::SystemTime::now());
            writeln!(buf, "{line}")
        });
    }
    b.init();
}

/// One record as a JSON object: `ts`, `level`, `target`, `msg`, then its key-values.
fn json_line(record: &log::Record<'_>, now: std::time::SystemTime) -> Value {
    let mut o = Map::new();
    o.insert(
        "ts".into(),
        Value::String(humantime::format_rfc3339_millis(now).to_string()),
    );
    o.insert("level".into(), Value::String(record.level().to_string()));
    o.insert("target".into(), Value::String(record.target().to_owned()));
    o.insert("msg".into(), Value::String(record.args().to_string()));
    struct Fields<'a>(&'a mut Map<String, Value>);
    impl<'kvs> VisitSource<'kvs> for Fields<'_> {
        fn visit_pair(&mut self, key: Key<'kvs>, value: KvValue<'kvs>) -> Result<(), KvError> {
            let v = if let Some(n) = value.to_u64() {
                Value::from(n)
            } else if let Some(n) = value.to_i64() {
                Value::from(n)
            } else if let Some(b) = value.to_bool() {
                Value::from(b)
            } else {
                Value::String(value.to_string())
            };
            self.0.insert(key.as_str().to_owned(), v);
            Ok(())
        }
    }
    let _ = record.key_values().visit(&mut Fields(&mut o));
    Value::Object(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_becomes_one_json_object_with_its_keys() {
        let kvs: [(&str, KvValue); 2] =
            [("conn", KvValue::from(7u64)), ("request_id", "r-1".into())];
        let record = log::Record::builder()
            .args(format_args!("closing \"now\""))
            .level(log::Level::Warn)
            .target("switchboard::session")
            .key_values(&kvs)
            .build();
        let line = json_line(&record, std::time::UNIX_EPOCH);
        assert_eq!(
            line,
            serde_json::json!({
                "ts": "1970-01-01T00:00:00.000Z",
                "level": "WARN",
                "target": "switchboard::session",
                "msg": "closing \"now\"",
                "conn": 7,
                "request_id": "r-1",
            })
        );
        assert!(!line.to_string().contains('\n'));
    }
}
