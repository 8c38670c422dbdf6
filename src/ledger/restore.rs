//! Records removed from the ledger, found and put back. Deleting a note (`git notes remove`, or an
//! amend + `gc --prune=now` + `git notes prune`) must not make a live grant unrevocable: every
//! signed line that was ever in `refs/notes/tpa` (its history, and the tips its reflog remembers)
//! and is gone from the tip is appended again, byte for byte, to the note of the commit it was on.
//! The signature still verifies, since the bytes are the signer's; the removal itself stays in the
//! notes history, and the restoring commit says what it did.

use std::collections::{HashMap, HashSet};

use git2::{Oid, Repository};

use super::NoteLine;
use super::notes::{self, NOTES_REF, NoteEntry};
use crate::grant::{GrantId, Record};

/// A signed line that is in the ledger's history but not at its tip.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemovedLine {
    pub annotated: Oid,
    pub text: String,
    pub grant_id: GrantId,
}

/// Signed record lines that commits reachable from the tip or from the notes ref's reflog held,
/// and the tip no longer does. With `since` (a tip examined before), only what commits after it
/// introduced or replaced is looked at: the cheap incremental check every sweep can afford.
/// Returns the tip that was examined, and what is missing from it.
pub fn removed_lines(
    repo: &Repository,
    since: Option<Oid>,
) -> Result<(Option<Oid>, Vec<RemovedLine>), git2::Error> {
    let Some(tip) = notes::tip(repo).map_err(|e| git2::Error::from_str(&e.to_string()))? else {
        return Ok((None, Vec::new()));
    };
    let tip_tree = repo.find_commit(tip)?.tree()?;
    let mut walk = repo.revwalk()?;
    walk.push(tip)?;
    // A reset of the ref (rewritten history) leaves the old tips in its reflog until it expires.
    if let Ok(reflog) = repo.reflog(NOTES_REF) {
        for entry in reflog.iter() {
            if repo.find_commit(entry.id_new()).is_ok() {
                walk.push(entry.id_new())?;
            }
        }
    }
    if let Some(since) = since.filter(|s| repo.find_commit(*s).is_ok()) {
        walk.hide(since)?;
    }
    // Every note blob a walked commit introduced, and every one it replaced or dropped.
    let mut blobs: Vec<NoteEntry> = Vec::new();
    let mut seen: HashSet<(Oid, Oid)> = HashSet::new();
    for oid in walk {
        let commit = repo.find_commit(oid?)?;
        let tree = commit.tree()?;
        let mut changed = Vec::new();
        if commit.parent_count() == 0 {
            notes::changed_notes(repo, None, &tree, "", &mut changed)?;
        }
        for parent in commit.parents() {
            let parent_tree = parent.tree()?;
            notes::changed_notes(repo, Some(&parent_tree), &tree, "", &mut changed)?;
            notes::changed_notes(repo, Some(&tree), &parent_tree, "", &mut changed)?;
        }
        blobs.extend(changed.into_iter().filter(|n| seen.insert((n.annotated, n.blob))));
    }

    let mut at_tip: HashMap<Oid, HashSet<Vec<u8>>> = HashMap::new();
    let mut removed = Vec::new();
    let mut reported: HashSet<(Oid, Vec<u8>)> = HashSet::new();
    for note in blobs {
        let present = match at_tip.entry(note.annotated) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => {
                // Every note of the object at the tip: a line moved to another fan-out is not gone.
                let mut lines = HashSet::new();
                for blob in notes::find_notes(repo, &tip_tree, &note.annotated.to_string())? {
                    lines.extend(lines_of(repo.find_blob(blob)?.content()).map(<[u8]>::to_vec));
                }
                entry.insert(lines)
            }
        };
        let blob = repo.find_blob(note.blob)?;
        for line in lines_of(blob.content()) {
            if present.contains(line) || !reported.insert((note.annotated, line.to_vec())) {
                continue;
            }
            // Only signed records come back: junk someone once wrote and removed stays removed.
            let Some(grant_id) = record_of(line).map(|r| r.grant_id) else { continue };
            let text = String::from_utf8_lossy(line).into_owned();
            removed.push(RemovedLine { annotated: note.annotated, text, grant_id });
        }
    }
    Ok((Some(tip), removed))
}

/// Appends each removed line again to the note it was in (one notes commit per line, each a
/// compare-and-swap). Returns the new tip.
pub fn restore(repo: &Repository, lines: &[RemovedLine]) -> Result<Option<Oid>, notes::NotesError> {
    let mut tip = None;
    for line in lines {
        tip = Some(notes::append_line(repo, line.annotated, &line.text)?);
    }
    Ok(tip)
}

fn record_of(line: &[u8]) -> Option<Record> {
    let note: NoteLine = serde_json::from_slice(line).ok()?;
    serde_json::from_str(&note.payload).ok()
}

fn lines_of(content: &[u8]) -> impl Iterator<Item = &[u8]> {
    content.split(|b| *b == b'\n').filter(|l| !l.is_empty())
}
