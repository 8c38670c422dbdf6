//! CloudTrail's event history, read for `tpa audit --cloudtrail`: every AssumeRole of a period, so
//! that sessions with no record in the ledger (tpa bypassed, or a record lost) come to light.

use std::time::Duration;

use aws_sdk_cloudtrail::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_cloudtrail::types::{LookupAttribute, LookupAttributeKey};
use chrono::{DateTime, Utc};

/// LookupEvents returns at most 50 events a page; this bounds a runaway pagination.
const MAX_PAGES: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum CloudTrailError {
    #[error(
        "not allowed to read CloudTrail: {message}\nhint: give the auditor cloudtrail:LookupEvents, or \
         drop --cloudtrail"
    )]
    AccessDenied { message: String },
    #[error(
        "cannot reach CloudTrail: {0}\nhint: check the network, --region, and AWS_ENDPOINT_URL / \
         AWS_ENDPOINT_URL_CLOUDTRAIL"
    )]
    Unreachable(String),
    #[error("CloudTrail error: {code}: {message}")]
    Service { code: String, message: String },
    #[error("CloudTrail kept returning pages: stopped after {MAX_PAGES}")]
    TooManyPages,
}

/// One AssumeRole call as CloudTrail recorded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AssumeRoleEvent {
    pub event_id: String,
    pub at: DateTime<Utc>,
    pub role_arn: String,
    pub session_name: String,
    /// Who called AssumeRole (the caller's ARN, else CloudTrail's user name).
    pub caller: String,
    pub source_ip: Option<String>,
}

pub struct CloudTrail {
    runtime: tokio::runtime::Runtime,
    client: aws_sdk_cloudtrail::Client,
}

impl CloudTrail {
    pub fn new(profile: Option<&str>, region: Option<&str>, timeout: Duration) -> Self {
        // AssumeRole on STS's global endpoint is logged in us-east-1.
        let sdk = super::aws::load(&super::aws::Reach {
            profile,
            region,
            fallback_region: "us-east-1",
            timeout,
            max_attempts: Some(5),
        });
        CloudTrail { runtime: sdk.runtime, client: aws_sdk_cloudtrail::Client::new(&sdk.config) }
    }

    /// Every AssumeRole event between `from` and `to`, oldest first.
    pub fn assume_role_events(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<AssumeRoleEvent>, CloudTrailError> {
        let attribute = LookupAttribute::builder()
            .attribute_key(LookupAttributeKey::EventName)
            .attribute_value("AssumeRole")
            .build()
            .expect("key and value are set");
        let mut events = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let page = self
                .runtime
                .block_on(
                    self.client
                        .lookup_events()
                        .lookup_attributes(attribute.clone())
                        .start_time(aws_smithy_types::DateTime::from_secs(from.timestamp()))
                        .end_time(aws_smithy_types::DateTime::from_secs(to.timestamp()))
                        .max_results(50)
                        .set_next_token(token.take())
                        .send(),
                )
                .map_err(classify)?;
            events.extend(page.events().iter().filter_map(parse_event));
            match page.next_token() {
                Some(next) if !next.is_empty() => token = Some(next.to_owned()),
                _ => {
                    events.sort_by_key(|e: &AssumeRoleEvent| e.at);
                    return Ok(events);
                }
            }
        }
        Err(CloudTrailError::TooManyPages)
    }
}

fn classify<E, R>(error: SdkError<E, R>) -> CloudTrailError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    match super::service_error(&error) {
        Some((code, message))
            if code.starts_with("AccessDenied") || code == "UnrecognizedClientException" =>
        {
            CloudTrailError::AccessDenied { message }
        }
        Some((code, message)) => CloudTrailError::Service { code, message },
        None => CloudTrailError::Unreachable(DisplayErrorContext(&error).to_string()),
    }
}

/// The parts of an event the audit needs, from the full record CloudTrail keeps as a JSON string.
/// Events that are not a readable AssumeRole (failed calls have no role session) are skipped.
fn parse_event(event: &aws_sdk_cloudtrail::types::Event) -> Option<AssumeRoleEvent> {
    let detail: serde_json::Value = serde_json::from_str(event.cloud_trail_event()?).ok()?;
    let text = |pointer: &str| detail.pointer(pointer).and_then(|v| v.as_str()).map(str::to_owned);
    parse_detail(event.event_id().map(str::to_owned), event.event_time().map(|t| t.secs()), text)
}

fn parse_detail(
    event_id: Option<String>,
    event_time: Option<i64>,
    text: impl Fn(&str) -> Option<String>,
) -> Option<AssumeRoleEvent> {
    if text("/eventName").as_deref() != Some("AssumeRole") {
        return None;
    }
    let at = event_time.and_then(|secs| DateTime::<Utc>::from_timestamp(secs, 0)).or_else(|| {
        text("/eventTime").and_then(|t| DateTime::parse_from_rfc3339(&t).ok()).map(|t| t.to_utc())
    })?;
    Some(AssumeRoleEvent {
        event_id: event_id.or_else(|| text("/eventID")).unwrap_or_default(),
        at,
        role_arn: text("/requestParameters/roleArn")?,
        session_name: text("/requestParameters/roleSessionName")?,
        caller: text("/userIdentity/arn").or_else(|| text("/userIdentity/principalId")).unwrap_or_default(),
        source_ip: text("/sourceIPAddress"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Option<AssumeRoleEvent> {
        let detail: serde_json::Value = serde_json::from_str(json).unwrap();
        let text = |pointer: &str| detail.pointer(pointer).and_then(|v| v.as_str()).map(str::to_owned);
        parse_detail(None, None, text)
    }

    #[test]
    fn reads_an_assume_role_record() {
        let event = parse(
            r#"{"eventVersion":"1.08","eventTime":"2026-11-20T10:00:00Z","eventName":"AssumeRole",
               "eventID":"e-1","sourceIPAddress":"203.0.113.9",
               "userIdentity":{"type":"IAMUser","arn":"arn:aws:iam::123456789012:user/mallory"},
               "requestParameters":{"roleArn":"arn:aws:iam::123456789012:role/ops","roleSessionName":"mine"}}"#,
        )
        .expect("parses");
        assert_eq!(event.event_id, "e-1");
        assert_eq!(event.role_arn, "arn:aws:iam::123456789012:role/ops");
        assert_eq!(event.session_name, "mine");
        assert_eq!(event.caller, "arn:aws:iam::123456789012:user/mallory");
        assert_eq!(event.source_ip.as_deref(), Some("203.0.113.9"));
        assert_eq!(event.at.to_rfc3339(), "2026-11-20T10:00:00+00:00");
    }

    #[test]
    fn skips_failed_calls_and_other_events() {
        // A denied AssumeRole has requestParameters but CloudTrail may omit them; other events never count.
        assert!(
            parse(
                r#"{"eventName":"AssumeRole","eventTime":"2026-11-20T10:00:00Z","requestParameters":null}"#
            )
            .is_none()
        );
        assert!(parse(r#"{"eventName":"GetCallerIdentity","eventTime":"2026-11-20T10:00:00Z"}"#).is_none());
    }
}
