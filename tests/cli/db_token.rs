//! RDS IAM auth tokens against the reference: botocore's `generate_db_auth_token`, run on the same
//! credentials, endpoint, user, region and a pinned clock, must give the same bytes as tpa.

use std::time::{Duration, SystemTime};

use crate::common::botocore::botocore;
use chrono::Utc;
use serde_json::{Value, json};
use tpa::provider::Credentials;
use tpa::provider::rds_token::{self, TokenRequest};
use zeroize::Zeroizing;

const ACCESS_KEY_ID: &str = "ASIAIOSFODNN7EXAMPLE";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
/// Shaped like a real STS session token: base64 with `/`, `+` and `=`.
const SESSION_TOKEN: &str = "IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJHMEUCIQD+abc/def+ghi==";

struct Case {
    host: &'static str,
    port: u16,
    user: &'static str,
    region: &'static str,
    session_token: Option<&'static str>,
    epoch: u64,
}

const fn case(host: &'static str, port: u16, user: &'static str, region: &'static str) -> Case {
    Case { host, port, user, region, session_token: Some(SESSION_TOKEN), epoch: 1_714_564_800 }
}

fn cases() -> Vec<Case> {
    let host = "mydb.abc123xyz.eu-west-1.rds.amazonaws.com";
    vec![
        case(host, 5432, "app", "eu-west-1"),
        Case { session_token: None, ..case(host, 5432, "app", "eu-west-1") },
        case(host, 5432, "alice@example.com", "eu-west-1"),
        case(host, 5432, "team/alice", "eu-west-1"),
        Case { session_token: None, ..case(host, 5432, "a+b", "eu-west-1") },
        case(host, 5432, "alice smith", "eu-west-1"),
        case(host, 5432, "100%_sure", "eu-west-1"),
        case(host, 5432, "jürgen-δβ-東京", "eu-west-1"),
        case(host, 5432, "a+b c@d/e%f=g&h?i#j~k", "eu-west-1"),
        case("aurora.cluster-ro-abc123xyz.us-east-1.rds.amazonaws.com", 3306, "reader", "us-east-1"),
        case("proxy.proxy-abc123xyz.ap-southeast-2.rds.amazonaws.com", 443, "app", "ap-southeast-2"),
        Case { epoch: 4_102_444_799, ..case("MyDB.Example.COM", 65535, "Admin", "us-gov-west-1") },
        Case { session_token: None, epoch: 0, ..case("10.0.12.34", 1, "x", "cn-north-1") },
    ]
}

/// botocore's tokens for `cases`, in order, from one Python process in a sealed environment.
fn botocore_tokens(cases: &[Case]) -> Vec<String> {
    let input: Vec<Value> = cases
        .iter()
        .map(|c| {
            json!({
                "host": c.host, "port": c.port, "user": c.user, "region": c.region,
                "access_key_id": ACCESS_KEY_ID, "secret_access_key": SECRET,
                "session_token": c.session_token, "epoch": c.epoch,
            })
        })
        .collect();
    botocore(&input)
}

fn credentials(session_token: Option<&str>) -> Credentials {
    Credentials {
        access_key_id: ACCESS_KEY_ID.to_owned(),
        secret_access_key: Zeroizing::new(SECRET.to_owned()),
        session_token: Zeroizing::new(session_token.unwrap_or_default().to_owned()),
        expiration: Utc::now(),
    }
}

fn tpa_token(c: &Case) -> String {
    let req = TokenRequest { host: c.host, port: c.port, db_user: c.user, region: c.region };
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(c.epoch);
    rds_token::generate(&req, &credentials(c.session_token), at).unwrap().to_string()
}

#[test]
fn tokens_are_byte_identical_to_botocore() {
    let cases = cases();
    let expected = botocore_tokens(&cases);
    assert_eq!(expected.len(), cases.len());
    for (c, expected) in cases.iter().zip(&expected) {
        let token = tpa_token(c);
        assert_eq!(
            token,
            *expected,
            "host {} port {} user {:?} region {} session token {}",
            c.host,
            c.port,
            c.user,
            c.region,
            c.session_token.is_some()
        );
        assert!(token.contains("&X-Amz-Expires=900&"), "{token}");
        assert_eq!(token.contains("X-Amz-Security-Token="), c.session_token.is_some(), "{token}");
    }
}

#[test]
fn tokens_change_with_the_clock() {
    let first = case("mydb.abc123xyz.eu-west-1.rds.amazonaws.com", 5432, "app", "eu-west-1");
    let second = Case { epoch: first.epoch + 1, ..case(first.host, first.port, first.user, first.region) };
    let next_day =
        Case { epoch: first.epoch + 86_400, ..case(first.host, first.port, first.user, first.region) };
    let tokens: Vec<String> = [&first, &second, &next_day].map(tpa_token).to_vec();
    assert_ne!(tokens[0], tokens[1]);
    assert_ne!(tokens[0], tokens[2]);
    assert_ne!(tokens[1], tokens[2]);
    assert_eq!(tokens[0], tpa_token(&first), "the same clock gives the same token");
    assert_eq!(rds_token::TOKEN_LIFETIME_SECONDS, 900);
}
