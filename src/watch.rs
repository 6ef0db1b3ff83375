//! Noticing changes to the files a config depends on: which folders to watch for them, and
//! the kernel's watches (inotify, through notify) on those folders.
//!
//! Folders, not files: editors save by rename, Kubernetes swaps a `..data` symlink,
//! cert-manager rewrites Secrets, and a watch on a file's inode goes deaf after the first of
//! those. The folder of every symlink on the way to a file is watched too, so repointing a link
//! is seen; and every folder above them, for the one change a watch on a folder cannot see: the
//! folder itself, or one above it, swapped by rename (a release directory, a deploy tool's
//! `mv new current`). A folder replaced is watched anew.
//! Each file is watched as well, its inode as found now (taken anew when that changes): a
//! write in place reaches the watch of the folder the writer wrote it through, which is not
//! the folder wsgate sees it in when the file is a bind mount of its own (a container's
//! `-v ./wsgate.toml:/etc/wsgate/wsgate.toml`) or a hard link.
//! In a folder that holds a file, only an event about a name on the way to one says "look":
//! the file's own, a link's on the way, a folder's on the way; a neighbour written nonstop in
//! the same folder (a log in `/etc`, anything in `/tmp`) neither delays a reload nor causes one.
//! What to do about a change is [`crate::reload`]'s business: a watch only says "look".

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};

use crate::config::WatchMode;
use crate::reload::POLL;
use crate::sync::lock;

/// What a folder is watched for.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Role {
    /// It holds one of the files, or a link on the way to one: a change to one of these names
    /// in it may be theirs (and one to a folder on the way down to another, as for
    /// [`Role::Above`]).
    Holds(Names),
    /// It is above such a folder: only a change to the path down to it matters (a folder on
    /// the way made, deleted or renamed), not the other files in it (`/tmp` is busy).
    Above,
    /// One of the files itself, by its real path: any change to it matters. Its folder's
    /// watch sees it come and go; this one, writes made through another path to it.
    File,
}

/// The names in a folder holding a file whose changes matter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Names {
    /// These: each file's own name (a file not there yet included), each link's on the way to
    /// one, and for a path still to be made, its first folder's (what gets made first).
    Only(BTreeSet<OsString>),
    /// Any: the names events carry cannot be trusted to be these (see [`NAMES_ARE_EXACT`]),
    /// or a name on the way could not be told.
    Any,
}

/// Whether the watcher's events name exactly the entry that changed, as it is spelt in the
/// folder: inotify's do (the kernel's own name for it, the new name of a rename in an event
/// of its own). Elsewhere any name in a folder holding a file matters: kqueue (the BSDs)
/// guesses which file a folder's change made from a listing, and the file systems of macOS
/// and Windows take a name spelt in other letter case for the same file.
const NAMES_ARE_EXACT: bool = cfg!(any(target_os = "linux", target_os = "android"));

/// A folder to watch: its identity when looked at, and its role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Want {
    id: Option<(u64, u64)>,
    role: Role,
}

impl Want {
    fn of(folder: &Path, role: Role) -> Want {
        Want {
            id: folder_id(folder),
            role,
        }
    }
}

/// Folders to watch.
pub(crate) type Wanted = BTreeMap<PathBuf, Want>;

/// What to watch for `files` now: the folders that hold them, every folder above those, and
/// each file that is there.
pub(crate) fn wanted(files: &[PathBuf]) -> Wanted {
    let holding = wanted_folders(files);
    let mut wanted = Wanted::new();
    // One per file, by its real path and its inode: the kernel keeps one watch per inode,
    // and unwatching either of two names for it (a symlink, a hard link, two bind mounts of
    // one file) would end the other's too.
    let mut inodes = BTreeSet::new();
    for file in files
        .iter()
        .filter_map(|file| std::fs::canonicalize(file).ok())
    {
        let want = Want::of(&file, Role::File);
        if want.id.is_some_and(|id| inodes.insert(id)) {
            wanted.insert(file, want);
        }
    }
    for above in holding.keys().flat_map(|folder| folder.ancestors().skip(1)) {
        (wanted.entry(above.to_path_buf())).or_insert_with(|| Want::of(above, Role::Above));
    }
    // A folder that holds a file and is above another holds it: its names matter, and so
    // does the folder on the way down (as every folder on the way does, wherever it is seen).
    for (folder, names) in holding {
        let want = Want::of(&folder, Role::Holds(names));
        wanted.insert(folder, want);
    }
    wanted
}

/// "Look at the files again", set by the watcher's events: any number of them since the
/// last look is one.
pub(crate) type Events = tokio::sync::watch::Receiver<()>;

/// Which events say "look", from the wanted folders: shared with the watcher's callback.
#[derive(Debug, Default)]
struct Interest {
    /// Paths a change to which (written, made, deleted, renamed to or from) matters, in
    /// whichever watched folder it is seen: the names that matter in each folder holding a
    /// file, every such folder, and every folder between it and the root.
    paths: BTreeSet<PathBuf>,
    /// Folders holding a file any change in which matters ([`Names::Any`]).
    any_name: BTreeSet<PathBuf>,
}

impl Interest {
    fn of(wanted: &Wanted) -> Interest {
        let mut interest = Interest::default();
        for (folder, want) in wanted {
            let Role::Holds(names) = &want.role else {
                continue;
            };
            match names {
                Names::Only(names) => {
                    (interest.paths).extend(names.iter().map(|name| folder.join(name)))
                }
                Names::Any => {
                    interest.any_name.insert(folder.clone());
                }
            }
            (interest.paths).extend(
                (folder.ancestors())
                    .filter(|path| path.parent().is_some())
                    .map(Path::to_path_buf),
            );
        }
        interest
    }

    /// Whether an event about `paths` may be a change to the files (one about no path, such
    /// as a rescan, may be anything). A rename seen whole names both sides, and each side
    /// alone in an event of its own: either way the side that is a file's name is seen.
    fn matters(&self, paths: &[PathBuf]) -> bool {
        paths.is_empty()
            || paths.iter().any(|path| {
                self.paths.contains(path)
                    || path
                        .parent()
                        .is_some_and(|folder| self.any_name.contains(folder))
            })
    }

    /// Whether `self` takes events that `before` dropped in a folder `watched`: what changed
    /// there until now went unseen.
    fn news(&self, before: &Interest, watched: impl Fn(&Path) -> bool) -> bool {
        let dropped = |path: &&PathBuf| !before.matters(std::slice::from_ref(*path));
        let newly_named = (self.paths.difference(&before.paths)).filter(dropped);
        let newly_any = self.any_name.difference(&before.any_name);
        (newly_named.filter_map(|path| path.parent()))
            .chain(newly_any.map(PathBuf::as_path))
            .any(watched)
    }
}

type MakeWatcher = Box<dyn FnMut() -> notify::Result<RecommendedWatcher> + Send + Sync>;

/// The watches on the wanted folders, and what became of them.
pub(crate) struct Watches {
    watcher: Option<RecommendedWatcher>,
    make_watcher: MakeWatcher,
    /// Watched folders and the identity each had when its watch was taken.
    watched: BTreeMap<PathBuf, Option<(u64, u64)>>,
    /// What the watcher's callback reacts to, from the last refresh.
    interest: Arc<Mutex<Interest>>,
    /// Paths reported deleted or renamed since the last refresh (filled by the watcher).
    lost: Arc<Mutex<BTreeSet<PathBuf>>>,
    /// A folder holding a file could not be watched (or there is no watcher): poll until it
    /// can.
    degraded: bool,
    /// Folders whose watch failed, already reported (as [`reported_as`] names them).
    unwatchable: BTreeSet<PathBuf>,
    /// Files whose own watch failed, already reported (as [`file_reported_as`] names them).
    unwatchable_files: BTreeSet<PathBuf>,
    /// Making the watcher failed, and that was reported: its return is news too.
    no_watcher_reported: bool,
}

impl Watches {
    /// Watches that mark `events` changed for every change in a watched folder that may be a
    /// change to the files (and for a watch error: events may have been lost with it). A
    /// mark, not a queue: a burst while a reload reads is one "look again", however long.
    /// Nothing is watched before [`Self::refresh`].
    pub(crate) fn new(events: tokio::sync::watch::Sender<()>) -> Watches {
        let lost = Arc::new(Mutex::new(BTreeSet::new()));
        let interest = Arc::new(Mutex::new(Interest::default()));
        let on_event = {
            let (lost, interest) = (lost.clone(), interest.clone());
            move |event: notify::Result<notify::Event>| {
                match event {
                    // Our own reads of the files show up as access events: reacting would
                    // loop. A writer closing a file it wrote is news: its last write is done.
                    Ok(e)
                        if matches!(e.kind, EventKind::Access(a)
                            if a != AccessKind::Close(AccessMode::Write)) =>
                    {
                        return
                    }
                    Ok(e) if !lock(&interest).matters(&e.paths) => return,
                    // A watched folder deleted or renamed takes its watch with it (the watch
                    // follows the inode): remember the paths, so the next refresh watches anew.
                    Ok(e)
                        if matches!(
                            e.kind,
                            EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))
                        ) =>
                    {
                        lock(&lost).extend(e.paths);
                    }
                    Ok(_) => {}
                    // Events may have been lost with it (a queue overflow, say): look anyway.
                    Err(e) => {
                        tracing::warn!(error = %e, "file watch error; checking the config files")
                    }
                }
                events.send_replace(());
            }
        };
        let make_watcher = move || notify::recommended_watcher(on_event.clone());
        Watches::with(Box::new(make_watcher), lost, interest)
    }

    fn with(
        make_watcher: MakeWatcher,
        lost: Arc<Mutex<BTreeSet<PathBuf>>>,
        interest: Arc<Mutex<Interest>>,
    ) -> Watches {
        Watches {
            // Made when events are wanted (not in poll mode, which takes no inotify instance).
            watcher: None,
            make_watcher,
            watched: BTreeMap::new(),
            interest,
            lost,
            degraded: false,
            unwatchable: BTreeSet::new(),
            unwatchable_files: BTreeSet::new(),
            no_watcher_reported: false,
        }
    }

    /// Whether the files must be polled for: a folder holding one is not watched (or there is
    /// no watcher, or none is wanted).
    pub(crate) fn degraded(&self) -> bool {
        self.degraded
    }

    /// Watches the `wanted` folders (and stops watching the rest); true if a folder is watched
    /// now that was not before, or is watched anew because it was replaced (deleted and made
    /// again, or swapped by rename), or a name in a folder already watched matters now that
    /// did not (a file the config newly names, a folder already watched as one on the way now
    /// holding a file): events about it were dropped until now. `None` (the lookup failed)
    /// changes nothing.
    ///
    /// A folder that does not exist yet (a Secret mounted later, a path still to be created)
    /// is covered by watching its nearest existing ancestor, and retried on every refresh, so
    /// its creation is noticed and it is watched from then on.
    pub(crate) fn refresh(&mut self, wanted: Option<Wanted>, mode: WatchMode) -> bool {
        let Some(wanted) = wanted else {
            return false;
        };
        let lost = std::mem::take(&mut *lock(&self.lost));
        if !self.ensure_watcher(mode) {
            return false;
        }
        let interest = Interest::of(&wanted);
        // In a folder watched already, so no new watch says so.
        let news = interest.news(&lock(&self.interest), |folder| {
            self.watched.contains_key(folder)
        });
        *lock(&self.interest) = interest;
        let Some(added) = self.watch_only(&wanted, &lost) else {
            return false;
        };
        self.say_watched_again();
        added || news
    }

    /// Watches the `wanted` folders and stops watching the rest; a folder replaced, or at or
    /// below a path reported `lost` (deleted or renamed), is watched anew. Whether a folder is
    /// watched now that was not; `None` without a watcher.
    ///
    /// Every watch to end is ended before any is taken: the kernel keeps one watch per inode,
    /// so a path taken on an inode another path still held would share its watch, and that
    /// path's unwatch after it would end both. And folders before files: a file's own watch
    /// only adds to its folder's, and must not take the last one the inotify limit allows.
    fn watch_only(&mut self, wanted: &Wanted, lost: &BTreeSet<PathBuf>) -> Option<bool> {
        let watcher = self.watcher.as_mut()?;
        // notify ends the watches below a path deleted or renamed away along with its own: a
        // folder moved away and back (its inode the same) ends them too.
        let still = |path: &PathBuf, known: &Option<(u64, u64)>| {
            let want = wanted.get(path);
            want.is_some_and(|want| want.id == *known)
                && !lost.iter().any(|gone| path.starts_with(gone))
        };
        for (path, known) in &self.watched {
            if !still(path, known) {
                // Gone, or replaced: the old watch follows the old inode (or died with it).
                let _ = watcher.unwatch(path);
            }
        }
        self.watched.retain(|path, known| still(path, known));
        let mut added = false;
        self.degraded = false;
        let (files, folders): (Vec<_>, Vec<_>) =
            wanted.iter().partition(|(_, want)| want.role == Role::File);
        for (folder, want) in folders.into_iter().chain(files) {
            if self.watched.contains_key(folder) {
                continue;
            }
            // Only recorded when the watch took: a failed one is tried again at every refresh.
            match watcher.watch(folder, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.watched.insert(folder.clone(), want.id);
                    // Not a file's: whatever made it be taken anew (the file replaced,
                    // made, or its folder moved) is an event its folder's watch saw, and
                    // counting it would have a writer replacing the file nonstop make look
                    // after look, past the debounce.
                    added |= want.role != Role::File;
                }
                // A folder above that cannot be watched (not readable) costs only the swap
                // of a folder on the way being seen late, by the recheck: no polling for it.
                Err(_) if want.role == Role::Above => {}
                // A file's own watch only adds to its folder's, which sees it come and go:
                // without it, a write through another path is seen by the recheck.
                Err(e) if want.role == Role::File => {
                    let vanished = matches!(e.kind, notify::ErrorKind::PathNotFound);
                    if !vanished && self.unwatchable_files.insert(file_reported_as(folder)) {
                        let error = words(&e);
                        tracing::warn!(file = %folder.display(), %error, "cannot watch file; a write to it through another path (a bind mount of the file alone, a hard link) is seen at the next reload.recheck");
                    }
                }
                Err(e) => {
                    self.degraded = true;
                    // Gone since it was looked up (a Kubernetes volume's folder replaced by
                    // the next update): nothing wrong, the poll finds what replaced it.
                    let vanished = matches!(e.kind, notify::ErrorKind::PathNotFound);
                    // Said once per folder, not on every poll while it lasts.
                    if !vanished && self.unwatchable.insert(reported_as(folder)) {
                        let error = words(&e);
                        tracing::warn!(folder = %folder.display(), %error, "cannot watch folder; checking it every {} s instead", POLL.as_secs_f64());
                    }
                }
            }
        }
        Some(added)
    }

    /// Says which folders reported unwatchable are watched now, so the warning is not the
    /// last word on them.
    fn say_watched_again(&mut self) {
        let watched = &self.watched;
        self.unwatchable.retain(|reported| {
            let back = watched
                .keys()
                .find(|folder| reported_as(folder) == *reported);
            if let Some(folder) = back {
                tracing::info!(folder = %folder.display(), "watching folder for changes again");
            }
            back.is_none()
        });
        self.unwatchable_files.retain(|reported| {
            let back = watched
                .keys()
                .find(|file| file_reported_as(file) == *reported);
            if let Some(file) = back {
                tracing::info!(file = %file.display(), "watching file for changes again");
            }
            back.is_none()
        });
    }

    /// Makes the watcher if `mode` wants one and there is none; whether there is one now
    /// (else the files are polled for).
    fn ensure_watcher(&mut self, mode: WatchMode) -> bool {
        if mode == WatchMode::Poll {
            // Events would only duplicate the polling (or never come: that is why it is on);
            // dropping the watcher gives back its inotify instance.
            self.watcher = None;
            self.watched.clear();
            self.degraded = true;
            return false;
        }
        if self.watcher.is_none() {
            match (self.make_watcher)() {
                Ok(watcher) => {
                    if std::mem::take(&mut self.no_watcher_reported) {
                        tracing::info!(
                            "file events work again: watching the config's folders for changes"
                        );
                    }
                    self.watcher = Some(watcher);
                }
                // Said once: later refreshes try again quietly, polling meanwhile. (Not
                // keyed on `degraded`: poll mode, left for events, leaves that set, and the
                // first failure after it is news.)
                Err(e) if !self.no_watcher_reported => {
                    let (error, hint) = (words(&e), limit_hint(&e));
                    tracing::warn!(%error, "cannot watch the config for changes{hint}; checking it every {} s instead", POLL.as_secs_f64());
                    self.no_watcher_reported = true;
                }
                Err(_) => {}
            }
        }
        if self.watcher.is_none() {
            self.degraded = true;
        }
        self.watcher.is_some()
    }
}

/// A notify error in words: its own print adds the paths as a debug list.
fn words(e: &notify::Error) -> String {
    match &e.kind {
        notify::ErrorKind::Io(io) => io.to_string(),
        _ => e.to_string(),
    }
}

/// Which limit an inotify failure ran into, for the operator to raise. "Too many open files"
/// from inotify_init is either this process's open-files limit or the kernel's per-user count
/// of inotify instances: if a file still opens, it is the latter.
fn limit_hint(e: &notify::Error) -> &'static str {
    match &e.kind {
        notify::ErrorKind::Io(io) if io.raw_os_error() == Some(libc::EMFILE) => {
            match std::fs::File::open("/dev/null") {
                Err(open) if open.raw_os_error() == Some(libc::EMFILE) => {
                    "; wsgate is out of open files (ulimit -n)"
                }
                _ => "; the per-user limit of inotify instances (sysctl fs.inotify.max_user_instances) is reached",
            }
        }
        notify::ErrorKind::MaxFilesWatch => {
            "; the per-user limit of inotify watches (sysctl fs.inotify.max_user_watches) is reached"
        }
        _ => "",
    }
}

/// Says which of `files` is a mount point of its own (a Kubernetes `subPath` mount, a
/// container's bind mount of one file), once for each: such a file is the inode it was
/// mounted with for the life of the mount, so a Kubernetes update (a `..data` swap) never
/// reaches it, nor does a rename over its source (an editor's save, a deploy tool's), and no
/// watch or poll could see them; only a write in place to that inode does. Asked at start and
/// whenever the files are looked up to be watched, so a file a reload names is looked at too.
pub(crate) fn say_own_mounts(files: &[PathBuf]) {
    static SAID: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());
    let Ok(table) = std::fs::read("/proc/self/mountinfo") else {
        return;
    };
    for file in own_mounts(files, &mount_points(&table)) {
        if !lock(&SAID).insert(file.clone()) {
            continue;
        }
        tracing::warn!(
            file = %file.display(),
            "file is a mount of its own (a Kubernetes subPath mount, or a bind mount of one file): \
             changes reach wsgate only when written in place to it; a ConfigMap or Secret update \
             never does, nor a rename over its source; mount the folder instead"
        );
    }
}

/// Those of `files` at one of the `mounts`, by the path named or its real path; each once.
fn own_mounts(files: &[PathBuf], mounts: &BTreeSet<PathBuf>) -> BTreeSet<PathBuf> {
    files
        .iter()
        .filter(|file| {
            let real = std::fs::canonicalize(file).ok();
            mounts.contains(&absolute(file)) || real.is_some_and(|real| mounts.contains(&real))
        })
        .cloned()
        .collect()
}

/// The mount points in a `/proc/self/mountinfo` table: each line's fifth field, with the
/// kernel's octal escapes (`\040` for a space, `\011`, `\012`, `\134`) undone. Bytes, not
/// text: a path is any bytes but NUL, and one mount elsewhere whose path is no UTF-8 must not
/// hide the rest.
fn mount_points(table: &[u8]) -> BTreeSet<PathBuf> {
    (table.split(|&b| b == b'\n'))
        .filter_map(|line| line.split(|&b| b == b' ').nth(4))
        .map(|field| path_of(unescaped(field)))
        .collect()
}

#[cfg(unix)]
fn path_of(bytes: Vec<u8>) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(OsString::from_vec(bytes))
}

#[cfg(not(unix))]
fn path_of(bytes: Vec<u8>) -> PathBuf {
    PathBuf::from(String::from_utf8_lossy(&bytes).into_owned())
}

/// A mountinfo field with its `\NNN` octal escapes undone (a malformed one kept as it is).
fn unescaped(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut rest = field;
    while let Some(at) = rest.iter().position(|&b| b == b'\\') {
        out.extend_from_slice(&rest[..at]);
        let code = (rest.get(at + 1..at + 4))
            .and_then(|digits| std::str::from_utf8(digits).ok())
            .and_then(|digits| u8::from_str_radix(digits, 8).ok());
        match code {
            Some(byte) => {
                out.push(byte);
                rest = &rest[at + 4..];
            }
            None => {
                out.push(b'\\');
                rest = &rest[at + 1..];
            }
        }
    }
    out.extend_from_slice(rest);
    out
}

/// A folder's (or file's) identity: one deleted and made again, or swapped by rename, is a
/// new one at the same path, and needs a new watch.
#[cfg(unix)]
fn folder_id(folder: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(folder).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn folder_id(folder: &Path) -> Option<(u64, u64)> {
    folder.is_dir().then_some((0, 0))
}

/// The folders to watch for `files`, each with the names in it that matter: the folder of
/// each file, and of every symlink met on the way to it (the file itself, a folder above it,
/// or a link its target goes through), so repointing any of them is seen (`..data` in a
/// Kubernetes volume, a `current -> releases/N` folder), with the file's or the link's name.
/// A folder that does not exist is replaced by its nearest existing ancestor, with the name
/// of the first folder still to be made (so its making is seen).
///
/// Each folder is named by its real path: one folder watched under two names would have one
/// name's unwatch end the other's watch (and the watcher names what it sees under the path
/// it watches).
fn wanted_folders(files: &[PathBuf]) -> BTreeMap<PathBuf, Names> {
    let paths = files.iter().flat_map(|file| {
        let mut paths = paths_through_links(&absolute(file));
        // The folder the file really sits in, however the links lead there.
        paths.extend(std::fs::canonicalize(file).ok());
        paths
    });
    let mut folders = BTreeMap::new();
    for path in paths {
        let Some(folder) = path.ancestors().skip(1).find(|dir| dir.is_dir()) else {
            continue;
        };
        // Under the folder as the kernel resolves it (`link/..` is the link target's parent).
        let name = match path
            .strip_prefix(folder)
            .map(|rest| rest.components().next())
        {
            Ok(Some(Component::Normal(name))) => Some(name.to_os_string()),
            _ => None,
        };
        let real = std::fs::canonicalize(folder).unwrap_or_else(|_| folder.to_path_buf());
        let names = (folders.entry(real)).or_insert_with(|| Names::Only(BTreeSet::new()));
        match (names, name) {
            (Names::Only(names), Some(name)) if NAMES_ARE_EXACT => {
                names.insert(name);
            }
            (names, _) => *names = Names::Any,
        }
    }
    folders
}

/// `path`, and each symlink on it (the path itself or a folder above it) with, for every such
/// link, the path it leads to (followed in turn, at most [`MAX_LINKS`] links: a cycle ends).
fn paths_through_links(path: &Path) -> Vec<PathBuf> {
    let mut found = vec![path.to_path_buf()];
    let mut link_paths: Vec<PathBuf> = Vec::new();
    let (mut next, mut links) = (0, 0);
    while next < found.len() && links < MAX_LINKS {
        let current = found[next].clone();
        next += 1;
        for link in current.ancestors().filter(|a| a.is_symlink()) {
            let (Some(folder), Ok(target)) = (link.parent(), std::fs::read_link(link)) else {
                continue;
            };
            links += 1;
            let mut leads_to = folder.join(target);
            // Not `join("")`: a trailing '/' would make the next link look like a folder.
            match current.strip_prefix(link) {
                Ok(rest) if !rest.as_os_str().is_empty() => leads_to.push(rest),
                _ => {}
            }
            if !found.contains(&leads_to) {
                found.push(leads_to);
            }
            // The link itself is watched through its folder, which [`wanted_folders`] takes
            // from each path returned; it is not followed again (its target is, above).
            if !link_paths.iter().any(|l| l == link) {
                link_paths.push(link.to_path_buf());
            }
        }
    }
    found.extend(link_paths);
    found
}

/// Links followed per file, as the kernel's own limit on a path.
const MAX_LINKS: usize = 40;

/// `path` made absolute, a relative one against the folder wsgate was started in as the shell
/// that started it named that folder (`$PWD`, `/srv/app/current`, a link to the release in
/// force) where `$PWD` is that folder, and else as the kernel names it (the link's target,
/// `/srv/app/releases/41`): watched through the link, a deploy flipping it to the next
/// release is followed; through the target, it never would be.
pub(crate) fn absolute(path: &Path) -> PathBuf {
    let named = (path.is_relative())
        .then(started_in)
        .flatten()
        .map(|folder| folder.join(path));
    let path = named.as_deref().unwrap_or(path);
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// `$PWD`, if it is an absolute path to the current folder (a shell keeps it so; a program
/// that changed folders without updating it leaves a stale one, not used).
#[cfg(unix)]
fn started_in() -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let pwd = PathBuf::from(std::env::var_os("PWD")?);
    let (named, current) = (std::fs::metadata(&pwd).ok()?, std::fs::metadata(".").ok()?);
    let same = named.dev() == current.dev() && named.ino() == current.ino();
    (pwd.is_absolute() && same).then_some(pwd)
}

#[cfg(not(unix))]
fn started_in() -> Option<PathBuf> {
    None
}

/// How a folder whose watch failed is remembered as reported: a Kubernetes volume's
/// timestamped folder (`..2026_12_07_05_00_00.123`) as its volume's, since every update of
/// the volume brings a new one, which fails alike: said once, not at every update (nor kept
/// once per update for the life of the process).
fn reported_as(folder: &Path) -> PathBuf {
    let name = folder.file_name().and_then(|name| name.to_str());
    // The kubelet's names: `..` and the date (`..data`, the link to it, is no folder here).
    let timestamped = |name: &str| {
        (name.strip_prefix("..")).is_some_and(|date| date.starts_with(|c: char| c.is_ascii_digit()))
    };
    match (name, folder.parent()) {
        (Some(name), Some(volume)) if timestamped(name) => volume.join("..*"),
        _ => folder.to_path_buf(),
    }
}

/// [`reported_as`] for a file: its folder's report, its own name.
fn file_reported_as(file: &Path) -> PathBuf {
    match (file.parent(), file.file_name()) {
        (Some(folder), Some(name)) => reported_as(folder).join(name),
        _ => file.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// The folders watched for `file` under `root`, relative to it.
    fn watched(root: &Path, file: &str) -> BTreeSet<String> {
        let real = std::fs::canonicalize(root).unwrap();
        wanted_folders(&[root.join(file)])
            .keys()
            .map(|f| f.strip_prefix(&real).unwrap().display().to_string())
            .collect()
    }

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    /// A file that is a mount point of its own is told from one in a mounted folder, by the
    /// kernel's table of mounts, whose paths are bytes with a few escapes.
    #[test]
    fn a_file_mounted_on_its_own_is_told_from_one_in_a_mounted_folder() {
        let table = b"27 1 254:0 / / rw - ext4 /dev/vda rw\n\
            31 27 0:5 /pods/vol/..2026_12_07/wsgate.toml /etc/wsgate/wsgate.toml ro - ext4 /dev/vda rw\n\
            32 27 0:6 / /etc/wsgate/certs ro - tmpfs tmpfs rw\n\
            33 27 0:7 /x /etc/my\\040app/a\\134b.toml ro - ext4 /dev/vda rw\n";
        let mounts = mount_points(table);
        assert!(mounts.contains(Path::new("/etc/my app/a\\b.toml")));
        let files = [
            PathBuf::from("/etc/wsgate/wsgate.toml"),
            PathBuf::from("/etc/wsgate/certs/tls.crt"),
            PathBuf::from("/etc/my app/a\\b.toml"),
        ];
        let own = own_mounts(&files, &mounts);
        assert_eq!(own, BTreeSet::from([files[0].clone(), files[2].clone()]));
        assert_eq!(
            unescaped(b"a\\04b\\"),
            b"a\\04b\\",
            "a malformed escape is kept"
        );
        // A path elsewhere that is no UTF-8 hides nothing.
        let odd = [
            &b"40 27 0:9 / /mnt/bad\xff rw - ext4 /dev/vda rw\n"[..],
            table,
        ]
        .concat();
        assert_eq!(own_mounts(&files, &mount_points(&odd)).len(), 2);
    }

    /// Each file that is there is watched itself, once, by its real path (however many names
    /// lead to it, links of either kind); one still to come only through its folder.

    #[test]
    fn each_file_there_is_watched_itself_by_its_real_path() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::write(root.join("tls.pem"), "x").unwrap();
        symlink(root.join("tls.pem"), root.join("key.pem")).unwrap();
        std::fs::hard_link(root.join("tls.pem"), root.join("hard.pem")).unwrap();
        let files = ["tls.pem", "key.pem", "hard.pem", "missing.pem"].map(|f| root.join(f));
        let files: Vec<PathBuf> = (wanted(&files).into_iter())
            .filter(|(_, want)| want.role == Role::File)
            .map(|(file, _)| file)
            .collect();
        assert_eq!(files, [root.join("tls.pem")]);
    }

    /// The inodes some inotify instance of this process watches, from /proc (`ino:` is hex).
    #[cfg(target_os = "linux")]
    fn inodes_watched() -> BTreeSet<u64> {
        let fds = std::fs::read_dir("/proc/self/fd").unwrap().flatten();
        let inotify = fds.filter(|fd| {
            let target = std::fs::read_link(fd.path()).unwrap_or_default();
            target.to_string_lossy() == "anon_inode:inotify"
        });
        let info = inotify.filter_map(|fd| {
            std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.file_name().to_str()?)).ok()
        });
        (info.collect::<Vec<_>>().iter())
            .flat_map(|info| {
                info.split_whitespace()
                    .filter_map(|w| w.strip_prefix("ino:"))
            })
            .filter_map(|hex| u64::from_str_radix(hex, 16).ok())
            .collect()
    }

    /// One file's path moved onto the inode another's watch held (a hard link made over it),
    /// and the other's replaced, in one refresh: both inodes are watched after it. (Ended in
    /// the wrong order, the second path's unwatch would end the watch the first just shared.)
    #[cfg(target_os = "linux")]
    #[test]
    fn a_path_moved_onto_an_inode_another_path_held_keeps_its_watch() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let (one, two) = (root.join("cert-1.pem"), root.join("cert-2.pem"));
        std::fs::write(&one, "1").unwrap();
        std::fs::write(&two, "2").unwrap();
        let mut state = quiet_watch_state();
        state.refresh(Some(wanted(&[one.clone(), two.clone()])), WatchMode::Events);
        // `ln -f cert-2.pem cert-1.pem; mv new cert-2.pem`.
        std::fs::remove_file(&one).unwrap();
        std::fs::hard_link(&two, &one).unwrap();
        std::fs::write(root.join("new"), "3").unwrap();
        std::fs::rename(root.join("new"), &two).unwrap();
        state.refresh(Some(wanted(&[one.clone(), two.clone()])), WatchMode::Events);
        let watched = inodes_watched();
        for file in [&one, &two] {
            let inode = std::fs::metadata(file).unwrap().ino();
            assert!(watched.contains(&inode), "{} not watched", file.display());
        }
    }

    #[test]
    fn every_folder_a_chain_of_links_passes_through_is_watched() {
        // certbot: live/cert.pem -> ../archive/v3/cert.pem, and a config naming it through
        // one more link of its own.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for folder in ["etc", "live", "archive/v3"] {
            std::fs::create_dir_all(root.join(folder)).unwrap();
        }
        std::fs::write(root.join("archive/v3/cert.pem"), "x").unwrap();
        symlink("../archive/v3/cert.pem", root.join("live/cert.pem")).unwrap();
        symlink("../live/cert.pem", root.join("etc/tls.crt")).unwrap();
        assert_eq!(
            watched(root, "etc/tls.crt"),
            set(&["etc", "live", "archive/v3"])
        );
    }

    #[test]
    fn a_linked_folder_is_watched_where_the_link_is_and_where_it_leads() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("releases/7")).unwrap();
        std::fs::write(root.join("releases/7/wsgate.toml"), "x").unwrap();
        symlink("releases/7", root.join("current")).unwrap();
        assert_eq!(
            watched(root, "current/wsgate.toml"),
            set(&["", "releases/7"])
        );
    }

    #[test]
    fn poll_mode_holds_no_watch_and_events_mode_takes_them_again() {
        let dir = tempfile::tempdir().unwrap();
        let wanted = holding(dir.path());
        let mut state = quiet_watch_state();
        assert!(state.refresh(Some(wanted.clone()), WatchMode::Events));
        assert!(state.watcher.is_some() && !state.degraded && state.watched.len() == 1);
        assert!(!state.refresh(Some(wanted.clone()), WatchMode::Poll));
        assert!(state.watcher.is_none() && state.degraded && state.watched.is_empty());
        assert!(state.refresh(Some(wanted), WatchMode::Events));
        assert!(state.watcher.is_some() && !state.degraded && state.watched.len() == 1);
    }

    /// Back to events from poll mode with no watcher to be had (inotify instances used up,
    /// the usual reason poll mode was on): said, as at start-up, not left to the line that
    /// announces events.
    #[test]
    fn events_mode_without_a_watcher_after_poll_mode_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let wanted = holding(dir.path());
        let no_watcher = || Err(notify::Error::generic("no inotify instance left"));
        let mut state = Watches::with(Box::new(no_watcher), Arc::default(), Arc::default());
        assert!(!state.refresh(Some(wanted.clone()), WatchMode::Poll));
        assert!(!state.no_watcher_reported);
        assert!(!state.refresh(Some(wanted.clone()), WatchMode::Events));
        assert!(state.no_watcher_reported && state.degraded);
        // Said once: the next refresh tries again quietly.
        assert!(!state.refresh(Some(wanted), WatchMode::Events));
        assert!(state.no_watcher_reported);
    }

    /// A folder watched as one on the way that comes to hold a file (a certificate named in
    /// the config's own folder's parent) is news: its files' events were dropped until now.
    #[test]
    fn a_watched_folder_that_comes_to_hold_a_file_counts_as_added() {
        let dir = tempfile::tempdir().unwrap();
        let conf = std::fs::canonicalize(dir.path()).unwrap().join("conf");
        std::fs::create_dir_all(&conf).unwrap();
        let mut state = quiet_watch_state();
        let before = wanted(&[conf.join("wsgate.toml")]);
        assert!(state.refresh(Some(before.clone()), WatchMode::Events));
        assert!(!state.refresh(Some(before), WatchMode::Events));
        let parent = conf.parent().unwrap().to_path_buf();
        let after = wanted(&[conf.join("wsgate.toml"), parent.join("b.crt")]);
        assert!(state.refresh(Some(after.clone()), WatchMode::Events));
        assert!(!state.refresh(Some(after), WatchMode::Events));
    }

    /// A volume whose folders cannot be watched, updated twice: each update's timestamped
    /// folder fails alike, and is one report (and one entry), not one per update.
    #[test]
    fn a_volumes_timestamped_folders_that_cannot_be_watched_are_reported_once() {
        let dir = tempfile::tempdir().unwrap();
        let blocked = dir.path().join("file");
        std::fs::write(&blocked, "").unwrap();
        let mut state = quiet_watch_state();
        for update in ["..2026_12_07_00_00_00.1", "..2026_12_07_01_00_00.2"] {
            assert!(!state.refresh(Some(holding(&blocked.join(update))), WatchMode::Events));
            assert!(state.degraded);
            assert_eq!(state.unwatchable, [blocked.join("..*")].into());
        }
        // Once the volume's folder of the day can be watched, that is said.
        std::fs::remove_file(&blocked).unwrap();
        let watchable = blocked.join("..2026_12_07_02_00_00.3");
        std::fs::create_dir_all(&watchable).unwrap();
        assert!(state.refresh(Some(holding(&watchable)), WatchMode::Events));
        assert!(!state.degraded && state.unwatchable.is_empty());
    }

    #[test]
    fn only_the_kubelets_timestamped_folders_are_reported_as_their_volumes() {
        let volume = Path::new("/etc/tls");
        let update = volume.join("..2026_12_07_05_00_00.123");
        assert_eq!(reported_as(&update), volume.join("..*"));
        assert_eq!(reported_as(&volume.join("..cache")), volume.join("..cache"));
        assert_eq!(reported_as(volume), volume);
        let file = update.join("tls.crt");
        assert_eq!(file_reported_as(&file), volume.join("..*/tls.crt"));
    }

    /// Just `folder`, holding a file.
    fn holding(folder: &Path) -> Wanted {
        let role = Role::Holds(Names::Only(["wsgate.toml".into()].into()));
        [(folder.to_path_buf(), Want::of(folder, role))].into()
    }

    fn quiet_watch_state() -> Watches {
        let make = || notify::recommended_watcher(|_: notify::Result<notify::Event>| {});
        Watches::with(Box::new(make), Arc::default(), Arc::default())
    }

    #[test]
    fn a_folder_that_cannot_be_watched_is_polled_and_reported_once_until_it_can() {
        let dir = tempfile::tempdir().unwrap();
        // Under a plain file: not a folder that can be watched, whoever asks.
        let blocked = dir.path().join("file");
        std::fs::write(&blocked, "").unwrap();
        let bad = blocked.join("tls");
        let mut state = quiet_watch_state();
        let wanted = holding(&bad);
        assert!(!state.refresh(Some(wanted.clone()), WatchMode::Events));
        assert!(state.degraded && state.unwatchable.contains(&bad));
        // Polled meanwhile: the same failure again is already reported.
        assert!(!state.refresh(Some(wanted), WatchMode::Events));
        assert_eq!(state.unwatchable.len(), 1);
        // Once it can be watched, it is, and a later failure would be news again.
        std::fs::remove_file(&blocked).unwrap();
        std::fs::create_dir_all(&bad).unwrap();
        let wanted = holding(&bad);
        assert!(state.refresh(Some(wanted), WatchMode::Events));
        assert!(!state.degraded && state.unwatchable.is_empty());
    }

    #[test]
    fn a_folder_gone_before_its_watch_is_polled_for_without_a_report() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("..2026_12_02_05_00_00.1");
        let mut state = quiet_watch_state();
        assert!(!state.refresh(Some(holding(&gone)), WatchMode::Events));
        assert!(state.degraded && state.unwatchable.is_empty());
    }

    #[test]
    fn a_cycle_of_links_ends() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        symlink("b", root.join("a")).unwrap();
        symlink("a", root.join("b")).unwrap();
        assert_eq!(watched(root, "a"), set(&[""]));
        assert!(paths_through_links(&root.join("a")).len() <= MAX_LINKS + 3);
    }

    #[test]
    fn every_folder_above_a_folder_holding_a_file_is_watched_for_the_way_down() {
        let dir = tempfile::tempdir().unwrap();
        let conf = std::fs::canonicalize(dir.path()).unwrap().join("site/conf");
        std::fs::create_dir_all(&conf).unwrap();
        let wanted = wanted(&[conf.join("wsgate.toml")]);
        assert!(matches!(wanted[&conf].role, Role::Holds(_)));
        for above in conf.ancestors().skip(1) {
            assert_eq!(wanted[above].role, Role::Above, "{}", above.display());
        }
        assert_eq!(wanted.len(), conf.ancestors().count());
    }

    /// Which of `paths` matter to `interest`.
    fn matters(interest: &Interest, paths: &[&str]) -> bool {
        interest.matters(&paths.iter().map(PathBuf::from).collect::<Vec<_>>())
    }

    fn names(names: &[&str]) -> Role {
        Role::Holds(Names::Only(names.iter().map(OsString::from).collect()))
    }

    #[test]
    fn above_a_folder_holding_a_file_only_a_change_on_the_way_down_matters() {
        let want = |folder: &str, role| (PathBuf::from(folder), Want { id: None, role });
        let wanted: Wanted = [
            want("/r/site/conf", names(&["wsgate.toml"])),
            want("/r/site", Role::Above),
            want("/r", Role::Above),
            want("/", Role::Above),
        ]
        .into();
        let interest = Interest::of(&wanted);
        let matters = |paths: &[&str]| matters(&interest, paths);
        assert!(matters(&["/r/site/conf/wsgate.toml"]) && matters(&["/r/site/conf"]));
        // A folder on the way swapped by rename, seen from above.
        assert!(matters(&["/r/site.new", "/r/site"]) && matters(&["/r"]));
        // Anything else above is someone else's.
        assert!(!matters(&["/r/site/other"]) && !matters(&["/r/log.txt"]) && !matters(&["/tmp"]));
        // An event naming no path (a rescan) may be anything.
        assert!(matters(&[]));
    }

    #[test]
    fn in_a_folder_holding_a_file_only_its_name_matters_not_a_neighbours_or_an_editors_scratch() {
        let want = |folder: &str, role| (PathBuf::from(folder), Want { id: None, role });
        let wanted: Wanted = [
            want("/etc/wsgate", names(&["wsgate.toml", "tls.crt", "tls.key"])),
            want("/etc", Role::Above),
            want("/", Role::Above),
        ]
        .into();
        let interest = Interest::of(&wanted);
        let matters = |paths: &[&str]| matters(&interest, paths);
        for name in ["wsgate.toml", "tls.crt", "tls.key"] {
            assert!(matters(&[&format!("/etc/wsgate/{name}")]), "{name}");
        }
        // A neighbour written nonstop, vim's probe and backup, a swap file, a temporary file:
        // alone, none is a change to the files.
        for other in [
            "app.log",
            "4913",
            "wsgate.toml~",
            ".wsgate.toml.swp",
            "wsgate.toml.tmp",
        ] {
            assert!(!matters(&[&format!("/etc/wsgate/{other}")]), "{other}");
        }
        // A save by rename: the rename seen whole names both sides, and each side alone comes
        // in an event of its own; the side that is the file's name matters either way (vim
        // moving the original away to `wsgate.toml~` included).
        assert!(matters(&[
            "/etc/wsgate/wsgate.toml.tmp",
            "/etc/wsgate/wsgate.toml"
        ]));
        assert!(matters(&[
            "/etc/wsgate/wsgate.toml",
            "/etc/wsgate/wsgate.toml~"
        ]));
        // The folder itself deleted or moved (an event on its own watch).
        assert!(matters(&["/etc/wsgate"]));
        // Names elsewhere are not these.
        assert!(!matters(&["/etc/wsgate.toml"]) && !matters(&["/etc/other/wsgate.toml"]));
    }

    #[test]
    fn a_folder_whose_names_cannot_be_told_takes_any_name() {
        let wanted: Wanted = [(
            PathBuf::from("/srv/conf"),
            Want {
                id: None,
                role: Role::Holds(Names::Any),
            },
        )]
        .into();
        let interest = Interest::of(&wanted);
        assert!(matters(&interest, &["/srv/conf/anything"]));
        assert!(!matters(&interest, &["/srv/other"]));
    }

    /// The names that matter in each folder watched for `file` under `root` (both relative
    /// to it): none for a folder above.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn names_for(root: &Path, files: &[&str]) -> BTreeMap<String, BTreeSet<String>> {
        let real = std::fs::canonicalize(root).unwrap();
        let files: Vec<PathBuf> = files.iter().map(|f| root.join(f)).collect();
        (wanted(&files).into_iter())
            .filter_map(|(folder, want)| {
                let folder = folder.strip_prefix(&real).ok()?.display().to_string();
                let names = match want.role {
                    Role::Holds(Names::Only(names)) => names,
                    Role::Holds(Names::Any) => panic!("any name in {folder}"),
                    Role::Above => BTreeSet::new(),
                    Role::File => return None,
                };
                let names = names.iter().map(|n| n.to_string_lossy().into_owned());
                Some((folder, names.collect()))
            })
            .collect()
    }

    /// `(folder, names)` pairs as [`names_for`] gives them.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn folders(items: &[(&str, &[&str])]) -> BTreeMap<String, BTreeSet<String>> {
        (items.iter())
            .map(|(folder, names)| (folder.to_string(), set(names)))
            .collect()
    }

    /// A Kubernetes volume: `wsgate.toml -> ..data/wsgate.toml`, `..data -> ..<stamp>`. The
    /// kubelet's update makes a new stamped folder and a `..data_tmp` link to it (neither
    /// matters yet), renames that link over `..data` (that event names `..data`), and deletes
    /// the old stamped folder (a folder holding the file, whose going matters).
    #[test]
    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn in_a_configmap_volume_the_file_and_the_data_link_matter() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let stamp = "..2026_12_03_05_00_00.1";
        std::fs::create_dir(root.join(stamp)).unwrap();
        std::fs::write(root.join(stamp).join("wsgate.toml"), "x").unwrap();
        symlink(stamp, root.join("..data")).unwrap();
        symlink("..data/wsgate.toml", root.join("wsgate.toml")).unwrap();
        assert_eq!(
            names_for(root, &["wsgate.toml"]),
            folders(&[("", &["wsgate.toml", "..data"]), (stamp, &["wsgate.toml"])])
        );

        let real = std::fs::canonicalize(root).unwrap();
        let interest = Interest::of(&wanted(&[root.join("wsgate.toml")]));
        let at = |name: &str| real.join(name).display().to_string();
        let matters = |paths: &[String]| {
            interest.matters(&paths.iter().map(PathBuf::from).collect::<Vec<_>>())
        };
        // The swap: `..data_tmp` renamed over `..data`, whole or in halves.
        assert!(matters(&[at("..data_tmp"), at("..data")]) && matters(&[at("..data")]));
        // The old stamped folder deleted; the file in it written.
        assert!(matters(&[at(stamp)]) && matters(&[at(&format!("{stamp}/wsgate.toml"))]));
        // The new stamped folder made, the temporary link made, and a neighbour: not yet.
        for other in ["..2026_12_03_06_00_00.2", "..data_tmp", "app.log"] {
            assert!(!matters(&[at(other)]), "{other}");
        }
    }

    /// A certificate not there yet matters by its name, one whose folder is not there yet by
    /// the name of the first folder still to be made; a folder holding a file and above
    /// another's takes both.
    #[test]
    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn a_file_or_folder_still_to_be_made_matters_by_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("conf/tls")).unwrap();
        std::fs::write(root.join("conf/wsgate.toml"), "x").unwrap();
        let files = [
            "conf/wsgate.toml",
            "conf/new.crt",
            "conf/tls/a.crt",
            "conf/secret/tls/b.crt",
        ];
        assert_eq!(
            names_for(root, &files),
            folders(&[
                ("", &[]),
                ("conf", &["wsgate.toml", "new.crt", "secret"]),
                ("conf/tls", &["a.crt"]),
            ])
        );
        let real = std::fs::canonicalize(root).unwrap();
        let interest = Interest::of(&wanted(&files.map(|f| root.join(f))));
        // `tls` is a folder on the way down to a file: it matters in the folder above it.
        for path in ["conf/secret", "conf/tls", "conf/new.crt", "conf/tls/a.crt"] {
            assert!(interest.matters(&[real.join(path)]), "{path}");
        }
        assert!(!interest.matters(&[real.join("conf/old.crt")]));
    }

    /// `current -> releases/7`: the link matters where it is, the file where it really is.
    #[test]
    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn through_a_linked_folder_the_link_and_the_file_matter() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("releases/7")).unwrap();
        std::fs::write(root.join("releases/7/wsgate.toml"), "x").unwrap();
        symlink("releases/7", root.join("current")).unwrap();
        assert_eq!(
            names_for(root, &["current/wsgate.toml"]),
            folders(&[
                ("", &["current"]),
                ("releases", &[]),
                ("releases/7", &["wsgate.toml"]),
            ])
        );
        let real = std::fs::canonicalize(root).unwrap();
        let interest = Interest::of(&wanted(&[root.join("current/wsgate.toml")]));
        // `mv -T current.new current`; `mv releases/7 releases/7.old`.
        assert!(interest.matters(&[real.join("current.new"), real.join("current")]));
        assert!(interest.matters(&[real.join("releases/7")]));
        assert!(!interest.matters(&[real.join("current.new")]));
        assert!(!interest.matters(&[real.join("releases/8")]));
    }

    /// A name newly mattering in a folder watched already (a certificate the config now names
    /// beside it) is news: its events were dropped until now, so the caller looks again.
    #[test]
    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn a_file_newly_named_in_a_watched_folder_counts_as_added() {
        let dir = tempfile::tempdir().unwrap();
        let conf = std::fs::canonicalize(dir.path()).unwrap();
        let mut state = quiet_watch_state();
        let before = wanted(&[conf.join("wsgate.toml")]);
        assert!(state.refresh(Some(before.clone()), WatchMode::Events));
        assert!(!state.refresh(Some(before.clone()), WatchMode::Events));
        let after = wanted(&[conf.join("wsgate.toml"), conf.join("new.crt")]);
        assert!(state.refresh(Some(after.clone()), WatchMode::Events));
        assert!(!state.refresh(Some(after), WatchMode::Events));
        // Names no longer mattering are no news.
        assert!(!state.refresh(Some(before), WatchMode::Events));
    }
}
