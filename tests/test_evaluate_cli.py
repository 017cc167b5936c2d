"""``harken evaluate`` end to end: the table, the files, every refusal, both ground-truth layouts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from harken.cli import main
from harken.errors import DatasetError, ScoreFileError
from harken.evaluation.evaluate import ScoreRecord, evaluate_arrays, evaluate_directory
from harken.evaluation.groundtruth import load_ground_truth
from harken.evaluation.submission import read_decisions, read_scores, write_submission
from harken.evaluation.tables import format_table, to_json_obj, write_tables

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
GOLDEN = SHARED / "dcase" / "golden"
GT = GOLDEN / "ground_truth"
needs_golden = pytest.mark.skipif(not GOLDEN.is_dir(), reason=f"golden files not found at {GOLDEN}")


def expected(system: str) -> dict:
    return json.loads((GOLDEN / "systems" / system / "expected.json").read_text())


def copy_system(tmp_path: Path, system: str = "sys_b_good") -> Path:
    out = tmp_path / system
    out.mkdir()
    for f in (GOLDEN / "systems" / system).glob("*.csv"):
        shutil.copy(f, out / f.name)
    return out


def hm(*values: float) -> float:
    return len(values) / sum(1.0 / v for v in values)


# --------------------------------------------------------------------------- the CLI
@needs_golden
def test_cli_prints_table_one_and_writes_csv_markdown_json(tmp_path: Path, capsys):
    out_dir = tmp_path / "out"
    rc = main(
        [
            "evaluate",
            str(GOLDEN / "systems" / "sys_b_good"),
            "--ground-truth",
            str(GT),
            "--out",
            str(out_dir),
            "--bootstrap",
            "40",
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    exp = expected("sys_b_good")
    lines = text.splitlines()
    row = next(line for line in lines if line.startswith("3DPrinter "))
    m = exp["machines"]["3DPrinter"]
    assert row.split()[1::3] == [
        f"{m['auc_source']:.3f}",
        f"{m['auc_target']:.3f}",
        f"{m['pauc']:.3f}",
    ]
    total = next(line for line in lines if line.startswith("TOTAL (Ω)"))
    assert f"{exp['official_score']:.3f}" in total
    hmean_row = next(line for line in lines if line.startswith("hmean"))
    assert hmean_row.split()[1] == f"{exp['auc_source_hmean']:.3f}"
    assert "40 resamples" in text and "Decisions" in text
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "evaluation.csv",
        "evaluation.json",
        "evaluation.md",
    ]
    data = json.loads((out_dir / "evaluation.json").read_text())
    system = data["systems"]["sys_b_good"]
    assert system["official_score"] == pytest.approx(exp["official_score"], abs=1e-12)
    assert system["official_score_ci95"] == pytest.approx(exp["official_score_ci95"], rel=1e-9)
    assert system["overall"]["hmean"]["f1"] == pytest.approx(
        exp["overall"]["hmean"]["f1"], abs=1e-12
    )
    assert system["bootstrap"]["n_resamples"] == 40
    lo, hi = system["bootstrap"]["intervals"]["official_score"]
    assert lo < exp["official_score"] < hi
    csv_text = (out_dir / "evaluation.csv").read_text()
    assert f"table1,sys_b_good,TOTAL (Ω),,,official_score,{exp['official_score']!r}," in csv_text
    md = (out_dir / "evaluation.md").read_text()
    assert md.startswith("| Machine | AUC-S | AUC-T | pAUC |")
    assert f"| TOTAL (Ω) |  | {exp['official_score']:.3f} [" in md


@needs_golden
def test_cli_without_bootstrap_or_decisions(tmp_path: Path, capsys):
    scores = copy_system(tmp_path)
    for f in scores.glob("decision_result_*"):
        f.unlink()
    assert (
        main(
            [
                "evaluate",
                str(scores),
                "-g",
                str(GT),
                "--bootstrap",
                "0",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "[" not in text and "Decisions" not in text
    data = json.loads((tmp_path / "o" / "evaluation.json").read_text())["systems"]["sys_b_good"]
    assert data["has_decisions"] is False and "bootstrap" not in data
    assert data["overall"]["hmean"]["precision"] is None
    assert data["official_score"] == pytest.approx(
        expected("sys_b_good")["official_score"], abs=1e-12
    )


@needs_golden
def test_cli_compare_prints_both_systems_and_the_paired_difference(tmp_path: Path, capsys):
    a, b = GOLDEN / "systems" / "sys_a_random", GOLDEN / "systems" / "sys_b_good"
    rc = main(
        [
            "evaluate",
            str(a),
            "-g",
            str(GT),
            "--compare",
            str(b),
            "--bootstrap",
            "30",
            "--seed",
            "5",
            "--out",
            str(tmp_path),
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "sys_a_random" in text.splitlines()[1] and "sys_b_good" in text.splitlines()[1]
    assert "Paired difference sys_b_good - sys_a_random" in text
    diff = expected("sys_b_good")["official_score"] - expected("sys_a_random")["official_score"]
    total_rows = [line for line in text.splitlines() if line.startswith("TOTAL (Ω)")]
    assert (
        len(total_rows) == 2
        and f"{diff:+.3f}" in total_rows[1]
        and "P(Δ≤0) = 0.000" in total_rows[1]
    )
    data = json.loads((tmp_path / "evaluation.json").read_text())
    assert list(data["systems"]) == ["sys_a_random", "sys_b_good"]
    comp = data["comparisons"][0]
    assert comp["a"] == "sys_a_random" and comp["b"] == "sys_b_good" and comp["seed"] == 5
    assert comp["differences"]["official_score"] == pytest.approx(diff, abs=1e-12)


def _rewrite(path: Path, edit) -> None:
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(edit(lines)))


SCORE = "anomaly_score_3DPrinter_section_00_test.csv"
DECISION = "decision_result_3DPrinter_section_00_test.csv"


def _first_clip(d: Path) -> str:
    return (d / SCORE).read_text().splitlines()[0].split(",")[0]


CASES = {
    "missing machine": (
        lambda d: [
            (d / f"{k}_ToyCircuit_section_00_test.csv").unlink()
            for k in ("anomaly_score", "decision_result")
        ],
        [
            "missing score file anomaly_score_ToyCircuit_section_00_test.csv",
            "ToyCircuit section 00",
        ],
    ),
    "unknown machine": (
        lambda d: (d / "anomaly_score_Fan_section_00_test.csv").write_text("a.wav,1\n"),
        ["anomaly_score_Fan_section_00_test.csv", "no ground truth for Fan section 00"],
    ),
    "unknown section": (
        lambda d: (d / "anomaly_score_3DPrinter_section_01_test.csv").write_text("a.wav,1\n"),
        ["no ground truth for 3DPrinter section 01", "sections 00 of 3DPrinter"],
    ),
    "missing clip": (
        lambda d: (
            _rewrite(d / SCORE, lambda ls: ls[1:]),
            _rewrite(d / DECISION, lambda ls: ls[1:]),
        ),
        [SCORE, "1 clip(s) of the ground truth have no score, e.g. {first}"],
    ),
    "extra clip": (
        lambda d: (
            _rewrite(d / SCORE, lambda ls: [*ls, "section_00_9999.wav,0.5\n"]),
            _rewrite(d / DECISION, lambda ls: [*ls, "section_00_9999.wav,1\n"]),
        ),
        [SCORE, "1 clip(s) are not in the ground truth, e.g. section_00_9999.wav"],
    ),
    "duplicated clip": (
        lambda d: _rewrite(d / SCORE, lambda ls: [*ls, ls[0]]),
        [SCORE, "row 201: clip {first} duplicated (first in row 1)"],
    ),
    "nan score": (
        lambda d: _rewrite(d / SCORE, lambda ls: [ls[0].split(",")[0] + ",nan\n", *ls[1:]]),
        [SCORE, "row 1: clip {first}: score is 'nan', not a finite number"],
    ),
    "text score": (
        lambda d: _rewrite(
            d / SCORE, lambda ls: [*ls[:5], ls[5].split(",")[0] + ",high\n", *ls[6:]]
        ),
        [SCORE, "row 6: clip", "score 'high' is not a number"],
    ),
    "header row": (
        lambda d: _rewrite(d / SCORE, lambda ls: ["file_name,anomaly_score\n", *ls]),
        [SCORE, "a header row?"],
    ),
    "malformed row": (
        lambda d: _rewrite(d / SCORE, lambda ls: [*ls[:3], "section_00_0003.wav;0.5\n", *ls[3:]]),
        [SCORE, "row 4: expected 2 fields"],
    ),
    "decision clip list differs": (
        lambda d: _rewrite(d / DECISION, lambda ls: ls[:-1]),
        [DECISION, "clip list differs from the score file"],
    ),
    "decision not binary": (
        lambda d: _rewrite(d / DECISION, lambda ls: [ls[0].split(",")[0] + ",0.7\n", *ls[1:]]),
        [DECISION, "row 1: clip", "decision '0.7' is not 0 or 1"],
    ),
    "decisions for some machines only": (
        lambda d: (d / DECISION).unlink(),
        ["must be given for every score file or for none", SCORE],
    ),
    "score file name": (
        lambda d: (d / "anomaly_score_3DPrinter_section_00_source_test.csv").write_text(
            "a.wav,1\n"
        ),
        [
            "anomaly_score_3DPrinter_section_00_source_test.csv",
            "does not follow the official format",
        ],
    ),
}


@needs_golden
@pytest.mark.parametrize("case", sorted(CASES))
def test_cli_refuses_bad_submissions_naming_file_and_clip(case: str, tmp_path: Path, capsys):
    scores = copy_system(tmp_path)
    first = _first_clip(scores)
    corrupt, fragments = CASES[case]
    corrupt(scores)
    rc = main(["evaluate", str(scores), "-g", str(GT), "--bootstrap", "0"])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.startswith("harken evaluate: error: ")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment.format(first=first) in err, err


def test_cli_refuses_an_unrecognised_ground_truth(tmp_path: Path, capsys):
    (tmp_path / "scores").mkdir()
    assert main(["evaluate", str(tmp_path / "scores"), "-g", str(tmp_path)]) == 1
    assert "neither the organizers' ground truth" in capsys.readouterr().err


# --------------------------------------------------------------------------- ground truth layouts
LABELLED_MACHINES = (
    "3DPrinter",
    "ToothBrush",
    "ToyCircuit",
)  # ToothBrush: constant scores in sys_c


def _labelled_root(tmp_path: Path) -> tuple[Path, dict[tuple[str, str], str]]:
    """Part of the golden ground truth as a dataset root with labelled clip names (empty files)."""
    root = tmp_path / "dataset"
    rename: dict[tuple[str, str], str] = {}
    for (machine, section), sec in load_ground_truth(GT).items():
        if machine not in LABELLED_MACHINES:
            continue
        test_dir = root / machine / "test"
        test_dir.mkdir(parents=True)
        for i, (clip, label, domain) in enumerate(
            zip(sec.clip_names, sec.labels, sec.domains, strict=True)
        ):
            name = (
                f"section_{section}_{'target' if domain else 'source'}_test_"
                f"{'anomaly' if label else 'normal'}_{i:04d}_noAttribute.wav"
            )
            (test_dir / name).touch()
            rename[(machine, clip)] = name
    (root / "ToothBrush" / "train").mkdir()  # other folders are not test clips
    (root / "ToothBrush" / "train" / "section_00_source_train_normal_0000_noAttribute.wav").touch()
    return root, rename


@needs_golden
def test_labelled_dataset_root_gives_the_same_figures_as_organizers_csvs(tmp_path: Path):
    root, rename = _labelled_root(tmp_path)
    src = GOLDEN / "systems" / "sys_c_ties"
    scores_dir = tmp_path / "sys_c_ties"
    for machine in LABELLED_MACHINES:
        s = read_scores(src / f"anomaly_score_{machine}_section_00_test.csv")
        d = read_decisions(src / f"decision_result_{machine}_section_00_test.csv")
        names = list(s)
        write_submission(
            scores_dir,
            machine,
            "00",
            [rename[(machine, c)] for c in names],
            [s[c] for c in names],
            [d[c] for c in names],
        )
    result = evaluate_directory(scores_dir, root, with_evaluator_ci95=False)
    exp = expected("sys_c_ties")
    assert sorted(result.machine_names) == sorted(LABELLED_MACHINES)
    for machine in LABELLED_MACHINES:
        entry, got = exp["machines"][machine], result.section(machine, "00")
        for key in (
            "auc_source",
            "auc_target",
            "pauc",
            "precision_source",
            "precision_target",
            "recall_source",
            "recall_target",
            "f1_source",
            "f1_target",
        ):
            assert getattr(got, key) == pytest.approx(entry[key], abs=1e-12), (machine, key)
    # scores keyed by the organizers' short names do not match the labelled names: refused
    short = tmp_path / "short"
    short.mkdir()
    for machine in LABELLED_MACHINES:
        shutil.copy(src / f"anomaly_score_{machine}_section_00_test.csv", short)
    with pytest.raises(ScoreFileError, match="have no score"):
        evaluate_directory(short, root)


def test_unlabelled_test_clips_are_refused(tmp_path: Path):
    (tmp_path / "fan" / "test").mkdir(parents=True)
    (tmp_path / "fan" / "test" / "section_00_0000.wav").touch()
    with pytest.raises(DatasetError, match="no normal/anomaly label"):
        load_ground_truth(tmp_path)


def test_organizers_layout_accepts_the_data_folder_and_works_without_domains(tmp_path: Path):
    data = tmp_path / "gt" / "ground_truth_data"
    data.mkdir(parents=True)
    (data / "ground_truth_fan_section_00_test.csv").write_text("b.wav,1\na.wav,0\nc.wav,0\n")
    gt = load_ground_truth(data)
    sec = gt[("fan", "00")]
    assert sec.clip_names == ("a.wav", "b.wav", "c.wav") and sec.labels.tolist() == [0, 1, 0]
    assert sec.domains.tolist() == [-1, -1, -1]
    (data / "ground_truth_fan_section_00_test.csv").write_text("a.wav,0\nb.wav,2\n")
    with pytest.raises(ScoreFileError, match="label '2' is not 0 or 1"):
        load_ground_truth(tmp_path / "gt")


# --------------------------------------------------------------------------- in-memory scores
def _hand_records() -> list[ScoreRecord]:
    recs = []
    # fan 00: source normals 0.1 0.2, target normals 0.3 0.6, anomalies 0.5 (source) 0.4 (target)
    for name, dom, lab, score, dec in [
        ("s_n0", "source", "normal", 0.1, 0),
        ("s_n1", "source", "normal", 0.2, 1),
        ("t_n0", "target", "normal", 0.3, 0),
        ("t_n1", "target", "normal", 0.6, 1),
        ("s_a0", "source", "anomaly", 0.5, 1),
        ("t_a0", "target", "anomaly", 0.4, 0),
    ]:
        recs.append(ScoreRecord("fan", "00", name + ".wav", dom, lab, score, dec))
    # fan 01: perfect separation; all decided anomalous
    for name, dom, lab, score in [
        ("s_n0", "source", "normal", 0.0),
        ("t_n0", "target", "normal", 0.1),
        ("s_a0", "source", "anomaly", 0.9),
        ("t_a0", "target", "anomaly", 0.8),
    ]:
        recs.append(ScoreRecord("fan", "01", name + ".wav", dom, lab, score, 1))
    return recs


def test_hand_computed_multi_section_machine():
    result = evaluate_arrays(reversed(_hand_records()), name="hand")
    s0, s1 = result.section("fan", "00"), result.section("fan", "01")
    assert s0.auc_source == 1.0  # {0.1, 0.2} below both anomalies
    assert s0.auc_target == 0.5  # 0.3 below both anomalies, 0.6 above both
    worst_pauc = 0.5 * (1 + (0 - 0.005) / (0.1 - 0.005))  # a normal scores highest
    assert s0.pauc == pytest.approx(worst_pauc)
    assert (s1.auc_source, s1.auc_target) == (1.0, 1.0) and s1.pauc == pytest.approx(1.0)
    # source domain of section 00: TP 1 (s_a0), FP 1 (s_n1) -> P 0.5, R 1, F1 2/3
    assert (s0.precision_source, s0.recall_source) == (0.5, 1.0) and s0.f1_source == pytest.approx(
        2 / 3
    )
    # target: TP 0, FP 1 -> 0, 0, 0 (0/0 conventions)
    assert (s0.precision_target, s0.recall_target, s0.f1_target) == (0.0, 0.0, 0.0)
    assert result.official_score == pytest.approx(hm(1.0, 0.5, worst_pauc, 1.0, 1.0, 1.0))
    assert result.auc_target_hmean == pytest.approx(hm(0.5, 1.0))
    assert result.pauc_amean == pytest.approx((worst_pauc + 1.0) / 2)
    figures = result.figures()
    assert figures["machine/fan/auc_target"] == pytest.approx(hm(0.5, 1.0))
    assert figures["fan/01/pauc"] == pytest.approx(1.0)
    text = format_table(result)
    assert "  section 00" in text and "  section 01" in text
    fan_row = next(line for line in text.splitlines() if line.startswith("fan "))
    assert fan_row.split()[1:] == [
        f"{hm(1.0, 1.0):.3f}",
        f"{hm(0.5, 1.0):.3f}",
        f"{hm(worst_pauc, 1.0):.3f}",
    ]


def test_sections_without_domains_report_one_auc():
    recs = [
        ScoreRecord("fan", "00", f"{lab}_id_00_{i:08d}.wav", None, lab, score)
        for i, (lab, score) in enumerate(
            [("normal", 0.1), ("normal", 0.4), ("anomaly", 0.3), ("anomaly", 0.9)]
        )
    ]
    result = evaluate_arrays(recs)
    sec = result.section("fan", "00")
    assert sec.auc_source == 0.75 and sec.auc_target is None  # 3 of 4 pairs ordered
    assert result.official_score == pytest.approx(hm(0.75, sec.pauc))
    assert result.auc_target_hmean is None


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r._replace(label="unknown"), "only normal/anomaly clips"),
        (lambda r: r._replace(domain="middle"), "has domain 'middle'"),
        (lambda r: r._replace(score=float("nan")), "has score nan"),
        (lambda r: r._replace(decision=None), "some clips have decisions"),
        (lambda r: r._replace(decision=3), "has decision 3"),
    ],
)
def test_in_memory_records_are_checked(edit, message):
    recs = _hand_records()
    recs[0] = edit(recs[0])
    with pytest.raises(ScoreFileError, match=message):
        evaluate_arrays(recs)
    with pytest.raises(ScoreFileError, match="scored twice"):
        evaluate_arrays([*_hand_records(), _hand_records()[0]])


@needs_golden
def test_evaluate_arrays_equals_evaluate_directory():
    system = GOLDEN / "systems" / "sys_h_degenerate_decisions"
    records = []
    for (machine, section), sec in load_ground_truth(GT).items():
        s = read_scores(system / f"anomaly_score_{machine}_section_{section}_test.csv")
        d = read_decisions(system / f"decision_result_{machine}_section_{section}_test.csv")
        for clip, label, domain in zip(sec.clip_names, sec.labels, sec.domains, strict=True):
            records.append((machine, section, clip, int(domain), int(label), s[clip], d[clip]))
    from_arrays = evaluate_arrays(records[::-1]).to_dict()
    from_dir = evaluate_directory(system, GT, with_evaluator_ci95=False).to_dict()
    from_arrays.pop("system"), from_dir.pop("system")
    assert from_arrays == from_dir


# --------------------------------------------------------------------------- tables
def test_tables_for_several_systems(tmp_path: Path):
    a = evaluate_arrays(_hand_records(), name="A")
    b = evaluate_arrays([r._replace(score=-r.score) for r in _hand_records()], name="B")
    md = format_table({"first": a, "second": b}, "markdown", show_ci=False)
    assert md.splitlines()[0] == (
        "| Machine | first AUC-S | first AUC-T | first pAUC | second AUC-S | second AUC-T | second pAUC |"
    )
    obj = to_json_obj([a, b])
    assert list(obj["systems"]) == ["A", "B"] and obj["comparisons"] == []
    paths = write_tables(tmp_path, [a, b], stem="bench")
    assert sorted(p.name for p in paths.values()) == ["bench.csv", "bench.json", "bench.md"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.csv", "bench.json", "bench.md"]
    with pytest.raises(ValueError, match="unknown table format"):
        format_table(a, "html")
    with pytest.raises(ValueError, match="must differ"):
        format_table([a, a], "text")


def test_every_section_row_of_the_csv_round_trips_the_figures():
    result = evaluate_arrays(_hand_records(), name="hand")
    rows = [line.split(",") for line in format_table(result, "csv").splitlines()[1:]]
    table1 = {(r[3], r[4], r[5]): float(r[6]) for r in rows if r[0] == "table1" and r[4]}
    assert table1[("fan", "00", "auc_target")] == 0.5
    assert table1[("fan", "01", "pauc")] == result.section("fan", "01").pauc
    assert np.isclose(
        float(next(r[6] for r in rows if r[5] == "official_score")), result.official_score
    )


def test_dcase2020_names_give_a_domainless_ground_truth(tmp_path: Path):
    test_dir = tmp_path / "data" / "fan" / "test"
    test_dir.mkdir(parents=True)
    clips = {
        "normal_id_02_00000000.wav": 0.1,
        "normal_id_02_00000001.wav": 0.4,
        "anomaly_id_02_00000000.wav": 0.3,
        "anomaly_id_02_00000001.wav": 0.9,
    }
    for name in clips:
        (test_dir / name).touch()
    write_submission(tmp_path / "scores", "fan", "02", list(clips), list(clips.values()))
    result = evaluate_directory(tmp_path / "scores", tmp_path / "data")
    sec = result.section("fan", "02")
    assert sec.auc_source == 0.75 and sec.auc_target is None
    assert format_table(result).count("-  ") >= 1  # the absent AUC-T is shown as "-"


@needs_golden
def test_cli_diagnostics_print_and_write_one_row_per_section(tmp_path: Path, capsys):
    out = tmp_path / "out"
    rc = main(["evaluate", str(GOLDEN / "systems" / "sys_b_good"), "-g", str(GT), "--bootstrap", "0", "--diagnostics", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "Domain diagnostics of sys_b_good (not official metrics)" in text
    rows = (out / "diagnostics.csv").read_text().splitlines()
    machines = sorted(expected("sys_b_good")["machines"])
    assert [r.split(",")[0] for r in rows[1:]] == machines
    values = np.array([[float(v) for v in r.split(",")[2:]] for r in rows[1:]])
    assert np.all((values >= 0) & (values <= 1))
    assert (out / "diagnostics.md").read_text().count("\n") == len(machines) + 2
