//! `tpa export`: ship the ledger's records as OCSF events, once each with a cursor.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use super::{Ctx, exit, print_json};
use crate::ops::export::{self, ExportOptions};
use crate::siem::{Collector, FileSink, HttpSink, Sink, WriterSink};

/// Ship every ledger record as an OCSF 1.8.0 event (User Access Management, class 3005), one JSON
/// object a line: to stdout, appended to a file a log shipper tails, or POSTed to an HTTP
/// collector (Splunk HEC, Elasticsearch `_bulk`, or JSON lines). docs/siem.md has the mapping.
///
/// With --since CURSOR a scheduled job ships each record once: only records the cursor file has
/// not seen are shipped, and the cursor moves after they are delivered (synced to disk, or
/// acknowledged by the collector). A run that dies in between ships them again next time, with the
/// same event uid (`metadata.uid`, the sha256 of the signed record), so a SIEM can drop the copy.
#[derive(Args)]
pub struct ExportArgs {
    /// The cursor file (created when missing): ship only what it has not seen, then move it.
    #[arg(long, value_name = "CURSOR")]
    since: Option<PathBuf>,
    /// Append the events to FILE (synced before the cursor moves) instead of writing to stdout.
    #[arg(long, short = 'o', value_name = "FILE", conflicts_with_all = ["to", "ship_to"])]
    output: Option<PathBuf>,
    /// POST the events to this collector: https://, or http:// to a loopback host. Splunk HEC
    /// (`…/services/collector/event`, token in TPA_SIEM_TOKEN or `?token=`), Elasticsearch
    /// `…/INDEX/_bulk`, or any URL taking JSON lines. Errors name its host only.
    #[arg(long, value_name = "URL", conflicts_with = "ship_to")]
    to: Option<String>,
    #[command(flatten)]
    ship: ShipArgs,
    /// Do not check each record's signature and signer (events then carry no `verified`): a
    /// large first backfill ships several times faster; `tpa audit` checks the ledger anyway.
    #[arg(long)]
    no_verify: bool,
    /// Print what was shipped as JSON (not with events on stdout).
    #[arg(long)]
    json: bool,
}

/// Where OCSF events go over HTTP; shared by `tpa export` and `tpa audit --format ocsf`.
#[derive(Args, Clone, Debug)]
pub struct ShipArgs {
    /// POST the OCSF events to this collector (as `tpa export --to` does; `tpa audit` has its own
    /// `--to` for the period's end): Splunk HEC, Elasticsearch `_bulk` or JSON lines.
    #[arg(long, value_name = "URL")]
    pub ship_to: Option<String>,
    /// The collector's body format (default: from the URL's path).
    #[arg(long, value_enum)]
    pub collector: Option<Collector>,
    /// The environment variable holding the collector's token, sent as `Authorization: Splunk
    /// TOKEN` (HEC), `ApiKey TOKEN` (bulk) or `Bearer TOKEN`.
    #[arg(long, value_name = "VAR", default_value = "TPA_SIEM_TOKEN")]
    pub token_env: String,
    /// Largest request body, in bytes (HEC's default limit is 1 MB).
    #[arg(long, value_name = "BYTES", default_value_t = 900_000)]
    pub max_request_bytes: usize,
    /// Attempts per request (connection errors, timeouts, 408, 429 and 5xx are retried).
    #[arg(long, default_value_t = 5)]
    pub attempts: u32,
    /// How long to wait for the collector per attempt.
    #[arg(long, value_parser = crate::grant::parse_duration, default_value = "30s")]
    pub collector_timeout: u64,
}

impl ShipArgs {
    pub fn options(&self) -> crate::notify::Options {
        crate::notify::Options {
            timeout: std::time::Duration::from_secs(self.collector_timeout),
            attempts: self.attempts.max(1),
            ..crate::notify::Options::default()
        }
    }

    /// The HTTP sink for `url` (`--to` or `--ship-to`), when given.
    pub fn http<'o>(
        &self,
        url: Option<&str>,
        opts: &'o crate::notify::Options,
    ) -> anyhow::Result<Option<HttpSink<'o>>> {
        let Some(url) = url.or(self.ship_to.as_deref()) else { return Ok(None) };
        let collector = self.collector.unwrap_or_else(|| Collector::detect(url));
        let token = std::env::var(&self.token_env).ok().filter(|t| !t.is_empty());
        Ok(Some(HttpSink::new(url, collector, token.as_deref(), opts, self.max_request_bytes)?))
    }
}

pub fn run(ctx: &Ctx, args: ExportArgs) -> anyhow::Result<u8> {
    let repo = ctx.repo()?;
    let options = ExportOptions { cursor: args.since.clone(), now: super::now(), verify: !args.no_verify };
    let opts = args.ship.options();
    let url = args.to.as_deref().or(args.ship.ship_to.as_deref());
    let to_stdout = args.output.is_none() && url.is_none();
    if to_stdout && args.json {
        anyhow::bail!("--json reports on stdout, where the events go: add -o FILE or --to URL");
    }
    let mut http = args.ship.http(url, &opts)?;
    let report = match (&mut http, &args.output) {
        (Some(http), _) => export::export(&repo, &options, http)?,
        (None, Some(path)) => {
            let mut sink = FileSink::append(path)
                .map_err(|e| anyhow::anyhow!("cannot open {} to append events: {e}", path.display()))?;
            export::export(&repo, &options, &mut sink)?
        }
        (None, None) => {
            let mut sink = WriterSink::new(std::io::BufWriter::new(std::io::stdout().lock()));
            let report = export::export(&repo, &options, &mut sink as &mut dyn Sink)?;
            drop(sink);
            report
        }
    };
    if args.json {
        print_json(&report)?;
        return Ok(exit::OK);
    }
    let mut line = format!("exported {} event(s) of {}", report.events, crate::escape::text(&report.repo));
    if let Some(http) = &http {
        line.push_str(&format!(" in {} request(s)", http.requests));
        if http.duplicates > 0 {
            line.push_str(&format!(", {} already at the collector", http.duplicates));
        }
    }
    if report.cursor_lost {
        line.push_str(
            "; the cursor's notes commit is gone (history rewritten?): every record was shipped again",
        );
    }
    if report.unreadable > 0 {
        line.push_str(&format!(
            "; {} note line(s) are no readable record (see `tpa verify`)",
            report.unreadable
        ));
    }
    // With events on stdout, the summary goes to stderr.
    if to_stdout {
        eprintln!("{line}");
    } else {
        writeln!(std::io::stdout(), "{line}")?;
    }
    Ok(exit::OK)
}
