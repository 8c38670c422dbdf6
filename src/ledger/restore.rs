//! Records removed from the ledger, found and put back. Deleting a note (`git notes remove`, or an
//! amend + `gc --prune=now` + `git notes prune`) must not make a live grant unrevocable: every
//! signed line that was ever in `refs/notes/tpa` (its history, and the tips its reflog remembers)
//! and is gone from the tip is appended again, byte for byte, to the note of the commit it was on.
//! The signature still verifies, since the bytes are the signer's; the removal itself stays in the
//! notes history, and the restoring commit says what it did.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom};

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

/// How far a search for removed lines went: the tip it examined, and the notes ref's reflog as it
/// was then, so that the next search walks only what came since.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Searched {
    pub tip: Oid,
    pub reflog: Option<ReflogMark>,
}

/// Where a reading of the notes ref's reflog file ended: its length in bytes then (whole lines),
/// and the old and new ids of its last entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReflogMark {
    pub length: u64,
    pub newest: (Oid, Oid),
}

/// Signed record lines that commits reachable from the tip or from the notes ref's reflog held,
/// and the tip no longer does. With `since` (a search before), only what commits after its tip
/// introduced or replaced is looked at, from the tip and the tips logged after that search: the
/// cheap incremental check every sweep can afford (the reflog grows by an entry per record, and
/// pushing every tip it ever logged made each sweep walk the whole ledger's history). Returns how
/// far this search went, and what is missing from the tip.
pub fn removed_lines(
    repo: &Repository,
    since: Option<Searched>,
) -> Result<(Option<Searched>, Vec<RemovedLine>), git2::Error> {
    // The reflog before the tip: an entry logged in between is then walked from the tip, never
    // taken for a tip whose new lines the older tip lacks (they would be appended twice).
    let (mut logged, mark) = logged_tips(repo, since.and_then(|s| s.reflog), None);
    let Some(tip) = notes::tip(repo).map_err(|e| git2::Error::from_str(&e.to_string()))? else {
        return Ok((None, Vec::new()));
    };
    // A search whose tip is gone, or that the tip does not descend from (the ref was set back or
    // rewritten since: what that tip held is in no commit walked from here), says nothing about
    // what is left: all again, every logged tip included, up to where this reading ended.
    let since = since.filter(|s| {
        s.tip == tip
            || (repo.find_commit(s.tip).is_ok() && repo.graph_descendant_of(tip, s.tip).unwrap_or(false))
    });
    if since.is_none() && mark.is_some() {
        logged = logged_tips(repo, None, mark.map(|m| m.length)).0;
    }
    let tip_tree = repo.find_commit(tip)?.tree()?;
    let mut walk = repo.revwalk()?;
    walk.push(tip)?;
    // A reset of the ref (rewritten history) leaves the old tips in its reflog until it expires.
    for id in logged {
        if repo.find_commit(id).is_ok() {
            walk.push(id)?;
        }
    }
    if let Some(since) = since {
        walk.hide(since.tip)?;
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
    Ok((Some(Searched { tip, reflog: mark }), removed))
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

/// The tips the notes ref's reflog logged after `mark` (up to byte `end`, if given), and where
/// this reading ended. The file is read from the mark on when the entry before it is still the one
/// the mark names (git and libgit2 only append to it); anything else (no mark, the log expired,
/// deleted or edited) reads every entry. A line being written (no newline yet) is left for the
/// next reading.
fn logged_tips(
    repo: &Repository,
    mark: Option<ReflogMark>,
    end: Option<u64>,
) -> (Vec<Oid>, Option<ReflogMark>) {
    let path = repo.commondir().join("logs").join(NOTES_REF);
    let Ok(mut file) = std::fs::File::open(&path) else { return (Vec::new(), None) };
    let start = mark.filter(|m| newest_before(&mut file, m.length) == Some(m.newest)).map_or(0, |m| m.length);
    let mut bytes = Vec::new();
    let read = file.seek(SeekFrom::Start(start)).and_then(|_| {
        (&mut file).take(end.map_or(u64::MAX, |e| e.saturating_sub(start))).read_to_end(&mut bytes)
    });
    if read.is_err() {
        return (Vec::new(), None);
    }
    let whole = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |at| at + 1);
    let entries: Vec<(Oid, Oid)> = lines_of(&bytes[..whole]).filter_map(ids_of).collect();
    let mark = match entries.last() {
        Some(&(old, new)) => Some(ReflogMark { length: start + whole as u64, newest: (old, new) }),
        None => mark.filter(|_| start > 0),
    };
    (entries.into_iter().map(|(_, new)| new).collect(), mark)
}

/// The ids of the reflog entry that ends at byte `end` of the file, if a whole one does.
fn newest_before(file: &mut std::fs::File, end: u64) -> Option<(Oid, Oid)> {
    const WINDOW: u64 = 4096;
    let from = end.saturating_sub(WINDOW);
    let mut bytes = vec![0; (end - from) as usize];
    file.seek(SeekFrom::Start(from)).ok()?;
    file.read_exact(&mut bytes).ok()?;
    let (last, rest) = bytes.split_last()?;
    if *last != b'\n' {
        return None;
    }
    let line = match rest.iter().rposition(|b| *b == b'\n') {
        Some(at) => &rest[at + 1..],
        None if from == 0 => rest,
        None => return None,
    };
    ids_of(line)
}

/// A reflog line: `<old id> <new id> <committer> <time> <zone>\t<message>`.
fn ids_of(line: &[u8]) -> Option<(Oid, Oid)> {
    let mut fields = line.splitn(3, |b| *b == b' ');
    let mut id = || Oid::from_str(std::str::from_utf8(fields.next()?).ok()?).ok();
    Some((id()?, id()?))
}

fn record_of(line: &[u8]) -> Option<Record> {
    let note: NoteLine = serde_json::from_slice(line).ok()?;
    serde_json::from_str(&note.payload).ok()
}

fn lines_of(content: &[u8]) -> impl Iterator<Item = &[u8]> {
    content.split(|b| *b == b'\n').filter(|l| !l.is_empty())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn line(new: u8) -> String {
        let old = "0".repeat(40);
        let new = format!("{new:02x}").repeat(20);
        format!("{old} {new} tpa <tpa@example.com> 1764700000 +0000\ttpa: record\n")
    }

    fn id(new: u8) -> Oid {
        Oid::from_str(&format!("{new:02x}").repeat(20)).unwrap()
    }

    #[test]
    fn a_reflog_is_read_from_where_the_last_reading_ended_while_it_was_only_appended_to() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(dir.path()).unwrap();
        let log = repo.commondir().join("logs").join(NOTES_REF);
        std::fs::create_dir_all(log.parent().unwrap()).unwrap();
        assert_eq!(logged_tips(&repo, None, None), (vec![], None));

        std::fs::write(&log, line(1) + &line(2)).unwrap();
        let (tips, mark) = logged_tips(&repo, None, None);
        assert_eq!(tips, [id(1), id(2)]);
        assert_eq!(mark.unwrap().newest.1, id(2));

        // Appended since, with a last line still being written: only the whole new line.
        let mut file = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        file.write_all((line(3) + &line(4)[..50]).as_bytes()).unwrap();
        let (tips, next) = logged_tips(&repo, mark, None);
        assert_eq!(tips, [id(3)]);
        assert_eq!(next.unwrap().newest.1, id(3));
        // Up to a byte bound: the lines that end by then.
        assert_eq!(logged_tips(&repo, None, mark.map(|m| m.length)).0, [id(1), id(2)]);
        // Nothing new: nothing read, the mark stays.
        assert_eq!(logged_tips(&repo, next, None), (vec![], next));

        // Rewritten (expired, edited) under the mark: every entry again.
        std::fs::write(&log, line(5) + &line(6) + &line(7) + &line(8)).unwrap();
        assert_eq!(logged_tips(&repo, next, None).0, [id(5), id(6), id(7), id(8)]);
        std::fs::write(&log, line(1)).unwrap();
        assert_eq!(logged_tips(&repo, next, None).0, [id(1)]);
    }
}
