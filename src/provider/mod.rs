//! Providers mint short-lived credentials. The async AWS SDK lives behind this boundary; the rest
//! of tpa is plain synchronous code.

pub mod aws;
pub mod aws_iam;
pub mod aws_sts;
pub mod cloudtrail;
pub mod postgres;
pub mod rds_token;

use chrono::{DateTime, Utc};
use zeroize::Zeroizing;

/// The service's own answer inside an SDK error: its error code and message. None for failures
/// that never got an answer (timeouts, connection errors, credential loading).
pub(crate) fn service_error<E, R>(error: &aws_sdk_sts::error::SdkError<E, R>) -> Option<(String, String)>
where
    E: aws_sdk_sts::error::ProvideErrorMetadata,
{
    match error {
        aws_sdk_sts::error::SdkError::ServiceError(context) => Some((
            context.err().code().unwrap_or("Unknown").to_owned(),
            context.err().message().unwrap_or_default().to_owned(),
        )),
        _ => None,
    }
}

/// What to ask STS for, fully resolved and validated by policy beforehand.
#[derive(Clone, Debug)]
pub struct MintRequest {
    pub role_arn: String,
    pub session_name: String,
    pub duration_seconds: u32,
    pub tags: Vec<(String, String)>,
    pub source_identity: Option<String>,
    pub session_policy: Option<String>,
    /// (serial number, token code)
    pub mfa: Option<(String, String)>,
    pub external_id: Option<String>,
}

/// Short-lived AWS credentials. The secret parts are wiped from memory when dropped.
#[derive(Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: Zeroizing<String>,
    pub session_token: Zeroizing<String>,
    pub expiration: DateTime<Utc>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &"<redacted>")
            .field("expiration", &self.expiration)
            .finish_non_exhaustive()
    }
}

/// A grant's secret, as minted: what the keyring keeps and `tpa exec` hands to a child.
#[derive(Clone, Debug)]
pub enum Secret {
    /// An STS session's credentials.
    Aws(Credentials),
    /// A database login made for the grant: a PostgreSQL role and its password.
    DbLogin(DbLogin),
}

/// A login role and its password. The password is wiped from memory when dropped.
#[derive(Clone)]
pub struct DbLogin {
    pub user: String,
    pub password: Zeroizing<String>,
    /// When the password stops working for new logins.
    pub valid_until: DateTime<Utc>,
}

impl std::fmt::Debug for DbLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbLogin").field("user", &self.user).field("valid_until", &self.valid_until).finish()
    }
}

impl Secret {
    /// When the provider stops honouring it.
    pub fn expires_at(&self) -> DateTime<Utc> {
        match self {
            Secret::Aws(credentials) => credentials.expiration,
            Secret::DbLogin(login) => login.valid_until,
        }
    }

    /// What the ledger may say of it: a fingerprint of its public half (the access key id, the
    /// role name), never the key id or the secret itself.
    pub fn fingerprint(&self) -> String {
        match self {
            Secret::Aws(credentials) => crate::grant::credential_fingerprint(&credentials.access_key_id),
            Secret::DbLogin(login) => crate::grant::credential_fingerprint(&login.user),
        }
    }
}

/// Why minting failed. Each provider's own error, shown as it says it.
pub type MintFailure = Box<dyn std::error::Error + Send + Sync>;

/// The side of a provider that issues a grant. The executor (`ops::issue`) does everything else:
/// records, keyring, interruptions, undoing a mint whose record could not be written.
pub trait Issuer {
    fn kind(&self) -> ProviderKind;
    /// Fills in what this provider adds to the grant's records: provider, target, role,
    /// database, scope.
    fn describe(&self, record: &mut crate::grant::Record);
    /// Starts making, on a thread of its own, what minting needs and what may exist before the
    /// intent is recorded: a client, its configuration and TLS roots, the base credentials. It asks
    /// the provider for nothing of the grant's. `mint` takes what is ready, or makes it then; so
    /// preparing changes only when the work is done, overlapped with the keyring and the ledger's
    /// writes.
    fn prepare(&mut self) {}
    /// Mints the grant's secret (an STS session, a login role).
    fn mint(&mut self) -> Result<Secret, MintFailure>;
    /// Ends what `mint` made, when the grant record could not be written: unrecorded access must
    /// not stay usable. Best effort; whether it worked.
    fn unmint(&mut self, secret: &Secret) -> bool;
}

/// Why minting failed, classified so the CLI can say what to do.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("AWS denied the request: {message}{}", hint.as_deref().map(|h| format!("\nhint: {h}")).unwrap_or_default())]
    AccessDenied { message: String, hint: Option<String> },
    #[error(
        "AWS refused the session length: {message}\nhint: a role assumed with credentials that are themselves \
         a role session (role chaining) is capped at 1 hour: ask for --ttl 1h or less"
    )]
    RoleChainingCap { message: String },
    #[error(
        "no valid base AWS credentials: {message}\nhint: log in first (`aws sso login`), choose a profile \
         with --profile or AWS_PROFILE, or set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
    )]
    NoCredentials { message: String },
    #[error("AWS is throttling requests (tpa retried): {message}\nhint: wait a minute and try again")]
    Throttled { message: String },
    #[error(
        "cannot reach STS{}: {message}\nhint: check your network or VPN, and AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_STS",
        endpoint.as_deref().map(|e| format!(" at {e}")).unwrap_or_default()
    )]
    Unreachable { endpoint: Option<String>, message: String },
    #[error("STS did not answer within {seconds} s\nhint: check your network, or raise --timeout")]
    TimedOut { seconds: u64 },
    #[error(
        "the base AWS credentials did not come within {seconds} s\nhint: check their source (`aws sso \
         login`, the profile's credential_process), or raise --timeout"
    )]
    CredentialsTimedOut { seconds: u64 },
    #[error("AWS rejected the request: {code}: {message}")]
    Rejected { code: String, message: String },
    #[error("STS answered without credentials")]
    NoCredentialsInResponse,
}

/// Which provider issued a grant. Records carry it as text (`provider`), so that a ledger written by
/// a newer tpa still reads; a kind this tpa does not know is `Other`, and never mistaken for one it
/// does (its grants are refused an IAM deny that would end nothing).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProviderKind {
    /// An STS session of a role (`tpa request --role`).
    AwsSts,
    /// An STS session of a database's role, turned into RDS IAM auth tokens.
    RdsIam,
    /// A PostgreSQL login role made for the grant.
    Postgres,
    Other(String),
}

impl ProviderKind {
    pub fn parse(name: &str) -> Self {
        match name {
            "aws-sts" => ProviderKind::AwsSts,
            "rds-iam" => ProviderKind::RdsIam,
            "postgres" => ProviderKind::Postgres,
            other => ProviderKind::Other(other.to_owned()),
        }
    }

    pub fn name(&self) -> &str {
        match self {
            ProviderKind::AwsSts => "aws-sts",
            ProviderKind::RdsIam => "rds-iam",
            ProviderKind::Postgres => "postgres",
            ProviderKind::Other(name) => name,
        }
    }

    /// Its grants are STS sessions of the role in the record's `target`: they hand out AWS
    /// credentials, and a deny in that role's revocation policy ends them.
    pub fn is_sts_session(&self) -> bool {
        matches!(self, ProviderKind::AwsSts | ProviderKind::RdsIam)
    }

    /// Its access outlives the recorded expiry until tpa ends it: PostgreSQL refuses new logins
    /// after VALID UNTIL but keeps the role and its open sessions.
    pub fn outlives_expiry(&self) -> bool {
        matches!(self, ProviderKind::Postgres)
    }
}

impl std::fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl serde::Serialize for ProviderKind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

/// One grant, as the side that ends it needs it.
#[derive(Clone, Copy, Debug)]
pub struct Ending<'a> {
    pub grant_id: &'a crate::grant::GrantId,
    /// The record's `target`: the role ARN of an STS session.
    pub target: &'a str,
    /// The policy's database, for database grants.
    pub database: Option<&'a str>,
}

/// How one grant's access was ended: a note worth telling (e.g. that more was cut than asked).
pub type Ended = Result<Option<String>, String>;

/// Where a backend learns when grants expired, to prune what it keeps for sessions long expired
/// (IAM deny entries). Asked only about the sessions it holds entries for, by session name; a
/// session it is not told of is kept (pruning less is never unsafe).
pub trait Expiries {
    fn of(
        &self,
        sessions: &std::collections::BTreeSet<String>,
    ) -> std::collections::BTreeMap<String, DateTime<Utc>>;
}

/// Every expiry already known, by session name.
impl Expiries for std::collections::BTreeMap<String, DateTime<Utc>> {
    fn of(
        &self,
        sessions: &std::collections::BTreeSet<String>,
    ) -> std::collections::BTreeMap<String, DateTime<Utc>> {
        sessions.iter().filter_map(|s| self.get(s).map(|e| (s.clone(), *e))).collect()
    }
}

/// The side of a provider that ends grants of its kind and keeps them ended.
pub trait Backend {
    /// Ends the access of each grant; one outcome per grant, in order. An `Err` is worth a retry.
    fn end(&mut self, grants: &[Ending<'_>], expiries: &dyn Expiries) -> Vec<Ended>;

    /// Writes back what keeps revoked, unexpired grants ended, where the provider cannot be
    /// trusted to keep it (IAM has no compare-and-swap). Returns how many were re-asserted.
    fn reassert(&mut self, grants: &[Ending<'_>], expiries: &dyn Expiries) -> Result<usize, String>;
}

/// What a backend may need to reach its provider.
pub struct Reach<'a> {
    /// The AWS profile whose credentials may write revocation policies.
    pub profile: Option<&'a str>,
    pub timeout: std::time::Duration,
    /// The policy at the trust ref (database connection details), when it could be read.
    pub policy: Result<&'a crate::policy::Policy, &'a str>,
}

/// The backend that ends grants of `kind`.
pub fn backend<'a>(kind: &ProviderKind, reach: &Reach<'a>) -> Box<dyn Backend + 'a> {
    match kind {
        ProviderKind::AwsSts | ProviderKind::RdsIam => {
            Box::new(aws_iam::IamBackend::new(reach.profile, reach.timeout))
        }
        ProviderKind::Postgres => Box::new(postgres::PgBackend::new(reach.policy, reach.timeout)),
        ProviderKind::Other(name) => Box::new(Unknown(name.clone())),
    }
}

/// Grants of a provider this tpa does not know: nothing it could do would end them.
struct Unknown(String);

impl Unknown {
    fn refusal(&self) -> String {
        format!(
            "tpa does not know how to end grants of provider `{}`: end it at the provider, or use the tpa \
             that issued it",
            crate::escape::excerpt(&self.0)
        )
    }
}

impl Backend for Unknown {
    fn end(&mut self, grants: &[Ending<'_>], _: &dyn Expiries) -> Vec<Ended> {
        grants.iter().map(|_| Err(self.refusal())).collect()
    }

    fn reassert(&mut self, _: &[Ending<'_>], _: &dyn Expiries) -> Result<usize, String> {
        Err(self.refusal())
    }
}
