//! `refs/notes/tpa` as plain git objects. The only code that reads or writes the notes ref.
//!
//! libgit2's `git_note_create` and `git notes add` both force-update the ref, so concurrent writers
//! lose each other's notes. Here a writer builds the new notes tree and commit itself and moves the
//! ref only if it still points where it was read, retrying otherwise.

use git2::{ErrorCode, FileMode, ObjectType, Oid, Repository, Signature, Tree};

pub const NOTES_REF: &str = "refs/notes/tpa";

/// How often an append retries a lost compare-and-swap before giving up. Each retry rereads the
/// ref, so this bounds contention, not correctness.
const MAX_ATTEMPTS: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum NotesError {
    #[error("git error on {NOTES_REF}: {0}")]
    Git(#[from] git2::Error),
    #[error("{NOTES_REF} kept moving: gave up after {MAX_ATTEMPTS} attempts to append")]
    Contended,
    #[error("{NOTES_REF} does not point at a commit")]
    NotACommit,
}

/// A note: the object it annotates and the blob holding its lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoteEntry {
    pub annotated: Oid,
    pub blob: Oid,
}

pub fn tip(repo: &Repository) -> Result<Option<Oid>, NotesError> {
    match repo.refname_to_id(NOTES_REF) {
        Ok(oid) => Ok(Some(oid)),
        Err(e) if e.code() == ErrorCode::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Appends `line` (no trailing newline) to the note on `annotated`, creating the note if needed.
/// Returns the new notes commit.
pub fn append_line(repo: &Repository, annotated: Oid, line: &str) -> Result<Oid, NotesError> {
    publish(repo, prepare_line(repo, annotated, line)?)
}

/// A line appended to the notes as objects (blob, trees, commit) on the tip as it was read, which
/// the ref does not point at yet: until [`publish`], nothing refers to those objects (`git gc`
/// prunes them if it never comes).
pub struct PreparedLine {
    annotated: Oid,
    line: String,
    commit: Oid,
    /// The tip it was built on (`None`: the notes ref did not exist).
    on: Option<Oid>,
}

/// Writes the objects of an append without moving the ref: see [`PreparedLine`].
pub fn prepare_line(repo: &Repository, annotated: Oid, line: &str) -> Result<PreparedLine, NotesError> {
    debug_assert!(!line.contains('\n'));
    let hex = annotated.to_string();
    let old_tip = tip(repo)?;
    let (old_commit, old_tree) = match old_tip {
        Some(oid) => {
            let commit = repo.find_commit(oid).map_err(|_| NotesError::NotACommit)?;
            let tree = commit.tree()?;
            (Some(commit), Some(tree))
        }
        None => (None, None),
    };
    let existing = match &old_tree {
        Some(tree) => find_note(repo, tree, &hex)?,
        None => None,
    };
    let mut content = match existing {
        Some((_, blob)) => repo.find_blob(blob)?.content().to_vec(),
        None => Vec::new(),
    };
    if !content.is_empty() && !content.ends_with(b"\n") {
        content.push(b'\n');
    }
    content.extend_from_slice(line.as_bytes());
    content.push(b'\n');
    let blob = repo.blob(&content)?;
    let path = existing.map(|(path, _)| path).unwrap_or_else(|| fanout_path(&hex));
    let new_tree = write_path(repo, old_tree.as_ref(), &path, blob)?;
    let new_tree = repo.find_tree(new_tree)?;
    let signature = notes_signature(repo)?;
    let parents: Vec<_> = old_commit.iter().collect();
    let message = format!("tpa: record on {hex}\n");
    let commit = repo.commit(None, &signature, &signature, &message, &new_tree, &parents)?;
    Ok(PreparedLine { annotated, line: line.to_owned(), commit, on: old_tip })
}

/// Moves the notes ref to a prepared append, compare-and-swap; if another writer moved it since,
/// the append is built again on their tip. Returns the new notes commit.
pub fn publish(repo: &Repository, prepared: PreparedLine) -> Result<Oid, NotesError> {
    let mut prepared = prepared;
    for attempt in 0..MAX_ATTEMPTS {
        if attempt > 0 {
            prepared = prepare_line(repo, prepared.annotated, &prepared.line)?;
        }
        // libgit2 compares the expected old value under the ref's lock; a zero id means "must not
        // exist yet". (Its plain non-forced create checks existence before locking, which races.)
        let expected = prepared.on.unwrap_or(Oid::ZERO_SHA1);
        match repo.reference_matching(NOTES_REF, prepared.commit, true, expected, "tpa: append") {
            Ok(_) => return Ok(prepared.commit),
            // Someone else moved the ref (or holds its lock): reread and build on their commit.
            Err(e) if is_lost_race(&e) => back_off(attempt),
            Err(e) => return Err(e.into()),
        }
    }
    Err(NotesError::Contended)
}

/// What merging another clone's ledger did to the local one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Merged {
    /// Theirs held nothing the local ledger lacks.
    UpToDate,
    /// The local ledger had nothing of its own: it now points at theirs.
    FastForward(Oid),
    /// A merge commit whose notes are the union of both, line by line.
    Union(Oid),
}

/// Merges the notes commit `theirs` (another clone's ledger, fetched) into `refs/notes/tpa`. Notes
/// are merged per annotated object at the level of lines, which are whole signed records: every
/// line of either side is kept, identical lines once, local lines first. Nothing is ever dropped,
/// not even a line that fails verification (that is `tpa verify`'s finding to report). The ref moves
/// by compare-and-swap, retried against concurrent appends.
pub fn merge(repo: &Repository, theirs: Oid) -> Result<Merged, NotesError> {
    let their_commit = repo.find_commit(theirs).map_err(|_| NotesError::NotACommit)?;
    let their_tree = their_commit.tree()?;
    for attempt in 0..MAX_ATTEMPTS {
        let local = tip(repo)?;
        let outcome = match local {
            Some(local) if local == theirs || repo.graph_descendant_of(local, theirs)? => {
                return Ok(Merged::UpToDate);
            }
            None => Merged::FastForward(theirs),
            Some(local) => {
                let local_commit = repo.find_commit(local).map_err(|_| NotesError::NotACommit)?;
                let local_tree = local_commit.tree()?;
                let mut differing = Vec::new();
                changed_notes(repo, Some(&local_tree), &their_tree, "", &mut differing)?;
                let mut tree = local_tree.id();
                for note in differing {
                    let current = repo.find_tree(tree)?;
                    let hex = note.annotated.to_string();
                    let existing = find_note(repo, &current, &hex)?;
                    let mut content = match existing {
                        Some((_, blob)) => repo.find_blob(blob)?.content().to_vec(),
                        None => Vec::new(),
                    };
                    let theirs_blob = repo.find_blob(note.blob)?;
                    let mut lines: std::collections::HashSet<Vec<u8>> = content
                        .split(|b| *b == b'\n')
                        .filter(|l| !l.is_empty())
                        .map(<[u8]>::to_vec)
                        .collect();
                    let before = content.len();
                    for line in theirs_blob.content().split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                        if lines.insert(line.to_vec()) {
                            if !content.is_empty() && !content.ends_with(b"\n") {
                                content.push(b'\n');
                            }
                            content.extend_from_slice(line);
                            content.push(b'\n');
                        }
                    }
                    if content.len() == before && existing.is_some() {
                        continue;
                    }
                    let blob = repo.blob(&content)?;
                    let path = existing.map(|(path, _)| path).unwrap_or_else(|| fanout_path(&hex));
                    tree = write_path(repo, Some(&current), &path, blob)?;
                }
                // A descendant of ours may still have dropped lines: fast-forward only when the
                // union is exactly theirs, so no local record is ever lost to a sync.
                if tree == their_tree.id() && repo.graph_descendant_of(theirs, local)? {
                    Merged::FastForward(theirs)
                } else {
                    let signature = notes_signature(repo)?;
                    let message = "tpa: merge records from another clone\n";
                    let merged = repo.commit(
                        None,
                        &signature,
                        &signature,
                        message,
                        &repo.find_tree(tree)?,
                        &[&local_commit, &their_commit],
                    )?;
                    Merged::Union(merged)
                }
            }
        };
        let new = match outcome {
            Merged::FastForward(oid) | Merged::Union(oid) => oid,
            Merged::UpToDate => unreachable!("returned above"),
        };
        let expected = local.unwrap_or(Oid::ZERO_SHA1);
        match repo.reference_matching(NOTES_REF, new, true, expected, "tpa: merge") {
            Ok(_) => return Ok(outcome),
            Err(e) if is_lost_race(&e) => back_off(attempt),
            Err(e) => return Err(e.into()),
        }
    }
    Err(NotesError::Contended)
}

/// Jittered, growing pause between lost races so that many writers spread out instead of
/// rebuilding the same commit in lockstep.
fn back_off(attempt: usize) {
    use rand_core::RngCore;
    let cap_micros = (200 * (attempt as u64 + 1)).min(20_000);
    let pause = rand_core::OsRng.next_u64() % cap_micros;
    std::thread::sleep(std::time::Duration::from_micros(pause));
}

fn is_lost_race(e: &git2::Error) -> bool {
    matches!(e.code(), ErrorCode::Modified | ErrorCode::Exists | ErrorCode::Locked)
}

fn notes_signature(repo: &Repository) -> Result<Signature<'static>, git2::Error> {
    // Who git would name as committer: git's own configuration, not libgit2's reading of it.
    let config = crate::gitconfig::GitConfig::of(repo).ok();
    let get = |key: &str| config.as_deref().and_then(|c| c.get_nonempty(key)).map(str::to_owned);
    let name = std::env::var("GIT_COMMITTER_NAME").ok().or_else(|| get("user.name"));
    let email = std::env::var("GIT_COMMITTER_EMAIL").ok().or_else(|| get("user.email"));
    Signature::now(name.as_deref().unwrap_or("tpa"), email.as_deref().unwrap_or("tpa@localhost"))
}

/// Two levels of git's fan-out: `ab/cd/ef…`. With one level, every append rewrites (and every
/// history step of `tpa verify` reads) a subtree that grows with the ledger. With two, the trees an
/// append touches stay at most 256 entries each up to millions of notes. git reads any fan-out, mixed included;
/// notes written earlier with one level stay where they are.
fn fanout_path(hex: &str) -> Vec<String> {
    vec![hex[..2].to_owned(), hex[2..4].to_owned(), hex[4..].to_owned()]
}

/// Finds the note for `hex` whatever fan-out the writer used (git notes uses none for few notes);
/// the shallowest, when there are several.
pub(crate) fn find_note(
    repo: &Repository,
    tree: &Tree,
    hex: &str,
) -> Result<Option<(Vec<String>, Oid)>, git2::Error> {
    Ok(notes_on(repo, tree, hex)?.into_iter().next())
}

/// The blobs of every note on `hex` in `tree`, shallowest first: git reads a note under any
/// two-digit fan-out, so one object can have several.
pub(crate) fn find_notes(repo: &Repository, tree: &Tree, hex: &str) -> Result<Vec<Oid>, git2::Error> {
    Ok(notes_on(repo, tree, hex)?.into_iter().map(|(_, blob)| blob).collect())
}

fn notes_on(repo: &Repository, tree: &Tree, hex: &str) -> Result<Vec<(Vec<String>, Oid)>, git2::Error> {
    let mut found = Vec::new();
    let mut path = Vec::new();
    let mut current = tree.clone();
    let mut rest = hex;
    loop {
        if let Some(entry) = current.get_name(rest)
            && entry.kind() == Some(ObjectType::Blob)
        {
            let mut at = path.clone();
            at.push(rest.to_owned());
            found.push((at, entry.id()));
        }
        if rest.len() <= 2 {
            return Ok(found);
        }
        let subtree = match current.get_name(&rest[..2]) {
            Some(entry) if entry.kind() == Some(ObjectType::Tree) => entry.id(),
            _ => return Ok(found),
        };
        path.push(rest[..2].to_owned());
        current = repo.find_tree(subtree)?;
        rest = &rest[2..];
    }
}

fn write_path(
    repo: &Repository,
    tree: Option<&Tree>,
    path: &[String],
    blob: Oid,
) -> Result<Oid, git2::Error> {
    let mut builder = repo.treebuilder(tree)?;
    let (name, rest) = path.split_first().expect("a note path is never empty");
    if rest.is_empty() {
        builder.insert(name, blob, FileMode::Blob.into())?;
    } else {
        let subtree = match tree.and_then(|t| t.get_name(name)) {
            Some(entry) if entry.kind() == Some(ObjectType::Tree) => Some(repo.find_tree(entry.id())?),
            _ => None,
        };
        let sub = write_path(repo, subtree.as_ref(), rest, blob)?;
        builder.insert(name, sub, FileMode::Tree.into())?;
    }
    builder.write()
}

/// Every note in a notes tree, whatever its fan-out.
pub fn list_notes(repo: &Repository, tree: &Tree) -> Result<Vec<NoteEntry>, git2::Error> {
    let mut out = Vec::new();
    collect_notes(repo, tree, String::new(), &mut out)?;
    Ok(out)
}

fn collect_notes(
    repo: &Repository,
    tree: &Tree,
    prefix: String,
    out: &mut Vec<NoteEntry>,
) -> Result<(), git2::Error> {
    for entry in tree.iter() {
        let Ok(name) = entry.name() else { continue };
        let full = format!("{prefix}{name}");
        match entry.kind() {
            Some(ObjectType::Tree) if full.len() < 40 && is_hex(name) => {
                collect_notes(repo, &repo.find_tree(entry.id())?, full, out)?;
            }
            Some(ObjectType::Blob) if is_hex(name) => {
                if let Ok(annotated) = Oid::from_str(&full)
                    && (full.len() == 40 || full.len() == 64)
                {
                    out.push(NoteEntry { annotated, blob: entry.id() });
                }
            }
            // git keeps non-note files in a notes tree as they are; so do we, but they are no records.
            _ => {}
        }
    }
    Ok(())
}

fn is_hex(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The notes that differ between two notes trees: for each note present in `new` whose blob is not
/// the one in `old`, its annotated object and blob. Unchanged subtrees are skipped by id, so one
/// append costs two tree comparisons whatever the size of the ledger.
pub fn changed_notes(
    repo: &Repository,
    old: Option<&Tree>,
    new: &Tree,
    prefix: &str,
    out: &mut Vec<NoteEntry>,
) -> Result<(), git2::Error> {
    // Both trees are sorted by name: walk them side by side instead of building a map, since
    // this runs once per notes commit over the ledger's whole history.
    let mut old_entries = old.map(|t| t.iter().peekable());
    for entry in new.iter() {
        let Ok(name) = entry.name() else { continue };
        if !is_hex(name) {
            continue;
        }
        let mut previous = None;
        if let Some(old_iter) = old_entries.as_mut() {
            while let Some(candidate) = old_iter.peek() {
                match candidate.name_bytes().cmp(name.as_bytes()) {
                    std::cmp::Ordering::Less => {
                        old_iter.next();
                    }
                    std::cmp::Ordering::Equal => {
                        previous = old_iter.next().map(|e| (e.id(), e.kind()));
                        break;
                    }
                    std::cmp::Ordering::Greater => break,
                }
            }
        }
        if previous.map(|(id, _)| id) == Some(entry.id()) {
            continue;
        }
        let full = format!("{prefix}{name}");
        match entry.kind() {
            Some(ObjectType::Tree) if full.len() < 40 => {
                let old_sub = match previous {
                    Some((id, Some(ObjectType::Tree))) => Some(repo.find_tree(id)?),
                    _ => None,
                };
                changed_notes(repo, old_sub.as_ref(), &repo.find_tree(entry.id())?, &full, out)?;
            }
            Some(ObjectType::Blob) => {
                if let Ok(annotated) = Oid::from_str(&full)
                    && (full.len() == 40 || full.len() == 64)
                {
                    out.push(NoteEntry { annotated, blob: entry.id() });
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Where a note sits in a notes tree: the object it annotates, and where its path is split into
/// directories (bit n set: a directory ends after n hex digits; `ab/cd/ef…` is bits 2 and 4, git's
/// flat layout 0). git reads any fan-out, so two notes on one object can coexist under two splits;
/// they are two notes, as for `tpa verify` before.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NoteKey {
    pub annotated: Oid,
    pub splits: u64,
}

/// A note at a given notes tip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Note {
    pub key: NoteKey,
    pub blob: Oid,
}

/// A directory of a notes tree: the hex digits of its path so far, and where the path was split.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Dir {
    pub prefix: String,
    pub splits: u64,
}

impl Dir {
    pub fn root() -> Self {
        Dir { prefix: String::new(), splits: 0 }
    }
}

/// What an entry of a notes tree is to tpa, by the same rules as [`list_notes`]: a directory on
/// the way to a note, a note, or something git keeps there that holds no records.
pub enum Entry {
    Dir(Dir, Oid),
    Note(Note),
    Other,
}

pub fn classify(dir: &Dir, entry: &git2::TreeEntry<'_>) -> Entry {
    classify_named(dir, entry.name_bytes(), entry.kind(), entry.id())
}

/// [`classify`] of an entry given by its parts (a tree read from its raw bytes, [`RawTree`]).
pub fn classify_named(dir: &Dir, name: &[u8], kind: Option<ObjectType>, id: Oid) -> Entry {
    // Hex digits are ASCII, so a name that passes is UTF-8 too.
    let Some(name) = std::str::from_utf8(name).ok().filter(|n| is_hex(n)) else { return Entry::Other };
    let full = format!("{}{name}", dir.prefix);
    match kind {
        Some(ObjectType::Tree) if full.len() < 40 => {
            let splits = dir.splits | 1 << full.len();
            Entry::Dir(Dir { prefix: full, splits }, id)
        }
        Some(ObjectType::Blob) if full.len() == 40 || full.len() == 64 => match Oid::from_str(&full) {
            Ok(annotated) => Entry::Note(Note { key: NoteKey { annotated, splits: dir.splits }, blob: id }),
            Err(_) => Entry::Other,
        },
        _ => Entry::Other,
    }
}

/// Every note under `tree` (the directory `dir` of a notes tree), and every directory met on the
/// way with its tree id.
pub fn list_under(
    repo: &Repository,
    tree: &Tree,
    dir: &Dir,
    notes: &mut Vec<Note>,
    dirs: &mut Vec<(Dir, Oid)>,
) -> Result<(), git2::Error> {
    for entry in tree.iter() {
        match classify(dir, &entry) {
            Entry::Dir(sub, id) => {
                list_under(repo, &repo.find_tree(id)?, &sub, notes, dirs)?;
                dirs.push((sub, id));
            }
            Entry::Note(note) => notes.push(note),
            Entry::Other => {}
        }
    }
    Ok(())
}

/// A tree object read as its bytes, for the full check's history walk (src/ledger/check.rs),
/// which reads every tree of the notes ref's past and compares most of their entries byte for
/// byte with the tree before: a tree libgit2 parses is an allocation per entry and a foreign call
/// per field, which made up most of the walk's own work. The object is held to its id by
/// [`read_checked`]; the entries are parsed by libgit2's rules (`git_tree__parse_raw`): what it
/// refuses is an error, and what it reads is read the same.
pub struct RawTree<'odb> {
    object: git2::OdbObject<'odb>,
    /// Where each entry ends in the object's bytes.
    ends: Vec<u32>,
}

/// One entry of a [`RawTree`]: `<octal mode> <name>\0<20-byte id>`. Object ids are SHA-1's:
/// the libgit2 tpa builds opens no SHA-256 repository.
pub struct RawEntry<'a> {
    pub bytes: &'a [u8],
    pub name: &'a [u8],
    mode: u16,
    pub id: Oid,
}

const RAW_ID_LEN: usize = 20;

impl<'odb> RawTree<'odb> {
    pub fn read(odb: &'odb git2::Odb<'_>, id: Oid) -> Result<Self, git2::Error> {
        let object = read_checked(odb, id, ObjectType::Tree)?;
        let malformed = || git2::Error::from_str(&format!("tree {id} is malformed"));
        let mut ends = Vec::new();
        let data = object.data();
        let mut at = 0;
        while at < data.len() {
            at += parse_raw_entry(&data[at..]).ok_or_else(malformed)?.bytes.len();
            ends.push(u32::try_from(at).map_err(|_| malformed())?);
        }
        Ok(RawTree { object, ends })
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The bytes of entry `index`, mode, name and id.
    pub fn bytes(&self, index: usize) -> &[u8] {
        let start = if index == 0 { 0 } else { self.ends[index - 1] as usize };
        &self.object.data()[start..self.ends[index] as usize]
    }

    pub fn entry(&self, index: usize) -> RawEntry<'_> {
        parse_raw_entry(self.bytes(index)).expect("parsed when read")
    }
}

/// Reads object `id`, of type `kind`, and holds its bytes to its id with SHA-1 (RustCrypto's, on
/// x86's SHA instructions where the CPU has them, in software elsewhere): for readers that run
/// with libgit2's own check off, which hashes with SHA-1DC, git's collision-detecting SHA-1,
/// several times slower (why the history walk does: src/ledger/check.rs).
pub fn read_checked<'odb>(
    odb: &'odb git2::Odb<'_>,
    id: Oid,
    kind: ObjectType,
) -> Result<git2::OdbObject<'odb>, git2::Error> {
    use sha1::Digest;
    let object = odb.read(id)?;
    if object.kind() != kind {
        return Err(git2::Error::from_str(&format!("object {id} is not a {kind}")));
    }
    let data = object.data();
    let mut hash = sha1::Sha1::new();
    hash.update(format!("{kind} {}\0", data.len()));
    hash.update(data);
    if hash.finalize().as_slice() != id.as_bytes() {
        return Err(git2::Error::from_str(&format!(
            "object {id}: its bytes do not hash to its id (a damaged or rewritten object)"
        )));
    }
    Ok(object)
}

/// Writes `bytes` as the loose object file of `id` (a `kind` object), as an in-place rewrite
/// would: the file another repository writes for an object of those bytes.
#[cfg(test)]
pub(crate) fn rewrite_in_place(repo: &Repository, id: Oid, kind: ObjectType, bytes: &[u8]) {
    let loose = |git_dir: &std::path::Path, id: Oid| {
        let hex = id.to_string();
        git_dir.join("objects").join(&hex[..2]).join(&hex[2..])
    };
    let other = tempfile::tempdir().unwrap();
    let other_repo = Repository::init_bare(other.path()).unwrap();
    let written = other_repo.odb().unwrap().write(kind, bytes).unwrap();
    let file = std::fs::read(loose(other_repo.path(), written)).unwrap();
    let path = loose(repo.path(), id);
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, file).unwrap();
}

/// The entry at the start of `data`.
fn parse_raw_entry(data: &[u8]) -> Option<RawEntry<'_>> {
    let space = data.iter().position(|&b| b == b' ')?;
    let mode = parse_raw_mode(&data[..space])?;
    let name_start = space + 1;
    let nul = name_start + data[name_start..].iter().position(|&b| b == 0)?;
    let name = &data[name_start..nul];
    if name.is_empty() || name.len() > usize::from(u16::MAX) {
        return None;
    }
    let end = nul + 1 + RAW_ID_LEN;
    let id = Oid::from_bytes(data.get(nul + 1..end)?).ok()?;
    Some(RawEntry { bytes: &data[..end], name, mode, id })
}

/// A tree entry's mode as libgit2 reads it (`parse_mode`, `git__strntol32` in base 8): a sign,
/// then at least one octal digit, up to the space, and a value in 0..=0xffff ("-0" is 0).
fn parse_raw_mode(text: &[u8]) -> Option<u16> {
    let (negative, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, text),
    };
    if digits.is_empty() {
        return None;
    }
    let mut mode: u32 = 0;
    for &digit in digits {
        if !(b'0'..=b'7').contains(&digit) {
            return None;
        }
        mode = mode * 8 + u32::from(digit - b'0');
        if mode > u32::from(u16::MAX) {
            return None;
        }
    }
    if negative && mode != 0 {
        return None;
    }
    u16::try_from(mode).ok()
}

impl RawEntry<'_> {
    /// The entry's type as libgit2 gives it (`git_tree_entry_type`): a gitlink is a commit, a
    /// directory a tree, anything else a blob.
    pub fn kind(&self) -> ObjectType {
        match self.mode & 0o170000 {
            0o160000 => ObjectType::Commit,
            0o040000 => ObjectType::Tree,
            _ => ObjectType::Blob,
        }
    }

    /// [`git_order`] of two raw entries.
    pub fn git_order(&self, other: &RawEntry<'_>) -> std::cmp::Ordering {
        order_key(self.name, Some(self.kind())).cmp(order_key(other.name, Some(other.kind())))
    }
}

/// git's order of tree entries: names compared as bytes, a directory's as if it ended with `/`.
pub fn git_order(a: &git2::TreeEntry<'_>, b: &git2::TreeEntry<'_>) -> std::cmp::Ordering {
    order_key(a.name_bytes(), a.kind()).cmp(order_key(b.name_bytes(), b.kind()))
}

/// What [`git_order`] compares of an entry.
fn order_key(name: &[u8], kind: Option<ObjectType>) -> impl Iterator<Item = &u8> {
    let suffix: &[u8] = if kind == Some(ObjectType::Tree) { b"/" } else { b"" };
    name.iter().chain(suffix)
}

/// A note whose blob differs between two notes trees: present in only one, or with two blobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoteChange {
    pub key: NoteKey,
    pub old: Option<Oid>,
    pub new: Option<Oid>,
}

impl NoteChange {
    /// The note as it is on the newer side; None when it was removed.
    pub fn new_note(&self) -> Option<Note> {
        Some(Note { key: self.key, blob: self.new? })
    }
}

/// Every note whose blob differs between the notes trees `old` and `new` (either may be absent).
/// Subtrees with the same id on both sides are skipped without being read, so the cost follows
/// the change, not the ledger. A path that is a directory on one side and a note on the other is
/// a removal and an addition.
pub fn diff_notes(
    repo: &Repository,
    old: Option<&Tree>,
    new: Option<&Tree>,
    dir: &Dir,
    out: &mut Vec<NoteChange>,
) -> Result<(), git2::Error> {
    let old_entries: Vec<_> = old.map(|t| t.iter().collect()).unwrap_or_default();
    let new_entries: Vec<_> = new.map(|t| t.iter().collect()).unwrap_or_default();
    let (mut i, mut j) = (0, 0);
    while i < old_entries.len() || j < new_entries.len() {
        let order = match (old_entries.get(i), new_entries.get(j)) {
            (Some(a), Some(b)) => git_order(a, b),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, _) => std::cmp::Ordering::Greater,
        };
        let (a, b) = match order {
            std::cmp::Ordering::Less => {
                i += 1;
                (Some(&old_entries[i - 1]), None)
            }
            std::cmp::Ordering::Greater => {
                j += 1;
                (None, Some(&new_entries[j - 1]))
            }
            std::cmp::Ordering::Equal => {
                i += 1;
                j += 1;
                if old_entries[i - 1].id() == new_entries[j - 1].id()
                    && old_entries[i - 1].kind() == new_entries[j - 1].kind()
                {
                    continue;
                }
                (Some(&old_entries[i - 1]), Some(&new_entries[j - 1]))
            }
        };
        let a = a.map(|e| classify(dir, e)).unwrap_or(Entry::Other);
        let b = b.map(|e| classify(dir, e)).unwrap_or(Entry::Other);
        match (a, b) {
            (Entry::Dir(sub, x), Entry::Dir(_, y)) => {
                diff_notes(repo, Some(&repo.find_tree(x)?), Some(&repo.find_tree(y)?), &sub, out)?;
            }
            (Entry::Note(x), Entry::Note(y)) if x.key == y.key => {
                out.push(NoteChange { key: x.key, old: Some(x.blob), new: Some(y.blob) });
            }
            (a, b) => {
                for (side, is_old) in [(a, true), (b, false)] {
                    match side {
                        Entry::Dir(sub, id) => {
                            let tree = repo.find_tree(id)?;
                            let (o, n) = if is_old { (Some(&tree), None) } else { (None, Some(&tree)) };
                            diff_notes(repo, o, n, &sub, out)?;
                        }
                        Entry::Note(note) => out.push(NoteChange {
                            key: note.key,
                            old: is_old.then_some(note.blob),
                            new: (!is_old).then_some(note.blob),
                        }),
                        Entry::Other => {}
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> (tempfile::TempDir, Repository) {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(dir.path()).unwrap();
        repo.config().unwrap().set_str("user.name", "t").unwrap();
        repo.config().unwrap().set_str("user.email", "t@example.com").unwrap();
        (dir, repo)
    }

    /// A raw tree gives each entry as libgit2's parsed tree does (name, type, id, git's order), for
    /// every mode git writes, and refuses what libgit2 refuses to parse.
    #[test]
    fn raw_trees_read_entries_as_libgit2_parses_them() {
        let (_dir, repo) = repo();
        let blob = repo.blob(b"x").unwrap();
        let empty = repo.treebuilder(None).unwrap().write().unwrap();
        let commit = Oid::from_str("0123456789abcdef0123456789abcdef01234567").unwrap();
        let mut builder = repo.treebuilder(None).unwrap();
        builder.insert("ab", empty, 0o040000).unwrap();
        builder.insert("ab.txt", blob, 0o100644).unwrap();
        builder.insert("abc", blob, 0o100755).unwrap();
        builder.insert("link", blob, 0o120000).unwrap();
        builder.insert("module", commit, 0o160000).unwrap();
        let id = builder.write().unwrap();
        let parsed = repo.find_tree(id).unwrap();
        let odb = repo.odb().unwrap();
        let raw = RawTree::read(&odb, id).unwrap();
        assert_eq!(raw.len(), parsed.len());
        for (index, entry) in parsed.iter().enumerate() {
            let r = raw.entry(index);
            assert_eq!((r.name, Some(r.kind()), r.id), (entry.name_bytes(), entry.kind(), entry.id()));
            if index > 0 {
                let before = parsed.get(index - 1).unwrap();
                assert_eq!(raw.entry(index - 1).git_order(&r), git_order(&before, &entry));
            }
        }
        // "ab/" sorts after "ab.txt": the directory's name is compared as if it ended with '/'.
        assert_eq!(raw.entry(0).name, b"ab.txt");
        assert!(RawTree::read(&odb, blob).is_err(), "a blob is no tree");

        let id_bytes = blob.as_bytes();
        let mut malformed: Vec<Vec<u8>> = Vec::new();
        for (mode, name) in [(&b"100648"[..], &b"a"[..]), (b"", b"a"), (b"100644", b"")] {
            let mut bytes = [mode, b" ", name, b"\0"].concat();
            bytes.extend_from_slice(id_bytes);
            malformed.push(bytes);
        }
        malformed.push([&b"100644 a\0"[..], &id_bytes[..19]].concat());
        malformed.push(b"100644 a".to_vec());
        // Modes libgit2 refuses: over 16 bits, negative, no digit after a sign, a leading blank.
        for mode in
            [&b"1100644"[..], b"200000", b"-1", b"+", b" 100644", b"\t100644", b"99999999999999999999999"]
        {
            malformed.push([mode, b" a\0", id_bytes].concat());
        }
        for bytes in malformed {
            let id = odb.write(ObjectType::Tree, &bytes).unwrap();
            let label = String::from_utf8_lossy(&bytes).into_owned();
            assert!(repo.find_tree(id).is_err(), "libgit2 parses {label:?}");
            assert!(RawTree::read(&odb, id).is_err(), "{label:?} read as a tree");
        }
        // Modes libgit2 reads, unusual as they are: a sign, leading zeros, "-0".
        for (mode, kind) in [
            (&b"+100644"[..], ObjectType::Blob),
            (b"+40000", ObjectType::Tree),
            (b"-0", ObjectType::Blob),
            (b"0000040000", ObjectType::Tree),
            (b"177777", ObjectType::Blob),
        ] {
            let bytes = [mode, b" a\0", id_bytes].concat();
            let id = odb.write(ObjectType::Tree, &bytes).unwrap();
            let label = String::from_utf8_lossy(mode).into_owned();
            let parsed = repo.find_tree(id).unwrap_or_else(|e| panic!("libgit2 refuses {label:?}: {e}"));
            let raw = RawTree::read(&odb, id).unwrap_or_else(|e| panic!("{label:?} refused: {e}"));
            let (entry, r) = (parsed.get(0).unwrap(), raw.entry(0));
            assert_eq!(
                (raw.len(), entry.kind(), entry.filemode_raw()),
                (1, Some(kind), i32::from(r.mode)),
                "{label:?}"
            );
            assert_eq!(r.kind(), kind, "{label:?}");
        }
    }

    /// A raw tree is held to its id: bytes that hash to another id are refused.
    #[test]
    fn raw_trees_and_checked_reads_refuse_bytes_that_are_not_their_ids() {
        let (dir, repo) = repo();
        let blob = repo.blob(b"x").unwrap();
        let mut builder = repo.treebuilder(None).unwrap();
        builder.insert("a", blob, 0o100644).unwrap();
        let first = builder.write().unwrap();
        builder.insert("b", blob, 0o100644).unwrap();
        let second = builder.write().unwrap();
        let odb = repo.odb().unwrap();
        assert!(read_checked(&odb, first, ObjectType::Tree).is_ok());
        assert!(read_checked(&odb, first, ObjectType::Blob).is_err(), "a tree is no blob");
        // The second tree's bytes under the first tree's id. Read through a new handle, since
        // libgit2 caches what the first one read.
        rewrite_in_place(&repo, first, ObjectType::Tree, odb.read(second).unwrap().data());
        let repo = Repository::open(dir.path()).unwrap();
        let odb = repo.odb().unwrap();
        let (unchecked, checked) = crate::ledger::check::as_the_walk_reads(|| {
            (odb.read(first).map(|o| o.data().len()), RawTree::read(&odb, first).err())
        });
        assert!(unchecked.is_ok(), "libgit2 without its check reads the rewritten object");
        let error = checked.expect("a rewritten tree is refused");
        assert!(error.message().contains("do not hash to its id"), "{error}");
    }

    #[test]
    fn appends_share_a_note_and_keep_order() {
        let (_dir, repo) = repo();
        let target = Oid::from_str("0123456789abcdef0123456789abcdef01234567").unwrap();
        append_line(&repo, target, "first").unwrap();
        let tip = append_line(&repo, target, "second").unwrap();
        let tree = repo.find_commit(tip).unwrap().tree().unwrap();
        let notes = list_notes(&repo, &tree).unwrap();
        assert_eq!(notes.len(), 1);
        assert_eq!(notes[0].annotated, target);
        assert_eq!(repo.find_blob(notes[0].blob).unwrap().content(), b"first\nsecond\n");
        let first = repo.find_tree(tree.get_name("01").expect("fan-out layout").id()).unwrap();
        assert!(first.get_name("23").is_some(), "two levels of fan-out");
        assert_eq!(repo.find_commit(tip).unwrap().parent_count(), 1);
    }

    #[test]
    fn a_prepared_line_is_on_the_ledger_only_once_published() {
        let (_dir, repo) = repo();
        let target = Oid::from_str("0123456789abcdef0123456789abcdef01234567").unwrap();
        let before = append_line(&repo, target, "first").unwrap();
        let prepared = prepare_line(&repo, target, "second").unwrap();
        assert_eq!(tip(&repo).unwrap(), Some(before), "preparing moves nothing");
        let after = publish(&repo, prepared).unwrap();
        assert_eq!(tip(&repo).unwrap(), Some(after));
        assert_eq!(repo.find_commit(after).unwrap().parent_id(0).unwrap(), before);
    }

    /// Another writer appends between the preparing and the publishing: the prepared line is built
    /// again on their tip, and neither line is lost.
    #[test]
    fn a_prepared_line_survives_an_append_made_meanwhile() {
        let (_dir, repo) = repo();
        let target = Oid::from_str("0123456789abcdef0123456789abcdef01234567").unwrap();
        let prepared = prepare_line(&repo, target, "mine").unwrap();
        let theirs = append_line(&repo, target, "theirs").unwrap();
        let tip = publish(&repo, prepared).unwrap();
        assert_eq!(repo.find_commit(tip).unwrap().parent_id(0).unwrap(), theirs);
        let tree = repo.find_commit(tip).unwrap().tree().unwrap();
        let notes = list_notes(&repo, &tree).unwrap();
        assert_eq!(repo.find_blob(notes[0].blob).unwrap().content(), b"theirs\nmine\n");
    }

    #[test]
    fn reads_and_extends_notes_written_without_fanout() {
        let (_dir, repo) = repo();
        let target = Oid::from_str("89abcdef0123456789abcdef0123456789abcdef").unwrap();
        let blob = repo.blob(b"by git notes\n").unwrap();
        let mut builder = repo.treebuilder(None).unwrap();
        builder.insert(target.to_string(), blob, FileMode::Blob.into()).unwrap();
        let tree = repo.find_tree(builder.write().unwrap()).unwrap();
        let sig = Signature::now("t", "t@example.com").unwrap();
        let commit = repo.commit(None, &sig, &sig, "notes", &tree, &[]).unwrap();
        repo.reference(NOTES_REF, commit, false, "test").unwrap();

        let tip = append_line(&repo, target, "by tpa").unwrap();
        let tree = repo.find_commit(tip).unwrap().tree().unwrap();
        let notes = list_notes(&repo, &tree).unwrap();
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert_eq!(repo.find_blob(notes[0].blob).unwrap().content(), b"by git notes\nby tpa\n");
    }

    #[test]
    fn concurrent_writers_from_an_empty_ledger_lose_nothing() {
        // The ref does not exist when they start: creating it must be compare-and-swap too.
        let (dir, _repo) = repo();
        let writers = 24;
        std::thread::scope(|scope| {
            for i in 0..writers {
                let path = dir.path().to_owned();
                scope.spawn(move || {
                    let repo = Repository::open(path).unwrap();
                    let target = Oid::from_str(&format!("{:040x}", i % 3 + 1)).unwrap();
                    append_line(&repo, target, &format!("writer {i}")).unwrap();
                });
            }
        });
        let repo = Repository::open(dir.path()).unwrap();
        let tree = repo.find_commit(tip(&repo).unwrap().unwrap()).unwrap().tree().unwrap();
        let lines: usize = list_notes(&repo, &tree)
            .unwrap()
            .iter()
            .map(|n| {
                repo.find_blob(n.blob)
                    .unwrap()
                    .content()
                    .split(|b| *b == b'\n')
                    .filter(|l| !l.is_empty())
                    .count()
            })
            .sum();
        assert_eq!(lines, writers);
    }

    #[test]
    fn changed_notes_sees_only_the_new_note() {
        let (_dir, repo) = repo();
        let a = Oid::from_str("aa00000000000000000000000000000000000000").unwrap();
        let b = Oid::from_str("bb00000000000000000000000000000000000000").unwrap();
        let first = append_line(&repo, a, "x").unwrap();
        let second = append_line(&repo, b, "y").unwrap();
        let old = repo.find_commit(first).unwrap().tree().unwrap();
        let new = repo.find_commit(second).unwrap().tree().unwrap();
        let mut changed = Vec::new();
        changed_notes(&repo, Some(&old), &new, "", &mut changed).unwrap();
        assert_eq!(changed.iter().map(|n| n.annotated).collect::<Vec<_>>(), vec![b]);
    }
}
