//! A stand-in for CloudTrail's LookupEvents, which moto does not serve: it answers the AWS JSON 1.1
//! protocol with pages of events in AWS's documented shape, and keeps every request it received
//! (headers and body) so that tests can check what tpa asked for and that it signed it.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

#[derive(Clone, Debug)]
pub struct Received {
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

pub struct FakeCloudTrail {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
}

impl FakeCloudTrail {
    /// Serves `pages` in order, chained by NextToken (`page-1`, `page-2`, ...).
    pub fn start(pages: Vec<Vec<Value>>) -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the fake CloudTrail");
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let pages = Arc::new(pages);
        let log = received.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (pages, log) = (pages.clone(), log.clone());
                std::thread::spawn(move || serve(stream, &pages, &log));
            }
        });
        FakeCloudTrail { addr, received }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

fn serve(stream: TcpStream, pages: &[Vec<Value>], log: &Mutex<Vec<Received>>) {
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    // Keep-alive: one connection may carry several requests.
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
            }
        }
        let length: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let page_index = match body.get("NextToken").and_then(|t| t.as_str()) {
            Some(token) => {
                token.strip_prefix("page-").and_then(|n| n.parse::<usize>().ok()).unwrap_or(usize::MAX)
            }
            None => 0,
        };
        log.lock().unwrap().push(Received { headers, body });
        let answer = match pages.get(page_index) {
            Some(events) => {
                let mut page = json!({ "Events": events });
                if page_index + 1 < pages.len() {
                    page["NextToken"] = json!(format!("page-{}", page_index + 1));
                }
                page
            }
            None => json!({ "Events": [] }),
        };
        let text = answer.to_string();
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/x-amz-json-1.1\r\nx-amzn-RequestId: fake\r\n\
             Content-Length: {}\r\n\r\n{text}",
            text.len()
        );
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

/// One LookupEvents event for an AssumeRole, in the shape AWS documents: the summary fields and
/// the full record as a JSON string in `CloudTrailEvent`.
pub fn assume_role_event(
    event_id: &str,
    epoch: i64,
    caller_arn: &str,
    role_arn: &str,
    session: &str,
) -> Value {
    let time = chrono::DateTime::from_timestamp(epoch, 0)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let record = json!({
        "eventVersion": "1.08",
        "userIdentity": {"type": "IAMUser", "principalId": "AIDAEXAMPLE", "arn": caller_arn,
                         "accountId": "123456789012", "userName": caller_arn.rsplit('/').next().unwrap()},
        "eventTime": time,
        "eventSource": "sts.amazonaws.com",
        "eventName": "AssumeRole",
        "awsRegion": "us-east-1",
        "sourceIPAddress": "203.0.113.9",
        "userAgent": "aws-cli/2.15.0",
        "requestParameters": {"roleArn": role_arn, "roleSessionName": session, "durationSeconds": 3600},
        "responseElements": {
            "credentials": {"accessKeyId": "ASIAEXAMPLE", "sessionToken": "redacted", "expiration": time},
            "assumedRoleUser": {"assumedRoleId": format!("AROAEXAMPLE:{session}"),
                                "arn": format!("arn:aws:sts::123456789012:assumed-role/x/{session}")}
        },
        "requestID": "req-1",
        "eventID": event_id,
        "readOnly": true,
        "eventType": "AwsApiCall",
        "recipientAccountId": "123456789012"
    });
    json!({
        "EventId": event_id,
        "EventName": "AssumeRole",
        "ReadOnly": "true",
        "AccessKeyId": "AKIAEXAMPLE",
        "EventTime": epoch,
        "EventSource": "sts.amazonaws.com",
        "Username": caller_arn.rsplit('/').next().unwrap(),
        "Resources": [{"ResourceType": "AWS::IAM::Role", "ResourceName": role_arn}],
        "CloudTrailEvent": record.to_string()
    })
}
