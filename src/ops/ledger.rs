//! Reading the ledger: `tpa log`, `tpa show` and `tpa verify` all go through here.

use git2::Repository;

use crate::ledger::signers::{AllowedSigners, SignersError};
use crate::ledger::verify::{self, CheckedRecord, FindingKind, Report};
use crate::ledger::{self, notes, restore};
use crate::ops::init::ALLOWED_SIGNERS_PATH;
use crate::state::{StateDir, StateError};
use crate::trust::{TrustError, TrustRef};

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(transparent)]
    Trust(#[from] TrustError),
    #[error(
        "{ALLOWED_SIGNERS_PATH} is not committed at the trust ref {0}: run `tpa init`, commit .tpa/ and \
         get it merged there through review"
    )]
    NoSigners(String),
    #[error("{ALLOWED_SIGNERS_PATH} at the trust ref {refname}: {source}")]
    BadSigners {
        refname: String,
        #[source]
        source: SignersError,
    },
    #[error(transparent)]
    State(#[from] StateError),
    #[error("git error while reading the ledger: {0}")]
    Git(#[from] git2::Error),
    #[error(transparent)]
    Notes(#[from] notes::NotesError),
}

/// The ledger as checked, with the trust ref it was checked against.
pub struct LedgerView {
    pub trust: Option<TrustRef>,
    pub report: Report,
}

pub fn load_signers(repo: &Repository, trust: &TrustRef) -> Result<AllowedSigners, InspectError> {
    let bytes = trust
        .read_file(repo, ALLOWED_SIGNERS_PATH)?
        .ok_or_else(|| InspectError::NoSigners(trust.refname.clone()))?;
    AllowedSigners::parse(&String::from_utf8_lossy(&bytes))
        .map_err(|source| InspectError::BadSigners { refname: trust.refname.clone(), source })
}

/// Like [`records`], but a trust ref without allowed_signers checks records against nobody
/// (every signer unknown) instead of failing: for flows that only need authentic records.
pub fn records_lenient(repo: &Repository) -> Result<LedgerView, InspectError> {
    match records(repo) {
        Err(InspectError::NoSigners(_)) => {
            let tip = notes::tip(repo)?;
            let lines = ledger::read_lines(repo, tip)?;
            let mut records = verify::check_lines(lines, &AllowedSigners::default());
            let git_copies = verify::set_aside_git_copies(&mut records);
            verify::check_intents(&mut records);
            sort_newest_first(&mut records);
            Ok(LedgerView {
                trust: TrustRef::resolve(repo).ok(),
                report: Report { tip, records, git_copies, ledger_findings: vec![] },
            })
        }
        other => other,
    }
}

/// Every record at the tip with its own checks (signature, signer, place, intent). No history walk.
pub fn records(repo: &Repository) -> Result<LedgerView, InspectError> {
    records_at(repo, notes::tip(repo)?)
}

fn records_at(repo: &Repository, tip: Option<git2::Oid>) -> Result<LedgerView, InspectError> {
    let lines = ledger::read_lines(repo, tip)?;
    if lines.is_empty() {
        return Ok(LedgerView {
            trust: TrustRef::resolve(repo).ok(),
            report: Report { tip, records: vec![], git_copies: vec![], ledger_findings: vec![] },
        });
    }
    let trust = TrustRef::resolve(repo)?;
    let signers = load_signers(repo, &trust)?;
    let mut records = verify::check_lines(lines, &signers);
    let git_copies = verify::set_aside_git_copies(&mut records);
    verify::check_intents(&mut records);
    sort_newest_first(&mut records);
    Ok(LedgerView {
        trust: Some(trust),
        report: Report { tip, records, git_copies, ledger_findings: vec![] },
    })
}

/// The full check of `tpa verify`: records, the notes ref's history and the witness. A tip that
/// passes the rewrite check becomes the new witness; `accept_rewrite` re-anchors it after an
/// operator has looked into a rewrite.
pub fn verify(repo: &Repository, accept_rewrite: bool) -> Result<LedgerView, InspectError> {
    check(repo, Some(accept_rewrite))
}

/// The checks of [`verify`] without moving the witness: for `tpa audit`, which only reads.
pub fn verify_read_only(repo: &Repository) -> Result<LedgerView, InspectError> {
    check(repo, None)
}

/// `update_witness`: None leaves the witness alone; Some(accept_rewrite) as in [`verify`].
fn check(repo: &Repository, update_witness: Option<bool>) -> Result<LedgerView, InspectError> {
    let tip = notes::tip(repo)?;
    // The history walk and the record checks are independent: run them side by side, on one
    // fixed tip. The walk gets its own handle, since a Repository is not shared across threads.
    let git_dir = repo.path().to_owned();
    let (view, history) = std::thread::scope(|scope| {
        let history = scope.spawn(move || -> Result<Vec<_>, git2::Error> {
            match tip {
                Some(tip) => verify::check_history(&Repository::open(&git_dir)?, tip),
                None => Ok(Vec::new()),
            }
        });
        let view = records_at(repo, tip);
        (view, history.join().expect("the history walk never panics"))
    });
    let mut view = view?;
    view.report.ledger_findings.extend(history?);
    let state = StateDir::open(repo)?;
    let Some(accept_rewrite) = update_witness else {
        let rewritten = verify::check_witness(repo, tip, state.witness()?);
        view.report.ledger_findings.extend(rewritten);
        return Ok(view);
    };
    let lock = state.lock()?;
    let witness = state.witness()?;
    let rewritten = verify::check_witness(repo, tip, witness);
    if let Some(finding) = rewritten.clone()
        && !accept_rewrite
    {
        view.report.ledger_findings.push(finding);
    } else if let Some(tip) = tip {
        state.set_witness(&lock, tip)?;
    }
    debug_assert!(
        view.report.ledger_findings.iter().filter(|f| f.kind == FindingKind::HistoryRewritten).count() <= 1
    );
    Ok(view)
}

fn sort_newest_first(records: &mut [CheckedRecord]) {
    records.sort_by(|a, b| {
        verify::issued_at(b)
            .cmp(&verify::issued_at(a))
            .then_with(|| a.annotated.cmp(&b.annotated))
            .then_with(|| b.line_no.cmp(&a.line_no))
    });
}

/// Puts back every signed record that was removed from the ledger since the last search (the
/// whole history and the notes ref's reflog the first time), and returns what came back. The
/// search resumes from the tip it examined, so a sweep pays only for what is new.
pub fn restore_removed(repo: &Repository) -> Result<Vec<restore::RemovedLine>, InspectError> {
    let state = StateDir::open(repo)?;
    let lock = state.lock()?;
    let (examined, removed) = restore::removed_lines(repo, state.restore_cursor()?)?;
    if !removed.is_empty() {
        restore::restore(repo, &removed)?;
    }
    if let Some(tip) = examined {
        state.set_restore_cursor(&lock, tip)?;
    }
    Ok(removed)
}

/// What [`restore_removed`] would put back, without writing anything (for `tpa status`).
pub fn removed_since_last_search(repo: &Repository) -> Result<Vec<restore::RemovedLine>, InspectError> {
    let state = StateDir::open(repo)?;
    Ok(restore::removed_lines(repo, state.restore_cursor()?)?.1)
}
