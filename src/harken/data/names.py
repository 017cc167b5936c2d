"""Clip file names of DCASE Task 2 (2020-2025) and MIMII: parse into a record, format back.

The file name is the only place most of these datasets record a clip's section, domain, split,
label and attributes, so it is parsed strictly: a name that fits none of the patterns below
raises :class:`~harken.errors.ClipNameError` naming the file rather than being guessed at.
Parsing then formatting gives back the exact name (``format_clip_name(parse_clip_name(n)) ==
n``), which is what lets score files written by harken carry the organizers' clip names.

Namings accepted (``scheme`` of the record, an example, where it comes from):

``dcase2020``
    ``normal_id_00_00000000.wav``, ``anomaly_id_02_00000012.wav``: DCASE 2020 development
    and additional-training clips.  Section = machine id, no domain; the split is the folder's.
``dcase2020_hidden``
    ``id_05_00000000.wav``: DCASE 2020 evaluation test clips, label hidden (``unknown``).
``dcase``
    ``section_00_source_train_normal_0000_car_A1_spd_28V_mic_1.wav``,
    ``section_00_target_test_anomaly_0012_noAttribute.wav``,
    ``section_01_source_test_normal_0000.wav`` (2021 test, no attributes),
    ``section_00_source_train_normal_0000_.wav`` (attribute slot present but empty, as in
    the 2024/2025 baseline's listings): DCASE 2021-2025 labelled clips.
``dcase_hidden_label``
    ``section_03_source_test_0000.wav``: DCASE 2021 evaluation test clips (domain known,
    label hidden).
``dcase_hidden``
    ``section_00_0000.wav``: DCASE 2022-2025 evaluation test clips (domain and label hidden).
``supplemental`` / ``supplemental_domain`` / ``supplemental_split``
    DCASE 2025 ``<machine>/supplemental/`` clips: clean machine sound (kind ``machine``) and
    noise-only recordings (kind ``noise``), both normal.  Public listings disagree on the exact
    form, so all three seen are accepted: ``section_00_machine_0001_.wav`` (the organizers'
    baseline README), ``section_00_machine_source_0000_noAttribute.wav`` (a participant's
    listing of the development archive) and ``section_00_source_supplemental_noise_0000.wav``
    (split word in the usual place).  Anything else in that folder is refused, not guessed.
``mimii``
    ``00000000.wav`` inside ``<machine>/id_XX/{normal,abnormal}/``: raw MIMII / MIMII DUE.
    The name alone says nothing, so parsing needs ``path=``; section from ``id_XX`` and the
    label from the folder (``abnormal`` -> ``anomaly``).

Attributes are kept as the raw string (exact round trip) and exposed as key/value pairs when
the underscore-separated tokens pair up (``car_A1_spd_28V`` -> ``(("car", "A1"), ("spd",
"28V"))``); an odd token count (2021's ``strength_1_ambient``) or ``noAttribute`` gives no pairs,
the raw string still being there.  The dataset layer overrides the pairs with the machine's
``attributes_XX.csv`` where one exists.

Names are matched as whole ASCII tokens (``[0-9]`` digits, exact lower-case words), so a
Unicode digit or ``Section_00`` is refused rather than normalised into a different name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from harken.errors import ClipNameError

SPLITS = ("train", "test", "supplemental")
LABELS = ("normal", "anomaly", "unknown")
DOMAINS = ("source", "target")
SUPPLEMENTAL_KINDS = ("machine", "noise")
AUDIO_EXTENSIONS = (".wav", ".flac")
NO_ATTRIBUTE = "noAttribute"
# Official indices have 4 (2021-2025) or 8 (2020, MIMII) digits; the bound keeps int() of a
# pathological 5000-digit "index" from raising something other than ClipNameError.
MAX_INDEX_DIGITS = 18

DCASE2020 = "dcase2020"
DCASE2020_HIDDEN = "dcase2020_hidden"
DCASE = "dcase"
DCASE_HIDDEN_LABEL = "dcase_hidden_label"
DCASE_HIDDEN = "dcase_hidden"
SUPPLEMENTAL = "supplemental"
SUPPLEMENTAL_DOMAIN = "supplemental_domain"
SUPPLEMENTAL_SPLIT = "supplemental_split"
MIMII = "mimii"
SCHEMES = (
    DCASE2020,
    DCASE2020_HIDDEN,
    DCASE,
    DCASE_HIDDEN_LABEL,
    DCASE_HIDDEN,
    SUPPLEMENTAL,
    SUPPLEMENTAL_DOMAIN,
    SUPPLEMENTAL_SPLIT,
    MIMII,
)

# Attribute text: anything but path separators and control characters (it is still a name).
_ATTRS = r"(?:_(?P<attrs>[^/\\\x00-\x1f\x7f]*))?"
_SEC = r"(?P<section>[0-9]{2})"
_IDX = rf"(?P<index>[0-9]{{1,{MAX_INDEX_DIGITS}}})"
_DOM = r"(?P<domain>source|target)"
_KIND = r"(?P<kind>machine|noise)"

_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (scheme, re.compile(pattern, re.ASCII))
    for scheme, pattern in (
        (DCASE, rf"section_{_SEC}_{_DOM}_(?P<split>train|test)_(?P<label>normal|anomaly)_{_IDX}{_ATTRS}"),
        (DCASE_HIDDEN_LABEL, rf"section_{_SEC}_{_DOM}_test_{_IDX}"),
        (DCASE_HIDDEN, rf"section_{_SEC}_{_IDX}"),
        (SUPPLEMENTAL, rf"section_{_SEC}_{_KIND}_{_IDX}{_ATTRS}"),
        (SUPPLEMENTAL_DOMAIN, rf"section_{_SEC}_{_KIND}_{_DOM}_{_IDX}{_ATTRS}"),
        (SUPPLEMENTAL_SPLIT, rf"section_{_SEC}_{_DOM}_supplemental_{_KIND}_{_IDX}{_ATTRS}"),
        (DCASE2020, rf"(?P<label>normal|anomaly)_id_{_SEC}_{_IDX}"),
        (DCASE2020_HIDDEN, rf"id_{_SEC}_{_IDX}"),
        (MIMII, _IDX),
    )
)
_SUPPLEMENTAL_SCHEMES = (SUPPLEMENTAL, SUPPLEMENTAL_DOMAIN, SUPPLEMENTAL_SPLIT)
_MIMII_ID = re.compile(r"id_(?P<section>[0-9]{2})", re.ASCII)
_MIMII_LABEL = {"normal": "normal", "abnormal": "anomaly"}
_MIMII_FOLDER = {"normal": "normal", "anomaly": "abnormal"}

# What each scheme fixes, so that a hand-built record cannot format into a different scheme's name.
_HAS_DOMAIN = {DCASE: True, DCASE_HIDDEN_LABEL: True, SUPPLEMENTAL_DOMAIN: True, SUPPLEMENTAL_SPLIT: True}
_HAS_ATTRS = {DCASE, SUPPLEMENTAL, SUPPLEMENTAL_DOMAIN, SUPPLEMENTAL_SPLIT}
_FIXED_SPLIT = {
    DCASE_HIDDEN_LABEL: "test",
    DCASE_HIDDEN: "test",
    SUPPLEMENTAL: "supplemental",
    SUPPLEMENTAL_DOMAIN: "supplemental",
    SUPPLEMENTAL_SPLIT: "supplemental",
    DCASE2020: None,
    DCASE2020_HIDDEN: None,
    MIMII: None,
}


def attribute_pairs(raw: str | None) -> tuple[tuple[str, str], ...]:
    """Key/value pairs of an attribute string, or ``()`` where its tokens do not pair up."""
    if not raw or raw == NO_ATTRIBUTE:
        return ()
    tokens = raw.split("_")
    if len(tokens) % 2 or any(not t for t in tokens[0::2]):
        return ()
    return tuple(zip(tokens[0::2], tokens[1::2], strict=True))


@dataclass(frozen=True)
class ClipName:
    """What one clip file name says, plus what its scheme needs to be written back exactly.

    ``split`` is None where the name does not say (2020 and MIMII names: the folder does);
    ``domain`` is None where the naming has none or hides it; ``kind`` is ``machine`` or
    ``noise`` for DCASE 2025 supplemental clips and None otherwise.  ``index_width`` and
    ``attributes_raw`` (None: no attribute slot; ``""``: an empty one) exist for the round trip.
    """

    scheme: str
    section: str
    domain: str | None
    split: str | None
    label: str
    index: int
    index_width: int
    attributes_raw: str | None = None
    kind: str | None = None
    extension: str = ".wav"

    def __post_init__(self) -> None:
        problem = _record_problem(self)
        if problem:
            raise ClipNameError(f"inconsistent clip name record ({problem}): {self!r}")

    @property
    def attributes(self) -> tuple[tuple[str, str], ...]:
        return attribute_pairs(self.attributes_raw)

    @property
    def file_name(self) -> str:
        return format_clip_name(self)

    @property
    def is_labelled(self) -> bool:
        return self.label != "unknown"


def _record_problem(c: ClipName) -> str | None:
    # Checked on every record so that format_clip_name can never emit a name that parses
    # back into something else.
    if c.scheme not in SCHEMES:
        return f"unknown scheme {c.scheme!r}"
    if not (isinstance(c.section, str) and len(c.section) == 2 and c.section.isascii() and c.section.isdigit()):
        return f"section must be two digits, got {c.section!r}"
    if isinstance(c.index, bool) or not isinstance(c.index, int) or c.index < 0:
        return f"index must be a non-negative integer, got {c.index!r}"
    if (
        isinstance(c.index_width, bool)
        or not isinstance(c.index_width, int)
        or not 1 <= c.index_width <= MAX_INDEX_DIGITS
        or len(str(c.index)) > c.index_width
    ):
        return f"index {c.index} does not fit in {c.index_width!r} digits"
    if c.extension.lower() not in (*AUDIO_EXTENSIONS, ""):
        return f"extension must be .wav, .flac or empty, got {c.extension!r}"
    needs_domain = _HAS_DOMAIN.get(c.scheme, False)
    if needs_domain and c.domain not in DOMAINS:
        return f"scheme {c.scheme} needs domain source/target, got {c.domain!r}"
    if not needs_domain and c.domain is not None:
        return f"scheme {c.scheme} has no domain, got {c.domain!r}"
    expected_split = _FIXED_SPLIT.get(c.scheme, "labelled")
    if c.scheme == DCASE:
        if c.split not in ("train", "test"):
            return f"split must be train or test, got {c.split!r}"
    elif c.split != expected_split:
        return f"scheme {c.scheme} has split {expected_split!r}, got {c.split!r}"
    if c.scheme in (DCASE, DCASE2020, MIMII):
        if c.label not in ("normal", "anomaly"):
            return f"label must be normal or anomaly, got {c.label!r}"
    elif c.scheme in _SUPPLEMENTAL_SCHEMES:
        if c.label != "normal":
            return f"supplemental clips are normal, got label {c.label!r}"
    elif c.label != "unknown":
        return f"scheme {c.scheme} hides the label, got {c.label!r}"
    is_supplemental = c.scheme in _SUPPLEMENTAL_SCHEMES
    if is_supplemental and c.kind not in SUPPLEMENTAL_KINDS:
        return f"supplemental kind must be machine or noise, got {c.kind!r}"
    if not is_supplemental and c.kind is not None:
        return f"only supplemental clips have a kind, got {c.kind!r}"
    if c.scheme not in _HAS_ATTRS and c.attributes_raw is not None:
        return f"scheme {c.scheme} has no attribute slot"
    if c.attributes_raw is not None and re.search(r"[/\\\x00-\x1f\x7f]", c.attributes_raw):
        return f"attributes {c.attributes_raw!r} contain a separator or control character"
    if not c.extension and "." in (c.attributes_raw or ""):
        return "attributes with a dot need an extension (the name would read as one)"
    return None


def _split_extension(name: str) -> tuple[str, str] | None:
    lower = name.lower()
    for ext in AUDIO_EXTENSIONS:
        if lower.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)], name[-len(ext) :]
    if "." in name:
        return None
    return name, ""


def parse_clip_name(name: str, *, path: str | Path | None = None) -> ClipName:
    """Parse one clip file name; ``path`` (the clip's full path) is needed only for MIMII.

    ``path`` also makes the error name the file where it lives.  Raises ClipNameError for a
    name that fits none of the schemes in the module docstring.
    """
    where = path
    if not isinstance(name, str):
        raise ClipNameError(f"clip name must be a string, got {type(name).__name__}", path=where)
    if not name or "/" in name or "\\" in name or "\x00" in name:
        raise ClipNameError(f"{name!r} is not a single file name", path=where)
    parts = _split_extension(name)
    if parts is None:
        raise ClipNameError(
            f"clip name {name!r} has an extension other than .wav / .flac", path=where
        )
    stem, extension = parts
    for scheme, pattern in _PATTERNS:
        m = pattern.fullmatch(stem)
        if m is None:
            continue
        g = m.groupdict()
        if scheme == MIMII:
            section, label = _mimii_context(name, path)
        else:
            section = g["section"]
            label = g.get("label") or ("normal" if scheme in _SUPPLEMENTAL_SCHEMES else "unknown")
        try:
            return ClipName(
                scheme=scheme,
                section=section,
                domain=g.get("domain"),
                split=g.get("split") or _FIXED_SPLIT.get(scheme),
                label=label,
                index=int(g["index"]),
                index_width=len(g["index"]),
                attributes_raw=g.get("attrs"),
                kind=g.get("kind"),
                extension=extension,
            )
        except ClipNameError as exc:  # e.g. a dot in attributes of a name without extension
            raise ClipNameError(f"clip name {name!r}: {exc}", path=where) from None
    raise ClipNameError(
        f"clip name {name!r} fits no DCASE Task 2 (2020-2025) or MIMII naming, e.g. "
        "section_00_source_train_normal_0000_<attributes>.wav, section_00_0000.wav, "
        "normal_id_00_00000000.wav or <machine>/id_00/normal/00000000.wav",
        path=where,
    )


def _mimii_context(name: str, path: str | Path | None) -> tuple[str, str]:
    if path is None:
        raise ClipNameError(
            f"clip name {name!r} is a bare MIMII number: its section and label come from the "
            "folders <machine>/id_XX/{normal,abnormal}/, so pass path=",
        )
    p = Path(path)
    label = _MIMII_LABEL.get(p.parent.name)
    m = _MIMII_ID.fullmatch(p.parent.parent.name)
    if label is None or m is None:
        raise ClipNameError(
            f"clip name {name!r} is a bare MIMII number but is not in a "
            "<machine>/id_XX/{normal,abnormal}/ folder",
            path=path,
        )
    return m["section"], label


def format_clip_name(c: ClipName) -> str:
    """The file name a record stands for (exactly the one it was parsed from)."""
    idx = f"{c.index:0{c.index_width}d}"
    attrs = "" if c.attributes_raw is None else f"_{c.attributes_raw}"
    if c.scheme == DCASE:
        stem = f"section_{c.section}_{c.domain}_{c.split}_{c.label}_{idx}{attrs}"
    elif c.scheme == DCASE_HIDDEN_LABEL:
        stem = f"section_{c.section}_{c.domain}_test_{idx}"
    elif c.scheme == DCASE_HIDDEN:
        stem = f"section_{c.section}_{idx}"
    elif c.scheme == SUPPLEMENTAL:
        stem = f"section_{c.section}_{c.kind}_{idx}{attrs}"
    elif c.scheme == SUPPLEMENTAL_DOMAIN:
        stem = f"section_{c.section}_{c.kind}_{c.domain}_{idx}{attrs}"
    elif c.scheme == SUPPLEMENTAL_SPLIT:
        stem = f"section_{c.section}_{c.domain}_supplemental_{c.kind}_{idx}{attrs}"
    elif c.scheme == DCASE2020:
        stem = f"{c.label}_id_{c.section}_{idx}"
    elif c.scheme == DCASE2020_HIDDEN:
        stem = f"id_{c.section}_{idx}"
    elif c.scheme == MIMII:
        stem = idx
    else:  # pragma: no cover - __post_init__ refuses unknown schemes
        raise ClipNameError(f"unknown scheme {c.scheme!r}")
    return stem + c.extension


def mimii_relative_path(c: ClipName) -> str:
    """``id_XX/{normal,abnormal}/<name>``: where a MIMII clip has to sit to parse back."""
    if c.scheme != MIMII:
        raise ClipNameError(f"not a MIMII clip name record: {c!r}")
    return f"id_{c.section}/{_MIMII_FOLDER[c.label]}/{format_clip_name(c)}"
