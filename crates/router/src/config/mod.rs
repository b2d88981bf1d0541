//! The config file: the Python mvllm's `servers.toml` unchanged, plus our keys.
//!
//! Why strict: mvllm silently ignored unknown keys, so `max_concurent_requests = 8` quietly
//! became 3. Here an unknown key, a bad URL, a capacity below 1 or a duplicate server refuses to
//! start with `file:line:column: what is wrong` (and a did-you-mean for a typo). Every key is
//! documented in `servers.example.toml` and the manual.
//!
//! The file is read in [`Config::parse`]; each part is checked in its own room: the server
//! entries in `servers`, `[config]` a section at a time in `settings`, `[auth]` in `auth`,
//! `[models]` here. None of them imports this file.

pub mod aliases;
pub mod auth;
pub mod error;
mod raw;
mod servers;
mod settings;
pub mod types;
pub mod values;

use std::path::Path;

pub use auth::{ApiKey, AuthSettings, Priority};
pub use error::{ConfigError, did_you_mean};
use error::{explain, line_col};
use raw::RawFile;
use settings::settings;
pub use types::*;
use values::resolve_path;

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            line: 0,
            column: 0,
            message: format!("cannot read the config file: {e}"),
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses and validates config text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let at = |span: std::ops::Range<usize>, message: String| {
            let (line, column) = line_col(text, span.start);
            ConfigError {
                file: file.to_string(),
                line,
                column,
                message,
            }
        };
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            at(span, explain(e.message()))
        })?;
        let (servers, dns) = servers::servers(raw.servers, &at)?;
        let mut settings = settings(raw.config, file, &at)?;
        settings.auth = auth::auth_settings(raw.auth, file, &at)?;
        settings.tokenizers = tokenizer_dirs(raw.models, file, &at)?;
        if let Some(why) = settings.insecure_admin() {
            return Err(ConfigError {
                file: file.to_string(),
                line: 0,
                column: 0,
                message: why.into(),
            });
        }
        Ok(Config {
            servers,
            dns,
            settings,
        })
    }
}

/// `[models."NAME"] tokenizer = "DIR"`: each directory must hold a `tokenizer.json`.
fn tokenizer_dirs(
    models: std::collections::BTreeMap<String, raw::RawModel>,
    file: &str,
    at: &dyn Fn(std::ops::Range<usize>, String) -> ConfigError,
) -> Result<Vec<(String, std::path::PathBuf)>, ConfigError> {
    let mut out = Vec::new();
    for (name, m) in models {
        let Some(dir) = m.tokenizer else { continue };
        let path = resolve_path(file, dir.get_ref());
        if !path.join("tokenizer.json").is_file() {
            return Err(at(
                dir.span(),
                format!(
                    "model `{name}`: no tokenizer.json in `{}` (give the model's directory)",
                    path.display()
                ),
            ));
        }
        out.push((name, path));
    }
    Ok(out)
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
