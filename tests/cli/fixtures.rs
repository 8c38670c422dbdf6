//! The AWS fixtures themselves: moto comes up and takes setup calls, and the fault-injection proxy
//! does what each mode promises. If these fail, the AWS tests' failures mean nothing.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::common::moto::{ACCOUNT_ID, moto, query_api, unique_name, xml_text};
use crate::common::proxy::{Mode, Proxy};

const GET_CALLER_IDENTITY: &[(&str, &str)] = &[("Action", "GetCallerIdentity"), ("Version", "2011-06-15")];

const ACCESS_DENIED: &str = concat!(
    r#"<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type>"#,
    "<Code>AccessDenied</Code><Message>User is not authorized to perform: sts:AssumeRole</Message>",
    "</Error><RequestId>c6104cbe-af31-11e0-8154-cbc7ccf896c7</RequestId></ErrorResponse>",
);

fn access_denied() -> Mode {
    Mode::Respond { status: 403, body: ACCESS_DENIED.to_owned(), content_type: "text/xml" }
}

/// A raw HTTP request for the tests that must see the socket, not just the answer.
fn sts_request(connection: &str) -> String {
    let body = "Action=GetCallerIdentity&Version=2011-06-15";
    format!(
        "POST / HTTP/1.1\r\nHost: sts\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\nConnection: {connection}\r\n\r\n{body}",
        body.len()
    )
}

#[test]
fn moto_creates_roles_with_unique_names() {
    let (first, second) = (unique_name("fixture-role"), unique_name("fixture-role"));
    assert_ne!(first, second);
    assert_eq!(moto().create_role(&first), format!("arn:aws:iam::{ACCOUNT_ID}:role/{first}"));
    assert_eq!(moto().create_role(&second), format!("arn:aws:iam::{ACCOUNT_ID}:role/{second}"));

    // The role is what tpa needs: 12-hour sessions, with tags and a source identity allowed.
    let (status, role) =
        moto().call("iam", &[("Action", "GetRole"), ("Version", "2010-05-08"), ("RoleName", &first)]);
    assert_eq!(status, 200, "{role}");
    assert_eq!(xml_text(&role, "MaxSessionDuration"), Some("43200"), "{role}");
    // moto returns the document percent-encoded.
    let trust = xml_text(&role, "AssumeRolePolicyDocument").unwrap();
    for action in ["sts%3AAssumeRole", "sts%3ATagSession", "sts%3ASetSourceIdentity"] {
        assert!(trust.contains(action), "{action} missing from {trust}");
    }
    assert!(moto().endpoint().starts_with("http://127.0.0.1:"), "{}", moto().endpoint());
}

#[test]
fn moto_answers_query_api_calls_for_the_named_service() {
    let (status, body) = moto().call("sts", GET_CALLER_IDENTITY);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&format!("<Account>{ACCOUNT_ID}</Account>")), "{body}");

    // A duplicate role is an IAM error document, returned rather than panicked on.
    let name = unique_name("fixture-duplicate");
    moto().create_role(&name);
    let (status, body) = moto().call(
        "iam",
        &[
            ("Action", "CreateRole"),
            ("Version", "2010-05-08"),
            ("RoleName", &name),
            ("AssumeRolePolicyDocument", "{}"),
        ],
    );
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("EntityAlreadyExists"), "{body}");
}

#[test]
fn proxy_forwards_to_moto_and_counts_connections() {
    let proxy = Proxy::start(moto().addr);
    assert_eq!(proxy.connections(), 0);
    assert_ne!(proxy.endpoint(), moto().endpoint());

    let (status, body) = query_api(proxy.addr(), "sts", GET_CALLER_IDENTITY).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("<GetCallerIdentityResult>"), "{body}");
    assert_eq!(proxy.connections(), 1);
}

#[test]
fn proxy_down_refuses_connections_until_switched_back() {
    let proxy = Proxy::start(moto().addr);
    proxy.set_mode(Mode::Down);
    let refused = TcpStream::connect(proxy.addr()).unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused, "{refused}");
    assert_eq!(proxy.connections(), 0, "a refused connection is not counted");

    proxy.set_mode(Mode::Forward);
    let (status, body) = query_api(proxy.addr(), "sts", GET_CALLER_IDENTITY).unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(proxy.connections(), 1);

    // Twice, so the second rebind is also covered (and the wake-up connection never counts).
    proxy.set_mode(Mode::Down);
    assert_eq!(TcpStream::connect(proxy.addr()).unwrap_err().kind(), ErrorKind::ConnectionRefused);
    proxy.set_mode(Mode::Hang);
    proxy.set_mode(Mode::Forward);
    assert_eq!(query_api(proxy.addr(), "sts", GET_CALLER_IDENTITY).unwrap().0, 200);
    assert_eq!(proxy.connections(), 2);
}

#[test]
fn proxy_hang_never_answers_until_dropped() {
    let proxy = Proxy::start(moto().addr);
    proxy.set_mode(Mode::Hang);
    let mut client = TcpStream::connect(proxy.addr()).unwrap();
    client.write_all(sts_request("close").as_bytes()).unwrap();
    client.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut buf = [0u8; 64];
    let stalled = client.read(&mut buf).unwrap_err();
    assert!(matches!(stalled.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut), "{stalled}");
    assert_eq!(proxy.connections(), 1);

    // Dropping the proxy ends the hang: the client sees the connection end, not a timeout. (Once
    // dropped the proxy no longer owns its port, so nothing is asserted about the port itself.)
    drop(proxy);
    client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    match client.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("expected the dropped proxy to close the connection, got {other:?}"),
    }
}

#[test]
fn proxy_respond_returns_the_canned_answer_without_reaching_moto() {
    let proxy = Proxy::start(moto().addr);
    proxy.set_mode(access_denied());
    let (status, body) = query_api(proxy.addr(), "sts", GET_CALLER_IDENTITY).unwrap();
    assert_eq!(status, 403);
    assert_eq!(body, ACCESS_DENIED);
    assert_eq!(proxy.connections(), 1);
}

#[test]
fn proxy_respond_answers_every_request_of_a_kept_alive_connection() {
    let proxy = Proxy::start(moto().addr);
    proxy.set_mode(access_denied());
    let mut client = TcpStream::connect(proxy.addr()).unwrap();
    client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Pipelined: the proxy must consume each body exactly, or the second head would not parse.
    client.write_all(format!("{}{}", sts_request("keep-alive"), sts_request("close")).as_bytes()).unwrap();
    let mut answers = String::new();
    client.read_to_string(&mut answers).unwrap();
    assert_eq!(answers.matches("HTTP/1.1 403 Forbidden\r\n").count(), 2, "{answers}");
    assert_eq!(answers.matches(ACCESS_DENIED).count(), 2, "{answers}");
    assert!(answers.contains("Content-Type: text/xml\r\n"), "{answers}");
    assert_eq!(proxy.connections(), 1);
}

#[test]
fn proxy_to_an_unreachable_upstream_closes_the_client() {
    // The upstream is a port nobody listens on any more.
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let proxy = Proxy::start(upstream);
    let error = query_api(proxy.addr(), "sts", GET_CALLER_IDENTITY).unwrap_err();
    // Closed with the request unread: an empty answer, or a reset.
    assert!(matches!(error.kind(), ErrorKind::InvalidData | ErrorKind::ConnectionReset), "{error}");
    assert_eq!(proxy.connections(), 1);
}
