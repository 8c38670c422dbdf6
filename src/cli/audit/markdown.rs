//! The audit report as Markdown, for a ticket or a pull-request comment.

use super::{duration, period};
use crate::audit::Severity;
use crate::escape;
use crate::ops::audit::AuditReport;
use crate::ops::org_audit::OrgReport;

/// Hostile text made inert in a Markdown table cell: control characters shown escaped, Markdown
/// and HTML syntax backslash-escaped, line breaks flattened.
fn cell(text: &str) -> String {
    let mut out = String::new();
    for c in escape::text(text).chars() {
        match c {
            '\\' | '|' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '#' | '~' | '!' | '&' => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\r' => out.push(' '),
            _ => out.push(c),
        }
    }
    out
}

pub fn render(report: &AuditReport) -> String {
    let mut out = String::new();
    let count = |s| report.count(s);
    out.push_str("## tpa audit\n\n");
    out.push_str(&format!(
        "Period: {}. Repository: {}. {} grants, {} records. Ledger tip `{}`, trust ref {}.\n\n",
        cell(&period(report)),
        cell(&report.repo),
        report.grants.len(),
        report.records,
        report.ledger_tip.as_deref().map(|t| &t[..t.len().min(12)]).unwrap_or("none"),
        cell(report.trust_ref.as_deref().unwrap_or("none")),
    ));
    out.push_str(&format!(
        "**{} error(s), {} warning(s), {} info**\n\n",
        count(Severity::Error),
        count(Severity::Warning),
        count(Severity::Info)
    ));
    if !report.findings.is_empty() {
        out.push_str("### Findings\n\n| severity | finding | grant | who | branch | what | what to do |\n");
        out.push_str("|---|---|---|---|---|---|---|\n");
        for f in &report.findings {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} |\n",
                f.severity.as_str(),
                cell(&f.kind),
                f.grant_id.as_ref().map(|g| g.as_str()).unwrap_or(""),
                cell(f.principal.as_deref().unwrap_or("")),
                cell(f.branch.as_deref().map(|b| b.strip_prefix("refs/heads/").unwrap_or(b)).unwrap_or("")),
                cell(&f.message),
                cell(&f.action),
            ));
        }
        out.push('\n');
    }
    if !report.grants.is_empty() {
        out.push_str("### Grants\n\n| grant | state | who | role | branch | commit | requested | lasted | ended by | reason |\n");
        out.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
        for g in &report.grants {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | `{}` | {} | {} | {} | {} |\n",
                g.grant_id.as_str(),
                g.state,
                cell(&g.principal),
                cell(g.role.as_deref().unwrap_or(&g.target)),
                cell(g.branch.strip_prefix("refs/heads/").unwrap_or(&g.branch)),
                cell(&g.commit[..g.commit.len().min(10)]).replace('`', ""),
                super::render::time(g.requested_at),
                duration(g.duration_seconds),
                cell(g.ended_by.as_deref().unwrap_or("")),
                cell(&g.reason),
            ));
        }
        out.push('\n');
    }
    for check in report.checks.iter().filter(|c| c.status != crate::ops::audit::CheckStatus::Ran) {
        out.push_str(&format!(
            "_{} check {}{}_\n",
            cell(check.name.as_str()),
            check.status.as_str(),
            check.detail.as_deref().map(|d| format!(": {}", cell(d))).unwrap_or_default()
        ));
    }
    out
}

/// The organisation's report: totals, who had access where, then each repository's report.
pub fn render_org(org: &OrgReport) -> String {
    let t = &org.totals;
    let mut out = String::from("## tpa audit of many repositories\n\n");
    out.push_str(&format!(
        "{} repositories ({} audited, {} unreachable, {} failed), {} grants, {} records.\n\n\
         **{} error(s), {} warning(s), {} info**\n\n",
        t.repos, t.audited, t.unreachable, t.failed, t.grants, t.records, t.errors, t.warnings, t.info
    ));
    if !org.access.is_empty() {
        out.push_str("### Who had access where\n\n| who | repository | role | grants | lasted |\n|---|---|---|---|---|\n");
        for a in &org.access {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} |\n",
                cell(&a.principal),
                cell(&a.repo),
                cell(a.role.as_deref().unwrap_or(&a.target)),
                a.grants,
                duration(Some(a.seconds)),
            ));
        }
        out.push('\n');
    }
    for repo in &org.repos {
        out.push_str(&format!("### {} ({})\n\n", cell(&repo.source), repo.status));
        match &repo.report {
            // One level down; `cell` escapes `#` in every text, so these are tpa's own headings.
            Some(report) => {
                out.push_str(&render(report).replacen("## tpa audit\n", "", 1).replace("\n### ", "\n#### "))
            }
            None => {
                for f in &repo.findings {
                    out.push_str(&format!(
                        "- **{}** {}: {}\n",
                        f.severity.as_str(),
                        cell(&f.kind),
                        cell(&f.message)
                    ));
                }
                out.push('\n');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::cell;

    #[test]
    fn cells_cannot_break_the_table_or_inject_markup() {
        assert_eq!(cell("a|b"), "a\\|b");
        assert_eq!(cell("<img src=x>"), "\\<img src=x\\>");
        assert_eq!(cell("[x](javascript:1)"), "\\[x\\](javascript:1)");
        assert!(!cell("line\nbreak").contains('\n'));
        assert!(!cell("\u{1b}[31mred").contains('\u{1b}'));
    }
}
