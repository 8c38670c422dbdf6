//! The audit report as one self-contained HTML page an auditor can open: findings on top, then a
//! timeline of grants per branch (who, why, how long), then every grant. No script, no external
//! resource, and a Content-Security-Policy that forbids both: every text in it is hostile input.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::{duration, period};
use crate::audit::{Finding, Severity};
use crate::escape;
use crate::grant::GrantState;
use crate::ops::audit::{AuditReport, AuditedGrant};
use crate::ops::org_audit::OrgReport;

const WIDTH: f64 = 900.0;
const ROW: f64 = 22.0;

/// Escapes for HTML text and attribute values, after making control characters visible.
fn h(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in escape::text(text).chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

fn short_branch(refname: &str) -> &str {
    refname.strip_prefix("refs/heads/").unwrap_or(refname)
}

fn colour(state: GrantState) -> &'static str {
    match state {
        GrantState::Active => "#2b8a3e",
        GrantState::Revoked => "#1c7ed6",
        GrantState::Expired => "#868e96",
        GrantState::Failed => "#adb5bd",
        GrantState::Incomplete | GrantState::Pending | GrantState::Irrevocable => "#e03131",
        GrantState::AwaitingApproval => "#f08c00",
        GrantState::Denied | GrantState::Lapsed | GrantState::Cancelled => "#ced4da",
    }
}

pub fn render(report: &AuditReport) -> String {
    let mut out = head();
    out.push_str("<h1>tpa audit</h1>\n");
    sections(report, &mut out);
    out.push_str("</body></html>\n");
    out
}

/// The organisation's report: totals, who had access where, then each repository's report.
pub fn render_org(org: &OrgReport) -> String {
    let mut out = head();
    out.push_str("<h1>tpa audit of many repositories</h1>\n");
    let t = &org.totals;
    out.push_str(&format!(
        "<p class=\"meta\">{} repositories ({} audited, {} unreachable, {} failed) &middot; {} grants, {} records &middot; generated {}</p>\n",
        t.repos, t.audited, t.unreachable, t.failed, t.grants, t.records, super::render::time(org.generated_at)
    ));
    badges(t.errors, t.warnings, t.info, &mut out);
    if !org.access.is_empty() {
        out.push_str("<h2>Who had access where</h2>\n<table><tr><th>who</th><th>repository</th><th>role</th><th>grants</th><th>lasted</th></tr>\n");
        for a in &org.access {
            out.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                h(&a.principal),
                h(&a.repo),
                h(a.role.as_deref().unwrap_or(&a.target)),
                a.grants,
                duration(Some(a.seconds)),
            ));
        }
        out.push_str("</table>\n");
    }
    for repo in &org.repos {
        out.push_str(&format!(
            "<h2 class=\"repo\">{} <small>({})</small></h2>\n",
            h(&repo.source),
            repo.status
        ));
        match &repo.report {
            Some(report) => {
                let mut inner = String::new();
                sections(report, &mut inner);
                // One level down; every text in it is escaped, so these are tpa's own headings.
                out.push_str(&inner.replace("<h2>", "<h3>").replace("</h2>", "</h3>"));
            }
            None => findings_table(&repo.findings, &mut out),
        }
    }
    out.push_str("</body></html>\n");
    out
}

fn head() -> String {
    let mut out = String::new();
    out.push_str(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>tpa audit</title>\n<style>\n\
         body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px 32px;color:#212529;background:#fff}\n\
         h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #dee2e6;padding-bottom:4px}\n\
         .meta{color:#495057}.badge{display:inline-block;padding:3px 10px;border-radius:12px;margin-right:8px;font-weight:600;color:#fff}\n\
         .error{background:#c92a2a}.warning{background:#e67700}.info{background:#1971c2}.ok{background:#2b8a3e}\n\
         table{border-collapse:collapse;width:100%;margin-top:6px}th,td{border:1px solid #dee2e6;padding:4px 6px;text-align:left;vertical-align:top}\n\
         th{background:#f1f3f5}td.sev{font-weight:600}tr.error td.sev{color:#c92a2a}tr.warning td.sev{color:#e67700}tr.info td.sev{color:#1971c2}\n\
         code{font-size:12px}.branch{font-weight:600;margin:14px 0 2px}svg{display:block}.legend span{margin-right:14px}\n\
         </style></head><body>\n",
    );
    out
}

fn badges(e: usize, w: usize, i: usize, out: &mut String) {
    out.push_str("<p>");
    if e + w + i == 0 {
        out.push_str("<span class=\"badge ok\">no findings</span>");
    } else {
        for (class, n, label) in [("error", e, "errors"), ("warning", w, "warnings"), ("info", i, "info")] {
            out.push_str(&format!("<span class=\"badge {class}\">{n} {label}</span>"));
        }
    }
    out.push_str("</p>\n");
}

fn findings_table(findings: &[Finding], out: &mut String) {
    if findings.is_empty() {
        return;
    }
    out.push_str("<h2>Findings</h2>\n<table><tr><th>severity</th><th>finding</th><th>grant</th><th>who</th><th>branch</th><th>what</th><th>what to do</th></tr>\n");
    for f in findings {
        let sev = f.severity.as_str();
        out.push_str(&format!(
            "<tr class=\"{sev}\"><td class=\"sev\">{sev}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            h(&f.kind),
            f.grant_id.as_ref().map(|g| g.as_str()).unwrap_or(""),
            h(f.principal.as_deref().unwrap_or("")),
            h(f.branch.as_deref().map(short_branch).unwrap_or("")),
            h(&f.message),
            h(&f.action),
        ));
    }
    out.push_str("</table>\n");
}

/// Everything below the title: the metadata line, the counts, findings, timeline, grants, checks.
fn sections(report: &AuditReport, out: &mut String) {
    out.push_str(&format!(
        "<p class=\"meta\">{} &middot; {} &middot; {} grants, {} records &middot; generated {} &middot; ledger tip <code>{}</code> &middot; trust ref <code>{}</code></p>\n",
        h(&report.repo),
        h(&period(report)),
        report.grants.len(),
        report.records,
        super::render::time(report.generated_at),
        h(report.ledger_tip.as_deref().unwrap_or("none")),
        h(report.trust_ref.as_deref().unwrap_or("none")),
    ));
    badges(report.count(Severity::Error), report.count(Severity::Warning), report.count(Severity::Info), out);
    findings_table(&report.findings, out);

    if !report.grants.is_empty() {
        timeline(report, out);
        out.push_str("<h2>Grants</h2>\n<table><tr><th>grant</th><th>state</th><th>who</th><th>role</th><th>branch</th><th>commit</th><th>requested</th><th>lasted</th><th>ended by</th><th>reason</th></tr>\n");
        for g in &report.grants {
            out.push_str(&format!(
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                g.grant_id.as_str(),
                g.state,
                h(&g.principal),
                h(g.role.as_deref().unwrap_or(&g.target)),
                h(short_branch(&g.branch)),
                h(&g.commit[..g.commit.len().min(10)]),
                super::render::time(g.requested_at),
                duration(g.duration_seconds),
                h(g.ended_by.as_deref().unwrap_or("")),
                h(&g.reason),
            ));
        }
        out.push_str("</table>\n");
    }
    let skipped: Vec<_> =
        report.checks.iter().filter(|c| c.status != crate::ops::audit::CheckStatus::Ran).collect();
    if !skipped.is_empty() {
        out.push_str("<h2>Checks not run</h2>\n<ul>\n");
        for c in skipped {
            out.push_str(&format!(
                "<li>{} {}: {}</li>\n",
                h(c.name.as_str()),
                h(c.status.as_str()),
                h(c.detail.as_deref().unwrap_or(""))
            ));
        }
        out.push_str("</ul>\n");
    }
}

/// One SVG per branch: a bar per grant from its request to its end, on a scale shared by all.
fn timeline(report: &AuditReport, out: &mut String) {
    let end_of = |g: &AuditedGrant| g.ended_at.unwrap_or(report.generated_at).max(g.requested_at);
    let start =
        report.from.unwrap_or_else(|| report.grants.iter().map(|g| g.requested_at).min().expect("not empty"));
    let end = report.to.max(report.grants.iter().map(end_of).max().expect("not empty"));
    let span = (end - start).num_seconds().max(1) as f64;
    let x = |t: DateTime<Utc>| ((t - start).num_seconds().max(0) as f64 / span * WIDTH).min(WIDTH);

    let mut by_branch: BTreeMap<&str, Vec<&AuditedGrant>> = BTreeMap::new();
    for g in &report.grants {
        by_branch.entry(g.branch.as_str()).or_default().push(g);
    }
    out.push_str(&format!(
        "<h2>Timeline</h2>\n<p class=\"meta\">{} to {}</p>\n<p class=\"legend\">",
        super::render::time(start),
        super::render::time(end)
    ));
    for state in [GrantState::Active, GrantState::Revoked, GrantState::Expired, GrantState::Pending] {
        out.push_str(&format!("<span style=\"color:{}\">&#9632; {state}</span>", colour(state)));
    }
    out.push_str("</p>\n");
    for (branch, grants) in by_branch {
        let height = ROW * grants.len() as f64 + 4.0;
        out.push_str(&format!("<div class=\"branch\">{}</div>\n", h(short_branch(branch))));
        out.push_str(&format!(
            "<svg width=\"{}\" height=\"{height}\" viewBox=\"0 0 {} {height}\" role=\"img\">\n\
             <rect x=\"0\" y=\"0\" width=\"{WIDTH}\" height=\"{height}\" fill=\"#f8f9fa\"/>\n",
            WIDTH + 300.0,
            WIDTH + 300.0,
        ));
        for (row, g) in grants.iter().enumerate() {
            let y = 2.0 + ROW * row as f64;
            let x0 = x(g.requested_at);
            let width = (x(end_of(g)) - x0).max(3.0);
            let label = format!(
                "{} · {} · {}",
                g.principal,
                g.role.as_deref().unwrap_or(&g.target),
                duration(g.duration_seconds)
            );
            out.push_str(&format!(
                "<rect x=\"{x0:.1}\" y=\"{y:.1}\" width=\"{width:.1}\" height=\"{:.1}\" rx=\"3\" fill=\"{}\"><title>{} — {}</title></rect>\n\
                 <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\" fill=\"#212529\">{}</text>\n",
                ROW - 6.0,
                colour(g.state),
                h(&g.grant_id.to_string()),
                h(&g.reason),
                WIDTH + 8.0,
                y + ROW - 10.0,
                h(&label),
            ));
        }
        out.push_str("</svg>\n");
    }
}

#[cfg(test)]
mod tests {
    use super::h;

    #[test]
    fn text_cannot_open_markup() {
        assert_eq!(h("<script>alert('x')</script>"), "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;");
        assert_eq!(h("\" onload=\""), "&quot; onload=&quot;");
    }
}
