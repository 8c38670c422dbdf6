//! `.tpa/policy.toml`: parse, validate and decide. Pure: the caller reads the file from the trust ref
//! (see `crate::trust`) and hands its text here; nothing in this module does I/O or prints.
//!
//! The model and its decisions live here; reading the TOML with spans for messages is `parse`.
//!
//! Every key of the full product is parsed and validated, including those of features this tpa does not
//! run yet (databases, notify, sync), so a policy written for the full product never breaks this tpa.
//! Errors name the file, line and column, and end with what to write instead. docs/policy.md documents
//! every key.

mod parse;

use std::collections::BTreeMap;
use std::fmt;

/// The shortest session STS issues, in seconds.
pub const STS_MIN_TTL: u64 = 900;
/// The longest session STS issues (a role's MaxSessionDuration may be at most this), in seconds.
pub const STS_MAX_TTL: u64 = 43_200;
/// The longest `approval_window` a policy may set, in seconds.
pub const MAX_APPROVAL_WINDOW: u64 = 7 * 86_400;

/// The parsed, validated policy. Durations are in seconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Globs on short branch names; grants are never taken on these.
    pub protected_branches: Vec<String>,
    /// Globs on short branch names; `None`: any branch that is not protected.
    pub request_branches: Option<Vec<String>>,
    pub min_reason_length: usize,
    pub default_ttl: u64,
    pub abandon_after: u64,
    pub sync: SyncMode,
    pub roles: BTreeMap<String, RolePolicy>,
    pub databases: BTreeMap<String, DatabasePolicy>,
    pub notify: Vec<NotifyPolicy>,
    /// `[groups]`: named lists of principals (as in `.tpa/allowed_signers`), for `approvers`.
    pub groups: BTreeMap<String, Vec<String>>,
    /// The principals whose keys sign what a broker mints (`mint = "broker"`).
    pub brokers: Vec<String>,
}

/// Who must say yes before a role or database is minted, and how. Default: nobody.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApprovalRules {
    /// Distinct approvals needed (0: none).
    pub approvals: u32,
    /// Principals, or `@group`s of `[groups]`.
    pub approvers: Vec<String>,
    /// A request unapproved for this long lapses; an approval older than this stops counting.
    pub window: u64,
    /// `tpa request --break-glass` grants at once, to be reviewed after the fact.
    pub break_glass: bool,
    /// A break-glass grant unreviewed after this long is an audit error.
    pub review_within: u64,
    /// Who mints: this clone (`local`) or the broker (`broker`).
    pub mint: Mint,
}

impl Default for ApprovalRules {
    fn default() -> Self {
        ApprovalRules {
            approvals: 0,
            approvers: Vec::new(),
            window: 30 * 60,
            break_glass: false,
            review_within: 24 * 3600,
            mint: Mint::Local,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mint {
    Local,
    Broker,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncMode {
    /// Push each new record to the remote right away (queued when offline).
    Push,
    /// Only `tpa sync` pushes.
    Manual,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RolePolicy {
    pub name: String,
    pub arn: String,
    pub region: Option<String>,
    pub max_ttl: u64,
    /// Repository-relative path of a session policy (JSON), read from the trust ref too.
    pub session_policy: Option<String>,
    pub allow_role_chaining: bool,
    pub require_mfa: bool,
    /// MFA device serial or ARN; `{user}` is replaced by the user name.
    pub mfa_serial: Option<String>,
    pub source_identity: bool,
    pub session_tags: bool,
    pub external_id: Option<String>,
    pub approval: ApprovalRules,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DbProvider {
    /// RDS / Aurora IAM authentication tokens signed with a role's STS credentials.
    RdsIam,
    /// PostgreSQL login roles created and dropped by tpa.
    Postgres,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DbEngine {
    Postgres,
    Mysql,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatabasePolicy {
    pub name: String,
    pub provider: DbProvider,
    pub engine: DbEngine,
    pub host: String,
    pub port: u16,
    /// rds-iam: the database user the token logs in as (required). postgres: absent.
    pub db_user: Option<String>,
    /// rds-iam: the database's region (defaults to its role's region). postgres: absent.
    pub region: Option<String>,
    /// rds-iam: the `[roles.X]` whose credentials sign the token (required). postgres: absent.
    pub role: Option<String>,
    pub max_ttl: u64,
    /// postgres: the roles the per-grant login role is made a member of (at least one).
    pub grant_roles: Vec<String>,
    /// postgres: `CONNECTION LIMIT` of the per-grant login role.
    pub connection_limit: Option<u32>,
    /// The database to connect to (default `postgres`): where tpa's admin connection creates and
    /// drops the login roles, and what `tpa exec --db` sets as PGDATABASE.
    pub dbname: String,
    pub approval: ApprovalRules,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotifyPolicy {
    pub url: String,
    pub events: Vec<NotifyEvent>,
    pub format: NotifyFormat,
    /// Notified before the secret is handed out; undeliverable means the grant is revoked and refused.
    pub required: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum NotifyEvent {
    Grant,
    Revoke,
    Irrevocable,
    Audit,
    /// A request waits for approvals: the text carries the command to approve it.
    ApprovalRequested,
    /// A break-glass grant: every webhook is told, whatever its `events`.
    BreakGlass,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotifyFormat {
    /// Slack-compatible `{"text": ...}`.
    Slack,
    /// Plain JSON.
    Json,
}

macro_rules! names {
    ($ty:ty { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $ty {
            const ALL: &'static [($ty, &'static str)] = &[$((<$ty>::$variant, $text)),+];
            pub fn as_str(self) -> &'static str {
                match self { $(<$ty>::$variant => $text),+ }
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
names!(SyncMode { Push => "push", Manual => "manual" });
names!(DbProvider { RdsIam => "rds-iam", Postgres => "postgres" });
names!(DbEngine { Postgres => "postgres", Mysql => "mysql" });
names!(NotifyEvent {
    Grant => "grant",
    Revoke => "revoke",
    Irrevocable => "irrevocable",
    Audit => "audit",
    ApprovalRequested => "approval_requested",
    BreakGlass => "break_glass",
});
names!(Mint { Local => "local", Broker => "broker" });
names!(NotifyFormat { Slack => "slack", Json => "json" });

/// A policy file that cannot be used. `message` ends with what to write instead.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct PolicyError {
    /// Where the text came from, e.g. `refs/remotes/origin/main:.tpa/policy.toml`.
    pub file: String,
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    pub message: String,
}

/// A request the policy refuses. Each message says what to do next.
/// The longest reason a grant records.
pub const MAX_REASON_CHARS: usize = 2048;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyRefusal {
    #[error(
        "a reason is required: say which incident and why, e.g. --reason \"INC-4211: fix stuck invoices\""
    )]
    ReasonMissing,
    #[error(
        "the reason is {got} characters long and policy asks for at least {min}: say which incident and \
         why, e.g. --reason \"INC-4211: fix stuck invoices\""
    )]
    ReasonTooShort { min: usize, got: usize },
    #[error(
        "the reason is {got} characters long; at most {max} are recorded: say which incident and why in \
         a sentence or two, and link to the rest (the ticket, the incident channel)"
    )]
    ReasonTooLong { max: usize, got: usize },
    #[error(
        "protected_branches in .tpa/policy.toml is empty, so no merge would ever end a grant: list the \
         branches work is merged into (e.g. protected_branches = [\"main\"]) through review"
    )]
    NoProtectedBranches,
    #[error("{}", unknown_message("role", "roles", name, available))]
    UnknownRole { name: String, available: Vec<String> },
    #[error("{}", unknown_message("database", "databases", name, available))]
    UnknownDatabase { name: String, available: Vec<String> },
    #[error(
        "a ttl of {} is outside what STS allows: ask for {} to {} (--ttl {})",
        format_duration(*seconds), format_duration(*min), format_duration(*max),
        format_duration((*seconds).clamp(*min, *max))
    )]
    TtlOutOfRange { seconds: u64, min: u64, max: u64 },
    #[error(
        "a ttl of {} is above max_ttl {} of {table}: ask for at most {} (--ttl {}), or raise max_ttl in \
         {table} of .tpa/policy.toml through review",
        format_duration(*seconds), format_duration(*max), format_duration(*max), format_duration(*max)
    )]
    TtlAboveMax {
        /// `[roles.NAME]` or `[databases.NAME]`.
        table: String,
        seconds: u64,
        max: u64,
    },
    #[error(
        "`{branch}` is a protected branch and grants are never taken on it: create a branch for the \
         work (git switch -c BRANCH) and ask from there"
    )]
    BranchProtected { branch: String },
    #[error(
        "grants may only be taken on branches matching {}; `{branch}` is not one: switch to such a \
         branch, or change request_branches in .tpa/policy.toml through review",
        quoted_list(patterns)
    )]
    BranchNotAllowed { branch: String, patterns: Vec<String> },
    #[error(
        "`{refname}` is not a branch: grants are tied to a branch, so check one out \
         (git switch -c BRANCH) and ask from there"
    )]
    NotABranch { refname: String },
}

fn unknown_message(what: &str, table: &str, name: &str, available: &[String]) -> String {
    let mut message = format!("no {what} `{name}` in the policy");
    if let Some(close) = parse::closest(name, available.iter().map(String::as_str)) {
        message.push_str(&format!(": did you mean `{close}`?"));
    }
    if available.is_empty() {
        message.push_str(&format!(
            "; the policy defines none: add a [{table}.{name}] table to .tpa/policy.toml through review"
        ));
    } else {
        message.push_str(&format!(
            "; it defines {}: use one of those, or add [{table}.{name}] to .tpa/policy.toml through review",
            quoted_list(available)
        ));
    }
    message
}

fn quoted_list(items: &[String]) -> String {
    items.iter().map(|i| format!("`{i}`")).collect::<Vec<_>>().join(", ")
}

/// Where the policy lives in the repository.
pub const POLICY_PATH: &str = ".tpa/policy.toml";

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Trust(#[from] crate::trust::TrustError),
    #[error(
        "there is no {POLICY_PATH} at the trust ref {0}: commit one there (`tpa init` writes a starting point) \
         and get it merged through review; tpa never reads policy from your working tree"
    )]
    NoPolicy(String),
    #[error("{0}")]
    Policy(#[from] PolicyError),
}

/// The policy as committed at the trust ref (never the working tree), and that commit.
pub fn load(repo: &git2::Repository, trust: &crate::trust::TrustRef) -> Result<(Policy, String), LoadError> {
    let bytes =
        trust.read_file(repo, POLICY_PATH)?.ok_or_else(|| LoadError::NoPolicy(trust.refname.clone()))?;
    let source = format!("{}:{POLICY_PATH}", trust.refname);
    let text = String::from_utf8_lossy(&bytes);
    Ok((Policy::parse(&text, &source)?, trust.commit.to_string()))
}

impl Policy {
    /// Parses and validates a policy. `file` names where the text came from, for messages, e.g.
    /// `refs/remotes/origin/main:.tpa/policy.toml`.
    pub fn parse(text: &str, file: &str) -> Result<Policy, PolicyError> {
        parse::parse(text, file)
    }

    /// The role called `name`, or a refusal listing the roles there are.
    pub fn role(&self, name: &str) -> Result<&RolePolicy, PolicyRefusal> {
        self.roles.get(name).ok_or_else(|| PolicyRefusal::UnknownRole {
            name: name.to_owned(),
            available: self.roles.keys().cloned().collect(),
        })
    }

    /// The database called `name`, or a refusal listing the databases there are.
    pub fn database(&self, name: &str) -> Result<&DatabasePolicy, PolicyRefusal> {
        self.databases.get(name).ok_or_else(|| PolicyRefusal::UnknownDatabase {
            name: name.to_owned(),
            available: self.databases.keys().cloned().collect(),
        })
    }

    /// Whether a grant may be taken on `refname`, a full refname (`refs/heads/hotfix/x`).
    /// Anything outside `refs/heads/` (a detached `HEAD`, a tag) is refused, then protected branches,
    /// then, when `request_branches` is set, branches matching none of its patterns.
    pub fn check_branch(&self, refname: &str) -> Result<(), PolicyRefusal> {
        if self.protected_branches.is_empty() {
            return Err(PolicyRefusal::NoProtectedBranches);
        }
        let branch = match refname.strip_prefix("refs/heads/") {
            Some(short) if !short.is_empty() => short,
            _ => return Err(PolicyRefusal::NotABranch { refname: refname.to_owned() }),
        };
        if self.is_protected(branch) {
            return Err(PolicyRefusal::BranchProtected { branch: branch.to_owned() });
        }
        if let Some(patterns) = &self.request_branches
            && !patterns.iter().any(|p| glob_match(p, branch))
        {
            return Err(PolicyRefusal::BranchNotAllowed {
                branch: branch.to_owned(),
                patterns: patterns.clone(),
            });
        }
        Ok(())
    }

    /// Whether the short branch name (no `refs/heads/`) matches a protected pattern.
    pub fn is_protected(&self, branch: &str) -> bool {
        self.protected_branches.iter().any(|p| glob_match(p, branch))
    }

    /// The reason, trimmed, must be at least `min_reason_length` characters and at most
    /// [`MAX_REASON_CHARS`]: every record of the grant carries it, signed, forever.
    pub fn check_reason(&self, reason: &str) -> Result<(), PolicyRefusal> {
        let got = reason.trim().chars().count();
        if got == 0 {
            Err(PolicyRefusal::ReasonMissing)
        } else if got < self.min_reason_length {
            Err(PolicyRefusal::ReasonTooShort { min: self.min_reason_length, got })
        } else if got > MAX_REASON_CHARS {
            Err(PolicyRefusal::ReasonTooLong { max: MAX_REASON_CHARS, got })
        } else {
            Ok(())
        }
    }

    /// The ttl of a request that gives none: `default_ttl`, capped at the target's `max_ttl`.
    pub fn default_ttl_within(&self, max_ttl: u64) -> u64 {
        self.default_ttl.min(max_ttl)
    }
}

impl Policy {
    /// The principals `rules` names as approvers, `@group`s expanded.
    pub fn approvers(&self, rules: &ApprovalRules) -> std::collections::BTreeSet<String> {
        rules
            .approvers
            .iter()
            .flat_map(|a| match a.strip_prefix('@') {
                Some(group) => self.groups.get(group).cloned().unwrap_or_default(),
                None => vec![a.clone()],
            })
            .collect()
    }

    /// The approval rules of what a request asks for: the database's own for `--db`, else the role's.
    pub fn approval_rules(&self, role: Option<&str>, database: Option<&str>) -> Option<&ApprovalRules> {
        match (database, role) {
            (Some(name), _) => self.databases.get(name).map(|d| &d.approval),
            (None, Some(name)) => self.roles.get(name).map(|r| &r.approval),
            (None, None) => None,
        }
    }
}

impl RolePolicy {
    /// STS's own limits (900..=43200 s) and this role's `max_ttl`.
    pub fn check_ttl(&self, seconds: u64) -> Result<(), PolicyRefusal> {
        check_ttl(seconds, self.max_ttl, || format!("[roles.{}]", self.name))
    }

    /// The MFA serial with `{user}` replaced by `user`; `None` when the role names no device.
    pub fn mfa_serial_for(&self, user: &str) -> Option<String> {
        self.mfa_serial.as_ref().map(|s| s.replace("{user}", user))
    }

    /// The IAM role's name: the last segment of its ARN (`arn:aws:iam::1:role/path/NAME`).
    pub fn iam_role_name(&self) -> &str {
        self.arn.rsplit('/').next().unwrap_or(&self.arn)
    }
}

impl DatabasePolicy {
    /// STS's limits (the grant is an STS session for rds-iam, and held to the same bounds for
    /// postgres) and this database's `max_ttl`.
    pub fn check_ttl(&self, seconds: u64) -> Result<(), PolicyRefusal> {
        check_ttl(seconds, self.max_ttl, || format!("[databases.{}]", self.name))
    }
}

fn check_ttl(seconds: u64, max_ttl: u64, table: impl Fn() -> String) -> Result<(), PolicyRefusal> {
    let out_of_range = PolicyRefusal::TtlOutOfRange { seconds, min: STS_MIN_TTL, max: STS_MAX_TTL };
    if seconds < STS_MIN_TTL {
        Err(out_of_range)
    } else if seconds > max_ttl {
        Err(PolicyRefusal::TtlAboveMax { table: table(), seconds, max: max_ttl })
    } else if seconds > STS_MAX_TTL {
        Err(out_of_range)
    } else {
        Ok(())
    }
}

/// Matches a branch glob against a short branch name: `*` matches any run of characters, `/`
/// included; `?` matches exactly one character; everything else matches itself (case-sensitive).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == '*' {
            backtrack = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if let Some((star, matched)) = backtrack {
            pi = star + 1;
            ni = matched + 1;
            backtrack = Some((star, matched + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Seconds as the policy writes them: `1h30m`, `15m`, `14m59s`, `0s`.
pub fn format_duration(seconds: u64) -> String {
    let (h, m, s) = (seconds / 3600, seconds % 3600 / 60, seconds % 60);
    let mut out = String::new();
    for (n, unit) in [(h, 'h'), (m, 'm'), (s, 's')] {
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    if out.is_empty() { "0s".to_owned() } else { out }
}

// ---------------------------------------------------------------------------------------------------
// Parsing
