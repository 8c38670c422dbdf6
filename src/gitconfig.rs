//! git's configuration as `git config` answers it. libgit2 reads $HOME/.gitconfig and XDG config
//! but not GIT_CONFIG_GLOBAL / GIT_CONFIG_SYSTEM / GIT_CONFIG_NOSYSTEM, nor `git -c` values passed
//! in GIT_CONFIG_PARAMETERS / GIT_CONFIG_COUNT (which git hands to hooks): tpa and git then
//! disagree about who the user is. So every value tpa reads comes from one `git config --list`
//! of the repository, read once per process and dropped when tpa itself writes config.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

use git2::Repository;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot run `git config` ({0}): is git installed and on PATH?")]
    Spawn(#[source] std::io::Error),
    #[error("`git config --list` failed: {0}")]
    Failed(String),
}

/// Every `key=value` git sees for a repository, in git's order (system, global, local, worktree,
/// command line), so the last value of a key is the one in force.
#[derive(Debug, Default)]
pub struct GitConfig {
    entries: Vec<(String, Option<String>)>,
}

impl GitConfig {
    /// The configuration of `repo`, as `git config` run in it reports.
    pub fn of(repo: &Repository) -> Result<Arc<GitConfig>, ConfigError> {
        let dir = repo.workdir().unwrap_or_else(|| repo.path()).to_owned();
        let mut cache = cache().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(config) = cache.get(&dir) {
            return Ok(config.clone());
        }
        let config = Arc::new(GitConfig::read(&dir)?);
        cache.insert(dir, config.clone());
        Ok(config)
    }

    /// Forgets what was read: tpa just wrote configuration.
    pub fn invalidate() {
        cache().lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    fn read(dir: &Path) -> Result<GitConfig, ConfigError> {
        let output = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["config", "--list", "-z"])
            .stdin(Stdio::null())
            .output()
            .map_err(ConfigError::Spawn)?;
        // `git config --list` exits 0 with no output when there is no configuration at all.
        if !output.status.success() {
            return Err(ConfigError::Failed(String::from_utf8_lossy(&output.stderr).trim().to_owned()));
        }
        Ok(GitConfig::parse(&output.stdout))
    }

    /// `key\nvalue\0` per entry; a key with no `=` (a bare boolean) has no newline.
    pub fn parse(bytes: &[u8]) -> GitConfig {
        let entries = bytes
            .split(|b| *b == 0)
            .filter(|e| !e.is_empty())
            .map(|entry| {
                let text = String::from_utf8_lossy(entry);
                match text.split_once('\n') {
                    Some((key, value)) => (key.to_owned(), Some(value.to_owned())),
                    None => (text.into_owned(), None),
                }
            })
            .collect();
        GitConfig { entries }
    }

    /// The value in force for `key` (`section.name` or `section.subsection.name`; section and name
    /// are case-insensitive as in git, the subsection is not).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.get_all(key).last()
    }

    /// A value that is set and not blank.
    pub fn get_nonempty(&self, key: &str) -> Option<&str> {
        self.get(key).filter(|v| !v.trim().is_empty())
    }

    /// Every value of a multi-valued key, in order.
    pub fn get_all<'a>(&'a self, key: &str) -> impl Iterator<Item = &'a str> + 'a {
        let wanted = normalize(key);
        self.entries
            .iter()
            .filter(move |(k, _)| normalize(k) == wanted)
            .map(|(_, v)| v.as_deref().unwrap_or("true"))
    }

    /// An integer as git reads one (decimal, with an optional k, m or g: 1024-based): `default`
    /// when unset, None when set to something git would refuse.
    pub fn get_int(&self, key: &str, default: i64) -> Option<i64> {
        self.get(key).map_or(Some(default), parse_int)
    }

    /// Names of the configured remotes (those with a URL), in the order git lists them.
    pub fn remotes(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for (key, _) in &self.entries {
            let Some(rest) = key.strip_prefix("remote.") else { continue };
            let Some((name, var)) = rest.rsplit_once('.') else { continue };
            if var.eq_ignore_ascii_case("url") && !names.iter().any(|n| n == name) {
                names.push(name.to_owned());
            }
        }
        names
    }

    /// The URL of a remote, if it has one.
    pub fn remote_url(&self, remote: &str) -> Option<&str> {
        self.get(&format!("remote.{remote}.url"))
    }
}

fn cache() -> &'static Mutex<HashMap<PathBuf, Arc<GitConfig>>> {
    static CACHE: OnceLock<Mutex<HashMap<PathBuf, Arc<GitConfig>>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

fn parse_int(text: &str) -> Option<i64> {
    let text = text.trim();
    let (digits, factor) = match text.as_bytes().last()?.to_ascii_lowercase() {
        b'k' => (&text[..text.len() - 1], 1024),
        b'm' => (&text[..text.len() - 1], 1024 * 1024),
        b'g' => (&text[..text.len() - 1], 1024 * 1024 * 1024),
        _ => (text, 1),
    };
    digits.parse::<i64>().ok()?.checked_mul(factor)
}

/// git compares section and variable names case-insensitively, subsections exactly.
fn normalize(key: &str) -> String {
    match (key.find('.'), key.rfind('.')) {
        (Some(first), Some(last)) if first != last => format!(
            "{}{}{}",
            key[..first].to_ascii_lowercase(),
            &key[first..last],
            key[last..].to_ascii_lowercase()
        ),
        _ => key.to_ascii_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::GitConfig;

    #[test]
    fn integers_read_as_git_reads_them() {
        assert_eq!(super::parse_int("6700"), Some(6700));
        assert_eq!(super::parse_int(" 0 "), Some(0));
        assert_eq!(super::parse_int("-1"), Some(-1));
        assert_eq!(super::parse_int("2k"), Some(2048));
        assert_eq!(super::parse_int("1M"), Some(1024 * 1024));
        assert_eq!(super::parse_int("lots"), None);
        assert_eq!(super::parse_int(""), None);
    }

    #[test]
    fn the_last_value_wins_and_names_compare_like_git() {
        let config = GitConfig::parse(
            b"user.email\nold@example.com\0user.email\nnew@example.com\0tpa.signingkey\nfile:/k\0\
              remote.Up.Stream.url\n/srv/x.git\0remote.Up.Stream.fetch\n+a\0remote.Up.Stream.fetch\n+b\0\
              core.bare\0remote.origin.url\n/o.git\0",
        );
        assert_eq!(config.get("user.email"), Some("new@example.com"));
        assert_eq!(config.get("tpa.signingKey"), Some("file:/k"));
        assert_eq!(config.get("TPA.SIGNINGKEY"), Some("file:/k"));
        assert_eq!(config.get("core.bare"), Some("true"));
        assert_eq!(config.remotes(), vec!["Up.Stream".to_owned(), "origin".to_owned()]);
        assert_eq!(config.get_all("remote.Up.Stream.fetch").collect::<Vec<_>>(), vec!["+a", "+b"]);
        assert_eq!(config.get("remote.up.stream.url"), None, "subsections are case-sensitive");
        assert_eq!(config.remote_url("origin"), Some("/o.git"));
    }

    #[test]
    fn values_may_hold_newlines_and_equals_signs() {
        let config = GitConfig::parse(b"alias.x\n!a=b\nc\0");
        assert_eq!(config.get("alias.x"), Some("!a=b\nc"));
    }
}
