//! Reading `.tpa/policy.toml`: a TOML reader that keeps spans, so every error names the file, line
//! and column and says what to write instead; unknown keys get the closest known one.

use std::collections::BTreeMap;
use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::*;
use crate::grant::parse_duration;

/// Parses and validates a policy; see [`Policy::parse`].
pub(super) fn parse(text: &str, file: &str) -> Result<Policy, PolicyError> {
    let ctx = Ctx { text, file };
    let document = DeTable::parse(text).map_err(|e| {
        ctx.error(e.span().unwrap_or(0..0), format!("this is not valid TOML: {}", e.message()))
    })?;
    parse_document(&ctx, document.get_ref())
}

const TOP_KEYS: &[&str] = &[
    "protected_branches",
    "request_branches",
    "min_reason_length",
    "default_ttl",
    "abandon_after",
    "sync",
    "roles",
    "databases",
    "notify",
    "groups",
    "brokers",
];
/// Who approves and who mints: the same keys on roles and databases.
const APPROVAL_KEYS: &[&str] =
    &["approvals", "approvers", "approval_window", "break_glass", "review_within", "mint"];
const ROLE_KEYS: &[&str] = &[
    "arn",
    "region",
    "max_ttl",
    "session_policy",
    "allow_role_chaining",
    "require_mfa",
    "mfa_serial",
    "source_identity",
    "session_tags",
    "external_id",
];
const DATABASE_KEYS: &[&str] = &[
    "provider",
    "engine",
    "host",
    "port",
    "db_user",
    "region",
    "role",
    "max_ttl",
    "grant_roles",
    "connection_limit",
    "dbname",
];
const NOTIFY_KEYS: &[&str] = &["url", "events", "format", "required"];

/// How each key is written, for "write ... instead".
fn example(key: &str) -> &'static str {
    match key {
        "protected_branches" => r#"protected_branches = ["main", "master"]"#,
        "request_branches" => r#"request_branches = ["hotfix/*", "fix/*"]"#,
        "min_reason_length" => "min_reason_length = 10",
        "default_ttl" => r#"default_ttl = "30m""#,
        "abandon_after" => r#"abandon_after = "2h""#,
        "sync" => r#"sync = "push" (or "manual")"#,
        "arn" => r#"arn = "arn:aws:iam::123456789012:role/prod-readonly""#,
        "region" => r#"region = "us-east-1""#,
        "max_ttl" => r#"max_ttl = "1h""#,
        "session_policy" => r#"session_policy = ".tpa/policies/readonly.json""#,
        "allow_role_chaining" => "allow_role_chaining = false",
        "require_mfa" => "require_mfa = true",
        "mfa_serial" => r#"mfa_serial = "arn:aws:iam::123456789012:mfa/{user}""#,
        "source_identity" => "source_identity = true",
        "session_tags" => "session_tags = true",
        "external_id" => r#"external_id = "tpa-prod""#,
        "approvals" => "approvals = 1",
        "approvers" => r#"approvers = ["@sre", "dave@example.com"]"#,
        "approval_window" => r#"approval_window = "30m""#,
        "break_glass" => "break_glass = true",
        "review_within" => r#"review_within = "24h""#,
        "mint" => r#"mint = "local" (or "broker")"#,
        "groups" => r#"[groups] sre = ["alice@example.com", "bob@example.com"]"#,
        "brokers" => r#"brokers = ["tpa-broker@example.com"]"#,
        "provider" => r#"provider = "rds-iam" (or "postgres")"#,
        "engine" => r#"engine = "postgres" (or "mysql")"#,
        "host" => r#"host = "orders.cluster-abc.us-east-1.rds.amazonaws.com""#,
        "port" => "port = 5432",
        "db_user" => r#"db_user = "ops_ro""#,
        "role" => r#"role = "prod-readonly""#,
        "grant_roles" => r#"grant_roles = ["app_readonly"]"#,
        "connection_limit" => "connection_limit = 5",
        "dbname" => r#"dbname = "app""#,
        "url" => r#"url = "https://hooks.example.com/tpa""#,
        "events" => r#"events = ["grant", "revoke", "irrevocable", "audit"]"#,
        "format" => r#"format = "json" (or "slack")"#,
        "required" => "required = false",
        _ => "see docs/policy.md",
    }
}

struct Ctx<'a> {
    text: &'a str,
    file: &'a str,
}

impl Ctx<'_> {
    fn error(&self, span: Range<usize>, message: impl Into<String>) -> PolicyError {
        let offset = span.start.min(self.text.len());
        let before = self.text.get(..offset).unwrap_or("");
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        PolicyError {
            file: self.file.to_owned(),
            line: before.matches('\n').count() + 1,
            column: before[line_start..].chars().count() + 1,
            message: message.into(),
        }
    }
}

type Value<'i> = Spanned<DeValue<'i>>;

/// One table of the policy, checked for unknown keys, with typed getters whose errors point at the value.
struct Section<'a, 'i> {
    ctx: &'a Ctx<'a>,
    table: &'a DeTable<'i>,
    /// The table's header (or key) in the text, for errors about missing keys.
    span: Range<usize>,
    /// How messages name this table: `[roles.x]`, `the top level`.
    label: String,
}

impl<'a, 'i> Section<'a, 'i> {
    fn new(
        ctx: &'a Ctx<'a>,
        table: &'a DeTable<'i>,
        span: Range<usize>,
        label: String,
        known: &[&str],
        secrets: (&[&str], &str),
    ) -> Result<Self, PolicyError> {
        let (credential_words, secrets_hint) = secrets;
        let section = Section { ctx, table, span, label };
        for (key, _) in section.entries() {
            let name = key.get_ref().as_ref();
            if known.contains(&name) {
                continue;
            }
            let place = section.place();
            if looks_like_credential(name, credential_words) {
                return Err(ctx.error(
                    key.span(),
                    format!(
                        "`{name}` {place} looks like a credential, and the policy file never holds one \
                         (everyone who can read the repository can read it): {secrets_hint}; remove `{name}`"
                    ),
                ));
            }
            let hint = match closest(name, known.iter().copied()) {
                Some(close) => format!("did you mean `{close}`?"),
                None => format!("the keys here are {} (see docs/policy.md)", known.join(", ")),
            };
            return Err(ctx.error(key.span(), format!("unknown key `{name}` {place}: {hint}")));
        }
        Ok(section)
    }

    fn place(&self) -> String {
        if self.label == "the top level" {
            "at the top level".to_owned()
        } else {
            format!("in {}", self.label)
        }
    }

    /// Entries in the order they appear in the text.
    fn entries(&self) -> Vec<(&'a Spanned<std::borrow::Cow<'i, str>>, &'a Value<'i>)> {
        let mut entries: Vec<_> = self.table.iter().collect();
        entries.sort_by_key(|(k, _)| k.span().start);
        entries
    }

    fn get(&self, key: &str) -> Option<&'a Value<'i>> {
        self.table.get(key)
    }

    fn error(&self, span: Range<usize>, message: impl Into<String>) -> PolicyError {
        self.ctx.error(span, message)
    }

    /// "`key` in [x] must be ...: write EXAMPLE"
    fn bad(&self, key: &str, span: Range<usize>, problem: impl fmt::Display) -> PolicyError {
        self.error(span, format!("`{key}` {} {problem}: write {}", self.place(), example(key)))
    }

    fn wrong_type(&self, key: &str, value: &Value<'_>, wanted: &str) -> PolicyError {
        self.bad(key, value.span(), format!("must be {wanted}, not {}", type_name(value.get_ref())))
    }

    fn missing(&self, key: &str, why: &str) -> PolicyError {
        self.error(self.span.clone(), format!("{} needs `{key}`{why}: write {}", self.label, example(key)))
    }

    fn string(&self, key: &str) -> Result<Option<Spanned<String>>, PolicyError> {
        match self.get(key) {
            None => Ok(None),
            Some(value) => match value.get_ref() {
                DeValue::String(s) => Ok(Some(Spanned::new(value.span(), s.to_string()))),
                _ => Err(self.wrong_type(key, value, "a string")),
            },
        }
    }

    fn boolean(&self, key: &str, default: bool) -> Result<bool, PolicyError> {
        match self.get(key) {
            None => Ok(default),
            Some(value) => match value.get_ref() {
                DeValue::Boolean(b) => Ok(*b),
                _ => Err(self.wrong_type(key, value, "true or false")),
            },
        }
    }

    fn integer(&self, key: &str, min: i64, max: i64) -> Result<Option<Spanned<i64>>, PolicyError> {
        let Some(value) = self.get(key) else { return Ok(None) };
        let DeValue::Integer(int) = value.get_ref() else {
            return Err(self.wrong_type(key, value, "a whole number"));
        };
        match i64::from_str_radix(int.as_str(), int.radix()) {
            Ok(n) if (min..=max).contains(&n) => Ok(Some(Spanned::new(value.span(), n))),
            _ => Err(self.bad(key, value.span(), format!("must be between {min} and {max}, not {int}"))),
        }
    }

    /// A duration string within `min..=max` seconds.
    fn duration(&self, key: &str, min: u64, max: Option<u64>) -> Result<Option<Spanned<u64>>, PolicyError> {
        let Some(value) = self.get(key) else { return Ok(None) };
        let text = match value.get_ref() {
            DeValue::String(s) => s,
            DeValue::Integer(_) | DeValue::Float(_) => {
                return Err(self.bad(
                    key,
                    value.span(),
                    "must be a duration with a unit in quotes, not a bare number",
                ));
            }
            _ => return Err(self.wrong_type(key, value, "a duration string")),
        };
        let seconds = parse_duration(text).map_err(|_| {
            self.bad(
                key,
                value.span(),
                format!("is not a duration ({text:?}): give a number and a unit (s, m, h or d)"),
            )
        })?;
        let range = match max {
            Some(max) => format!("between {} and {}", format_duration(min), format_duration(max)),
            None => format!("at least {}", format_duration(min)),
        };
        if seconds < min || max.is_some_and(|max| seconds > max) {
            let why = if key.ends_with("ttl") { " (what STS issues)" } else { "" };
            let fix = match max {
                Some(max) if seconds > max => format!("{key} = \"{}\" or less", format_duration(max)),
                _ => format!("{key} = \"{}\" or more", format_duration(min)),
            };
            return Err(self.error(
                value.span(),
                format!("`{key}` {} is {text:?}, but must be {range}{why}: write {fix}", self.place()),
            ));
        }
        Ok(Some(Spanned::new(value.span(), seconds)))
    }

    fn strings(&self, key: &str) -> Result<Option<Vec<Spanned<String>>>, PolicyError> {
        let Some(value) = self.get(key) else { return Ok(None) };
        let DeValue::Array(items) = value.get_ref() else {
            return Err(self.wrong_type(key, value, "an array of strings"));
        };
        items
            .iter()
            .map(|item| match item.get_ref() {
                DeValue::String(s) => Ok(Spanned::new(item.span(), s.to_string())),
                _ => Err(self.wrong_type(key, item, "an array of strings, and this item is")),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    fn choice<T: Copy>(&self, key: &str, options: &[(T, &str)]) -> Result<Option<Spanned<T>>, PolicyError> {
        let Some(text) = self.string(key)? else { return Ok(None) };
        match options.iter().find(|(_, name)| *name == text.get_ref()) {
            Some((value, _)) => Ok(Some(Spanned::new(text.span(), *value))),
            None => Err(self.bad(key, text.span(), format!("cannot be {:?}", text.get_ref()))),
        }
    }

    /// A sub-table holding one table per entry (`[roles.NAME]`), in text order.
    fn named_tables(&self, key: &str) -> Result<Vec<NamedTable<'a, 'i>>, PolicyError> {
        let Some(value) = self.get(key) else { return Ok(Vec::new()) };
        let DeValue::Table(table) = value.get_ref() else {
            return Err(self.error(
                value.span(),
                format!("`{key}` must be tables, one per entry: write [{key}.NAME] and its keys under it"),
            ));
        };
        let section = Section { ctx: self.ctx, table, span: value.span(), label: format!("[{key}]") };
        let mut out = Vec::new();
        for (name, entry) in section.entries() {
            let name_text = name.get_ref().as_ref();
            let DeValue::Table(table) = entry.get_ref() else {
                return Err(self.error(
                    name.span(),
                    format!(
                        "`{name_text}` in [{key}] is {}, but [{key}] holds one table per entry: \
                         write [{key}.NAME] and put `{name_text}` under it",
                        type_name(entry.get_ref())
                    ),
                ));
            };
            if name_text.is_empty()
                || !name_text.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
            {
                return Err(self.error(
                    name.span(),
                    format!(
                        "`{name_text}` cannot name an entry of [{key}]: use letters, digits, `_`, `.` \
                         and `-` only, like [{key}.prod-readonly]"
                    ),
                ));
            }
            out.push(NamedTable { name: name_text.to_owned(), table, span: entry.span() });
        }
        Ok(out)
    }
}

/// `[roles.NAME]`: the name, the table, and its header in the text.
struct NamedTable<'a, 'i> {
    name: String,
    table: &'a DeTable<'i>,
    span: Range<usize>,
}

fn type_name(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "a number",
        DeValue::Float(_) => "a decimal number",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// Words that make an unknown key a credential anywhere; `extra` adds those of one kind of table.
fn looks_like_credential(key: &str, extra: &[&str]) -> bool {
    const ANYWHERE: &[&str] = &[
        "password",
        "passwd",
        "secret",
        "token",
        "credential",
        "private_key",
        "access_key",
        "api_key",
        "apikey",
    ];
    let key = key.to_ascii_lowercase().replace('-', "_");
    ANYWHERE.iter().chain(extra).any(|word| key.contains(word))
        || matches!(key.as_str(), "pass" | "pwd" | "auth")
}

/// Connection strings and admin logins carry credentials too.
const DATABASE_CREDENTIAL_WORDS: &[&str] = &["admin", "dsn", "url", "uri", "connection_string", "conninfo"];
const GENERAL_SECRETS_HINT: &str = "tpa takes secrets from the environment or the OS keyring";

fn parse_document(ctx: &Ctx<'_>, document: &DeTable<'_>) -> Result<Policy, PolicyError> {
    let top =
        Section::new(ctx, document, 0..0, "the top level".to_owned(), TOP_KEYS, (&[], GENERAL_SECRETS_HINT))?;
    let protected_branches = match top.strings("protected_branches")? {
        Some(patterns) => globs(&top, "protected_branches", patterns)?,
        None => vec!["main".to_owned(), "master".to_owned()],
    };
    let request_branches = match top.strings("request_branches")? {
        Some(patterns) => Some(globs(&top, "request_branches", patterns)?),
        None => None,
    };
    let min_reason_length =
        top.integer("min_reason_length", 1, 1000)?.map_or(10, |n| n.into_inner() as usize);
    let default_ttl =
        top.duration("default_ttl", STS_MIN_TTL, Some(STS_MAX_TTL))?.map_or(30 * 60, Spanned::into_inner);
    let abandon_after = top.duration("abandon_after", 60, None)?.map_or(2 * 3600, Spanned::into_inner);
    let sync = top.choice("sync", SyncMode::ALL)?.map_or(SyncMode::Push, Spanned::into_inner);

    let mut roles = BTreeMap::new();
    for entry in top.named_tables("roles")? {
        let role = parse_role(ctx, entry)?;
        roles.insert(role.name.clone(), role);
    }
    let mut databases = BTreeMap::new();
    for entry in top.named_tables("databases")? {
        let database = parse_database(ctx, entry, &roles)?;
        databases.insert(database.name.clone(), database);
    }
    let notify = parse_notify(&top)?;
    let groups = parse_groups(ctx, &top)?;
    let brokers = match top.strings("brokers")? {
        Some(names) => principals(&top, "brokers", names)?,
        None => Vec::new(),
    };
    check_approvers(&top, &roles, &databases, &groups, &brokers)?;
    Ok(Policy {
        groups,
        brokers,
        protected_branches,
        request_branches,
        min_reason_length,
        default_ttl,
        abandon_after,
        sync,
        roles,
        databases,
        notify,
    })
}

/// `approvals`, `approvers`, `approval_window`, `break_glass`, `review_within`, `mint` of a role
/// or database.
fn approval_rules(s: &Section<'_, '_>) -> Result<ApprovalRules, PolicyError> {
    let defaults = ApprovalRules::default();
    let approvals = s.integer("approvals", 0, 10)?.map_or(0, |n| n.into_inner() as u32);
    let approvers = match s.strings("approvers")? {
        Some(names) => principals(s, "approvers", names)?,
        None => Vec::new(),
    };
    if approvals > 0 && approvers.is_empty() {
        let at = s.get("approvals").map_or(s.span.clone(), Spanned::span);
        return Err(s.error(
            at,
            format!(
                "approvals = {approvals} in {} needs who may approve: add {}",
                s.label,
                example("approvers")
            ),
        ));
    }
    let window = s
        .duration("approval_window", 60, Some(super::MAX_APPROVAL_WINDOW))?
        .map_or(defaults.window, Spanned::into_inner);
    let break_glass = s.boolean("break_glass", false)?;
    let review_within = s
        .duration("review_within", 60, Some(30 * 86_400))?
        .map_or(defaults.review_within, Spanned::into_inner);
    let mint = s.choice("mint", Mint::ALL)?.map_or(Mint::Local, Spanned::into_inner);
    Ok(ApprovalRules { approvals, approvers, window, break_glass, review_within, mint })
}

/// Principals as allowed_signers names them (or `@group`s where `key` allows them): no spaces,
/// no quotes, no commas.
fn principals(
    s: &Section<'_, '_>,
    key: &str,
    names: Vec<Spanned<String>>,
) -> Result<Vec<String>, PolicyError> {
    let mut out = Vec::new();
    for name in names {
        let text = name.get_ref();
        let bad = text.is_empty()
            || text.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | ',' | '\''))
            || (text.starts_with('@') && key != "approvers");
        if bad {
            return Err(s.bad(
                key,
                name.span(),
                format!("{text:?} is not a principal (an email as in .tpa/allowed_signers, or an @group for approvers)"),
            ));
        }
        out.push(name.into_inner());
    }
    Ok(out)
}

/// `[groups]`: a list of principals per name.
fn parse_groups(ctx: &Ctx<'_>, top: &Section<'_, '_>) -> Result<BTreeMap<String, Vec<String>>, PolicyError> {
    let Some(value) = top.get("groups") else { return Ok(BTreeMap::new()) };
    let DeValue::Table(table) = value.get_ref() else {
        return Err(top.bad("groups", value.span(), format!("must be a table: write {}", example("groups"))));
    };
    let section = Section { ctx, table, span: value.span(), label: "[groups]".to_owned() };
    let mut groups = BTreeMap::new();
    for (name, _) in section.entries() {
        let name = name.get_ref().as_ref();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        {
            return Err(section.error(
                value.span(),
                format!("`{name}` cannot name a group: use letters, digits, `_`, `.` and `-` only"),
            ));
        }
        let members = section.strings(name)?.unwrap_or_default();
        let members = principals(&section, name, members)?;
        groups.insert(name.to_owned(), members);
    }
    Ok(groups)
}

/// Every `@group` exists, a quorum can be reached, and a broker-minted target names brokers.
fn check_approvers(
    top: &Section<'_, '_>,
    roles: &BTreeMap<String, RolePolicy>,
    databases: &BTreeMap<String, DatabasePolicy>,
    groups: &BTreeMap<String, Vec<String>>,
    brokers: &[String],
) -> Result<(), PolicyError> {
    let tables = roles
        .values()
        .map(|r| (format!("[roles.{}]", r.name), &r.approval))
        .chain(databases.values().map(|d| (format!("[databases.{}]", d.name), &d.approval)));
    for (label, rules) in tables {
        let mut people = std::collections::BTreeSet::new();
        for approver in &rules.approvers {
            match approver.strip_prefix('@') {
                Some(group) => match groups.get(group) {
                    Some(members) => people.extend(members.iter().cloned()),
                    None => {
                        return Err(top.error(
                            top.span.clone(),
                            format!("{label} names approvers @{group}, but [groups] has no `{group}`: add it, e.g. {}", example("groups")),
                        ));
                    }
                },
                None => {
                    people.insert(approver.clone());
                }
            }
        }
        if (people.len() as u32) < rules.approvals {
            return Err(top.error(
                top.span.clone(),
                format!(
                    "{label} asks for {} approvals but names only {} approver(s): no request could ever be granted",
                    rules.approvals,
                    people.len()
                ),
            ));
        }
        if rules.mint == Mint::Broker && brokers.is_empty() {
            return Err(top.error(
                top.span.clone(),
                format!(
                    "{label} has mint = \"broker\" but the policy names no broker: add {}",
                    example("brokers")
                ),
            ));
        }
    }
    Ok(())
}

fn globs(
    section: &Section<'_, '_>,
    key: &str,
    patterns: Vec<Spanned<String>>,
) -> Result<Vec<String>, PolicyError> {
    let mut out = Vec::new();
    for pattern in patterns {
        let problem = bad_glob(pattern.get_ref());
        if let Some(problem) = problem {
            return Err(section.error(pattern.span(), format!("bad pattern in `{key}`: {problem}")));
        }
        out.push(pattern.into_inner());
    }
    Ok(out)
}

fn bad_glob(text: &str) -> Option<String> {
    if text.is_empty() {
        return Some(
            "an empty pattern matches no branch: remove it, or write one like \"hotfix/*\"".to_owned(),
        );
    }
    if text.starts_with("refs/") {
        let short = text.trim_start_matches("refs/heads/");
        return Some(format!(
            "patterns match short branch names, so {text:?} matches nothing: write {short:?}"
        ));
    }
    let unsupported = |c: &char| {
        c.is_whitespace() || c.is_control() || matches!(c, '[' | ']' | '\\' | '~' | '^' | ':' | '{' | '}')
    };
    text.chars().find(unsupported).map(|c| {
        format!("{c:?} in {text:?} is not supported: patterns have only `*` and `?`, like \"hotfix/*\"")
    })
}

fn parse_role(ctx: &Ctx<'_>, entry: NamedTable<'_, '_>) -> Result<RolePolicy, PolicyError> {
    let s = Section::new(
        ctx,
        entry.table,
        entry.span,
        format!("[roles.{}]", entry.name),
        &[ROLE_KEYS, APPROVAL_KEYS].concat(),
        (
            &[],
            "tpa takes base credentials from the AWS credential chain (profile, SSO, environment) and \
             mints the session credentials itself",
        ),
    )?;
    let arn = s.string("arn")?.ok_or_else(|| s.missing("arn", " (the IAM role to assume)"))?;
    if !valid_role_arn(arn.get_ref()) {
        return Err(s.bad(
            "arn",
            arn.span(),
            format!(
                "is not an IAM role ARN of the form arn:aws:iam::<12-digit account>:role/<name> ({:?})",
                arn.get_ref()
            ),
        ));
    }
    let region = region(&s)?;
    let max_ttl = s.duration("max_ttl", STS_MIN_TTL, Some(STS_MAX_TTL))?.map_or(3600, Spanned::into_inner);
    let session_policy = match s.string("session_policy")? {
        Some(path) => {
            if let Some(problem) = bad_repo_path(path.get_ref()) {
                return Err(s.bad("session_policy", path.span(), problem));
            }
            Some(path.into_inner())
        }
        None => None,
    };
    let allow_role_chaining = s.boolean("allow_role_chaining", false)?;
    let require_mfa = s.boolean("require_mfa", false)?;
    let mfa_serial = match s.string("mfa_serial")? {
        Some(serial) => {
            if let Some(problem) = bad_mfa_serial(serial.get_ref()) {
                return Err(s.bad("mfa_serial", serial.span(), problem));
            }
            Some(serial.into_inner())
        }
        None if require_mfa => {
            let at = s.get("require_mfa").map_or(s.span.clone(), Spanned::span);
            return Err(s.error(
                at,
                format!(
                    "require_mfa = true in {} needs the MFA device: add {}",
                    s.label,
                    example("mfa_serial")
                ),
            ));
        }
        None => None,
    };
    let source_identity = s.boolean("source_identity", true)?;
    let session_tags = s.boolean("session_tags", true)?;
    let external_id = match s.string("external_id")? {
        Some(id) => {
            let text = id.get_ref();
            let ok = (2..=1224).contains(&text.chars().count())
                && text.chars().all(|c| c.is_ascii_alphanumeric() || "_+=,.@:/-".contains(c));
            if !ok {
                return Err(s.bad(
                    "external_id",
                    id.span(),
                    "must be 2 to 1224 characters of letters, digits and _+=,.@:/-",
                ));
            }
            Some(id.into_inner())
        }
        None => None,
    };
    let approval = approval_rules(&s)?;
    Ok(RolePolicy {
        approval,
        name: entry.name,
        arn: arn.into_inner(),
        region,
        max_ttl,
        session_policy,
        allow_role_chaining,
        require_mfa,
        mfa_serial,
        source_identity,
        session_tags,
        external_id,
    })
}

fn region(s: &Section<'_, '_>) -> Result<Option<String>, PolicyError> {
    let Some(region) = s.string("region")? else { return Ok(None) };
    let parts: Vec<&str> = region.get_ref().split('-').collect();
    let ok = parts.len() >= 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()))
        && parts[parts.len() - 1].bytes().all(|b| b.is_ascii_digit());
    if !ok {
        return Err(s.bad("region", region.span(), format!("is not an AWS region ({:?})", region.get_ref())));
    }
    Ok(Some(region.into_inner()))
}

fn valid_role_arn(arn: &str) -> bool {
    let Some(rest) = arn.strip_prefix("arn:aws") else { return false };
    let Some((partition, rest)) = rest.split_once(':') else { return false };
    if !partition.bytes().all(|b| b.is_ascii_lowercase() || b == b'-') {
        return false;
    }
    let Some(rest) = rest.strip_prefix("iam::") else { return false };
    let Some((account, rest)) = rest.split_once(':') else { return false };
    if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let Some(path) = rest.strip_prefix("role/") else { return false };
    let segments: Vec<&str> = path.split('/').collect();
    let (name, dirs) = segments.split_last().expect("split yields at least one item");
    path.len() <= 512 + 64
        && (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b))
        && dirs.iter().all(|d| !d.is_empty() && d.bytes().all(|b| (0x21..=0x7e).contains(&b)))
}

fn bad_repo_path(path: &str) -> Option<String> {
    if path.is_empty() || path.starts_with('/') || path.contains('\\') || path.chars().any(char::is_control) {
        return Some(format!("must be a path relative to the repository root, not {path:?}"));
    }
    if path.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Some(format!(
            "must be a plain repository path without empty, `.` or `..` parts, not {path:?}"
        ));
    }
    None
}

fn bad_mfa_serial(serial: &str) -> Option<String> {
    let plain = serial.replace("{user}", "u");
    if plain.contains(['{', '}']) {
        return Some(format!("can only contain the placeholder {{user}} ({serial:?})"));
    }
    let ok = (9..=256).contains(&plain.len())
        && plain.chars().all(|c| c.is_ascii_alphanumeric() || "_+=/:,.@-".contains(c));
    if !ok {
        return Some(format!("is not an MFA device serial or ARN ({serial:?})"));
    }
    None
}

fn parse_database(
    ctx: &Ctx<'_>,
    entry: NamedTable<'_, '_>,
    roles: &BTreeMap<String, RolePolicy>,
) -> Result<DatabasePolicy, PolicyError> {
    let s = Section::new(
        ctx,
        entry.table,
        entry.span,
        format!("[databases.{}]", entry.name),
        &[DATABASE_KEYS, APPROVAL_KEYS].concat(),
        (
            DATABASE_CREDENTIAL_WORDS,
            "admin credentials come from the environment or the OS keyring, never the policy file",
        ),
    )?;
    let provider = s
        .choice("provider", DbProvider::ALL)?
        .ok_or_else(|| s.missing("provider", " (IAM auth tokens, or PostgreSQL roles made per grant)"))?;
    let engine = s.choice("engine", DbEngine::ALL)?.ok_or_else(|| s.missing("engine", ""))?;
    let host = s.string("host")?.ok_or_else(|| s.missing("host", ""))?;
    if !valid_host(host.get_ref()) {
        return Err(s.bad(
            "host",
            host.span(),
            "must be a host name or IP address only, without scheme, user, port or path \
             (the port goes in `port`)",
        ));
    }
    let default_port = match *engine.get_ref() {
        DbEngine::Postgres => 5432,
        DbEngine::Mysql => 3306,
    };
    let port = s.integer("port", 1, 65535)?.map_or(default_port, |p| p.into_inner() as u16);
    let db_user = s.string("db_user")?;
    if let Some(user) = &db_user
        && (user.get_ref().is_empty() || user.get_ref().chars().any(char::is_control))
    {
        return Err(s.bad("db_user", user.span(), "must be a database user name"));
    }
    let region = region(&s)?;
    let role = s.string("role")?;
    let max_ttl = s.duration("max_ttl", STS_MIN_TTL, Some(STS_MAX_TTL))?;
    let grant_roles = s.strings("grant_roles")?;
    let connection_limit = s.integer("connection_limit", 1, i64::from(i32::MAX))?;
    let dbname = s.string("dbname")?;
    if let Some(name) = &dbname
        && (name.get_ref().is_empty() || name.get_ref().chars().any(char::is_control))
    {
        return Err(s.bad("dbname", name.span(), "must be a database name"));
    }

    // Keys only one provider uses: refused on the other, so nobody believes they take effect.
    let only_for = |key: &str, span: Range<usize>, which: DbProvider, why: &str| {
        s.error(
            span,
            format!("`{key}` in {} applies only to provider = \"{which}\"{why}: remove `{key}`", s.label),
        )
    };
    let (max_ttl, db_user, region, role) = match *provider.get_ref() {
        DbProvider::RdsIam => {
            for key in ["grant_roles", "connection_limit"] {
                if let Some(v) = s.get(key) {
                    return Err(only_for(key, v.span(), DbProvider::Postgres, ""));
                }
            }
            let role =
                role.ok_or_else(|| s.missing("role", " (the [roles.X] whose credentials sign the token)"))?;
            let Some(role_policy) = roles.get(role.get_ref()) else {
                let mut message = format!("`role` in {} names no [roles.{}]", s.label, role.get_ref());
                let names: Vec<String> = roles.keys().cloned().collect();
                match closest(role.get_ref(), names.iter().map(String::as_str)) {
                    Some(close) => message.push_str(&format!(": did you mean role = \"{close}\"?")),
                    None if names.is_empty() => message.push_str(&format!(
                        ": add a [roles.{}] table with the role allowed rds-db:connect",
                        role.get_ref()
                    )),
                    None => message.push_str(&format!(": write role = one of {}", quoted_list(&names))),
                }
                return Err(s.error(role.span(), message));
            };
            let db_user =
                db_user.ok_or_else(|| s.missing("db_user", " (the user the IAM token logs in as)"))?;
            let region = match region.or_else(|| role_policy.region.clone()) {
                Some(region) => region,
                None => {
                    return Err(
                        s.missing("region", &format!(" (or its role [roles.{}] does)", role_policy.name))
                    );
                }
            };
            let max_ttl = match max_ttl {
                Some(ttl) if *ttl.get_ref() > role_policy.max_ttl => {
                    return Err(s.error(
                        ttl.span(),
                        format!(
                            "`max_ttl` in {} is {}, above max_ttl {} of its role [roles.{}]: \
                             write max_ttl = \"{}\" or less, or raise the role's",
                            s.label,
                            format_duration(*ttl.get_ref()),
                            format_duration(role_policy.max_ttl),
                            role_policy.name,
                            format_duration(role_policy.max_ttl)
                        ),
                    ));
                }
                Some(ttl) => ttl.into_inner(),
                None => role_policy.max_ttl,
            };
            (max_ttl, Some(db_user.into_inner()), Some(region), Some(role.into_inner()))
        }
        DbProvider::Postgres => {
            if *engine.get_ref() != DbEngine::Postgres {
                return Err(s.error(
                    engine.span(),
                    format!(
                        "provider = \"postgres\" in {} makes PostgreSQL roles: write engine = \"postgres\", \
                         or provider = \"rds-iam\" for MySQL",
                        s.label
                    ),
                ));
            }
            let why = " (it needs no AWS role, and makes a login role tpa_<grant id> per grant)";
            for (key, value) in [("db_user", &db_user), ("role", &role)] {
                if let Some(v) = value {
                    return Err(only_for(key, v.span(), DbProvider::RdsIam, why));
                }
            }
            if let Some(v) = s.get("region") {
                return Err(only_for("region", v.span(), DbProvider::RdsIam, why));
            }
            (max_ttl.map_or(3600, Spanned::into_inner), None, None, None)
        }
    };
    let grant_roles = match (provider.get_ref(), grant_roles) {
        (DbProvider::Postgres, None) => {
            return Err(s.missing("grant_roles", " (what the per-grant login role may do)"));
        }
        (DbProvider::Postgres, Some(list)) if list.is_empty() => {
            let at = s.get("grant_roles").map_or(s.span.clone(), Spanned::span);
            return Err(s.bad("grant_roles", at, "must name at least one role to grant"));
        }
        (_, list) => {
            let mut out = Vec::new();
            for role in list.unwrap_or_default() {
                let text = role.get_ref();
                if text.is_empty() || text.len() > 63 || text.chars().any(char::is_control) {
                    return Err(s.bad(
                        "grant_roles",
                        role.span(),
                        format!("holds {text:?}, which is not a PostgreSQL role name (1 to 63 bytes)"),
                    ));
                }
                out.push(role.into_inner());
            }
            out
        }
    };
    let approval = approval_rules(&s)?;
    Ok(DatabasePolicy {
        approval,
        name: entry.name,
        provider: provider.into_inner(),
        engine: engine.into_inner(),
        host: host.into_inner(),
        port,
        db_user,
        region,
        role,
        max_ttl,
        grant_roles,
        connection_limit: connection_limit.map(|n| n.into_inner() as u32),
        dbname: dbname.map(|d| d.into_inner()).unwrap_or_else(|| "postgres".to_owned()),
    })
}

fn parse_notify(top: &Section<'_, '_>) -> Result<Vec<NotifyPolicy>, PolicyError> {
    let Some(value) = top.get("notify") else { return Ok(Vec::new()) };
    let DeValue::Array(items) = value.get_ref() else {
        return Err(top.error(
            value.span(),
            format!(
                "`notify` must be a list of tables, not {}: \
                 write [[notify]] (two brackets) before each webhook",
                type_name(value.get_ref())
            ),
        ));
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let DeValue::Table(table) = item.get_ref() else {
            return Err(top.error(
                item.span(),
                "`notify` must be a list of tables: write [[notify]] before each webhook",
            ));
        };
        let s = Section::new(
            top.ctx,
            table,
            item.span(),
            format!("[[notify]] number {}", i + 1),
            NOTIFY_KEYS,
            (&[], GENERAL_SECRETS_HINT),
        )?;
        let url = s.string("url")?.ok_or_else(|| s.missing("url", ""))?;
        if let Some(problem) = bad_webhook_url(url.get_ref()) {
            return Err(s.bad("url", url.span(), problem));
        }
        let events = match s.strings("events")? {
            None => NotifyEvent::ALL.iter().map(|(e, _)| *e).collect(),
            Some(list) if list.is_empty() => {
                let at = s.get("events").map_or(s.span.clone(), Spanned::span);
                return Err(s.bad("events", at, "is empty, so nothing would ever be sent"));
            }
            Some(list) => {
                let mut events = Vec::new();
                for name in list {
                    let Some((event, _)) = NotifyEvent::ALL.iter().find(|(_, n)| n == name.get_ref()) else {
                        return Err(s.bad(
                            "events",
                            name.span(),
                            format!("holds {:?}, which is no event", name.get_ref()),
                        ));
                    };
                    if !events.contains(event) {
                        events.push(*event);
                    }
                }
                events
            }
        };
        let format = s.choice("format", NotifyFormat::ALL)?.map_or(NotifyFormat::Json, Spanned::into_inner);
        let required = s.boolean("required", false)?;
        out.push(NotifyPolicy { url: url.into_inner(), events, format, required });
    }
    Ok(out)
}

/// A DNS name, an IPv4 address, or an IPv6 address in brackets.
fn valid_host(host: &str) -> bool {
    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => !v6.is_empty() && v6.chars().all(|c| c.is_ascii_hexdigit() || matches!(c, ':' | '.')),
        None => {
            !host.is_empty()
                && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        }
    }
}

fn bad_webhook_url(url: &str) -> Option<String> {
    let (secure, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else {
        return Some("must be an https:// URL".to_owned());
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return Some("must not carry user:password@ (the policy file never holds credentials)".to_owned());
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some("must not contain spaces".to_owned());
    }
    let host = if authority.starts_with('[') {
        authority.split_inclusive(']').next().unwrap_or("")
    } else {
        authority.split(':').next().unwrap_or("")
    };
    if host.is_empty() || host == "[]" {
        return Some("has no host".to_owned());
    }
    let local = host.eq_ignore_ascii_case("localhost") || host == "127.0.0.1" || host == "[::1]";
    if !secure && !local {
        return Some(
            "must use https://: plain http:// is allowed only for localhost, 127.0.0.1 and [::1]".into(),
        );
    }
    None
}

/// The candidate closest to `word` (case-insensitive, transpositions count once), when it is within two
/// edits and close relative to the length (so `url` is not offered for `arn`).
pub(super) fn closest<'c>(word: &str, candidates: impl IntoIterator<Item = &'c str>) -> Option<&'c str> {
    let word_lower = word.to_lowercase();
    candidates
        .into_iter()
        .map(|c| (edit_distance(&word_lower, &c.to_lowercase()), c))
        .filter(|(d, c)| *d <= 2 && *d <= word.chars().count().max(c.chars().count()) / 3)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Optimal string alignment distance: Levenshtein plus adjacent transpositions.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of DESIGN.md ("Policy: `.tpa/policy.toml`"), verbatim.
    const DESIGN_EXAMPLE: &str = r#"
protected_branches = ["main", "master"]   # globs
request_branches = ["hotfix/*", "fix/*"]  # globs; default: any branch that is not protected
min_reason_length = 10
default_ttl = "30m"
abandon_after = "2h"                      # left that long without coming back = abandoned
sync = "push"                             # push records to the remote right away ("manual" to not)

[roles.prod-readonly]
arn = "arn:aws:iam::123456789012:role/prod-readonly"
region = "us-east-1"
max_ttl = "1h"
session_policy = ".tpa/policies/readonly.json"   # optional
allow_role_chaining = false   # default false: the session may not assume other roles or touch IAM
require_mfa = false
mfa_serial = "arn:aws:iam::123456789012:mfa/{user}"
source_identity = true        # needs sts:SetSourceIdentity in the trust policy
session_tags = true           # needs sts:TagSession
external_id = "optional"

[databases.orders]
provider = "rds-iam"          # or "postgres" (dynamic roles)
engine = "postgres"           # or "mysql"
host = "orders.cluster-abc.us-east-1.rds.amazonaws.com"
port = 5432
db_user = "ops_ro"
region = "us-east-1"
role = "prod-readonly"        # the [roles.X] whose credentials sign the token
max_ttl = "1h"

[[notify]]
url = "https://hooks.example.com/tpa"
events = ["grant", "revoke", "irrevocable", "audit"]
format = "slack"              # or "json"
required = false
"#;

    /// A minimal valid role, for building policies in tests (lines 1 and 2).
    const ROLE: &str = "[roles.prod-readonly]\narn = \"arn:aws:iam::123456789012:role/prod-readonly\"\n";

    fn parse(text: &str) -> Policy {
        Policy::parse(text, "policy.toml").unwrap_or_else(|e| panic!("{e}"))
    }

    /// Asserts the policy is refused at `line` with a message containing `needle`.
    #[track_caller]
    fn refused(text: &str, line: usize, needle: &str) -> PolicyError {
        let error = Policy::parse(text, "policy.toml").expect_err("the policy should be refused");
        assert_eq!(error.line, line, "wrong line for: {error}");
        assert!(error.message.contains(needle), "{needle:?} not in: {error}");
        assert!(error.to_string().starts_with(&format!("policy.toml:{line}:")), "{error}");
        error
    }

    #[test]
    fn the_design_example_parses() {
        let policy = parse(DESIGN_EXAMPLE);
        assert_eq!(policy.protected_branches, ["main", "master"]);
        assert_eq!(policy.request_branches, Some(vec!["hotfix/*".to_owned(), "fix/*".to_owned()]));
        assert_eq!((policy.min_reason_length, policy.default_ttl, policy.abandon_after), (10, 1800, 7200));
        assert_eq!(policy.sync, SyncMode::Push);
        let role = policy.role("prod-readonly").unwrap();
        assert_eq!(
            *role,
            RolePolicy {
                name: "prod-readonly".into(),
                arn: "arn:aws:iam::123456789012:role/prod-readonly".into(),
                region: Some("us-east-1".into()),
                max_ttl: 3600,
                session_policy: Some(".tpa/policies/readonly.json".into()),
                allow_role_chaining: false,
                require_mfa: false,
                mfa_serial: Some("arn:aws:iam::123456789012:mfa/{user}".into()),
                source_identity: true,
                session_tags: true,
                external_id: Some("optional".into()),
                approval: ApprovalRules::default(),
            }
        );
        assert_eq!(role.iam_role_name(), "prod-readonly");
        assert_eq!(
            *policy.database("orders").unwrap(),
            DatabasePolicy {
                name: "orders".into(),
                provider: DbProvider::RdsIam,
                engine: DbEngine::Postgres,
                host: "orders.cluster-abc.us-east-1.rds.amazonaws.com".into(),
                port: 5432,
                db_user: Some("ops_ro".into()),
                region: Some("us-east-1".into()),
                role: Some("prod-readonly".into()),
                max_ttl: 3600,
                grant_roles: vec![],
                connection_limit: None,
                dbname: "postgres".to_owned(),
                approval: ApprovalRules::default(),
            }
        );
        assert_eq!(
            policy.notify,
            [NotifyPolicy {
                url: "https://hooks.example.com/tpa".into(),
                events: vec![
                    NotifyEvent::Grant,
                    NotifyEvent::Revoke,
                    NotifyEvent::Irrevocable,
                    NotifyEvent::Audit
                ],
                format: NotifyFormat::Slack,
                required: false,
            }]
        );
    }

    #[test]
    fn the_shipped_template_parses_and_so_does_it_uncommented() {
        let template = include_str!("../../templates/policy.toml");
        let policy = parse(template);
        assert!(policy.roles.is_empty() && policy.notify.is_empty());
        let uncommented: String = template
            .lines()
            .map(|l| l.strip_prefix("# ").filter(|l| l.starts_with('[') || l.contains(" = ")).unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n");
        let policy = parse(&uncommented);
        assert!(policy.roles.contains_key("prod-readonly"), "{uncommented}");
        assert_eq!(policy.notify.len(), 1);
    }

    #[test]
    fn the_documented_example_parses() {
        let doc = include_str!("../../docs/policy.md");
        let example = doc.split("```toml\n").nth(1).and_then(|rest| rest.split("```").next()).unwrap();
        let policy = parse(example);
        assert!(policy.roles["prod-readonly"].require_mfa);
        assert_eq!(policy.databases["billing"].provider, DbProvider::Postgres);
        assert_eq!(policy.databases["orders"].provider, DbProvider::RdsIam);
    }

    #[test]
    fn defaults() {
        let policy = parse(ROLE);
        assert_eq!(policy.protected_branches, ["main", "master"]);
        assert_eq!(policy.request_branches, None);
        assert_eq!((policy.min_reason_length, policy.default_ttl, policy.abandon_after), (10, 1800, 7200));
        assert_eq!(policy.sync, SyncMode::Push);
        let role = &policy.roles["prod-readonly"];
        assert_eq!(role.max_ttl, 3600);
        assert!(!role.allow_role_chaining && !role.require_mfa);
        assert!(role.source_identity && role.session_tags);
        assert_eq!((role.region.as_deref(), role.mfa_serial.as_deref()), (None, None));
        let policy = parse(
            "[[notify]]\nurl = \"http://127.0.0.1:8080/hook\"\n\
             [databases.pg]\nprovider = \"postgres\"\nengine = \"postgres\"\nhost = \"db\"\n\
             grant_roles = [\"r\"]\n",
        );
        assert_eq!(policy.notify[0].format, NotifyFormat::Json);
        assert_eq!(policy.notify[0].events.len(), 6);
        assert!(!policy.notify[0].required);
        let pg = &policy.databases["pg"];
        assert_eq!((pg.port, pg.max_ttl, pg.connection_limit), (5432, 3600, None));
        assert_eq!(policy.default_ttl_within(900), 900);
        assert_eq!(policy.default_ttl_within(3600), 1800);
    }

    #[test]
    fn misspelled_keys_get_a_suggestion() {
        let error = refused(
            &format!("{ROLE}max_tll = \"1h\"\n"),
            3,
            "unknown key `max_tll` in [roles.prod-readonly]",
        );
        assert_eq!(error.message, "unknown key `max_tll` in [roles.prod-readonly]: did you mean `max_ttl`?");
        assert_eq!(error.column, 1);
        refused("protected_branch = [\"main\"]\n", 1, "did you mean `protected_branches`?");
        refused("[role.x]\narn = \"a\"\n", 1, "unknown key `role` at the top level: did you mean `roles`?");
        refused(&format!("{ROLE}Require_MFA = true\n"), 3, "did you mean `require_mfa`?");
        refused(&format!("{ROLE}sesion_tags = false\n"), 3, "did you mean `session_tags`?");
        refused(
            "[[notify]]\nurl = \"https://h.example\"\nevnets = [\"grant\"]\n",
            3,
            "did you mean `events`?",
        );
        // Nothing close: list what is allowed instead of guessing.
        let error = refused("colour = \"blue\"\n", 1, "unknown key `colour` at the top level");
        assert!(error.message.contains("protected_branches, request_branches"), "{error}");
        let error = refused(&format!("{ROLE}url = \"x\"\n"), 3, "unknown key `url`");
        assert!(!error.message.contains("did you mean"), "{error}");
        // Unknown nested tables are unknown keys too.
        refused(&format!("{ROLE}\n[roles.prod-readonly.tags]\nteam = \"x\"\n"), 4, "unknown key `tags`");
    }

    #[test]
    fn bad_values_name_their_line_and_what_to_write() {
        refused(&format!("{ROLE}max_ttl = \"1 hour\"\n"), 3, r#"is not a duration ("1 hour")"#);
        refused(&format!("{ROLE}max_ttl = 3600\n"), 3, r#"not a bare number: write max_ttl = "1h""#);
        refused(&format!("{ROLE}max_ttl = \"13h\"\n"), 3, "must be between 15m and 12h");
        refused(&format!("{ROLE}max_ttl = \"10m\"\n"), 3, "must be between 15m and 12h");
        refused(
            "min_reason_length = -5\n",
            1,
            "must be between 1 and 1000, not -5: write min_reason_length = 10",
        );
        refused("\n\nmin_reason_length = \"ten\"\n", 3, "must be a whole number, not a string");
        refused(&format!("{ROLE}require_mfa = \"yes\"\n"), 3, "must be true or false, not a string");
        refused("sync = \"pull\"\n", 1, r#"cannot be "pull": write sync = "push" (or "manual")"#);
        refused("default_ttl = \"12h1s\"\n", 1, "must be between 15m and 12h");
        refused("abandon_after = \"30s\"\n", 1, "must be at least 1m");
        refused("protected_branches = \"main\"\n", 1, "must be an array of strings, not a string");
        refused("request_branches = [\"hotfix/*\",\n  7]\n", 2, "and this item is, not a number");
        refused("request_branches = [\"refs/heads/hotfix/*\"]\n", 1, r#"write "hotfix/*""#);
        refused("request_branches = [\"hotfix/[0-9]*\"]\n", 1, "patterns have only `*` and `?`");
        refused(&format!("{ROLE}region = \"US East\"\n"), 3, "is not an AWS region");
        refused(
            &format!("{ROLE}session_policy = \"../secrets.json\"\n"),
            3,
            "without empty, `.` or `..` parts",
        );
        refused(&format!("{ROLE}session_policy = \"/etc/p.json\"\n"), 3, "relative to the repository root");
        refused(&format!("{ROLE}external_id = \"has space\"\n"), 3, "2 to 1224 characters");
        refused(
            &format!("{ROLE}mfa_serial = \"arn:aws:iam::123456789012:mfa/{{name}}\"\n"),
            3,
            "only contain the placeholder {user}",
        );
        refused("roles = \"prod\"\n", 1, "write [roles.NAME]");
        refused("[roles]\narn = \"arn:aws:iam::123456789012:role/x\"\n", 2, "put `arn` under it");
        refused("[notify]\nurl = \"https://h.example\"\n", 1, "write [[notify]] (two brackets)");
    }

    #[test]
    fn invalid_toml_names_its_line() {
        let error = refused("sync = \"push\"\n\nmax_ttl = \"1h\n", 3, "this is not valid TOML");
        assert!(error.column > 1, "{error}");
        refused("sync = \"push\"\nsync = \"manual\"\n", 2, "duplicate key");
    }

    #[test]
    fn role_arns_and_names() {
        for arn in [
            "arn:aws:iam::123456789012:role/prod-readonly",
            "arn:aws:iam::123456789012:role/service/ops/prod_ro+x=y,z.@-",
            "arn:aws-cn:iam::123456789012:role/r",
            "arn:aws-us-gov:iam::123456789012:role/r",
        ] {
            parse(&format!("[roles.r]\narn = \"{arn}\"\n"));
        }
        for arn in [
            "prod-readonly",
            "arn:aws:iam::12345678901:role/r",
            "arn:aws:iam::123456789012:user/r",
            "arn:aws:sts::123456789012:assumed-role/r/s",
            "arn:aws:iam::123456789012:role/",
            "arn:aws:iam::123456789012:role/a//b",
            "arn:aws:iam::123456789012:role/has space",
            "arn:gcp:iam::123456789012:role/r",
        ] {
            refused(&format!("\n[roles.r]\narn = \"{arn}\"\n"), 3, "is not an IAM role ARN");
        }
        let error = refused("\n[roles.r]\nregion = \"us-east-1\"\n", 2, "[roles.r] needs `arn`");
        assert!(error.message.ends_with(r#"write arn = "arn:aws:iam::123456789012:role/prod-readonly""#));
        refused(
            "[roles.\"prod readonly\"]\narn = \"arn:aws:iam::123456789012:role/r\"\n",
            1,
            "letters, digits",
        );
        refused(
            "[roles.\"prod/ro\"]\narn = \"arn:aws:iam::123456789012:role/r\"\n",
            1,
            "cannot name an entry",
        );
        parse("[roles.\"prod.ro_1\"]\narn = \"arn:aws:iam::123456789012:role/r\"\n");
    }

    #[test]
    fn mfa() {
        let error = refused(
            &format!("{ROLE}region = \"us-east-1\"\nrequire_mfa = true\n"),
            4,
            "needs the MFA device",
        );
        assert!(error.message.ends_with(r#"add mfa_serial = "arn:aws:iam::123456789012:mfa/{user}""#));
        let policy = parse(&format!(
            "{ROLE}require_mfa = true\nmfa_serial = \"arn:aws:iam::123456789012:mfa/{{user}}\"\n"
        ));
        let role = &policy.roles["prod-readonly"];
        assert!(role.require_mfa);
        assert_eq!(role.mfa_serial_for("alice").as_deref(), Some("arn:aws:iam::123456789012:mfa/alice"));
        let policy = parse(&format!("{ROLE}mfa_serial = \"GAHT12345678\"\n"));
        assert_eq!(policy.roles["prod-readonly"].mfa_serial_for("alice").as_deref(), Some("GAHT12345678"));
        assert_eq!(parse(ROLE).roles["prod-readonly"].mfa_serial_for("alice"), None);
    }

    #[test]
    fn databases() {
        let db = |body: &str| {
            format!("{ROLE}region = \"us-east-1\"\nmax_ttl = \"2h\"\n[databases.orders]\n{body}")
        };
        // Lines: 1-4 role, 5 [databases.orders], 6.. body.
        let rds =
            "provider = \"rds-iam\"\nengine = \"mysql\"\nhost = \"orders.example\"\ndb_user = \"ops\"\n";
        let policy = parse(&format!("{}role = \"prod-readonly\"\n", db(rds)));
        let orders = &policy.databases["orders"];
        assert_eq!((orders.port, orders.max_ttl, orders.region.as_deref()), (3306, 7200, Some("us-east-1")));
        refused(&db(rds), 5, "[databases.orders] needs `role`");
        refused(
            &format!("{}role = \"prod-readnly\"\n", db(rds)),
            10,
            r#"did you mean role = "prod-readonly"?"#,
        );
        refused(&format!("{}role = \"admin\"\n", db(rds)), 10, "names no [roles.admin]");
        refused(
            &db("provider = \"rds-iam\"\nengine = \"postgres\"\nhost = \"h\"\nrole = \"prod-readonly\"\n"),
            5,
            "[databases.orders] needs `db_user`",
        );
        refused(
            &format!("{}role = \"prod-readonly\"\nmax_ttl = \"3h\"\n", db(rds)),
            11,
            "above max_ttl 2h of its role",
        );
        refused(
            &format!("{}role = \"prod-readonly\"\ngrant_roles = [\"r\"]\n", db(rds)),
            11,
            "applies only to provider = \"postgres\"",
        );
        refused(&db("provider = \"iam\"\n"), 6, r#"write provider = "rds-iam" (or "postgres")"#);
        refused(&db("engine = \"postgres\"\n"), 5, "needs `provider`");
        refused(&format!("{}port = 70000\nrole = \"prod-readonly\"\n", db(rds)), 10, "between 1 and 65535");
        let error = refused(
            &db("provider = \"rds-iam\"\nengine = \"postgres\"\nhost = \"postgres://u:p@h/db\"\n"),
            8,
            "host name or IP address only",
        );
        assert!(!error.to_string().contains("u:p"), "a secret was echoed: {error}");
        let pg = "provider = \"postgres\"\nengine = \"postgres\"\nhost = \"localhost\"\n";
        let policy = parse(&db(&format!("{pg}grant_roles = [\"app_readonly\"]\nconnection_limit = 3\n")));
        assert_eq!(policy.databases["orders"].grant_roles, ["app_readonly"]);
        assert_eq!(policy.databases["orders"].connection_limit, Some(3));
        refused(&db(pg), 5, "needs `grant_roles`");
        for bad_host in ["orders.example:5432", "", "a b", "[]"] {
            let text =
                db(&format!("provider = \"postgres\"\nengine = \"postgres\"\nhost = \"{bad_host}\"\n"));
            refused(&text, 8, "host name or IP address only");
        }
        let v6 =
            db("provider = \"postgres\"\nengine = \"postgres\"\nhost = \"[::1]\"\ngrant_roles = [\"r\"]\n");
        assert_eq!(parse(&v6).databases["orders"].host, "[::1]");
        refused(&db(&format!("{pg}grant_roles = []\n")), 9, "at least one role");
        refused(
            &db(&format!("{pg}grant_roles = [\"r\"]\ndb_user = \"x\"\n")),
            10,
            "applies only to provider = \"rds-iam\"",
        );
        refused(&db(&format!("{pg}grant_roles = [\"r\"]\nconnection_limit = 0\n")), 10, "between 1 and");
        refused(
            &db("provider = \"postgres\"\nengine = \"mysql\"\nhost = \"h\"\ngrant_roles = [\"r\"]\n"),
            7,
            r#"write engine = "postgres""#,
        );
    }

    #[test]
    fn databases_never_carry_credentials() {
        for key in ["password", "admin_url", "admin_password", "dsn", "connection_string", "PGPASSWORD"] {
            let text = format!(
                "[databases.pg]\nprovider = \"postgres\"\nengine = \"postgres\"\nhost = \"h\"\n\
                 {key} = \"s3cret\"\n"
            );
            let error = refused(&text, 5, &format!("`{key}` in [databases.pg] looks like a credential"));
            assert!(
                error.message.contains("admin credentials come from the environment or the OS keyring"),
                "{error}"
            );
            assert!(!error.message.contains("s3cret"), "{error}");
        }
        let error = refused(&format!("{ROLE}secret_access_key = \"x\"\n"), 3, "looks like a credential");
        assert!(error.message.contains("AWS credential chain"), "{error}");
        refused("[[notify]]\nurl = \"https://h.example\"\ntoken = \"x\"\n", 3, "looks like a credential");
    }

    #[test]
    fn notify() {
        for url in [
            "https://hooks.example.com/tpa",
            "http://localhost:9000/x",
            "http://127.0.0.1/x",
            "http://[::1]:80/",
        ] {
            parse(&format!("[[notify]]\nurl = \"{url}\"\n"));
        }
        for (url, needle) in [
            ("http://hooks.example.com/tpa", "must use https://"),
            ("http://localhost.evil.com/", "must use https://"),
            ("ftp://h/x", "must be an https:// URL"),
            ("https://user:pw@hooks.example.com/", "user:password@"),
            ("https:///path", "has no host"),
        ] {
            refused(
                &format!("[[notify]]\nurl = \"https://ok.example\"\n\n[[notify]]\nurl = \"{url}\"\n"),
                5,
                needle,
            );
        }
        refused(
            "[[notify]]\nurl = \"https://h.example\"\nevents = [\"grant\", \"deploy\"]\n",
            3,
            r#"holds "deploy", which is no event"#,
        );
        refused("[[notify]]\nurl = \"https://h.example\"\nevents = []\n", 3, "nothing would ever be sent");
        refused(
            "[[notify]]\nurl = \"https://h.example\"\nformat = \"xml\"\n",
            3,
            r#"write format = "json" (or "slack")"#,
        );
        refused(
            "[[notify]]\nurl = \"https://h.example\"\n[[notify]]\nrequired = true\n",
            3,
            "[[notify]] number 2 needs `url`",
        );
    }

    #[test]
    fn branches() {
        let policy = parse(DESIGN_EXAMPLE);
        assert_eq!(policy.check_branch("refs/heads/hotfix/INC-4211"), Ok(()));
        assert_eq!(policy.check_branch("refs/heads/fix/a/b"), Ok(()));
        assert_eq!(
            policy.check_branch("refs/heads/main"),
            Err(PolicyRefusal::BranchProtected { branch: "main".into() })
        );
        assert_eq!(
            policy.check_branch("refs/heads/feature/x"),
            Err(PolicyRefusal::BranchNotAllowed {
                branch: "feature/x".into(),
                patterns: vec!["hotfix/*".into(), "fix/*".into()]
            })
        );
        // Patterns are anchored at both ends and match the short name.
        assert!(policy.check_branch("refs/heads/my-hotfix/x").is_err());
        assert!(policy.check_branch("refs/heads/hotfix").is_err());
        for not_a_branch in
            ["HEAD", "refs/tags/v1", "refs/heads/", "hotfix/x", "refs/remotes/origin/hotfix/x"]
        {
            assert_eq!(
                policy.check_branch(not_a_branch),
                Err(PolicyRefusal::NotABranch { refname: not_a_branch.into() })
            );
        }
        // Without request_branches, any branch that is not protected.
        let open = parse("protected_branches = [\"main\", \"release/*\"]\n");
        assert_eq!(open.check_branch("refs/heads/feature/x"), Ok(()));
        assert_eq!(open.check_branch("refs/heads/master"), Ok(()));
        assert!(open.check_branch("refs/heads/release/2024.1").is_err());
        // Protected wins over allowed.
        let both = parse("protected_branches = [\"hotfix/frozen\"]\nrequest_branches = [\"*\"]\n");
        assert!(matches!(
            both.check_branch("refs/heads/hotfix/frozen"),
            Err(PolicyRefusal::BranchProtected { .. })
        ));
        assert_eq!(both.check_branch("refs/heads/hotfix/other"), Ok(()));
    }

    #[test]
    fn globs() {
        assert!(glob_match("hotfix/*", "hotfix/a/b"));
        assert!(glob_match("*", "a/b/c"));
        assert!(glob_match("*-hotfix", "team/x-hotfix"));
        assert!(glob_match("v?", "v1"));
        assert!(!glob_match("v?", "v10"));
        assert!(glob_match("rel?ase", "reléase"));
        assert!(glob_match("a*b*c", "a-b-b-c"));
        assert!(!glob_match("a*b*c", "a-b-b-d"));
        assert!(!glob_match("Main", "main"));
        assert!(glob_match("main", "main"));
        assert!(!glob_match("main", "main2"));
        assert!(glob_match("**", ""));
    }

    #[test]
    fn ttls() {
        let policy = parse(DESIGN_EXAMPLE);
        let role = policy.role("prod-readonly").unwrap();
        assert_eq!(role.check_ttl(900), Ok(()));
        assert_eq!(role.check_ttl(3600), Ok(()));
        assert_eq!(
            role.check_ttl(899),
            Err(PolicyRefusal::TtlOutOfRange { seconds: 899, min: 900, max: 43_200 })
        );
        let above = role.check_ttl(3601).unwrap_err();
        assert_eq!(
            above,
            PolicyRefusal::TtlAboveMax { table: "[roles.prod-readonly]".into(), seconds: 3601, max: 3600 }
        );
        assert_eq!(
            above.to_string(),
            "a ttl of 1h1s is above max_ttl 1h of [roles.prod-readonly]: ask for at most 1h (--ttl 1h), \
             or raise max_ttl in [roles.prod-readonly] of .tpa/policy.toml through review"
        );
        let twelve =
            parse("[roles.long]\narn = \"arn:aws:iam::123456789012:role/long\"\nmax_ttl = \"12h\"\n");
        let long = &twelve.roles["long"];
        assert_eq!(long.check_ttl(43_200), Ok(()));
        assert!(matches!(long.check_ttl(43_201), Err(PolicyRefusal::TtlAboveMax { .. })));
        // A role built by hand with a max above STS's is still held to STS's limit.
        let loose = RolePolicy { max_ttl: 100_000, ..long.clone() };
        assert!(matches!(loose.check_ttl(43_201), Err(PolicyRefusal::TtlOutOfRange { .. })));
        assert!(
            PolicyRefusal::TtlOutOfRange { seconds: 60, min: 900, max: 43_200 }
                .to_string()
                .contains("--ttl 15m")
        );
        assert!(matches!(policy.databases["orders"].check_ttl(7200), Err(PolicyRefusal::TtlAboveMax { .. })));
    }

    #[test]
    fn reasons() {
        let policy = parse("min_reason_length = 10\n");
        assert_eq!(policy.check_reason(""), Err(PolicyRefusal::ReasonMissing));
        assert_eq!(policy.check_reason("   \n\t"), Err(PolicyRefusal::ReasonMissing));
        assert_eq!(
            policy.check_reason("  INC-1 fix "),
            Err(PolicyRefusal::ReasonTooShort { min: 10, got: 9 })
        );
        assert_eq!(policy.check_reason("INC-1 fixé"), Ok(()));
        assert_eq!(policy.check_reason("INC-4211: fix stuck invoices"), Ok(()));
    }

    #[test]
    fn unknown_roles_list_what_there_is() {
        let policy = parse(DESIGN_EXAMPLE);
        let error = policy.role("prod-readnly").unwrap_err();
        assert_eq!(
            error,
            PolicyRefusal::UnknownRole {
                name: "prod-readnly".into(),
                available: vec!["prod-readonly".into()]
            }
        );
        let message = error.to_string();
        assert!(
            message.contains("did you mean `prod-readonly`?") && message.contains("through review"),
            "{message}"
        );
        assert!(parse("").role("x").unwrap_err().to_string().contains("the policy defines none"));
        assert!(matches!(policy.database("nope"), Err(PolicyRefusal::UnknownDatabase { .. })));
    }

    #[test]
    fn approvals_groups_and_brokers_parse_as_the_issue_writes_them() {
        let text = r#"
brokers = ["tpa-broker@example.com"]

[groups]
sre = ["alice@example.com", "bob@example.com"]

[roles.prod-admin]
arn = "arn:aws:iam::123456789012:role/prod-admin"
approvals = 1
approvers = ["@sre", "dave@example.com"]
approval_window = "30m"
break_glass = true
review_within = "24h"
mint = "broker"
"#;
        let policy = Policy::parse(text, "t").unwrap();
        let rules = &policy.role("prod-admin").unwrap().approval;
        assert_eq!((rules.approvals, rules.window, rules.review_within), (1, 1800, 86_400));
        assert!(rules.break_glass);
        assert_eq!(rules.mint, Mint::Broker);
        let approvers: Vec<String> = policy.approvers(rules).into_iter().collect();
        assert_eq!(approvers, ["alice@example.com", "bob@example.com", "dave@example.com"]);
        assert_eq!(policy.brokers, ["tpa-broker@example.com"]);

        let missing_group = text.replace("[groups]\nsre", "[groups]\nops");
        let e = Policy::parse(&missing_group, "t").unwrap_err().to_string();
        assert!(e.contains("@sre") && e.contains("[groups] has no `sre`"), "{e}");
        let too_few = text.replace("approvals = 1", "approvals = 4");
        let e = Policy::parse(&too_few, "t").unwrap_err().to_string();
        assert!(e.contains("asks for 4 approvals but names only 3"), "{e}");
        let no_broker = text.replace("brokers = [\"tpa-broker@example.com\"]", "");
        let e = Policy::parse(&no_broker, "t").unwrap_err().to_string();
        assert!(e.contains("mint = \"broker\"") && e.contains("names no broker"), "{e}");
        let nobody = "[roles.x]\narn = \"arn:aws:iam::123456789012:role/x\"\napprovals = 1\n";
        let e = Policy::parse(nobody, "t").unwrap_err().to_string();
        assert!(e.contains("needs who may approve"), "{e}");
    }

    #[test]
    fn errors_point_at_line_and_column() {
        let error = refused("sync = \"push\"\n  default_ttl =   \"forever\"\n", 2, "default_ttl");
        assert_eq!(error.column, 19);
        assert_eq!(error.file, "policy.toml");
        assert!(
            error
                .to_string()
                .starts_with("policy.toml:2:19: `default_ttl` at the top level is not a duration")
        );
        let error = Policy::parse("x = 1", "refs/remotes/origin/main:.tpa/policy.toml").unwrap_err();
        assert!(
            error.to_string().starts_with("refs/remotes/origin/main:.tpa/policy.toml:1:1: unknown key `x`")
        );
    }

    #[test]
    fn durations_format_as_written() {
        assert_eq!(format_duration(0), "0s");
        assert_eq!(format_duration(899), "14m59s");
        assert_eq!(format_duration(5400), "1h30m");
        assert_eq!(format_duration(43_200), "12h");
    }

    #[test]
    fn suggestions() {
        assert_eq!(edit_distance("max_tll", "max_ttl"), 1);
        assert_eq!(edit_distance("snyc", "sync"), 1);
        assert_eq!(closest("max_tll", ROLE_KEYS.iter().copied()), Some("max_ttl"));
        assert_eq!(closest("url", ROLE_KEYS.iter().copied()), None);
        assert_eq!(closest("completely_else", TOP_KEYS.iter().copied()), None);
    }
}
