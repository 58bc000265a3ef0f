//! Results: a human table or one JSON object, and whether the run counts as a failure.

use serde::Serialize;
use serde_json::{Map, Value};

/// The result of one scenario run.
#[derive(Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: &'static str,
    /// Settings the run used.
    pub params: Map<String, Value>,
    /// Measured values, in insertion order.
    pub results: Map<String, Value>,
    /// Reasons the run failed (loss, errors, timeout); empty when it passed.
    pub failures: Vec<String>,
    /// Notes that are not failures.
    pub notes: Vec<String>,
}

impl Report {
    /// An empty report for `scenario`.
    pub fn new(scenario: &'static str) -> Self {
        Report {
            scenario,
            params: Map::new(),
            results: Map::new(),
            failures: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Records a setting.
    pub fn param(&mut self, k: &str, v: impl Serialize) -> &mut Self {
        self.params.insert(k.to_owned(), to_value(v));
        self
    }

    /// Records a result.
    pub fn result(&mut self, k: &str, v: impl Serialize) -> &mut Self {
        self.results.insert(k.to_owned(), to_value(v));
        self
    }

    /// Marks the run failed, with why.
    pub fn fail(&mut self, why: impl Into<String>) {
        self.failures.push(why.into());
    }

    /// Adds a remark.
    pub fn note(&mut self, n: impl Into<String>) {
        self.notes.push(n.into());
    }

    /// Whether the run passed.
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }

    /// The report as pretty JSON with an `ok` field.
    pub fn to_json(&self) -> String {
        let mut v = to_value(self);
        if let Value::Object(m) = &mut v {
            m.insert("ok".into(), Value::Bool(self.ok()));
        }
        serde_json::to_string_pretty(&v).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The report as an aligned table.
    pub fn to_table(&self) -> String {
        let mut rows: Vec<(String, String)> = Vec::new();
        let flat = |prefix: &str, m: &Map<String, Value>, rows: &mut Vec<(String, String)>| {
            for (k, v) in m {
                flatten(&format!("{prefix}{k}"), v, rows);
            }
        };
        flat("", &self.params, &mut rows);
        let split = rows.len();
        flat("", &self.results, &mut rows);
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = format!("== {} ==\n", self.scenario);
        for (i, (k, v)) in rows.iter().enumerate() {
            if i == split {
                out.push_str(&format!("{}\n", "-".repeat(width + 12)));
            }
            out.push_str(&format!("{k:<width$}  {v}\n"));
        }
        for n in &self.notes {
            out.push_str(&format!("note: {n}\n"));
        }
        if self.ok() {
            out.push_str("result: OK\n");
        } else {
            for f in &self.failures {
                out.push_str(&format!("FAILED: {f}\n"));
            }
        }
        out
    }
}

fn to_value(v: impl Serialize) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

fn flatten(key: &str, v: &Value, rows: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                flatten(&format!("{key}.{k}"), v, rows);
            }
        }
        Value::Number(n) => rows.push((key.to_owned(), fmt_number(n))),
        Value::String(s) => rows.push((key.to_owned(), s.clone())),
        other => rows.push((key.to_owned(), other.to_string())),
    }
}

fn fmt_number(n: &serde_json::Number) -> String {
    if let Some(i) = n.as_u64() {
        return group_digits(i);
    }
    match n.as_f64() {
        Some(f) if f.abs() >= 1000.0 => group_digits(f.round() as u64),
        Some(f) => format!("{f:.3}"),
        None => n.to_string(),
    }
}

fn group_digits(v: u64) -> String {
    let digits = v.to_string().into_bytes();
    let mut out = Vec::with_capacity(digits.len() + digits.len() / 3);
    for (i, d) in digits.iter().rev().enumerate() {
        if i > 0 && i % 3 == 0 {
            out.push(b',');
        }
        out.push(*d);
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// Rounds to 3 decimals (for rates and ratios in JSON).
pub fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_and_json() {
        let mut r = Report::new("t");
        r.param("n", 1000u64);
        r.result("rate", 1234567.8)
            .result("lat", serde_json::json!({"p50_ms": 0.25}));
        let t = r.to_table();
        assert!(t.contains("1,234,568"));
        assert!(t.contains("lat.p50_ms"));
        assert!(t.contains("result: OK"));
        r.fail("lost 3");
        assert!(r.to_json().contains("\"ok\": false"));
    }
}
