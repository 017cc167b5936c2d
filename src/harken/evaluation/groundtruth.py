"""Ground truth for evaluation, from the organizers' CSVs or from labelled clip names.

Two sources, detected from the path given:

* the organizers' layout (released with the evaluator after each challenge)::

      GT/ground_truth_data/ground_truth_<machine>_section_<XX>_test.csv     clip,label  (1 anomalous)
      GT/ground_truth_domain/ground_truth_<machine>_section_<XX>_test.csv   clip,domain (1 target)

  (``GT`` itself or its ``ground_truth_data`` folder may be given; the domain folder is
  optional, without it every clip is of unknown domain);
* a dataset root whose test clips carry their label in the name, as the development sets do::

      ROOT/<machine>/test/section_00_source_test_anomaly_0003_<attributes>.wav

  (``ROOT`` may also be a single machine folder).  Names are parsed with
  :func:`harken.data.names.parse_clip_name`; an unlabelled test clip (an evaluation set
  before its ground truth is out) is an error rather than a clip left out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harken.errors import ClipNameError, DatasetError, ScoreFileError
from harken.evaluation.metrics import NO_DOMAIN, SOURCE, TARGET
from harken.evaluation.submission import check_duplicate, read_rows

_GT_RE = re.compile(r"^ground_truth_(?P<machine>.+)_section_(?P<section>\d{2})_test\.csv$")
AUDIO_SUFFIXES = (".wav", ".flac")


@dataclass
class GroundTruthSection:
    """Labels and domains of one machine type / section's test clips (in a fixed clip order)."""

    machine: str
    section: str
    clip_names: tuple[str, ...]
    labels: np.ndarray  # 1 = anomalous
    domains: np.ndarray  # 0 source, 1 target, -1 unknown
    origin: str  # the file or folder it came from, for messages

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int8)
        self.domains = np.asarray(self.domains, dtype=np.int8)


GroundTruth = dict[tuple[str, str], GroundTruthSection]


def load_ground_truth(path: str | Path) -> GroundTruth:
    """Ground truth keyed by (machine, section), from either layout (detected)."""
    path = Path(path)
    if not path.exists():
        raise ScoreFileError("ground truth not found", path=path)
    if (path / "ground_truth_data").is_dir():
        return load_organizer_ground_truth(path)
    if path.name == "ground_truth_data" and path.is_dir():
        return load_organizer_ground_truth(path.parent)
    if path.is_dir() and (_machine_test_dirs(path)):
        return load_labelled_names(path)
    raise ScoreFileError(
        "neither the organizers' ground truth (a folder with ground_truth_data/) nor a dataset "
        "root with <machine>/test/ clips",
        path=path,
    )


# --------------------------------------------------------------------------- organizers' CSVs
def _read_binary_csv(path: Path, what: str) -> dict[str, int]:
    seen: dict[str, int] = {}
    out: dict[str, int] = {}
    for lineno, clip, value in read_rows(path):
        check_duplicate(seen, clip, lineno, path)
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if number not in (0.0, 1.0):
            raise ScoreFileError(
                f"row {lineno}: clip {clip}: {what} {value!r} is not 0 or 1", path=path
            )
        out[clip] = int(number)
    return out


def load_organizer_ground_truth(root: str | Path) -> GroundTruth:
    root = Path(root)
    data_dir = root / "ground_truth_data"
    domain_dir = root / "ground_truth_domain"
    result: GroundTruth = {}
    for path in sorted(data_dir.iterdir()):
        if not path.is_file() or path.suffix != ".csv":
            continue
        m = _GT_RE.match(path.name)
        if m is None:
            raise ScoreFileError(
                "not a ground-truth file name (ground_truth_<machine>_section_<XX>_test.csv)",
                path=path,
            )
        labels = _read_binary_csv(path, "label")
        names = tuple(sorted(labels))
        domain_path = domain_dir / path.name
        if domain_path.is_file():
            domains = _read_binary_csv(domain_path, "domain")
            if set(domains) != set(labels):
                missing = sorted(set(labels) - set(domains))
                extra = sorted(set(domains) - set(labels))
                detail = f"missing {missing[0]}" if missing else f"extra clip {extra[0]}"
                raise ScoreFileError(
                    f"clip list differs from {path.name} ({detail})", path=domain_path
                )
            domain_codes = [SOURCE if domains[c] == 0 else TARGET for c in names]
        elif domain_dir.is_dir():
            raise ScoreFileError(f"no domain file for {path.name}", path=domain_dir)
        else:
            domain_codes = [NO_DOMAIN] * len(names)
        key = (m.group("machine"), m.group("section"))
        result[key] = GroundTruthSection(
            machine=key[0],
            section=key[1],
            clip_names=names,
            labels=np.array([labels[c] for c in names]),
            domains=np.array(domain_codes),
            origin=str(path),
        )
    if not result:
        raise ScoreFileError("no ground_truth_<machine>_section_<XX>_test.csv files", path=data_dir)
    return result


# --------------------------------------------------------------------------- labelled names
def _machine_test_dirs(root: Path) -> list[Path]:
    if (root / "test").is_dir():
        return [root / "test"]
    return sorted(p for p in root.glob("*/test") if p.is_dir())


def load_labelled_names(root: str | Path) -> GroundTruth:
    """Ground truth from the labels and domains in the test clips' file names."""
    from harken.data.names import parse_clip_name

    root = Path(root)
    result: GroundTruth = {}
    for test_dir in _machine_test_dirs(root):
        machine = test_dir.parent.name
        clips: dict[str, list[tuple[str, int, int]]] = {}
        for path in sorted(test_dir.iterdir()):
            if not path.is_file() or path.suffix.lower() not in AUDIO_SUFFIXES:
                continue
            try:
                name = parse_clip_name(path.name, path=path)
            except ClipNameError as exc:
                raise DatasetError(
                    f"cannot read the label from the clip name: {exc}", path=path
                ) from None
            if name.label not in ("normal", "anomaly"):
                raise DatasetError(
                    "test clip name carries no normal/anomaly label (an evaluation set?); "
                    "pass the organizers' ground truth (folder with ground_truth_data/) instead",
                    path=path,
                )
            domain = {"source": SOURCE, "target": TARGET}.get(name.domain or "", NO_DOMAIN)
            section = name.section
            clips.setdefault(section, []).append((path.name, int(name.label == "anomaly"), domain))
        if not clips:
            raise DatasetError("no audio clips in the test folder", path=test_dir)
        for section, rows in clips.items():
            rows.sort()
            result[(machine, section)] = GroundTruthSection(
                machine=machine,
                section=section,
                clip_names=tuple(r[0] for r in rows),
                labels=np.array([r[1] for r in rows]),
                domains=np.array([r[2] for r in rows]),
                origin=str(test_dir),
            )
    if not result:
        raise DatasetError("no <machine>/test/ folders with clips", path=root)
    return result
