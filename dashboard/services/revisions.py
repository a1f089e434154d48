"""The script directory, read without executing it.

Real histories import their host application in most revision files, so
loading them as ``ScriptDirectory`` does fails wherever that application is
not importable, and is slow. We read each file's four header assignments as
literals and build Alembic's own ``RevisionMap`` from them, so heads, partial
ids, labels and ``iterate_revisions`` behave exactly as Alembic's. A file
whose headers are not literals is imported in a subprocess under the
project's interpreter. When that fails too (the file imports an application
that is not installed here), a file whose ``revision`` and ``down_revision``
are literals is kept with its other headers marked unresolved; any other is
listed as unreadable. A parent that no readable file defines is drawn as a
missing node, and such a dependency is left out (marked unresolved), so the
rest of the history still reads.
"""

from __future__ import annotations

import ast
import gc
import hashlib
import json
import logging
import os
import re
import threading
import time
import tokenize
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

from alembic.script.revision import (
    MultipleHeads,
    ResolutionError,
    Revision,
    RevisionError,
    RevisionMap,
)

from alembic import __version__ as alembic_version
from dashboard.errors import BadRequest, NotFound
from dashboard.services.folder_watch import FolderWatch
from dashboard.services.instance_files import read_json_object, write_json_object
from dashboard.services.project import Project

log = logging.getLogger(__name__)

HEADER_NAMES = ("revision", "down_revision", "branch_labels", "depends_on")
# Alembic's own rule for which files in a version folder are revisions.
_REVISION_FILE = re.compile(r"(?!\.\#|__init__)(.*\.py)$")
_LEGACY_REV_FILE = re.compile(r"([a-f0-9]+)\.py$")
_HEADER = re.compile(
    r"^(revision|down_revision|branch_labels|depends_on)[ \t]*(?::[^=\n]*)?=(?!=)[ \t]*", re.M
)
_DOCSTRING = re.compile(
    r"\A\ufeff?(?:[ \t]*(?:#[^\n]*)?\n|\s)*"
    r"([rRuU]?(?:\"\"\"(?:\\.|[^\\])*?\"\"\"|'''(?:\\.|[^\\])*?'''"
    r"|\"(?:\\.|[^\\\"\n])*\"|'(?:\\.|[^\\'\n])*'))",
    re.S,
)
_CREATE_DATE = re.compile(r"^\s*Create Date:\s*(.+?)\s*$", re.M)


class NotLiteral(Exception):
    """A header is computed, so only importing the file can tell its value.

    ``partial`` is the header without the computed fields, when its id and
    parents are literals: what is kept if the import fails."""

    def __init__(self, reason: str, partial: RevisionHeader | None = None):
        super().__init__(reason)
        self.partial = partial


@dataclass(frozen=True)
class RevisionHeader:
    path: str
    revision: str
    down_revision: tuple[str, ...]
    branch_labels: tuple[str, ...]
    depends_on: tuple[str, ...]
    docstring: str
    # (header name, why its value is unknown): read as empty, shown as "unresolved".
    unresolved: tuple[tuple[str, str], ...] = ()

    @classmethod
    def checked(cls, path: str, revision: str, down_revision: tuple[str, ...],
                branch_labels: tuple[str, ...], depends_on: tuple[str, ...],
                docstring: str) -> RevisionHeader:
        """A header from values already checked (the cache file's): made without
        the frozen ``__init__``'s per-field ``object.__setattr__``, which is what
        made reading 5,000 of them cost as much as parsing the JSON."""
        header = object.__new__(cls)
        header.__dict__.update(path=path, revision=revision, down_revision=down_revision,
                               branch_labels=branch_labels, depends_on=depends_on,
                               docstring=docstring, unresolved=())
        return header

    @cached_property  # a status lists thousands of them, on every request
    def message(self) -> str:
        return re.split("\n\n", self.docstring.strip())[0] if self.docstring else ""

    @property
    def create_date(self) -> str | None:
        match = _CREATE_DATE.search(self.docstring or "")
        return match.group(1) if match else None


@dataclass(frozen=True)
class UnreadableFile:
    path: str
    reason: str


class ScriptRevision(Revision):
    """Alembic's ``Revision`` plus what the pages show about its file."""

    def __init__(self, header: RevisionHeader, *, missing: bool = False):
        super().__init__(
            header.revision,
            header.down_revision or None,
            dependencies=header.depends_on or None,
            branch_labels=header.branch_labels,
        )
        self.header = header
        self.path = header.path
        self.missing = missing  # no readable file defines it: others name it

    @property
    def unresolved(self) -> tuple[tuple[str, str], ...]:
        return self.header.unresolved

    @property
    def doc(self) -> str:
        return self.header.message

    @property
    def down_revisions(self) -> tuple[str, ...]:
        return self.header.down_revision

    @property
    def depends_on(self) -> tuple[str, ...]:
        return tuple(self._resolved_dependencies) if self.dependencies else ()



@dataclass
class RevisionGraph:
    """Alembic's map built from a history's headers, and what building it found."""

    revision_map: RevisionMap
    revisions: dict[str, ScriptRevision]
    unreadable: tuple[UnreadableFile, ...] = ()
    problems: tuple[str, ...] = ()
    error: str | None = None
    # Revisions named by others that no readable file defines (drawn as missing nodes).
    missing: tuple[str, ...] = ()


# Answers (History.memo kinds) that are plain data, kept on disk with the headers'
# digest: a restart on the same headers gives them without building the map.
LASTING = ("pending messages", "applied", "unknown")
FACTS_FORMAT = 1  # bump when an answer kept on disk is computed differently


@dataclass(frozen=True)
class HistoryFacts:
    """What a status needs of a history whose map was built once: its heads, what
    building it found, and answers for some current revisions; valid for headers
    with this ``digest`` (see ``History.digest``)."""

    digest: str
    heads: tuple[str, ...]
    unreadable: tuple[UnreadableFile, ...]
    problems: tuple[str, ...]
    missing: tuple[str, ...]
    answers: dict  # memo key -> answer, kinds in LASTING only


class History:
    """A project's parsed revision graph, built from its headers when first needed.

    With ``find_facts`` (given this history's digest, what a run that built the
    same headers' map kept on disk), the
    heads, the problems found and the answers they hold are known without
    building it: a restart's first /api/status builds nothing. ``on_answer`` is
    called when an answer of a LASTING kind was computed, to keep it."""

    def __init__(self, items: Iterable[RevisionHeader | UnreadableFile],
                 find_facts: Callable[[str], HistoryFacts | None] | None = None,
                 on_answer: Callable[[History], None] | None = None):
        self.items = tuple(items)
        facts = find_facts(self.digest) if find_facts is not None else None
        self._facts = facts if facts is not None and facts.digest == self.digest else None
        self._graph: RevisionGraph | None = None
        self._lock = threading.Lock()
        self._memo: dict = dict(self._facts.answers) if self._facts else {}
        self._on_answer = on_answer

    @property
    def graph(self) -> RevisionGraph:
        if self._graph is None:
            with self._lock:
                if self._graph is None:
                    with collection_paused():
                        self._graph = _build_graph(self.items)
        return self._graph

    @property
    def revision_map(self) -> RevisionMap:
        return self.graph.revision_map

    @property
    def revisions(self) -> dict[str, ScriptRevision]:
        return self.graph.revisions

    @property
    def error(self) -> str | None:
        return None if self._facts else self.graph.error

    @property
    def unreadable(self) -> tuple[UnreadableFile, ...]:
        return self._facts.unreadable if self._facts else self.graph.unreadable

    @property
    def problems(self) -> tuple[str, ...]:
        return self._facts.problems if self._facts else self.graph.problems

    @property
    def missing(self) -> tuple[str, ...]:
        return self._facts.missing if self._facts else self.graph.missing

    @property
    def heads(self) -> tuple[str, ...]:
        if self._facts:
            return self._facts.heads
        return tuple(sorted(self.revision_map.heads)) if self.error is None else ()

    @cached_property
    def digest(self) -> str:
        """Names these headers, in this order, read by this version: equal digests,
        equal maps. (Their text, not their files' times: a file saved again
        unchanged still matches.)"""
        parts = [f"{FACTS_FORMAT}\x1f{CACHE_FORMAT}\x1f{alembic_version}"]
        for item in self.items:
            if isinstance(item, UnreadableFile):
                parts += ("!", item.path, item.reason)
            else:
                parts += (item.path, item.revision, "\x1f".join(item.down_revision),
                          "\x1f".join(item.branch_labels), "\x1f".join(item.depends_on),
                          item.docstring, repr(item.unresolved) if item.unresolved else "")
        text = "\x1e".join(parts).encode("utf-8", "surrogatepass")
        return hashlib.blake2b(text, digest_size=20).hexdigest()

    def facts(self) -> HistoryFacts | None:
        """What to keep on disk: None while the map could not be built."""
        if self.error is not None:
            return None
        answers = {key: value for key, value in self._memo.items() if key[0] in LASTING}
        return HistoryFacts(self.digest, self.heads, self.unreadable, self.problems,
                            self.missing, dict(list(answers.items())[-12:]))

    def memo(self, key, compute: Callable[[], object]):
        """Cache a derived answer (pending list, ancestors) for this version of the map."""
        if key not in self._memo:
            if len(self._memo) > 64:
                self._memo.clear()
            self._memo[key] = compute()
            if key[0] in LASTING and self._on_answer is not None:
                self._on_answer(self)
        return self._memo[key]


@contextmanager
def collection_paused() -> Iterator[None]:
    """No cyclic garbage collection while thousands of headers or revisions are
    made at once (none of them is garbage yet): each collection would scan the
    whole app's objects again, a quarter of the time here."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# ---------------------------------------------------------------- parsing

def _literal(expr_source: str):
    try:
        node = ast.parse(expr_source.strip(), mode="eval")
    except SyntaxError:
        return _INCOMPLETE
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError):
        raise NotLiteral(expr_source.strip()) from None


_INCOMPLETE = object()


def _value_after(text: str, start: int):
    """The literal value of the expression that starts at ``start``: grows
    line by line until it parses, so tuples spread over several lines work."""
    end = start
    for _ in range(200):
        newline = text.find("\n", end)
        end = len(text) if newline == -1 else newline
        value = _literal(text[start:end])
        if value is not _INCOMPLETE:
            return value
        if newline == -1:
            break
        end += 1
    raise NotLiteral(text[start:text.find("\n", start)])


def _as_ids(value, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (tuple, list)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise NotLiteral(f"{name} = {value!r}")


def parse_header_text(text: str, path: str) -> RevisionHeader:
    """Headers of one revision file from its source. Raises ``NotLiteral``
    when any header is not a plain literal assignment at module level (with
    the partial header when only ``branch_labels`` or ``depends_on`` are not)."""
    found: dict[str, object] = {}
    computed: dict[str, str] = {}
    for match in _HEADER.finditer(text):
        name = match.group(1)
        if name in found or name in computed:
            raise NotLiteral(f"{name} is assigned more than once")
        try:
            found[name] = _value_after(text, match.end())
        except NotLiteral as exc:
            computed[name] = f"{name} = {exc}"
    if "revision" in computed or "down_revision" in computed:
        raise NotLiteral("; ".join(computed.values()))
    if "revision" in found:
        if not isinstance(found["revision"], str):
            raise NotLiteral(f"revision = {found['revision']!r}")
        revision = found["revision"]
    else:
        legacy = _LEGACY_REV_FILE.match(os.path.basename(path))
        if not legacy:
            raise NotLiteral("no revision assignment found")
        revision = legacy.group(1)
    if "down_revision" not in found:
        raise NotLiteral("no down_revision assignment found")
    optional: dict[str, tuple[str, ...]] = {}
    for name in ("branch_labels", "depends_on"):
        try:
            optional[name] = _as_ids(found.get(name), name)
        except NotLiteral as exc:
            computed[name] = str(exc)
            optional[name] = ()
    header = RevisionHeader(
        path=path,
        revision=revision,
        down_revision=_as_ids(found["down_revision"], "down_revision"),
        branch_labels=optional["branch_labels"],
        depends_on=optional["depends_on"],
        docstring=_docstring(text),
        unresolved=tuple((name, f"not a literal: {why}") for name, why in computed.items()),
    )
    if computed:
        raise NotLiteral("; ".join(computed.values()), partial=header)
    return header


def _docstring(text: str) -> str:
    """The module docstring as Python sees it: the first statement's string,
    escapes decoded; without parsing the rest of the file."""
    match = _DOCSTRING.match(text)
    if not match:
        return ""
    try:
        value = ast.literal_eval(match.group(1))
    except (ValueError, SyntaxError):
        return ""
    return value.strip() if isinstance(value, str) else ""


FileKey = tuple[str, int, int, int]  # (path, mtime_ns, size, ctime_ns)


# A file changed this recently may change again within the same timestamp tick
# (coarse file system clocks; 2 s on FAT), keeping its key: what was read from
# it is checked again once it is older than this, and only then kept on disk.
RACY_NS = 2_000_000_000
CACHE_FORMAT = 1  # bump when parse_header_text reads a file differently
FACTS_FOLDER = "history-facts"  # beside the cache file: one file per digest
FACTS_KEPT = 4  # the latest: a file reverted, or a branch checked out again, finds them


@dataclass(frozen=True)
class FolderListing:
    """The revision files and subfolders of one folder, valid while the
    folder's own modification and change times stay as they were."""

    stamp: tuple[int, int]
    files: tuple[tuple[str, str], ...]  # (name, path), sorted by name
    subfolders: tuple[str, ...]
    linked: bool = False  # a file is a symlink (such a listing is never kept)


_STAT_DIR_FD = os.stat in os.supports_dir_fd


def revision_files(project: Project, listings: dict[str, FolderListing] | None = None,
                   scanned: dict[str, bool] | None = None) -> list[FileKey]:
    """(path, mtime_ns, size, ctime_ns) of every revision file, in Alembic's order.

    The change time is kept beside the modification time because nobody can
    set it: a file edited in place to the same size, its mtime put back, still
    shows a new ctime.

    A folder is listed again only when its own times changed (a file added,
    removed or renamed); ``listings`` keeps the lists between calls. Paths are
    resolved only for symlinks. So a warm status request costs a stat per
    file, relative to its open folder, and no more. ``scanned`` is told each
    folder read, and whether it holds a symlinked file."""
    files: list[FileKey] = []
    seen: set[tuple[int, int]] = set()
    for location in project.version_locations:
        if not os.path.isdir(location):
            continue
        folders = [os.path.realpath(location)]
        while folders:
            folder = folders.pop(0)
            try:
                fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            except OSError:
                continue
            try:
                listing = _folder_listing(folder, fd, listings)
                if scanned is not None:
                    scanned[folder] = listing.linked
                for name, path in listing.files:
                    try:
                        stat = os.stat(name, dir_fd=fd) if _STAT_DIR_FD else os.stat(path)
                    except OSError:
                        continue
                    if (stat.st_dev, stat.st_ino) in seen:
                        continue
                    seen.add((stat.st_dev, stat.st_ino))
                    files.append((path, stat.st_mtime_ns, stat.st_size, stat.st_ctime_ns))
            except OSError:
                continue
            finally:
                os.close(fd)
            if project.recursive_version_locations:
                folders[:0] = listing.subfolders
    return files


def _folder_listing(folder: str, fd: int,
                    listings: dict[str, FolderListing] | None) -> FolderListing:
    stat = os.fstat(fd)
    stamp = (stat.st_mtime_ns, stat.st_ctime_ns)
    known = listings.get(folder) if listings is not None else None
    if known is not None and known.stamp == stamp:
        return known
    with os.scandir(folder) as entries:
        by_name = {entry.name: entry for entry in entries}
    found: list[tuple[str, str]] = []
    subfolders: list[str] = []
    has_links = False
    for name in sorted(by_name):
        entry = by_name[name]
        if entry.is_dir():
            if not name.endswith("__pycache__"):
                subfolders.append(entry.path)
        elif _is_revision_file(name):
            has_links = has_links or entry.is_symlink()
            found.append((name, os.path.realpath(entry.path) if entry.is_symlink()
                          else entry.path))
    listing = FolderListing(stamp, tuple(found), tuple(subfolders), has_links)
    # A folder changed within the last tick may change again keeping its times,
    # and a link may be pointed elsewhere: those are listed again next time.
    if listings is not None and not has_links and stamp[0] < time.time_ns() - RACY_NS:
        if len(listings) > 256:
            listings.clear()
        listings[folder] = listing
    return listing


def _is_revision_file(name: str) -> bool:
    # _REVISION_FILE's answer without a regex call for the usual names.
    if "\n" in name:
        return bool(_REVISION_FILE.match(name))
    return name.endswith(".py") and not name.startswith((".#", "__init__"))


ImportHeaders = Callable[[Project, list[str]], dict[str, "RevisionHeader | UnreadableFile"]]


class HistoryCache:
    """Parsed headers per file and the map built from them, keyed on the
    files' names, modification and change times and sizes: an edited or new
    revision file is noticed on the next request, an unchanged tree costs a stat.

    With ``cache_file``, the headers read from the files' text alone are also
    kept on disk (written whole to a temporary file, then renamed over the old
    one), so a restart stats the files instead of parsing them again. Headers
    that needed an import are not kept there: they depend on the environment,
    which a restart may have changed. A cache file that cannot be read, or
    that does not hold what this version writes, is ignored and rebuilt."""

    def __init__(self, import_headers: ImportHeaders, cache_file: str | None = None):
        self._import_headers = import_headers
        self._cache_file = cache_file
        self._facts_folder = (os.path.join(os.path.dirname(cache_file), FACTS_FOLDER)
                              if cache_file else None)
        self._facts_on_disk: HistoryFacts | None = None
        self._facts_lock = threading.Lock()
        self._lock = threading.Lock()
        self._files: dict[FileKey, RevisionHeader | UnreadableFile] = {}
        self._from_text: set[FileKey] = set()  # parsed from the text alone: may go to disk
        self._racy: set[FileKey] = set()  # read while their file was still changing
        self._racy_until = 0  # time.time_ns() after which to read those again
        self._disk_read = cache_file is None
        self._listings: dict[str, FolderListing] = {}
        self._on_disk: tuple = ()  # what the cache file holds: not written again
        self._key: tuple | None = None
        self._history: History | None = None
        # Vouches that no file changed since the files behind _history were stat'ed.
        self._watch: FolderWatch | None = None
        self._watched: set[str] = set()

    def load(self, project: Project) -> History:
        with self._lock:
            if not self._disk_read:
                self._disk_read = True
                with collection_paused():
                    headers, listings = read_cache_file(self._cache_file)
                for entry, header in headers.items():
                    self._files.setdefault(entry, header)
                    self._from_text.add(entry)
                for folder, listing in listings.items():
                    self._listings.setdefault(folder, listing)
                self._on_disk = (headers.keys(), listings)
            if self._history is not None and self._unchanged(project):
                return self._history
            watch = self._start_watch(project)
            scanned: dict[str, bool] = {}
            files = revision_files(project, self._listings, scanned)
            watch = self._checked_watch(watch, scanned)
            key = (project.version_locations, project.recursive_version_locations,
                   tuple(files))
            if self._racy_until and time.time_ns() >= self._racy_until:
                self._read_racy_again(project)
            if key == self._key and self._history is not None:
                self._watch = watch
                return self._history
            parsed, fresh = self._parse_all(project, files)
            self._files = {f: parsed[f] for f in files}
            self._from_text &= self._files.keys()
            self._racy &= self._files.keys()
            kept = self._facts_folder is not None
            self._history = History((parsed[f] for f in files),
                                    find_facts=self._facts_of if kept else None,
                                    on_answer=self._keep_facts if kept else None)
            self._key = key
            self._watch = watch
            if fresh:
                self._save()
            return self._history

    @property
    def watching(self) -> bool:
        """Whether the kernel vouches for the files now (a warm load stats none)."""
        return self._watch is not None

    def _unchanged(self, project: Project) -> bool:
        """Whether the kernel vouches that no revision file changed since the last
        full stat (no file read a moment ago awaits a second look)."""
        watch = self._watch
        return (watch is not None and not self._racy
                and self._key is not None and self._key[:2] == (
                    project.version_locations, project.recursive_version_locations)
                and tuple(root for root, _ in watch.roots) == project.version_locations
                and watch.unchanged())

    def _start_watch(self, project: Project) -> FolderWatch | None:
        """A watch begun before the stat it vouches for (a change during the stat
        shows as an event), on the folders the last stat read."""
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        folders = self._watched or {os.path.realpath(location)
                                    for location in project.version_locations}
        return FolderWatch.start(project.version_locations, folders)

    def _checked_watch(self, watch: FolderWatch | None, scanned: dict[str, bool]
                       ) -> FolderWatch | None:
        """The watch, if it covers every folder the stat read."""
        self._watched = set(scanned)
        if watch is not None and (any(scanned.values()) or not self._watched <= watch.folders):
            watch.close()  # a symlinked file, or a folder the watch missed: stat next time
            return None
        return watch

    def _facts_of(self, digest: str) -> HistoryFacts | None:
        facts = read_facts_file(os.path.join(self._facts_folder, f"{digest}.json"))
        with self._facts_lock:
            self._facts_on_disk = facts or self._facts_on_disk
        return facts

    def _keep_facts(self, history: History) -> None:
        """Keep what the map answered on disk, for a restart on the same headers."""
        facts = history.facts()
        if facts is None or self._facts_folder is None:
            return
        with self._facts_lock:
            if facts == self._facts_on_disk:
                return
            try:
                os.makedirs(self._facts_folder, exist_ok=True)
            except OSError as exc:
                log.info("cannot keep what the revision map answered: %s", exc)
                return
            write_facts_file(os.path.join(self._facts_folder, f"{facts.digest}.json"), facts)
            self._facts_on_disk = facts
            _keep_latest(self._facts_folder, FACTS_KEPT)

    def _read_racy_again(self, project: Project) -> None:
        again = [entry for entry in self._racy if entry in self._files]
        self._racy.clear()
        self._racy_until = 0
        old = {entry: self._files.pop(entry) for entry in again}
        self._from_text -= old.keys()
        parsed, _ = self._parse_all(project, again)
        self._files.update(parsed)
        if any(parsed[entry] != old[entry] for entry in again):
            self._key = None  # the map was built from what the file held a moment earlier
        self._save()

    def _parse_all(self, project: Project, files):
        """Headers of ``files``, from memory where their key is known; returns
        them and whether any had to be read."""
        parsed: dict = {}
        needs_import: list[FileKey] = []
        partial: dict[FileKey, RevisionHeader] = {}
        started = time.time_ns()
        fresh = False
        for entry in files:
            cached = self._files.get(entry)
            if cached is not None:
                parsed[entry] = cached
                continue
            fresh = True
            if entry[1] > started - RACY_NS:
                self._racy.add(entry)
                self._racy_until = max(self._racy_until, entry[1] + RACY_NS)
            path = entry[0]
            try:
                with tokenize.open(path) as handle:  # honours coding cookies and BOMs
                    text = handle.read()
                parsed[entry] = parse_header_text(text, path)
                self._from_text.add(entry)
            except NotLiteral as exc:
                needs_import.append(entry)
                if exc.partial is not None:
                    partial[entry] = exc.partial
            except (OSError, UnicodeDecodeError, SyntaxError, ValueError) as exc:
                parsed[entry] = UnreadableFile(path, f"cannot read: {exc}")
        if needs_import:
            imported = self._import_headers(project, [entry[0] for entry in needs_import])
            for entry in needs_import:
                found = imported.get(entry[0], UnreadableFile(entry[0], "import gave no result"))
                if isinstance(found, UnreadableFile) and entry in partial:
                    found = _without_import(partial[entry], found.reason)
                parsed[entry] = found
        return parsed, fresh

    def _save(self) -> None:
        if self._cache_file is None:
            return
        keep = {entry: self._files[entry] for entry in self._from_text - self._racy
                if entry in self._files}
        if self._on_disk == (keep.keys(), self._listings):
            return  # a file that changed a moment ago is all that is new: nothing to keep
        write_cache_file(self._cache_file, keep, self._listings)
        self._on_disk = (keep.keys(), dict(self._listings))


def write_cache_file(path: str, headers: dict[FileKey, RevisionHeader],
                     listings: dict[str, FolderListing] | None = None) -> None:
    """Headers with their files' keys, and the folders' listings, as JSON,
    replacing ``path`` at once: a reader sees the old file or the new one,
    never half of one. Only headers read whole from the text (nothing
    unresolved) are written."""
    body = {"format": CACHE_FORMAT, "files": [
        [*entry, h.revision, h.down_revision, h.branch_labels, h.depends_on, h.docstring]
        for entry, h in headers.items() if h.path == entry[0] and not h.unresolved
    ], "folders": [
        [folder, *listing.stamp, listing.files, listing.subfolders]
        for folder, listing in (listings or {}).items()
    ]}
    write_json_object(path, body, "the parsed revision headers")


def _keep_latest(folder: str, count: int) -> None:
    """Remove all but the ``count`` latest JSON files of ``folder``."""
    try:
        with os.scandir(folder) as entries:
            found = [(entry.stat().st_mtime_ns, entry.path) for entry in entries
                     if entry.name.endswith(".json")]
        for _, path in sorted(found, reverse=True)[count:]:
            os.unlink(path)
    except OSError as exc:
        log.info("cannot tidy %s: %s", folder, exc)


def write_facts_file(path: str, facts: HistoryFacts) -> None:
    """A history's facts (``HistoryFacts``) as JSON, replacing ``path`` at once."""
    answers = []
    for (kind, current), value in facts.answers.items():
        if kind == "applied":
            value = sorted(value)
        answers.append([kind, list(current), list(value)])
    write_json_object(path, {
        "format": FACTS_FORMAT, "digest": facts.digest, "heads": list(facts.heads),
        "unreadable": [[u.path, u.reason] for u in facts.unreadable],
        "problems": list(facts.problems), "missing": list(facts.missing), "answers": answers,
    }, "what the revision map answered")


def _strings(values) -> tuple[str, ...]:
    values = tuple(values)
    "".join(values)  # refuses anything but strings
    return values


def read_facts_file(path: str | None) -> HistoryFacts | None:
    """What ``write_facts_file`` kept, or None when it is missing, damaged or of
    another format (the map is then built when first needed)."""
    if path is None:
        return None
    body = read_json_object(path)
    try:
        if body.get("format") != FACTS_FORMAT:
            return None
        answers: dict = {}
        for kind, current, value in body["answers"]:
            if kind == "pending messages":
                value = tuple(_strings(pair) for pair in value)
                if any(len(pair) != 2 for pair in value):
                    raise ValueError("unexpected pending entry")
            elif kind == "applied":
                value = frozenset(_strings(value))
            elif kind == "unknown":
                value = _strings(value)
            else:
                raise ValueError(f"unexpected answer {kind!r}")
            answers[kind, _strings(current)] = value
        unreadable = tuple(UnreadableFile(*_strings(pair)) for pair in body["unreadable"])
        return HistoryFacts(_strings([body["digest"]])[0], _strings(body["heads"]), unreadable,
                            _strings(body["problems"]), _strings(body["missing"]), answers)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        log.warning("ignoring %s (%s): the revision map is built again", path, exc)
        return None


def read_cache_file(path: str | None
                    ) -> tuple[dict[FileKey, RevisionHeader], dict[str, FolderListing]]:
    """What ``write_cache_file`` kept, or nothing when the file is missing,
    damaged or of another format: the cache is then rebuilt from the files."""
    if path is None:
        return {}, {}
    try:
        with open(path, encoding="utf-8") as handle:
            body = json.load(handle)
        if body.get("format") != CACHE_FORMAT:
            return {}, {}
        found: dict[FileKey, RevisionHeader] = {}
        for file_path, mtime, size, ctime, revision, down, labels, depends, docstring in (
                body["files"]):
            if not (type(mtime) is int and type(size) is int and type(ctime) is int
                    and type(down) is list and type(labels) is list
                    and type(depends) is list):
                raise ValueError(f"unexpected entry for {file_path!r}")
            # join() refuses anything but strings: one check for every text field.
            "".join((file_path, revision, docstring, *down, *labels, *depends))
            found[(file_path, mtime, size, ctime)] = RevisionHeader.checked(
                file_path, revision, tuple(down), tuple(labels), tuple(depends), docstring)
        listings: dict[str, FolderListing] = {}
        for folder, mtime, ctime, files, subfolders in body.get("folders", ()):
            if not (type(mtime) is int and type(ctime) is int):
                raise ValueError(f"unexpected listing of {folder!r}")
            pairs = tuple((name, file_path) for name, file_path in files)
            "".join((folder, *subfolders, *(text for pair in pairs for text in pair)))
            listings[folder] = FolderListing((mtime, ctime), pairs, tuple(subfolders))
        return found, listings
    except FileNotFoundError:
        return {}, {}
    except (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
        log.warning("ignoring the revision header cache %s (%s): reading the files again",
                    path, exc)
        return {}, {}


def _without_import(header: RevisionHeader, import_error: str) -> RevisionHeader:
    """The literal part of a header whose file cannot be imported here (its
    application is not installed): the computed fields stay unresolved."""
    return replace(header, unresolved=tuple(
        (name, f"{why}; importing the file failed: {import_error}")
        for name, why in header.unresolved
    ))


def build_history(items: Iterable[RevisionHeader | UnreadableFile]) -> History:
    """The history of these headers (its map is built when first needed)."""
    return History(items)


def _build_graph(items: Iterable[RevisionHeader | UnreadableFile]) -> RevisionGraph:
    revisions: dict[str, ScriptRevision] = {}
    unreadable: list[UnreadableFile] = []
    headers: list[RevisionHeader] = []
    for item in items:
        if isinstance(item, UnreadableFile):
            unreadable.append(item)
        else:
            headers.append(item)
    # Alembic resolves parents and dependencies among ids and branch labels.
    known = {h.revision for h in headers} | {label for h in headers for label in h.branch_labels}
    problems: list[str] = []
    scripts: list[ScriptRevision] = []
    for header in headers:
        header = _without_unknown_dependencies(header, known, problems)
        try:
            scripts.append(ScriptRevision(header))
        except RevisionError as exc:
            unreadable.append(UnreadableFile(header.path, str(exc)))
    missing = _missing_parents(scripts, known)
    error = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _attempt in range(len(scripts) + 2):
            everything = scripts + [_missing_revision(name, named_by, unreadable)
                                    for name, named_by in missing.items()]
            revision_map = RevisionMap(
                lambda everything=everything: _parents_first(everything))
            try:
                _ = revision_map.heads  # builds the map; raises on cycles, label clashes
                _in_given_order(revision_map, everything)
                for script in revision_map._revision_map.values():
                    if script is not None:
                        revisions[script.revision] = script
            except RevisionError as exc:
                error = str(exc)
            except KeyError as exc:
                # RevisionMap raises a bare KeyError for a name it does not have:
                # drawn as a missing node, like the ones found beforehand.
                name = exc.args[0]
                if isinstance(name, str) and name not in missing:
                    missing[name] = _named_by(scripts, name)
                    continue
                error = f"A revision refers to {name!r}, which no readable revision file defines."
            break
    problems.extend(
        f"{', '.join(named_by)} name{'s' if len(named_by) == 1 else ''} {name!r} as "
        "parent, but no readable revision file defines it: it is drawn as a missing revision, "
        "and Alembic cannot run this history until that file is found."
        for name, named_by in missing.items()
    )
    problems.extend(str(w.message) for w in caught)
    ordered = {s.revision: s for s in scripts if s.revision in revisions}
    return RevisionGraph(
        revision_map=revision_map,
        revisions=ordered,
        unreadable=tuple(unreadable),
        problems=tuple(problems),
        error=error,
        missing=tuple(missing) if error is None else (),
    )


def _parents_first(scripts: list[ScriptRevision]) -> list[ScriptRevision]:
    """The scripts with every parent before its children (otherwise in the
    order given), which is what Alembic's map is quick to build from: it drops
    each parent from an ordered list of heads, which costs the parent's place
    in that list, so building from file order costs the square of the history's
    length (0.3 s for 5,000 revisions). ``_in_given_order`` then puts back
    every order the map keeps, so it answers exactly as if built in file order."""
    index = {script.revision: i for i, script in enumerate(scripts)}
    if len(index) != len(scripts):
        return scripts  # a repeated id: the order decides which one wins, as in Alembic
    children: dict[int, list[int]] = {}
    waiting = [0] * len(scripts)
    for i, script in enumerate(scripts):
        header = script.header
        for name in (*header.down_revision, *header.depends_on) if header.depends_on \
                else header.down_revision:
            j = index.get(name)
            if j is not None and j != i:
                children.setdefault(j, []).append(i)
                waiting[i] += 1
    ready = [i for i, count in enumerate(waiting) if count == 0]
    order: list[int] = []
    while ready:
        order.extend(ready)
        following: list[int] = []
        for i in ready:
            for child in children.get(i, ()):
                waiting[child] -= 1
                if waiting[child] == 0:
                    following.append(child)
        ready = sorted(following)
    if len(order) < len(scripts):  # a cycle: left where it was, for Alembic to report
        placed = set(order)
        order.extend(i for i in range(len(scripts)) if i not in placed)
    return [scripts[i] for i in order]


def _in_given_order(revision_map: RevisionMap, scripts: list[ScriptRevision]) -> None:
    """Give the map the orders it would have had if built from ``scripts`` as
    listed: its heads, bases and the revisions in its mapping."""
    rank = {script.revision: i for i, script in enumerate(scripts)}
    if len(rank) != len(scripts):
        return  # built in the given order already
    for name in ("heads", "_real_heads", "bases", "_real_bases"):
        setattr(revision_map, name, tuple(sorted(getattr(revision_map, name), key=rank.get)))
    built = revision_map._revision_map
    ordered = {script.revision: built[script.revision] for script in scripts
               if script.revision in built}
    ordered.update((key, value) for key, value in built.items() if key not in ordered)
    revision_map.__dict__["_revision_map"] = ordered


def _without_unknown_dependencies(header: RevisionHeader, known: set[str],
                                  problems: list[str]) -> RevisionHeader:
    """The header without dependencies no readable file defines (a missing or
    unreadable file, or a partial id, which Alembic never resolves in a file):
    they are left out of the graph and marked unresolved."""
    unknown = [name for name in header.depends_on if name not in known]
    if not unknown:
        return header
    names = ", ".join(repr(name) for name in unknown)
    why = (f"names {names}, which no readable revision file defines (a missing or unreadable "
           "file, or a partial id)")
    problems.append(f"{header.revision} depends on {names}, which no readable revision file "
                    "defines: the dependency is left out of the graph.")
    return replace(header,
                   depends_on=tuple(d for d in header.depends_on if d not in unknown),
                   unresolved=(*header.unresolved, ("depends_on", why)))


def _named_by(scripts: list[ScriptRevision], name: str) -> tuple[str, ...]:
    return tuple(s.revision for s in scripts
                 if name in s.header.down_revision or name in s.header.depends_on)


def _missing_parents(scripts: list[ScriptRevision], known: set[str]
                     ) -> dict[str, tuple[str, ...]]:
    """Parents no script defines, with the revisions naming them."""
    missing: dict[str, list[str]] = {}
    for script in scripts:
        for name in script.header.down_revision:
            if name not in known:
                missing.setdefault(name, []).append(script.revision)
    return {name: tuple(named_by) for name, named_by in missing.items()}


def _missing_revision(name: str, named_by: tuple[str, ...],
                      unreadable: list[UnreadableFile]) -> ScriptRevision:
    """A node for a revision others name and no readable file defines."""
    why = f"no readable revision file defines it; named by {', '.join(named_by)}"
    if unreadable:
        why += f" (unreadable files: {len(unreadable)}, listed on the overview)"
    header = RevisionHeader(path="", revision=name, down_revision=(), branch_labels=(),
                            depends_on=(), docstring="", unresolved=(("file", why),))
    return ScriptRevision(header, missing=True)


# ---------------------------------------------------------------- queries

def resolve_revision(history: History, revision_id: str) -> ScriptRevision:
    """One revision by full id, unique prefix or branch label, as Alembic resolves it."""
    if history.error:
        raise BadRequest(f"The revision history cannot be read: {history.error}")
    if not revision_id or revision_id in ("base", "heads", "head"):
        if revision_id == "head" and len(history.heads) == 1:
            return history.revisions[history.heads[0]]
        raise BadRequest(f"'{revision_id}' names no single revision.")
    try:
        found = history.revision_map.get_revision(revision_id)
    except MultipleHeads as exc:
        raise BadRequest(f"'{revision_id}' is ambiguous: {exc}") from exc
    except ResolutionError as exc:
        message = str(exc)
        if "Multiple revisions start with" in message:
            raise BadRequest(f"Ambiguous revision id '{revision_id}': {message}") from exc
        raise NotFound(f"No revision '{revision_id}' in this project: {message}") from exc
    except RevisionError as exc:
        raise BadRequest(f"Invalid revision '{revision_id}': {exc}") from exc
    if found is None:
        raise BadRequest(f"'{revision_id}' names no single revision.")
    return found  # type: ignore[return-value]


def unknown_revisions(history: History, current: Iterable[str]) -> list[str]:
    """The current revisions no script defines."""
    current = tuple(sorted(current))
    return list(history.memo(("unknown", current), lambda: tuple(
        rev for rev in current if rev not in history.revisions)))


def pending_revisions(history: History, current: tuple[str, ...]) -> list[ScriptRevision]:
    """What ``alembic upgrade heads`` would apply, in apply order."""
    def compute():
        revs = history.revision_map.iterate_revisions(
            "heads", tuple(current), implicit_base=True
        )
        return list(reversed(list(revs)))

    return history.memo(("pending", tuple(sorted(current))), compute)


def pending_messages(history: History, current: tuple[str, ...]
                     ) -> tuple[tuple[str, str], ...]:
    """(revision, message) of what ``alembic upgrade heads`` would apply, in order."""
    return history.memo(("pending messages", tuple(sorted(current))), lambda: tuple(
        (r.revision, r.doc) for r in pending_revisions(history, current)))


def applied_revisions(history: History, current: tuple[str, ...]) -> frozenset[str]:
    """Every revision the database has: the current ones and all they depend on."""
    def compute():
        if not current:
            return frozenset()
        nodes = history.revision_map._get_ancestor_nodes(
            history.revision_map.get_revisions(tuple(current))
        )
        return frozenset(n.revision for n in nodes)

    return history.memo(("applied", tuple(sorted(current))), compute)


def children_of(history: History, revision: ScriptRevision) -> tuple[str, ...]:
    return tuple(sorted(revision.nextrev))


def dependents_of(history: History, revision: ScriptRevision) -> tuple[str, ...]:
    """Revisions naming this one in depends_on."""
    return tuple(sorted(set(revision._all_nextrev) - set(revision.nextrev)))


def path_relative(project: Project, path: str) -> str:
    try:
        return str(Path(path).relative_to(Path(project.ini_path).parent))
    except ValueError:
        return path
