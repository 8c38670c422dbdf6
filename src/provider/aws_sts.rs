//! AWS STS AssumeRole through aws-config's standard chain (profiles, SSO, environment,
//! credential_process, `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_STS`).

use std::time::Duration;

use aws_sdk_sts::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sts::types::Tag;
use chrono::{DateTime, Utc};
use zeroize::Zeroizing;

use super::{Credentials, MintError, MintRequest};

/// Where and how to reach STS.
#[derive(Clone, Debug, Default)]
pub struct StsOptions {
    pub profile: Option<String>,
    pub region: Option<String>,
    pub timeout: Duration,
}

pub struct AwsSts {
    runtime: tokio::runtime::Runtime,
    client: aws_sdk_sts::Client,
    timeout: Duration,
    endpoint: Option<String>,
}

impl AwsSts {
    pub fn new(options: &StsOptions) -> Self {
        let sdk = Self::sdk(options);
        let client = aws_sdk_sts::Client::new(&sdk.config);
        Self::of(sdk.runtime, client, options)
    }

    /// As [`AwsSts::new`], with the base credentials fetched now: a profile's SSO or
    /// credential_process takes a round trip or a process of its own, and made on
    /// [`super::Issuer::prepare`]'s thread it overlaps the keyring and the intent record instead of
    /// following them. Nothing of the grant's is asked of STS here; a profile with `role_arn` and
    /// `source_profile`, or web identity, assumes its own role, as any AWS command does. The call
    /// gets what the source answered, its error included ([`FetchedAhead`]); a source that does
    /// not answer within the timeout fails the mint at once, without a second wait.
    pub fn with_credentials(options: &StsOptions) -> Result<Self, MintError> {
        use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
        let sdk = Self::sdk(options);
        let mut config = aws_sdk_sts::config::Builder::from(&sdk.config);
        if let Some(chain) = sdk.config.credentials_provider() {
            let fetched = sdk
                .runtime
                .block_on(async { tokio::time::timeout(options.timeout, chain.provide_credentials()).await })
                .map_err(|_| MintError::CredentialsTimedOut { seconds: options.timeout.as_secs() })?;
            let ahead = FetchedAhead { first: std::sync::Mutex::new(Some(fetched)), chain };
            config.set_credentials_provider(Some(SharedCredentialsProvider::new(ahead)));
        }
        Ok(Self::of(sdk.runtime, aws_sdk_sts::Client::from_conf(config.build()), options))
    }

    fn sdk(options: &StsOptions) -> super::aws::Sdk {
        // STS has an endpoint in every region; one is only needed to pick it.
        super::aws::load(&super::aws::Reach {
            profile: options.profile.as_deref(),
            region: options.region.as_deref(),
            fallback_region: "us-east-1",
            timeout: options.timeout,
            max_attempts: None,
        })
    }

    fn of(runtime: tokio::runtime::Runtime, client: aws_sdk_sts::Client, options: &StsOptions) -> Self {
        let endpoint =
            std::env::var("AWS_ENDPOINT_URL_STS").or_else(|_| std::env::var("AWS_ENDPOINT_URL")).ok();
        AwsSts { runtime, client, timeout: options.timeout, endpoint }
    }

    pub fn assume_role(&self, request: &MintRequest) -> Result<Credentials, MintError> {
        let mut call = self
            .client
            .assume_role()
            .role_arn(&request.role_arn)
            .role_session_name(&request.session_name)
            .duration_seconds(request.duration_seconds as i32);
        for (key, value) in &request.tags {
            let tag = Tag::builder().key(key).value(value).build().expect("key and value are set");
            call = call.tags(tag);
        }
        if let Some(identity) = &request.source_identity {
            call = call.source_identity(identity);
        }
        if let Some(policy) = &request.session_policy {
            call = call.policy(policy);
        }
        if let Some((serial, code)) = &request.mfa {
            call = call.serial_number(serial).token_code(code);
        }
        if let Some(external_id) = &request.external_id {
            call = call.external_id(external_id);
        }
        let output = self.runtime.block_on(call.send()).map_err(|e| self.classify(e))?;
        let credentials = output.credentials().ok_or(MintError::NoCredentialsInResponse)?;
        let expiration = credentials.expiration();
        let expiration = DateTime::<Utc>::from_timestamp(expiration.secs(), expiration.subsec_nanos())
            .ok_or(MintError::NoCredentialsInResponse)?;
        Ok(Credentials {
            access_key_id: credentials.access_key_id().to_owned(),
            secret_access_key: Zeroizing::new(credentials.secret_access_key().to_owned()),
            session_token: Zeroizing::new(credentials.session_token().to_owned()),
            expiration,
        })
    }

    fn classify<E, R>(&self, error: SdkError<E, R>) -> MintError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug,
    {
        let detail = aws_smithy_types::error::display::DisplayErrorContext(&error).to_string();
        if let Some((code, message)) = super::service_error(&error) {
            return classify_service_error(&code, &message);
        }
        match &error {
            SdkError::TimeoutError(_) => MintError::TimedOut { seconds: self.timeout.as_secs() },
            SdkError::DispatchFailure(failure) if failure.is_timeout() => {
                MintError::TimedOut { seconds: self.timeout.as_secs() }
            }
            _ if looks_like_missing_credentials(&detail) => MintError::NoCredentials { message: detail },
            SdkError::DispatchFailure(_) => {
                MintError::Unreachable { endpoint: self.endpoint.clone(), message: detail }
            }
            _ => MintError::Rejected { code: "RequestFailed".into(), message: detail },
        }
    }
}

/// The base credentials fetched ahead of the call, handed to the SDK on its first ask: what the
/// source answered, its error included, so that no source is asked twice for one request (an MFA
/// prompt, a browser sign-in, a helper interrupted by Ctrl-C). Credentials that expire within a
/// minute, and any later ask, go to the chain itself: the keyring may have held the request up
/// (an unlock prompt) since they were fetched.
#[derive(Debug)]
struct FetchedAhead {
    first: std::sync::Mutex<Option<aws_credential_types::provider::Result>>,
    chain: aws_credential_types::provider::SharedCredentialsProvider,
}

/// How long fetched credentials must still be valid to be used for the call.
const FETCHED_AHEAD_MARGIN: Duration = Duration::from_secs(60);

impl aws_credential_types::provider::ProvideCredentials for FetchedAhead {
    fn provide_credentials<'a>(&'a self) -> aws_credential_types::provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        use aws_credential_types::provider::future::ProvideCredentials as Answer;
        let first = self.first.lock().unwrap_or_else(|e| e.into_inner()).take();
        let fresh = |credentials: &aws_credential_types::Credentials| {
            credentials
                .expiry()
                .is_none_or(|expiry| expiry > std::time::SystemTime::now() + FETCHED_AHEAD_MARGIN)
        };
        match first {
            Some(Ok(credentials)) if fresh(&credentials) => Answer::ready(Ok(credentials)),
            Some(Err(error)) => Answer::ready(Err(error)),
            _ => self.chain.provide_credentials(),
        }
    }
}

fn looks_like_missing_credentials(detail: &str) -> bool {
    let lower = detail.to_ascii_lowercase();
    lower.contains("credentials")
        && (lower.contains("no ") || lower.contains("failed to load") || lower.contains("provider"))
}

/// Turns an STS error code and message into advice.
pub fn classify_service_error(code: &str, message: &str) -> MintError {
    let message = message.to_owned();
    match code {
        "AccessDenied" | "AccessDeniedException" => {
            let hint = if message.contains("sts:TagSession") {
                Some(
                    "add sts:TagSession to the role's trust policy, or set `session_tags = false` for this role in .tpa/policy.toml",
                )
            } else if message.contains("sts:SetSourceIdentity") {
                Some(
                    "add sts:SetSourceIdentity to the role's trust policy, or set `source_identity = false` for this role in .tpa/policy.toml",
                )
            } else if message.contains("MultiFactorAuthentication") || message.contains("MFA") {
                Some(
                    "this role needs MFA: set `require_mfa = true` and `mfa_serial` for it, and pass --mfa-code",
                )
            } else {
                Some(
                    "the role's trust policy must let your base credentials call sts:AssumeRole (and sts:TagSession / sts:SetSourceIdentity when enabled for the role)",
                )
            };
            MintError::AccessDenied { message, hint: hint.map(str::to_owned) }
        }
        "ValidationError" if message.contains("chaining") || message.contains("1 hour") => {
            MintError::RoleChainingCap { message }
        }
        "ExpiredToken"
        | "ExpiredTokenException"
        | "InvalidClientTokenId"
        | "UnrecognizedClientException"
        | "SignatureDoesNotMatch"
        | "MissingAuthenticationToken" => MintError::NoCredentials { message: format!("{code}: {message}") },
        "Throttling" | "ThrottlingException" | "RequestLimitExceeded" => MintError::Throttled { message },
        _ => MintError::Rejected { code: code.to_owned(), message },
    }
}

/// Issues an STS session of a role: a grant of a role (`aws-sts`), or of the role a database's IAM
/// tokens are signed with (`rds-iam`).
pub struct StsIssuer {
    pub kind: super::ProviderKind,
    pub mint: MintRequest,
    /// The policy's role name.
    pub role: String,
    /// The policy's database, for `rds-iam`.
    pub database: Option<String>,
    pub scope: Option<crate::grant::Scope>,
    pub options: StsOptions,
    /// The client `prepare` is making.
    prepared: Option<std::thread::JoinHandle<Result<AwsSts, MintError>>>,
}

impl StsIssuer {
    pub fn new(
        kind: super::ProviderKind,
        mint: MintRequest,
        role: String,
        database: Option<String>,
        scope: Option<crate::grant::Scope>,
        options: StsOptions,
    ) -> Self {
        StsIssuer { kind, mint, role, database, scope, options, prepared: None }
    }
}

impl super::Issuer for StsIssuer {
    fn kind(&self) -> super::ProviderKind {
        self.kind.clone()
    }

    fn describe(&self, record: &mut crate::grant::Record) {
        record.provider = self.kind.name().to_owned();
        record.target = self.mint.role_arn.clone();
        record.role = Some(self.role.clone());
        record.database = self.database.clone();
        record.scope = self.scope.clone();
    }

    fn prepare(&mut self) {
        if self.prepared.is_none() {
            let options = self.options.clone();
            // A thread that cannot start leaves the client to be made by `mint`.
            self.prepared = std::thread::Builder::new()
                .name("sts-client".into())
                .spawn(move || AwsSts::with_credentials(&options))
                .ok();
        }
    }

    fn mint(&mut self) -> Result<super::Secret, super::MintFailure> {
        let client = match self.prepared.take().map(std::thread::JoinHandle::join) {
            Some(Ok(prepared)) => prepared?,
            _ => AwsSts::new(&self.options),
        };
        Ok(super::Secret::Aws(client.assume_role(&self.mint)?))
    }

    /// STS credentials cannot be taken back: the session is denied in its role's revocation policy.
    fn unmint(&mut self, _: &super::Secret) -> bool {
        use super::Backend;
        let Some(grant_id) = crate::grant::GrantId::of_session_name(&self.mint.session_name) else {
            return false;
        };
        let ending = super::Ending { grant_id: &grant_id, target: &self.mint.role_arn, database: None };
        let mut iam = super::aws_iam::IamBackend::new(self.options.profile.as_deref(), self.options.timeout);
        let none_known = std::collections::BTreeMap::new();
        matches!(iam.end(&[ending], &none_known).as_slice(), [Ok(_)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_denied_names_the_missing_permission() {
        let e = classify_service_error(
            "AccessDenied",
            "User is not authorized to perform: sts:TagSession on resource",
        );
        assert!(e.to_string().contains("session_tags = false"), "{e}");
        let e = classify_service_error("AccessDenied", "not authorized to perform: sts:SetSourceIdentity");
        assert!(e.to_string().contains("source_identity = false"), "{e}");
    }

    #[test]
    fn role_chaining_cap_is_explained() {
        let e = classify_service_error(
            "ValidationError",
            "The requested DurationSeconds exceeds the 1 hour session limit for roles assumed by role chaining.",
        );
        assert!(matches!(e, MintError::RoleChainingCap { .. }));
    }

    #[test]
    fn expired_base_credentials_say_log_in() {
        let e =
            classify_service_error("ExpiredToken", "The security token included in the request is expired");
        assert!(e.to_string().contains("aws sso login"), "{e}");
    }
}
