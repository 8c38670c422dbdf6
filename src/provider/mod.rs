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
    #[error("AWS rejected the request: {code}: {message}")]
    Rejected { code: String, message: String },
    #[error("STS answered without credentials")]
    NoCredentialsInResponse,
}
