//! Webhooks around real requests and revocations: the payloads, fail-closed `required` webhooks,
//! and optional ones queued and retried by the sweep. The receiver is a local HTTP server.

use crate::common::aws::AwsRepo;
use crate::common::aws::denied;
use crate::common::webhook::{Reply, Webhook};

fn notify(url: &str, events: &str, format: &str, required: bool) -> String {
    format!(
        "\n[[notify]]\nurl = \"{url}\"\nevents = [{events}]\nformat = \"{format}\"\nrequired = {required}\n"
    )
}

fn secret_of(aws: &AwsRepo, grant: &str) -> String {
    let exported = aws.tpa().args(["env", grant]).run().success().stdout;
    exported
        .lines()
        .find_map(|l| l.strip_prefix("export AWS_SECRET_ACCESS_KEY='"))
        .and_then(|v| v.strip_suffix('\''))
        .unwrap()
        .to_owned()
}

#[test]
fn grants_and_revocations_are_told_to_the_webhooks_without_secrets() {
    let required = Webhook::always(Reply::Status(200));
    let chat = Webhook::always(Reply::Status(200));
    let aws = AwsRepo::with_policy_extra(&format!(
        "{}{}",
        notify(&required.url("/hook/secret-path?token=abc"), "\"grant\", \"revoke\"", "json", true),
        notify(
            &chat.url("/services/T000/B000/XXXX"),
            "\"grant\", \"revoke\", \"irrevocable\"",
            "slack",
            false
        )
    ));
    let grant = aws.request().arg("--json").run().success().json()["grant_id"].as_str().unwrap().to_owned();
    let secret = secret_of(&aws, &grant);

    let told = required.requests();
    assert_eq!(told.len(), 1, "the required webhook heard of the grant once");
    let body = told[0].json();
    assert_eq!(body["event"], "grant");
    assert_eq!(body["grant_id"], grant.as_str());
    assert_eq!(body["role_or_database"], "prod-readonly");
    assert_eq!(body["branch"], "refs/heads/hotfix/INC-4211");
    let slack = chat.requests()[0].json();
    assert!(slack["text"].as_str().unwrap().contains(&grant), "{slack}");

    aws.tpa().args(["revoke", &grant]).run().success();
    let revoked = required.requests();
    assert_eq!(revoked.len(), 2);
    assert_eq!(revoked[1].json()["event"], "revoke");
    for request in required.requests().iter().chain(chat.requests().iter()) {
        let text = request.text();
        assert!(!text.contains(&secret), "no secret in any payload");
        assert!(!text.contains("AWS_SESSION_TOKEN") && !text.contains("SessionToken"));
    }
}

#[test]
fn a_grant_a_required_webhook_cannot_be_told_of_is_revoked_and_never_handed_out() {
    let required = Webhook::always(Reply::Status(503));
    let aws = AwsRepo::with_policy_extra(&notify(&required.url("/hook"), "\"grant\"", "json", true));
    let refused = aws.request().arg("--json").run().code(2);
    assert!(refused.stderr.contains("was revoked and not handed out"), "{}", refused.stderr);
    assert!(refused.stdout.is_empty(), "nothing printed: {}", refused.stdout);
    assert!(required.count() >= 2, "retried before giving up: {}", required.count());
    let grants = aws.tpa().args(["status", "--all", "--history", "--json"]).run().success().json();
    let grant = grants[0]["grant_id"].as_str().unwrap().to_owned();
    assert_eq!(grants[0]["state"], "revoked");
    let show = aws.tpa().args(["show", &grant, "--json"]).run().success().json();
    let last = show["records"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|r| r["record"]["kind"] == "revoke")
        .unwrap()
        .clone();
    assert_eq!(last["record"]["trigger"], "notify-failed");
    assert!(denied(&aws.role_name).contains(&format!("tpa-{grant}")), "the session is denied in IAM");
    assert_eq!(aws.keyring_grants(), 0, "no credentials kept");
}

#[test]
fn an_optional_webhook_that_is_down_is_queued_and_retried_by_the_sweep() {
    let chat = Webhook::start([Reply::Status(500), Reply::Status(500), Reply::Status(500)]);
    chat.set_fallback(Reply::Status(500));
    let aws = AwsRepo::with_policy_extra(&notify(&chat.url("/hook"), "\"grant\"", "json", false));
    let granted = aws.request().arg("--json").run().success();
    assert!(granted.stderr.contains("queued for retry"), "{}", granted.stderr);
    let grant = granted.json()["grant_id"].as_str().unwrap().to_owned();
    let failed_so_far = chat.count();

    chat.set_fallback(Reply::Status(200));
    aws.tpa().args(["sweep"]).run().success();
    assert_eq!(chat.count(), failed_so_far, "not retried before it is due");
    let later = (chrono::Utc::now() + chrono::Duration::minutes(5)).to_rfc3339();
    aws.tpa().args(["sweep"]).env("TPA_TEST_NOW", &later).run().success();
    let requests = chat.requests();
    assert_eq!(requests.len(), failed_so_far + 1, "delivered once when due");
    assert_eq!(requests.last().unwrap().json()["grant_id"], grant.as_str());
    let queue = std::fs::read_to_string(aws.dir.join(".git/tpa/notify-queue.json")).unwrap_or_default();
    assert!(!queue.contains("/hook"), "the queue never holds the webhook URL: {queue}");
}
