//! `tpa audit`: parse the period and the output choice, run the audit, render the report.

mod html;
mod markdown;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::Context as _;
use chrono::{DateTime, NaiveDate, Utc};
use clap::{Args, ValueEnum};

use std::collections::HashSet;

use super::{Ctx, IamArgs, exit, print_json, render};
use crate::audit::{Finding, Severity};
use crate::escape;
use crate::ops::audit::{self, AuditOptions, AuditReport, AwsAccess};
use crate::ops::org_audit::{self, OrgOptions, OrgReport};
use crate::policy::format_duration;
use crate::siem::{Batch, Sink, WriterSink};

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
    /// Audit every repository listed in FILE (one remote URL or local path a line; `#` comments)
    /// instead of this one: each is fetched into --cache and audited, a few at a time, into one
    /// report; one that cannot be fetched is a `repo_unreachable` finding.
    #[arg(long, value_name = "FILE", conflicts_with = "repos_dir")]
    repos: Option<PathBuf>,
    /// Audit every git repository under DIR, as --repos does.
    #[arg(long, value_name = "DIR")]
    repos_dir: Option<PathBuf>,
    /// Where --repos keeps its bare, partial copies between runs (default: ~/.cache/tpa/repos).
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,
    /// Repositories fetched and audited at once.
    #[arg(long, value_name = "N", default_value_t = 4)]
    jobs: usize,
    /// How long one git command of --repos (a fetch) may take.
    #[arg(long, value_parser = crate::grant::parse_duration, default_value = "10m")]
    fetch_timeout: u64,
    #[command(flatten)]
    ship: super::export::ShipArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    Table,
    Json,
    Markdown,
    Html,
    /// OCSF 1.8.0 JSON lines: each record of the period's grants (User Access Management) and
    /// each finding (Compliance Finding). docs/siem.md.
    Ocsf,
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
    let format = if args.json { Format::Json } else { args.format };
    if args.ship.ship_to.is_some() && format != Format::Ocsf {
        anyhow::bail!("--ship-to sends OCSF events: add --format ocsf");
    }
    let threshold = match args.fail_on {
        FailOn::Warning => Severity::Warning,
        FailOn::Error => Severity::Error,
    };
    if args.repos.is_some() || args.repos_dir.is_some() {
        return run_org(&args, format, options, threshold);
    }
    let repo = ctx.repo()?;
    crate::ledger::check::checks_run_one_at_a_time();
    let report = audit::audit(&repo, &options)?;
    if format == Format::Json && args.output.is_none() {
        // Streamed: the report of 100,000 grants is tens of megabytes as one string.
        print_json(&report)?;
        return Ok(exit_code(report.worst(), threshold));
    }
    let text = match format {
        Format::Ocsf => {
            ship_ocsf(&args, |sink| ocsf_of(&repo, &report, sink))?;
            return Ok(exit_code(report.worst(), threshold));
        }
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
        None => std::io::stdout().lock().write_all(text.as_bytes())?,
    }
    Ok(exit_code(report.worst(), threshold))
}

fn exit_code(worst: Option<Severity>, threshold: Severity) -> u8 {
    if worst.is_some_and(|w| w >= threshold) { exit::FINDINGS } else { exit::OK }
}

/// `--repos` / `--repos-dir`: fetch and audit each, one report.
fn run_org(
    args: &AuditArgs,
    format: Format,
    options: AuditOptions,
    threshold: Severity,
) -> anyhow::Result<u8> {
    let sources = match (&args.repos, &args.repos_dir) {
        (Some(file), _) => org_audit::read_list(file)?,
        (None, Some(dir)) => org_audit::find_repos(dir)?,
        (None, None) => unreachable!("run_org is called with --repos or --repos-dir"),
    };
    let cache = match &args.cache {
        Some(dir) => dir.clone(),
        None => default_cache()?,
    };
    let org_options = OrgOptions {
        cache,
        jobs: args.jobs.max(1),
        timeout: std::time::Duration::from_secs(args.fetch_timeout),
        audit: options,
    };
    let org = org_audit::audit(&sources, &org_options)?;
    let text = match format {
        Format::Ocsf => {
            ship_ocsf(args, |sink| {
                let mut events = 0;
                for repo in &org.repos {
                    events += ocsf_of_repo(repo, &org, sink)?;
                }
                Ok(events)
            })?;
            return Ok(exit_code(org.worst(), threshold));
        }
        Format::Json => serde_json::to_string_pretty(&org)? + "\n",
        Format::Markdown => markdown::render_org(&org),
        Format::Html => html::render_org(&org),
        Format::Table => {
            let colour = args.output.is_none() && std::io::stdout().is_terminal() && no_color_unset();
            org_table(&org, colour)
        }
    };
    match &args.output {
        Some(path) => write_atomically(path, text.as_bytes())
            .with_context(|| format!("cannot write the report to {}", path.display()))?,
        None => std::io::stdout().lock().write_all(text.as_bytes())?,
    }
    Ok(exit_code(org.worst(), threshold))
}

fn default_cache() -> anyhow::Result<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|h| PathBuf::from(h).join(".cache"))
        })
        .ok_or_else(|| anyhow::anyhow!("neither XDG_CACHE_HOME nor HOME is set: give --cache DIR"))?;
    Ok(base.join("tpa").join("repos"))
}

/// OCSF events to the sink the flags name: --ship-to, -o FILE (replaced atomically), or stdout.
fn ship_ocsf(
    args: &AuditArgs,
    events: impl FnOnce(&mut dyn Sink) -> Result<usize, crate::ops::export::ExportError>,
) -> anyhow::Result<()> {
    let opts = args.ship.options();
    if let Some(mut http) = args.ship.http(None, &opts)? {
        let sent = events(&mut http)?;
        eprintln!("shipped {sent} event(s) in {} request(s)", http.requests);
        return Ok(());
    }
    match &args.output {
        Some(path) => {
            let mut sink = WriterSink::new(Vec::new());
            events(&mut sink)?;
            sink.finish()?;
            write_atomically(path, &sink.into_inner())
                .with_context(|| format!("cannot write the events to {}", path.display()))?;
        }
        None => {
            let mut sink = WriterSink::new(std::io::BufWriter::new(std::io::stdout().lock()));
            events(&mut sink)?;
            sink.finish()?;
        }
    }
    Ok(())
}

/// The records of the report's grants and its findings, as OCSF events.
fn ocsf_of(
    repo: &git2::Repository,
    report: &AuditReport,
    sink: &mut dyn Sink,
) -> Result<usize, crate::ops::export::ExportError> {
    let lines = crate::ledger::read_lines(repo, crate::ledger::notes::tip(repo)?)?;
    let ids: HashSet<&str> = report.grants.iter().map(|g| g.grant_id.as_str()).collect();
    let signers = crate::ops::export::signers(repo);
    let keep = |r: &crate::grant::Record| ids.contains(r.grant_id.as_str());
    let shipped = crate::ops::export::ship_lines(lines, &[], Some(&signers), &keep, sink)?;
    Ok(shipped.events + ship_findings(&report.findings, &report.repo, report.generated_at, sink)?)
}

fn ocsf_of_repo(
    repo: &org_audit::RepoAudit,
    org: &OrgReport,
    sink: &mut dyn Sink,
) -> Result<usize, crate::ops::export::ExportError> {
    if let (Some(report), Some(cache)) = (&repo.report, &repo.cache) {
        return ocsf_of(&git2::Repository::open(cache)?, report, sink);
    }
    ship_findings(&repo.findings, &repo.source, org.generated_at, sink)
}

fn ship_findings(
    findings: &[Finding],
    repo: &str,
    at: DateTime<Utc>,
    sink: &mut dyn Sink,
) -> Result<usize, crate::ops::export::ExportError> {
    let mut batch = Batch::default();
    for f in findings {
        let event = crate::ocsf::finding_event(f, repo, at);
        batch.push(&event, event.uid(), at.timestamp_millis());
    }
    if !batch.is_empty() {
        sink.send(&batch)?;
    }
    Ok(batch.len())
}

fn org_table(org: &OrgReport, colour: bool) -> String {
    let t = &org.totals;
    let mut out = format!(
        "tpa audit of {} repositories ({} audited, {} unreachable, {} failed): {} grants, {} records\n",
        t.repos, t.audited, t.unreachable, t.failed, t.grants, t.records
    );
    if !org.access.is_empty() {
        out.push_str("\nWHO HAD ACCESS WHERE\n");
        out.push_str(&format!(
            "  {:<28} {:<40} {:<24} {:>6} {:>10}\n",
            "who", "repository", "role", "grants", "lasted"
        ));
        for a in &org.access {
            out.push_str(&format!(
                "  {:<28} {:<40} {:<24} {:>6} {:>10}\n",
                escape::text(&a.principal),
                escape::text(&a.repo),
                escape::text(a.role.as_deref().unwrap_or(&a.target)),
                a.grants,
                duration(Some(a.seconds)),
            ));
        }
    }
    for repo in &org.repos {
        out.push_str(&format!("\n=== {} ({})\n", escape::text(&repo.source), repo.status));
        match &repo.report {
            Some(report) => out.push_str(&table(report, colour)),
            None => {
                for f in &repo.findings {
                    out.push_str(&format!(
                        "  {} {}\n      {}\n      what to do: {}\n",
                        f.severity.as_str(),
                        f.kind,
                        escape::text(&f.message),
                        escape::text(&f.action)
                    ));
                }
            }
        }
    }
    out.push_str(&match t.errors + t.warnings + t.info {
        0 => "\nok: no findings in any repository\n".to_owned(),
        _ => format!("\nin all: {} error(s), {} warning(s), {} info\n", t.errors, t.warnings, t.info),
    });
    out
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
    for check in report.checks.iter().filter(|c| c.status != crate::ops::audit::CheckStatus::Ran) {
        out.push_str(&format!(
            "\nnote: {} check {}{}\n",
            check.name.as_str(),
            check.status.as_str(),
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
