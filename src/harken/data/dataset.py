"""Find the clips of a DCASE Task 2 (2020-2025) or MIMII dataset on disk, as :class:`Clip` records.

Layouts recognised under ``root`` (machine folders may appear under several of these at once;
clips of one machine type in ``dev_data`` and ``eval_data`` are merged under its name, which is
how the 2020-2022 evaluation sections of the development machine types arrive)::

    <root>/<machine>/{train,test,supplemental}/*.{wav,flac}   2022-2025 (and the baseline's data/)
    <root>/<machine>/{train,source_test,target_test}/          2021 (domain from the folder too)
    <root>/dev_data/raw/<machine>/...   <root>/eval_data/raw/<machine>/...   (2023-2025 baseline)
    <root>/dev_data/<machine>/...       <root>/eval_data/<machine>/...       (2020-2022 baseline)
    <root> = one machine folder (it has train/, test/ or supplemental/ itself)
    <root>/<machine>/id_XX/{normal,abnormal}/*.wav                            raw MIMII

Every audio file is parsed with :func:`harken.data.names.parse_clip_name`; a name that fits no
official naming stops discovery with :class:`~harken.errors.ClipNameError` naming the file.
Hidden files (``._x.wav`` from macOS archives) and non-audio files are skipped.

Choices, each tested:

* **Folder vs name.**  The split is the folder's; a name that states another split or domain
  than its folder (a clip copied into the wrong folder) is a :class:`DatasetError`.
* **MIMII** has no official train/test split: its clips get ``split="test"`` (labels known);
  callers that train on MIMII choose their own normal clips for training.
* **Attributes CSVs** (``<machine>/attributes_XX.csv``: ``file_name,d1p,d1v[,d2p,d2v...]``, the
  name relative like ``ToyCar/train/section_00_...wav``, or bare, with or without suffix) give
  a clip's attributes and override the pairs parsed from its name.  A malformed CSV (no
  ``file_name`` column first, unpaired cells, the same file twice, a row matching two clips)
  is a DatasetError naming the CSV and row: the file itself is wrong.  Rows for files that are
  not on disk, and clips a CSV leaves out of a folder it otherwise covers, only warn
  (:class:`~harken.errors.HarkenWarning`, naming the CSV and the rows/files): partial downloads
  (evaluation test archives arrive later) are normal and the names still carry the labels.
* **Duplicates**: two files for one clip (same machine, section, domain, split, label,
  supplemental kind and index, e.g. a ``.wav`` and a ``.flac``) are a DatasetError naming both.
  With ``check_content=True`` files with identical bytes are refused as well (this reads every
  file, so it is off by default).
* **Empty machine folders** (nothing inside, or split folders without a single clip) are a
  DatasetError naming the folder; a subfolder that is not a machine folder at all (no
  split/``id_XX`` folders, but other content) is skipped with a warning.
* **No target-domain training clips** for a machine type and section that has source-domain
  ones: allowed (that is the first-shot setting at its hardest), with a warning, since domain
  balanced training then has nothing to balance.
"""

from __future__ import annotations

import csv
import hashlib
import re
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from harken.data.names import (
    AUDIO_EXTENSIONS,
    NO_ATTRIBUTE,
    SPLITS,
    ClipName,
    parse_clip_name,
)
from harken.errors import ClipNameError, DatasetError, HarkenWarning

# split folder -> (split, domain the folder implies)
SPLIT_FOLDERS: dict[str, tuple[str, str | None]] = {
    "train": ("train", None),
    "test": ("test", None),
    "supplemental": ("supplemental", None),
    "source_test": ("test", "source"),
    "target_test": ("test", "target"),
}
_CONTAINERS = (("dev_data", "raw"), ("eval_data", "raw"), ("dev_data",), ("eval_data",), ("raw",))
_CONTAINER_NAMES = {"dev_data", "eval_data", "raw"}
_MIMII_ID = re.compile(r"id_[0-9]{2}", re.ASCII)
_MIMII_LABEL_FOLDERS = ("normal", "abnormal")
_ATTRIBUTES_CSV = re.compile(r"attributes_(?P<section>[0-9]{2})\.csv", re.ASCII)
_MIMII_SPLIT = "test"
_EXAMPLES = 3  # rows / files named in one warning before "and N more"


@dataclass(frozen=True)
class Clip:
    """One audio clip and what is known of it (from its name, folder and attributes CSV)."""

    path: Path
    machine: str
    section: str
    domain: str | None
    split: str
    label: str
    index: int
    attributes: tuple[tuple[str, str], ...]
    name: ClipName

    @property
    def file_name(self) -> str:
        return self.path.name

    @property
    def kind(self) -> str | None:
        """``machine`` / ``noise`` for DCASE 2025 supplemental clips, else None."""
        return self.name.kind

    @property
    def key(self) -> tuple[str, str, str | None, str, str, str | None, int]:
        """What makes a clip unique in a dataset (two files with one key are duplicates)."""
        return (self.machine, self.section, self.domain, self.split, self.label, self.kind, self.index)


def _sort_key(clip: Clip) -> tuple:
    return (
        clip.machine,
        SPLITS.index(clip.split),
        clip.section,
        clip.domain or "",
        clip.label,
        clip.kind or "",
        clip.index,
        str(clip.path),
    )


def clip_from_path(
    path: str | Path,
    *,
    machine: str | None = None,
    split: str | None = None,
) -> Clip:
    """A Clip for a single file outside a discovered dataset (scoring arbitrary files).

    The machine type defaults to the folder above the split folder (or above ``id_XX`` for
    MIMII), the split to the folder's, else ``test``.  Attributes come from the name only.
    """
    path = Path(path)
    name = parse_clip_name(path.name, path=path)
    folder = path.parent.name
    if name.scheme == "mimii":
        guessed_machine = path.parent.parent.parent.name
        folder_split, folder_domain = _MIMII_SPLIT, None
    elif folder in SPLIT_FOLDERS:
        guessed_machine = path.parent.parent.name
        folder_split, folder_domain = SPLIT_FOLDERS[folder]
    else:
        guessed_machine = folder
        folder_split, folder_domain = name.split or "test", None
    split = split or folder_split
    if split not in SPLITS:
        raise DatasetError(f"split must be one of {', '.join(SPLITS)}, got {split!r}", path=path)
    return _make_clip(path, machine or guessed_machine or "unknown", split, folder_domain, name)


def _make_clip(path: Path, machine: str, split: str, folder_domain: str | None, name: ClipName) -> Clip:
    if name.split is not None and name.split != split:
        raise DatasetError(
            f"the clip name says split {name.split!r} but the file is in a {split!r} folder",
            path=path,
        )
    if folder_domain is not None and name.domain not in (None, folder_domain):
        raise DatasetError(
            f"the clip name says domain {name.domain!r} but the file is in a {folder_domain}_test folder",
            path=path,
        )
    return Clip(
        path=path,
        machine=machine,
        section=name.section,
        domain=name.domain or folder_domain,
        split=split,
        label=name.label,
        index=name.index,
        attributes=name.attributes,
        name=name,
    )


# ----------------------------------------------------------------------------- discovery
def discover(
    root: str | Path,
    *,
    machines: Iterable[str] | None = None,
    splits: Iterable[str] | None = None,
    check_content: bool = False,
) -> list[Clip]:
    """All clips under ``root`` (see the module docstring for layouts and rules), sorted.

    ``machines`` / ``splits`` restrict the result; naming a machine type that is not there is
    an error (a typo should not yield an empty run).
    """
    root = Path(root)
    if isinstance(machines, str):
        machines = [machines]
    if isinstance(splits, str):
        splits = [splits]
    if not root.is_dir():
        raise DatasetError("dataset root is not a folder (or does not exist)", path=root)
    wanted_splits = _check_splits(splits)
    machine_dirs = _machine_dirs(root)
    if not machine_dirs:
        raise DatasetError(
            "no machine folders found: expected <machine>/{train,test,supplemental}/, "
            "dev_data/raw/<machine>/, eval_data/raw/<machine>/ or <machine>/id_XX/{normal,abnormal}/",
            path=root,
        )
    if machines is not None:
        wanted = list(dict.fromkeys(machines))
        present = {name for name, _ in machine_dirs}
        missing = [m for m in wanted if m not in present]
        if missing:
            raise DatasetError(
                f"machine type(s) {', '.join(missing)} not found; present: {', '.join(sorted(present))}",
                path=root,
            )
        machine_dirs = [(name, d) for name, d in machine_dirs if name in set(wanted)]

    clips: list[Clip] = []
    for machine, machine_dir in machine_dirs:
        found = _machine_clips(machine, machine_dir, wanted_splits)
        _apply_attribute_csvs(machine_dir, found, wanted_splits)
        clips.extend(found)
    clips.sort(key=_sort_key)
    _check_duplicates(clips)
    if check_content:
        _check_duplicate_content(clips)
    if "train" in wanted_splits:
        _warn_missing_target(clips)
    return clips


def _check_splits(splits: Iterable[str] | None) -> tuple[str, ...]:
    if splits is None:
        return SPLITS
    chosen = tuple(dict.fromkeys(splits))
    bad = [s for s in chosen if s not in SPLITS]
    if bad or not chosen:
        raise DatasetError(f"splits must be among {', '.join(SPLITS)}, got {list(chosen)!r}")
    return chosen


def _is_machine_dir(d: Path) -> bool:
    return any(
        (d / name).is_dir() for name in SPLIT_FOLDERS
    ) or any(c.is_dir() and _MIMII_ID.fullmatch(c.name) for c in _children(d))


def _children(d: Path) -> list[Path]:
    try:
        return sorted(d.iterdir())
    except PermissionError:
        raise DatasetError("folder is not readable (permission denied)", path=d) from None
    except NotADirectoryError:
        return []


def _machine_dirs(root: Path) -> list[tuple[str, Path]]:
    if _is_machine_dir(root):
        return [(root.name, root)]
    containers = [root] + [root.joinpath(*c) for c in _CONTAINERS if root.joinpath(*c).is_dir()]
    container_set = {c.resolve() for c in containers}
    found: list[tuple[str, Path]] = []
    for container in containers:
        for d in _children(container):
            if not d.is_dir() or d.name.startswith(".") or d.resolve() in container_set:
                continue
            if container == root and d.name in _CONTAINER_NAMES:
                continue  # dev_data/ without raw/ machine folders, say: nothing to report
            if _is_machine_dir(d):
                found.append((d.name, d))
            elif not _children(d):
                raise DatasetError(
                    "empty machine folder (no train/, test/, supplemental/ or id_XX/ inside)", path=d
                )
            else:
                warnings.warn(
                    f"{d}: skipped: not a machine folder (no train/, test/, supplemental/ or "
                    "id_XX/ folder inside)",
                    HarkenWarning,
                    stacklevel=3,
                )
    return found


def _is_audio(p: Path) -> bool:
    return p.suffix.lower() in AUDIO_EXTENSIONS and not p.name.startswith(".") and p.is_file()


def _machine_clips(machine: str, machine_dir: Path, splits: tuple[str, ...]) -> list[Clip]:
    clips: list[Clip] = []
    any_audio = False
    for folder, (split, folder_domain) in SPLIT_FOLDERS.items():
        d = machine_dir / folder
        if not d.is_dir():
            continue
        files = [p for p in _children(d) if _is_audio(p)]
        any_audio = any_audio or bool(files)
        if split not in splits:
            continue
        for p in files:
            clips.append(_make_clip(p, machine, split, folder_domain, parse_clip_name(p.name, path=p)))
    for id_dir in _children(machine_dir):
        if not (id_dir.is_dir() and _MIMII_ID.fullmatch(id_dir.name)):
            continue
        for label_folder in _MIMII_LABEL_FOLDERS:
            d = id_dir / label_folder
            if not d.is_dir():
                continue
            files = [p for p in _children(d) if _is_audio(p)]
            any_audio = any_audio or bool(files)
            if _MIMII_SPLIT not in splits:
                continue
            for p in files:
                clips.append(_make_clip(p, machine, _MIMII_SPLIT, None, parse_clip_name(p.name, path=p)))
    if not any_audio:
        raise DatasetError(
            "machine folder holds no .wav/.flac clips in its train/, test/, supplemental/ or "
            "id_XX/{normal,abnormal}/ folders",
            path=machine_dir,
        )
    return clips


# ------------------------------------------------------------------------ attributes CSVs
class AttributesRow(NamedTuple):
    """One row of an ``attributes_XX.csv``: the file it names and its attribute pairs."""

    number: int  # 1-based line number in the CSV (the header is line 1)
    file_name: str
    folder: str | None
    stem: str
    pairs: tuple[tuple[str, str], ...]


def _stem(file_name: str) -> str:
    lower = file_name.lower()
    for ext in AUDIO_EXTENSIONS:
        if lower.endswith(ext):
            return file_name[: -len(ext)]
    return file_name


def read_attributes_csv(path: str | Path) -> list[AttributesRow]:
    """Rows of one ``attributes_XX.csv``; a malformed file is a DatasetError naming the row."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DatasetError("attributes CSV is not UTF-8 text", path=path) from None
    except OSError as exc:
        raise DatasetError(f"cannot read attributes CSV: {exc.strerror or exc}", path=path) from None
    reader = csv.reader(text.splitlines())
    header = next(reader, None)
    if not header or header[0].strip() != "file_name":
        raise DatasetError(
            f"attributes CSV must start with a header whose first column is file_name, got {header!r}",
            path=path,
        )
    rows: list[AttributesRow] = []
    seen: dict[tuple[str | None, str], int] = {}
    for number, row in enumerate(reader, start=2):
        if not row or not any(cell.strip() for cell in row):
            continue
        name_cell = row[0].strip().replace("\\", "/")
        cells = [c.strip() for c in row[1:]]
        while cells and len(cells) % 2 and not cells[-1]:
            cells.pop()  # a trailing empty cell, as spreadsheets write
        if len(cells) % 2:
            raise DatasetError(
                f"row {number} ({name_cell}): attribute cells must come in name,value pairs, got {cells!r}",
                path=path,
            )
        pairs = []
        for key, value in zip(cells[0::2], cells[1::2], strict=True):
            if (not key or key == NO_ATTRIBUTE) and not value:
                continue  # empty pair, or DCASE's "noAttribute," for hidden attributes
            if not key:
                raise DatasetError(f"row {number} ({name_cell}): value {value!r} has no attribute name", path=path)
            pairs.append((key, value))
        parts = [p for p in name_cell.split("/") if p]
        if not parts:
            raise DatasetError(f"row {number}: empty file_name", path=path)
        folder = parts[-2] if len(parts) >= 2 and parts[-2] in SPLIT_FOLDERS else None
        stem = _stem(parts[-1])
        if (folder, stem) in seen:
            raise DatasetError(
                f"rows {seen[(folder, stem)]} and {number} both describe {name_cell}", path=path
            )
        seen[(folder, stem)] = number
        rows.append(AttributesRow(number, name_cell, folder, stem, tuple(pairs)))
    return rows


def _row_split(row: AttributesRow) -> str | None:
    if row.folder is not None:
        return SPLIT_FOLDERS[row.folder][0]
    try:
        return parse_clip_name(row.stem).split
    except ClipNameError:
        return None


def _listing(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_EXAMPLES])
    return shown + (f" and {len(items) - _EXAMPLES} more" if len(items) > _EXAMPLES else "")


def _apply_attribute_csvs(machine_dir: Path, clips: list[Clip], splits: tuple[str, ...]) -> None:
    csv_paths = [p for p in _children(machine_dir) if p.is_file() and _ATTRIBUTES_CSV.fullmatch(p.name)]
    if not csv_paths:
        return
    by_stem: dict[str, list[int]] = {}
    for i, clip in enumerate(clips):
        by_stem.setdefault(_stem(clip.path.name), []).append(i)
    for csv_path in csv_paths:
        section = _ATTRIBUTES_CSV.fullmatch(csv_path.name)["section"]  # type: ignore[index]
        missing_rows: list[str] = []
        matched: set[int] = set()
        for row in read_attributes_csv(csv_path):
            candidates = by_stem.get(row.stem, [])
            if row.folder is not None:
                candidates = [i for i in candidates if clips[i].path.parent.name == row.folder]
            if len(candidates) > 1:
                raise DatasetError(
                    f"row {row.number} ({row.file_name}) matches several clips: "
                    + ", ".join(str(clips[i].path) for i in candidates),
                    path=csv_path,
                )
            if not candidates:
                split = _row_split(row)
                if split is None or split in splits:
                    missing_rows.append(f"row {row.number} ({row.file_name})")
                continue
            i = candidates[0]
            matched.add(i)
            if row.pairs:
                clips[i] = _replace_attributes(clips[i], row.pairs)
        if missing_rows:
            warnings.warn(
                f"{csv_path}: {len(missing_rows)} row(s) name files that are not on disk: "
                f"{_listing(missing_rows)}",
                HarkenWarning,
                stacklevel=4,
            )
        covered = {clips[i].path.parent for i in matched}
        unlisted = [
            str(c.path)
            for i, c in enumerate(clips)
            if i not in matched and c.section == section and c.path.parent in covered
        ]
        if unlisted:
            warnings.warn(
                f"{csv_path}: {len(unlisted)} clip(s) in folders it covers are not listed "
                f"(their attributes come from the file name): {_listing(unlisted)}",
                HarkenWarning,
                stacklevel=4,
            )


def _replace_attributes(clip: Clip, pairs: tuple[tuple[str, str], ...]) -> Clip:
    return Clip(
        path=clip.path,
        machine=clip.machine,
        section=clip.section,
        domain=clip.domain,
        split=clip.split,
        label=clip.label,
        index=clip.index,
        attributes=pairs,
        name=clip.name,
    )


# ----------------------------------------------------------------------------- checks
def _check_duplicates(clips: Sequence[Clip]) -> None:
    first: dict[tuple, Clip] = {}
    for clip in clips:
        other = first.setdefault(clip.key, clip)
        if other is not clip:
            raise DatasetError(
                f"duplicate clip: {other.path} and {clip.path} are both {clip.machine} section "
                f"{clip.section} {clip.domain or '-'} {clip.split} {clip.label} "
                f"{clip.kind + ' ' if clip.kind else ''}#{clip.index}"
            )


def _check_duplicate_content(clips: Sequence[Clip]) -> None:
    by_size: dict[int, list[Clip]] = {}
    for clip in clips:
        by_size.setdefault(clip.path.stat().st_size, []).append(clip)
    for group in by_size.values():
        if len(group) < 2:
            continue
        seen: dict[bytes, Clip] = {}
        for clip in group:
            digest = _digest(clip.path)
            other = seen.setdefault(digest, clip)
            if other is not clip:
                raise DatasetError(f"duplicate clip: {other.path} and {clip.path} have identical content")


def _digest(path: Path) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    except OSError as exc:
        raise DatasetError(f"cannot read clip: {exc.strerror or exc}", path=path) from None
    return h.digest()


def _warn_missing_target(clips: Sequence[Clip]) -> None:
    domains: dict[tuple[str, str], set[str | None]] = {}
    for clip in clips:
        if clip.split == "train":
            domains.setdefault((clip.machine, clip.section), set()).add(clip.domain)
    for (machine, section), seen in sorted(domains.items()):
        if "source" in seen and "target" not in seen:
            warnings.warn(
                f"{machine} section {section}: no target-domain training clips (source only); "
                "domain-balanced training has no target examples for it",
                HarkenWarning,
                stacklevel=3,
            )


# ----------------------------------------------------------------------------- summary
class SummaryRow(NamedTuple):
    """Clip count of one machine x section x domain x split x label (x supplemental kind)."""

    machine: str
    section: str
    domain: str | None
    split: str
    label: str
    kind: str | None
    count: int


def summary(clips: Iterable[Clip]) -> list[SummaryRow]:
    """Counts per machine x section x domain x split x label (and supplemental kind), sorted."""
    counts = Counter((c.machine, c.section, c.domain, c.split, c.label, c.kind) for c in clips)
    rows = [SummaryRow(*key, count) for key, count in counts.items()]
    rows.sort(key=lambda r: (r.machine, r.section, SPLITS.index(r.split), r.domain or "", r.label, r.kind or ""))
    return rows


def format_summary(rows: Sequence[SummaryRow]) -> str:
    """A plain-text table of :func:`summary` rows with per-machine and overall totals."""
    header = ("machine", "section", "domain", "split", "label", "kind", "clips")
    body: list[tuple[str, ...]] = []
    totals: Counter[str] = Counter()
    for r in rows:
        body.append((r.machine, r.section, r.domain or "-", r.split, r.label, r.kind or "-", str(r.count)))
        totals[r.machine] += r.count
    for machine in sorted(totals):
        body.append((machine, "all", "", "", "", "", str(totals[machine])))
    body.append(("total", "", "", "", "", "", str(sum(totals.values()))))
    widths = [max(len(row[i]) for row in (header, *body)) for i in range(len(header))]
    lines = []
    for row in (header, *body):
        cells = [cell.ljust(w) for cell, w in zip(row[:-1], widths[:-1], strict=True)]
        lines.append("  ".join([*cells, row[-1].rjust(widths[-1])]).rstrip())
    return "\n".join(lines) + "\n"
