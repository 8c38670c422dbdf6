//! RDS and Aurora IAM database auth tokens: a SigV4-presigned `GET` of
//! `https://{host}:{port}/?Action=connect&DBUser={user}` for the `rds-db` service, given to the
//! database as the password. The token is byte-for-byte what botocore's `generate_db_auth_token`
//! returns. aws-sdk-rds's generator is not used: it orders and encodes the query differently
//! (see the "RDS IAM auth tokens" notes), so tpa signs with `aws-sigv4` and lays the query out itself.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use aws_sigv4::http_request::{
    SignableBody, SignableRequest, SignatureLocation, SigningParams, SigningSettings, sign,
};
use aws_sigv4::sign::v4;
use zeroize::{Zeroize, Zeroizing};

use crate::provider::Credentials;

/// How long a token is accepted for connecting. RDS fixes this; a connection outlives it.
pub const TOKEN_LIFETIME_SECONDS: u64 = 900;

const SERVICE: &str = "rds-db";
/// The signing parameters in the order botocore writes them; the signature always comes last.
const AUTH_PARAMS: [&str; 5] =
    ["X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires", "X-Amz-SignedHeaders"];
const SECURITY_TOKEN: &str = "X-Amz-Security-Token";
const SIGNATURE: &str = "X-Amz-Signature";

/// Which database to connect to, and as whom.
#[derive(Clone, Copy, Debug)]
pub struct TokenRequest<'a> {
    /// The instance, cluster or proxy endpoint, as the client will connect to it.
    pub host: &'a str,
    pub port: u16,
    pub db_user: &'a str,
    pub region: &'a str,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the database {field} is empty")]
    Empty { field: &'static str },
    #[error("the database {field} {value:?} contains a control character")]
    ControlCharacter { field: &'static str, value: String },
    #[error(
        "database host {host:?} is not a DNS name or IPv4 address\nhint: use the endpoint as RDS shows \
         it, e.g. mydb.abc123xyz.eu-west-1.rds.amazonaws.com, without a scheme, port or path"
    )]
    InvalidHost { host: String },
    #[error("database port 0 is not a port\nhint: use the endpoint's port, e.g. 5432 or 3306")]
    InvalidPort,
    #[error("{region:?} is not an AWS region name\nhint: use the database's region, e.g. eu-west-1")]
    InvalidRegion { region: String },
    #[error(
        "the AWS credentials have an empty {missing}\nhint: mint the credentials again; tpa signs \
         tokens only with a complete access key"
    )]
    IncompleteCredentials { missing: &'static str },
    #[error("could not sign the RDS auth token")]
    Signing(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the SigV4 signer returned no {0} parameter")]
    MissingParameter(&'static str),
}

/// The auth token for `req`, signed with `creds` as of `at`; valid for [`TOKEN_LIFETIME_SECONDS`].
/// An empty `creds.session_token` means long-term credentials: the token then carries none.
pub fn generate(
    req: &TokenRequest,
    creds: &Credentials,
    at: SystemTime,
) -> Result<Zeroizing<String>, TokenError> {
    validate(req)?;
    if creds.access_key_id.is_empty() {
        return Err(TokenError::IncompleteCredentials { missing: "access key id" });
    }
    if creds.secret_access_key.is_empty() {
        return Err(TokenError::IncompleteCredentials { missing: "secret access key" });
    }

    let session_token = (!creds.session_token.is_empty()).then(|| creds.session_token.to_string());
    let identity = aws_credential_types::Credentials::new(
        creds.access_key_id.as_str(),
        creds.secret_access_key.as_str(),
        session_token,
        None,
        "tpa",
    )
    .into();
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(Duration::from_secs(TOKEN_LIFETIME_SECONDS));
    let params: SigningParams = v4::SigningParams::builder()
        .identity(&identity)
        .region(req.region)
        .name(SERVICE)
        .time(at)
        .settings(settings)
        .build()
        .map_err(|e| TokenError::Signing(e.into()))?
        .into();

    // The user is encoded once here; the signer decodes the query and re-encodes it the same way.
    let operation = format!("Action=connect&DBUser={}", percent_encode(req.db_user));
    let host_header = signed_host(req.host, req.port);
    let request = SignableRequest::new(
        "GET",
        format!("https://{}:{}/?{operation}", req.host, req.port),
        std::iter::once(("host", host_header.as_str())),
        SignableBody::empty(),
    )
    .map_err(|e| TokenError::Signing(e.into()))?;
    let (instructions, _) = sign(request, &params).map_err(|e| TokenError::Signing(e.into()))?.into_parts();
    let (_, mut signed) = instructions.into_parts();

    let token = layout(req, &operation, &signed);
    for (_, value) in &mut signed {
        if let Cow::Owned(value) = value {
            value.zeroize();
        }
    }
    token
}

/// `host:port/?operation&auth params[&X-Amz-Security-Token]&X-Amz-Signature`, as botocore has it.
fn layout(
    req: &TokenRequest,
    operation: &str,
    signed: &[(&str, Cow<'static, str>)],
) -> Result<Zeroizing<String>, TokenError> {
    let value = |name: &'static str| signed.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_ref());
    let mut names: Vec<&'static str> = AUTH_PARAMS.to_vec();
    if value(SECURITY_TOKEN).is_some() {
        names.push(SECURITY_TOKEN);
    }
    names.push(SIGNATURE);

    // Sized up front, so the token is never reallocated (which would leave an unwiped copy behind).
    let capacity = req.host.len()
        + 8
        + operation.len()
        + signed.iter().map(|(n, v)| n.len() + 2 + 3 * v.len()).sum::<usize>();
    let mut token = Zeroizing::new(String::with_capacity(capacity));
    token.push_str(&format!("{}:{}/?{operation}", req.host, req.port));
    for name in names {
        let value = value(name).ok_or(TokenError::MissingParameter(name))?;
        token.push('&');
        token.push_str(name);
        token.push('=');
        push_percent_encoded(&mut token, value);
    }
    Ok(token)
}

/// The `host` header botocore signs: the host in lower case, the port unless it is https's 443.
fn signed_host(host: &str, port: u16) -> String {
    let host = host.to_ascii_lowercase();
    if port == 443 { host } else { format!("{host}:{port}") }
}

fn validate(req: &TokenRequest) -> Result<(), TokenError> {
    for (field, value) in [("host", req.host), ("user", req.db_user), ("region", req.region)] {
        if value.is_empty() {
            return Err(TokenError::Empty { field });
        }
        if value.chars().any(char::is_control) {
            return Err(TokenError::ControlCharacter { field, value: value.to_owned() });
        }
    }
    let host_ok = req.host.split('.').all(|label| {
        !label.is_empty()
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    if !host_ok || req.host.len() > 253 {
        return Err(TokenError::InvalidHost { host: req.host.to_owned() });
    }
    if req.port == 0 {
        return Err(TokenError::InvalidPort);
    }
    let region_ok = req.region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !req.region.starts_with('-')
        && !req.region.ends_with('-');
    if !region_ok {
        return Err(TokenError::InvalidRegion { region: req.region.to_owned() });
    }
    Ok(())
}

/// RFC 3986 encoding of everything but unreserved characters, UTF-8 first: Python's
/// `urllib.parse.quote(s, safe='-_.~')`, which botocore applies to every query value.
fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(3 * value.len());
    push_percent_encoded(&mut out, value);
    out
}

fn push_percent_encoded(out: &mut String, value: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn creds(session_token: &str) -> Credentials {
        Credentials {
            access_key_id: "AKIDEXAMPLE".to_owned(),
            secret_access_key: Zeroizing::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".to_owned()),
            session_token: Zeroizing::new(session_token.to_owned()),
            expiration: Utc::now(),
        }
    }

    fn request<'a>(host: &'a str, db_user: &'a str, region: &'a str) -> TokenRequest<'a> {
        TokenRequest { host, port: 5432, db_user, region }
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn percent_encoding_keeps_only_unreserved_characters() {
        assert_eq!(percent_encode("aZ09-_.~"), "aZ09-_.~");
        assert_eq!(percent_encode("a+b c@d/e%f=g&h"), "a%2Bb%20c%40d%2Fe%25f%3Dg%26h");
        assert_eq!(percent_encode("é€"), "%C3%A9%E2%82%AC");
        assert_eq!(percent_encode(""), "");
    }

    #[test]
    fn signed_host_is_lower_case_and_drops_the_https_port() {
        assert_eq!(signed_host("MyDB.Example.COM", 443), "mydb.example.com");
        assert_eq!(signed_host("MyDB.Example.COM", 5432), "mydb.example.com:5432");
    }

    #[test]
    fn token_has_botocores_layout() {
        let token =
            generate(&request("db.example.com", "app", "eu-west-1"), &creds(""), at(1_700_000_000)).unwrap();
        let (prefix, signature) = token.rsplit_once("&X-Amz-Signature=").unwrap();
        assert_eq!(
            prefix,
            "db.example.com:5432/?Action=connect&DBUser=app&X-Amz-Algorithm=AWS4-HMAC-SHA256\
             &X-Amz-Credential=AKIDEXAMPLE%2F20231114%2Feu-west-1%2Frds-db%2Faws4_request\
             &X-Amz-Date=20231114T221320Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host"
        );
        assert_eq!(signature.len(), 64);
        assert!(signature.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    }

    #[test]
    fn session_token_comes_before_the_signature() {
        let token =
            generate(&request("db.example.com", "app", "eu-west-1"), &creds("tok/en+="), at(0)).unwrap();
        assert!(
            token.contains("&X-Amz-SignedHeaders=host&X-Amz-Security-Token=tok%2Fen%2B%3D&X-Amz-Signature=")
        );
    }

    #[test]
    fn invalid_inputs_are_refused() {
        let check = |req: TokenRequest, creds: &Credentials| generate(&req, creds, at(0)).unwrap_err();
        let ok = creds("");
        assert!(matches!(check(request("", "u", "eu-west-1"), &ok), TokenError::Empty { field: "host" }));
        assert!(matches!(check(request("h", "", "eu-west-1"), &ok), TokenError::Empty { field: "user" }));
        assert!(matches!(check(request("h", "u", ""), &ok), TokenError::Empty { field: "region" }));
        assert!(matches!(
            check(request("h", "a\nb", "eu-west-1"), &ok),
            TokenError::ControlCharacter { field: "user", .. }
        ));
        assert!(matches!(
            check(request("h", "a\u{7f}", "eu-west-1"), &ok),
            TokenError::ControlCharacter { field: "user", .. }
        ));
        for host in
            ["https://db.example.com", "db.example.com:5432", "db/x", "db..example", "-db", "d b", "[::1]"]
        {
            assert!(
                matches!(check(request(host, "u", "eu-west-1"), &ok), TokenError::InvalidHost { .. }),
                "{host}"
            );
        }
        assert!(matches!(
            check(TokenRequest { port: 0, ..request("h", "u", "eu-west-1") }, &ok),
            TokenError::InvalidPort
        ));
        for region in ["EU-WEST-1", "eu west 1", "eu-west-1/x", "-eu"] {
            assert!(
                matches!(check(request("h", "u", region), &ok), TokenError::InvalidRegion { .. }),
                "{region}"
            );
        }
        let mut no_key = creds("");
        no_key.access_key_id.clear();
        assert!(matches!(
            check(request("h", "u", "eu-west-1"), &no_key),
            TokenError::IncompleteCredentials { .. }
        ));
        let mut no_secret = creds("");
        no_secret.secret_access_key.clear();
        assert!(matches!(
            check(request("h", "u", "eu-west-1"), &no_secret),
            TokenError::IncompleteCredentials { missing: "secret access key" }
        ));
    }

    #[test]
    fn accepts_ipv4_and_ordinary_endpoints() {
        for host in
            ["127.0.0.1", "mydb.cluster-ro-abc123.us-gov-west-1.rds.amazonaws.com", "DB-1.Example.com"]
        {
            generate(&request(host, "u", "us-gov-west-1"), &creds(""), at(0)).unwrap();
        }
    }
}
