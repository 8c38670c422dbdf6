//! The one AWS SDK set-up every AWS client of tpa goes through (STS, IAM, CloudTrail): aws-config's
//! standard chain (profiles, SSO, environment, credential_process, `AWS_ENDPOINT_URL`), tpa's
//! timeouts, a region, and a current-thread runtime to block on. The async SDK stays behind
//! src/provider; the rest of tpa is synchronous.

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;

/// How to reach an AWS service.
#[derive(Clone, Debug)]
pub struct Reach<'a> {
    /// The AWS profile of the base credentials (None: the standard chain).
    pub profile: Option<&'a str>,
    /// The region to use; None takes the chain's, else `fallback_region`.
    pub region: Option<&'a str>,
    /// A region for when neither the caller nor the chain names one (the service is global, or
    /// logs there).
    pub fallback_region: &'static str,
    /// Bounds each attempt and the whole operation.
    pub timeout: Duration,
    /// Attempts, for services worth retrying (CloudTrail's paging); None keeps the SDK's default.
    pub max_attempts: Option<u32>,
}

/// Reads the system's TLS roots on a thread of its own, for a command that calls AWS soon. The SDK
/// (aws-smithy-http-client) reads them when it makes its first client and keeps them for the
/// process: the CA bundle and every file of the certificate directory (on Debian, 150 files
/// behind 300 links in /etc/ssl/certs; about 3 ms, longer than the rest of making a client). Read
/// here while git and the policy are read, they are there when the client is made. Nothing but
/// certificate files is read: a command that ends before calling AWS has lost a thread's work.
pub fn read_tls_roots_ahead() {
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
    let _ = std::thread::Builder::new().name("tls-roots".into()).spawn(|| {
        // The SDK's own connector, as aws-config's default HTTPS client makes it.
        let _ = aws_smithy_http_client::Connector::builder()
            .tls_provider(Provider::Rustls(CryptoMode::AwsLc))
            .build();
    });
}

/// A runtime and the SDK configuration for one client.
pub struct Sdk {
    pub runtime: tokio::runtime::Runtime,
    pub config: aws_config::SdkConfig,
}

pub fn load(reach: &Reach<'_>) -> Sdk {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime always builds");
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(reach.timeout.min(Duration::from_secs(5)))
        .operation_attempt_timeout(reach.timeout)
        .operation_timeout(reach.timeout)
        .build();
    let loader = |region: Option<&str>| {
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).timeout_config(timeouts.clone());
        if let Some(attempts) = reach.max_attempts {
            loader = loader.retry_config(RetryConfig::standard().with_max_attempts(attempts));
        }
        if let Some(profile) = reach.profile {
            loader = loader.profile_name(profile);
        }
        if let Some(region) = region {
            loader = loader.region(aws_config::Region::new(region.to_owned()));
        }
        loader
    };
    let config = runtime.block_on(async {
        let config = loader(reach.region).load().await;
        match config.region() {
            Some(_) => config,
            None => loader(Some(reach.fallback_region)).load().await,
        }
    });
    Sdk { runtime, config }
}
