//! `.tpa/allowed_signers`: OpenSSH's allowed signers format (ssh-keygen(1), "ALLOWED SIGNERS"),
//! read the way `ssh-keygen -Y verify` reads it, so that tpa and ssh-keygen agree on every record.

use chrono::{DateTime, Local, NaiveDate, NaiveDateTime, TimeZone, Utc};
use ssh_key::PublicKey;

pub const NAMESPACE: &str = "tpa";

#[derive(Clone, Debug)]
pub struct AllowedSigner {
    pub line: usize,
    pub principals: String,
    pub namespaces: Option<String>,
    pub valid_after: Option<DateTime<Utc>>,
    pub valid_before: Option<DateTime<Utc>>,
    pub cert_authority: bool,
    pub key: PublicKey,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("allowed_signers line {line}: {message}")]
pub struct SignersError {
    pub line: usize,
    pub message: String,
}

#[derive(Clone, Debug, Default)]
pub struct AllowedSigners {
    pub entries: Vec<AllowedSigner>,
}

/// Why a key was not accepted for a principal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SignerCheck {
    Allowed,
    /// The key is not in the file at all.
    UnknownKey,
    /// The key is listed, but for other principals.
    OtherPrincipal(String),
    /// The key is listed for the principal, but not for namespace `tpa`.
    WrongNamespace,
    /// The key is listed for the principal, but was not valid at the record's time.
    NotValidAt,
}

impl AllowedSigners {
    pub fn parse(text: &str) -> Result<Self, SignersError> {
        let mut entries = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            entries.push(parse_line(trimmed, line)?);
        }
        Ok(AllowedSigners { entries })
    }

    pub fn contains_key(&self, key: &PublicKey) -> bool {
        self.entries.iter().any(|e| e.key.key_data() == key.key_data())
    }

    /// Is `key` allowed to sign as `principal` in namespace `tpa` at time `at`?
    pub fn check(&self, key: &ssh_key::public::KeyData, principal: &str, at: DateTime<Utc>) -> SignerCheck {
        let with_key: Vec<_> =
            self.entries.iter().filter(|e| !e.cert_authority && e.key.key_data() == key).collect();
        if with_key.is_empty() {
            return SignerCheck::UnknownKey;
        }
        let for_principal: Vec<_> =
            with_key.iter().filter(|e| pattern_list_matches(&e.principals, principal)).collect();
        if for_principal.is_empty() {
            let others = with_key.iter().map(|e| e.principals.as_str()).collect::<Vec<_>>().join(", ");
            return SignerCheck::OtherPrincipal(others);
        }
        let in_namespace: Vec<_> = for_principal
            .iter()
            .filter(|e| e.namespaces.as_deref().is_none_or(|ns| pattern_list_matches(ns, NAMESPACE)))
            .collect();
        if in_namespace.is_empty() {
            return SignerCheck::WrongNamespace;
        }
        let valid = in_namespace.iter().any(|e| {
            e.valid_after.is_none_or(|after| at >= after) && e.valid_before.is_none_or(|before| at <= before)
        });
        if valid { SignerCheck::Allowed } else { SignerCheck::NotValidAt }
    }
}

/// One line as tpa writes it for a new signer.
pub fn format_line(principal: &str, key: &PublicKey) -> String {
    let mut key = key.clone();
    key.set_comment("");
    let encoded = key.to_openssh().expect("a parsed key always encodes");
    format!("{principal} namespaces=\"{NAMESPACE}\" {}", encoded.trim_end())
}

fn parse_line(text: &str, line: usize) -> Result<AllowedSigner, SignersError> {
    let err = |message: String| SignersError { line, message };
    let (principals, rest) = split_token(text);
    if principals.is_empty() {
        return Err(err("no principals".into()));
    }
    let mut rest = rest.trim_start();
    let mut entry_options = Vec::new();
    // Options come before the key type; a key type always starts with a known algorithm prefix.
    if !looks_like_key_type(rest) {
        let (options, after) = split_token(rest);
        entry_options = split_options(&options).map_err(err)?;
        rest = after.trim_start();
    }
    let key = PublicKey::from_openssh(rest).map_err(|e| err(format!("bad public key: {e}")))?;
    let mut signer = AllowedSigner {
        line,
        principals: principals.trim_matches('"').to_owned(),
        namespaces: None,
        valid_after: None,
        valid_before: None,
        cert_authority: false,
        key,
    };
    for (name, value) in entry_options {
        match (name.to_ascii_lowercase().as_str(), value) {
            ("cert-authority", None) => signer.cert_authority = true,
            ("namespaces", Some(v)) => signer.namespaces = Some(v),
            ("valid-after", Some(v)) => signer.valid_after = Some(parse_time(&v).map_err(err)?),
            ("valid-before", Some(v)) => signer.valid_before = Some(parse_time(&v).map_err(err)?),
            (other, _) => return Err(err(format!("unknown option `{other}`"))),
        }
    }
    Ok(signer)
}

fn looks_like_key_type(s: &str) -> bool {
    ["ssh-", "ecdsa-", "sk-", "rsa-"].iter().any(|p| s.starts_with(p))
}

/// Splits off the first whitespace-separated token, honouring double quotes.
fn split_token(s: &str) -> (String, &str) {
    let mut quoted = false;
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => return (s[..i].to_owned(), &s[i..]),
            _ => {}
        }
    }
    (s.to_owned(), "")
}

fn split_options(s: &str) -> Result<Vec<(String, Option<String>)>, String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in s.chars().chain(std::iter::once(',')) {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                if current.is_empty() {
                    return Err("empty option".into());
                }
                let option = match current.split_once('=') {
                    Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
                    None => (current.clone(), None),
                };
                out.push(option);
                current.clear();
            }
            c => current.push(c),
        }
    }
    if quoted {
        return Err("unterminated quote in options".into());
    }
    Ok(out)
}

/// `YYYYMMDD[Z]` or `YYYYMMDDHHMM[SS][Z]`: with `Z` in UTC, else in local time, as ssh-keygen does.
fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    let bad = || format!("bad time `{text}`: write YYYYMMDD or YYYYMMDDHHMM[SS], with Z for UTC");
    let (digits, utc) = match text.strip_suffix(['Z', 'z']) {
        Some(d) => (d, true),
        None => (text, false),
    };
    let naive = match digits.len() {
        8 => NaiveDate::parse_from_str(digits, "%Y%m%d").ok().and_then(|d| d.and_hms_opt(0, 0, 0)),
        12 => NaiveDateTime::parse_from_str(digits, "%Y%m%d%H%M").ok(),
        14 => NaiveDateTime::parse_from_str(digits, "%Y%m%d%H%M%S").ok(),
        _ => None,
    }
    .ok_or_else(bad)?;
    if utc {
        Ok(Utc.from_utc_datetime(&naive))
    } else {
        Local.from_local_datetime(&naive).earliest().map(|t| t.with_timezone(&Utc)).ok_or_else(bad)
    }
}

/// OpenSSH's `match_pattern_list`: comma-separated globs (`*`, `?`), `!` negates and wins.
pub fn pattern_list_matches(list: &str, candidate: &str) -> bool {
    let mut matched = false;
    for pattern in list.split(',') {
        let pattern = pattern.trim();
        if let Some(negated) = pattern.strip_prefix('!') {
            if glob(negated.as_bytes(), candidate.as_bytes()) {
                return false;
            }
        } else if glob(pattern.as_bytes(), candidate.as_bytes()) {
            matched = true;
        }
    }
    matched
}

fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match (pattern.first(), text.first()) {
        (None, None) => true,
        (Some(b'*'), _) => glob(&pattern[1..], text) || (!text.is_empty() && glob(pattern, &text[1..])),
        (Some(b'?'), Some(_)) => glob(&pattern[1..], &text[1..]),
        (Some(p), Some(t)) if p == t => glob(&pattern[1..], &text[1..]),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILM+rvN+ot98qgEN796jTiQfZfG1KaT0PtFDJ/XFSqti";

    #[test]
    fn parses_options_and_checks_time_namespace_and_principal() {
        let text = format!(
            "# comment\n\nalice@example.com,bob@* namespaces=\"git,tpa\",valid-before=\"20260601Z\" {KEY} alice\n"
        );
        let signers = AllowedSigners::parse(&text).unwrap();
        let key = PublicKey::from_openssh(KEY).unwrap();
        let before = Utc.with_ymd_and_hms(2026, 5, 1, 0, 0, 0).unwrap();
        let after = Utc.with_ymd_and_hms(2026, 7, 1, 0, 0, 0).unwrap();
        assert_eq!(signers.check(key.key_data(), "alice@example.com", before), SignerCheck::Allowed);
        assert_eq!(signers.check(key.key_data(), "bob@x", before), SignerCheck::Allowed);
        assert_eq!(signers.check(key.key_data(), "alice@example.com", after), SignerCheck::NotValidAt);
        assert!(matches!(
            signers.check(key.key_data(), "mallory@example.com", before),
            SignerCheck::OtherPrincipal(_)
        ));
    }

    #[test]
    fn namespace_restriction_is_honoured() {
        let signers = AllowedSigners::parse(&format!("a@x namespaces=\"git\" {KEY}")).unwrap();
        let key = PublicKey::from_openssh(KEY).unwrap();
        assert_eq!(signers.check(key.key_data(), "a@x", Utc::now()), SignerCheck::WrongNamespace);
    }

    #[test]
    fn line_errors_name_the_line() {
        let err = AllowedSigners::parse(&format!("a@x {KEY}\nb@x bogus=1 {KEY}")).unwrap_err();
        assert_eq!(err.line, 2);
        assert!(AllowedSigners::parse("a@x ssh-ed25519 notbase64").is_err());
    }

    #[test]
    fn patterns_follow_openssh() {
        assert!(pattern_list_matches("*@example.com", "a@example.com"));
        assert!(!pattern_list_matches("*@example.com,!evil@example.com", "evil@example.com"));
        assert!(pattern_list_matches("a?c", "abc"));
        assert!(!pattern_list_matches("a?c", "ac"));
    }

    #[test]
    fn format_line_round_trips() {
        let key = PublicKey::from_openssh(KEY).unwrap();
        let line = format_line("a@x", &key);
        let signers = AllowedSigners::parse(&line).unwrap();
        assert_eq!(signers.check(key.key_data(), "a@x", Utc::now()), SignerCheck::Allowed);
    }
}
