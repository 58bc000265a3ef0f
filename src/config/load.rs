//! Loading the settings: config.toml (or the file named), then `SWITCHBOARD__…`
//! environment variables on top, then validation.

use std::path::{Path, PathBuf};

use super::{ConfigError, Settings};

impl Settings {
    /// Loads `file` (or `SWITCHBOARD_CONFIG`, or `./config.toml` if present), then the
    /// environment.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        let env_file = std::env::var_os("SWITCHBOARD_CONFIG").map(PathBuf::from);
        let path = match (file, env_file) {
            (Some(p), _) => Some(p.to_path_buf()),
            (None, Some(p)) => Some(p),
            (None, None) => {
                let p = PathBuf::from("config.toml");
                p.exists().then_some(p)
            }
        };
        let text = match &path {
            Some(p) => std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.clone(),
                source,
            })?,
            None => String::new(),
        };
        Settings::from_sources(&text, std::env::vars())
    }

    /// Builds settings from TOML text and `(name, value)` environment pairs.
    pub fn from_sources(
        toml_text: &str,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let invalid = |e: &dyn std::fmt::Display| ConfigError::Invalid(e.to_string());
        let mut merged = toml::Table::try_from(Settings::default()).map_err(|e| invalid(&e))?;
        let file: toml::Table = toml::from_str(toml_text).map_err(|e| invalid(&e))?;
        merge(&mut merged, file);
        for (name, value) in env {
            let Some(rest) = name.strip_prefix("SWITCHBOARD__") else {
                continue;
            };
            let path: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
            set_from_env(&mut merged, &path, &value)
                .map_err(|e| ConfigError::Invalid(format!("{name}: {e}")))?;
        }
        let settings: Settings = merged.try_into().map_err(|e| invalid(&e))?;
        settings.validate()?;
        Ok(settings)
    }
}

fn merge(into: &mut toml::Table, from: toml::Table) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

/// Sets `path` to `raw`, converted to the type the key already has.
fn set_from_env(table: &mut toml::Table, path: &[String], raw: &str) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty key")?;
    let mut t = table;
    for p in parents {
        t = match t.get_mut(p) {
            Some(toml::Value::Table(inner)) => inner,
            _ => return Err(format!("unknown config section `{p}`")),
        };
    }
    let value = match t.get(last) {
        Some(toml::Value::Integer(_)) => raw
            .trim()
            .parse::<i64>()
            .map(toml::Value::Integer)
            .map_err(|e| format!("expected an integer: {e}"))?,
        Some(toml::Value::Float(_)) => raw
            .trim()
            .parse::<f64>()
            .map(toml::Value::Float)
            .map_err(|e| format!("expected a number: {e}"))?,
        Some(toml::Value::Boolean(_)) => match raw.trim() {
            "true" | "1" | "yes" => toml::Value::Boolean(true),
            "false" | "0" | "no" => toml::Value::Boolean(false),
            _ => return Err("expected true or false".into()),
        },
        Some(toml::Value::String(_)) | None => toml::Value::String(raw.to_owned()),
        // A list from the environment: comma-separated strings.
        Some(toml::Value::Array(_)) => toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(|v| toml::Value::String(v.to_owned()))
                .collect(),
        ),
        Some(_) => return Err("this key cannot be set from the environment".into()),
    };
    t.insert(last.clone(), value);
    Ok(())
}
