//! `tpa audit`: parse the period and the output choice, run the audit, render the report.

mod html;
mod markdown;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::Context as _;
use chrono::{DateTime, NaiveDate, Utc};
use clap::{Args, ValueEnum};

use super::{Ctx, IamArgs, exit, print_json, render};
use crate::audit::{Finding, Severity};
use crate::escape;
use crate::ops::audit::{self, AuditOptions, AuditReport, AwsAccess};
use crate::policy::format_duration;

/// Check every grant of a period against git history, the ledger's signatures and the policy it
/// was taken under, and AWS's state: who had production access, why, on which change, for how long,
/// and whether anything is still open that should not be. Only reads; never revokes.
///
/// Exit status: 0 when no finding reaches --fail-on, 1 when one does, 2 when the audit could not run.
#[derive(Args)]
pub struct AuditArgs {
    /// Audit the grants of the last DURATION (e.g. 7d, 24h). Default: every grant in the ledger.
    #[arg(long, value_parser = crate::grant::parse_duration, conflicts_with = "from")]
    since: Option<u64>,
    /// Start of the period: a date (2026-11-01, UTC) or an RFC 3339 time.
    #[arg(long, value_parser = parse_time)]
    from: Option<DateTime<Utc>>,
    /// End of the period (default: now).
    #[arg(long, value_parser = parse_time)]
    to: Option<DateTime<Utc>>,
    /// Report format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Same as --format json.
    #[arg(long, conflicts_with = "format")]
    json: bool,
    /// Write the report to FILE instead of stdout (replaced atomically).
    #[arg(long, short = 'o', value_name = "FILE")]
    output: Option<PathBuf>,
    /// Exit 1 when a finding of this severity or worse exists.
    #[arg(long, value_enum, default_value_t = FailOn::Error)]
    fail_on: FailOn,
    /// Do not ask AWS (revocations in force, roles, CloudTrail): audit the ledger and git alone.
    #[arg(long, conflicts_with = "cloudtrail")]
    offline: bool,
    /// Also read CloudTrail's AssumeRole events of the period (90 days at most) and report sessions
    /// of the policy's roles that have no record in the ledger.
    #[arg(long)]
    cloudtrail: bool,
    /// The region whose CloudTrail to read (default: the profile's region, else us-east-1).
    #[arg(long)]
    region: Option<String>,
    #[command(flatten)]
    iam: IamArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    Table,
    Json,
    Markdown,
    Html,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum FailOn {
    Warning,
    Error,
}

fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.to_utc());
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map(|d| d.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc())
        .map_err(|_| {
            format!("`{text}` is not a date (2026-11-01) or an RFC 3339 time (2026-11-01T09:00:00Z)")
        })
}

pub fn run(ctx: &Ctx, args: AuditArgs) -> anyhow::Result<u8> {
    let repo = ctx.repo()?;
    let now = super::now();
    let from = args.from.or(args.since.map(|s| now - chrono::Duration::seconds(s as i64)));
    let to = args.to.unwrap_or(now);
    if from.is_some_and(|from| from > to) {
        anyhow::bail!("the period starts after it ends: check --from/--since and --to");
    }
    let options = AuditOptions {
        from,
        to,
        now,
        aws: (!args.offline).then(|| AwsAccess {
            profile: args.iam.profile.clone(),
            region: args.region.clone(),
            timeout: args.iam.timeout(),
        }),
        cloudtrail: args.cloudtrail,
    };
    let report = audit::audit(&repo, &options)?;
    let format = if args.json { Format::Json } else { args.format };
    let text = match format {
        Format::Json => serde_json::to_string_pretty(&report)? + "\n",
        Format::Markdown => markdown::render(&report),
        Format::Html => html::render(&report),
        Format::Table => {
            let colour = args.output.is_none() && std::io::stdout().is_terminal() && no_color_unset();
            table(&report, colour)
        }
    };
    match &args.output {
        Some(path) => write_atomically(path, text.as_bytes())
            .with_context(|| format!("cannot write the report to {}", path.display()))?,
        None if format == Format::Json => print_json(&report)?,
        None => std::io::stdout().lock().write_all(text.as_bytes())?,
    }
    let threshold = match args.fail_on {
        FailOn::Warning => Severity::Warning,
        FailOn::Error => Severity::Error,
    };
    Ok(if report.worst().is_some_and(|w| w >= threshold) { exit::FINDINGS } else { exit::OK })
}

fn no_color_unset() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    file.write_all(bytes)?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// The period as people say it.
fn period(report: &AuditReport) -> String {
    match report.from {
        Some(from) => format!("{} to {}", render::time(from), render::time(report.to)),
        None => format!("everything up to {}", render::time(report.to)),
    }
}

fn duration(seconds: Option<i64>) -> String {
    seconds.map(|s| format_duration(s.max(0) as u64)).unwrap_or_else(|| "-".into())
}

fn table(report: &AuditReport, colour: bool) -> String {
    let paint = |severity: Severity, text: &str| -> String {
        if !colour {
            return text.to_owned();
        }
        let code = match severity {
            Severity::Error => "31;1",
            Severity::Warning => "33;1",
            Severity::Info => "36",
        };
        format!("\x1b[{code}m{text}\x1b[0m")
    };
    let mut out = String::new();
    out.push_str(&format!(
        "tpa audit of {}: {} grants, {} records\n",
        period(report),
        report.grants.len(),
        report.records
    ));
    for severity in [Severity::Error, Severity::Warning, Severity::Info] {
        let group: Vec<&Finding> = report.findings.iter().filter(|f| f.severity == severity).collect();
        if group.is_empty() {
            continue;
        }
        out.push_str(&format!(
            "\n{} ({})\n",
            paint(severity, &severity.as_str().to_uppercase()),
            group.len()
        ));
        for f in group {
            let grant = f.grant_id.as_ref().map(|g| format!(" {g}")).unwrap_or_default();
            let who = f.principal.as_deref().map(|p| format!(" {}", escape::text(p))).unwrap_or_default();
            let branch =
                f.branch.as_deref().map(|b| format!(" on {}", render::branch(b))).unwrap_or_default();
            out.push_str(&format!("  {}{grant}{who}{branch}\n", paint(severity, &f.kind)));
            out.push_str(&format!("      {}\n", escape::text(&f.message)));
            out.push_str(&format!("      what to do: {}\n", escape::text(&f.action)));
        }
    }
    if !report.grants.is_empty() {
        out.push_str("\nGRANTS\n");
        out.push_str(&format!(
            "  {:<26}  {:<11} {:<24} {:<22} {:<10} {}\n",
            "grant", "state", "who", "branch", "lasted", "reason"
        ));
        for g in &report.grants {
            out.push_str(&format!(
                "  {:<26}  {:<11} {:<24} {:<22} {:<10} {}\n",
                g.grant_id.as_str(),
                g.state.to_string(),
                escape::text(&g.principal),
                render::branch(&g.branch),
                duration(g.duration_seconds),
                escape::text(&g.reason),
            ));
        }
    }
    for check in report.checks.iter().filter(|c| c.status != "ran") {
        out.push_str(&format!(
            "\nnote: {} check {}{}\n",
            check.name,
            check.status,
            check.detail.as_deref().map(|d| format!(": {}", escape::text(d))).unwrap_or_default()
        ));
    }
    let (e, w, i) =
        (report.count(Severity::Error), report.count(Severity::Warning), report.count(Severity::Info));
    out.push_str(&match e + w + i {
        0 => "\nok: no findings\n".to_owned(),
        _ => format!("\n{e} error(s), {w} warning(s), {i} info\n"),
    });
    out
}
