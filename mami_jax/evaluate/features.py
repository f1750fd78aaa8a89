"""Zero-shot baselines: each teacher's stored features scored as re-identification embeddings.

    python -m mami_jax.evaluate.features --features DIR --manifest FILE --out DIR
        [--teachers a,b] [--split test]

The features are the ones ``python -m teachers.extract`` stored (read and checked by
``mami_jax.data.teacher_features``). They are scored exactly as a trained model's
embeddings are: the same split and patient-disjoint split rule
(``mami_jax.data.loading.load_rows``), the same protocols, metrics and settings
(``mami_jax.evaluate.evaluator.score_groups`` with the base config's ``eval``
section) and the same report files (``OUT/<teacher>/metrics.json``, ``cmc.png``).
Groups (dataset/modality) a teacher does not apply to are left out; a group where it
applies to some rows but has no feature for others is an error naming them.
``OUT/zero_shot.md`` and ``OUT/zero_shot.json`` hold the summary: Rank-1 / mAP of the
``reid`` protocol per teacher and modality; ``OUT/zero_shot.png`` draws it
(``zero_shot_figure``).
"""

from __future__ import annotations

import os
from typing import Sequence


from mami_jax.data.manifest import ManifestError, ManifestRow
from mami_jax.data.teacher_features import TeacherFeatureError, load_features, read_index
from mami_jax.evaluate.split_check import check_split_evaluable
from mami_jax.evaluate.zero_shot_figure import write_zero_shot_figure
from mami_jax.runtime import strict_json
from mami_jax.runtime.atomic_files import write_text_atomic
from mami_jax.runtime.cli_parser import OneLineErrorParser
from mami_jax.runtime.error_line import print_error
from mami_jax.runtime.interrupts import run_command, say_interrupted
from mami_jax.runtime.output_guard import check_output_folder, same_or_inside

SUMMARY_PROTOCOL = "reid"


def teacher_groups(name: str, by_id: dict, rows: Sequence[ManifestRow], groups: dict,
                   modalities: Sequence[str] | None = None) -> dict[str, list[int]]:
    """The groups the teacher covers: all of their rows have a feature, or none do, and
    then only where the teacher does not apply to the group's modality (``modalities``,
    from its record; None: not known): a group of a modality it applies to without a
    single feature was left out of the tables unsaid (features extracted for another
    manifest)."""
    covered = {}
    for group, members in groups.items():
        missing = [rows[i].image_id for i in members if rows[i].image_id not in by_id]
        if len(missing) == len(members):
            modality = group.rpartition("/")[2]
            if modalities is not None and modality in modalities:
                raise TeacherFeatureError(
                    f"teacher {name}: none of the {len(members)} images of {group} has a "
                    f"stored feature, though it applies to {modality} (extracted for another "
                    f"manifest?), e.g. {missing[:5]}")
            continue
        if missing:
            raise TeacherFeatureError(
                f"teacher {name}: {len(missing)} of {len(members)} images of {group} have no "
                f"stored feature (skipped or never extracted), e.g. {missing[:5]}")
        covered[group] = members
    return covered


def score_teachers(features_dir: str, rows: Sequence[ManifestRow], eval_cfg, out_dir: str,
                   teachers: Sequence[str] | None = None, manifest_name: str = "the manifest",
                   print_tables: bool = True) -> dict[str, dict[str, dict]]:
    """Metrics per teacher and group; writes each teacher's report under ``out_dir``."""
    from mami_jax.evaluate.evaluator import group_indices, score_groups
    from mami_jax.evaluate.report import write_eval_report

    stored = load_features(features_dir, teachers, manifest_ids=[r.image_id for r in rows],
                           manifest_name=manifest_name)
    check_split_evaluable(rows, eval_cfg.split, split_flag="--split",
                          protocols=tuple(eval_cfg.protocols))
    groups = group_indices(rows, eval_cfg.split)
    results = {}
    for name, feats in stored.items():
        by_id = feats.by_id()
        covered = teacher_groups(name, by_id, rows, groups, feats.info.get("modalities"))
        if not covered:
            print(f"teacher {name}: no features in split {eval_cfg.split!r}, not scored")
            continue
        embeddings = {i: by_id[rows[i].image_id] for members in covered.values() for i in members}
        scored = score_groups(embeddings, rows, covered, eval_cfg)
        if not scored:         # its groups hold no query with a true match (warned above)
            print(f"teacher {name}: no group of split {eval_cfg.split!r} it covers has a "
                  "query with a true match, not scored")
            continue
        results[name] = scored
        if print_tables:
            print(f"\nzero-shot {name} ({feats.info.get('public_id', '')}, "
                  f"{feats.info['feature_dim']}-d)")
        write_eval_report(results[name], os.path.join(out_dir, name),
                          title=f"zero-shot {name}", print_table=print_tables)
    return results


def summary(results: dict[str, dict[str, dict]]) -> tuple[str, dict]:
    """Markdown table (teacher x modality, "Rank-1 / mAP" of the reid protocol) and its data.

    A column is a modality; where several datasets of one modality were scored, each of
    them is a column ``dataset/modality`` of its own (every group is scored on its own:
    one cell per modality kept the last dataset's numbers and dropped the others')."""
    from mami_jax.evaluate.zero_shot_figure import column_order

    scored = []                 # (teacher, dataset, modality, metrics) of the reid groups
    for name, groups in results.items():
        for group, m in groups.items():
            dataset, modality, protocol = group.rsplit("/", 2)
            if protocol == SUMMARY_PROTOCOL:
                scored.append((name, dataset, modality, m))
    datasets: dict[str, set] = {}
    for _, dataset, modality, _ in scored:
        datasets.setdefault(modality, set()).add(dataset)
    data: dict[str, dict[str, dict]] = {}
    for name, dataset, modality, m in scored:
        column = modality if len(datasets[modality]) == 1 else f"{dataset}/{modality}"
        data.setdefault(name, {})[column] = dict(rank1=m.get("rank1"), mAP=m.get("mAP"))
    columns = column_order(data)
    lines = ["| teacher | " + " | ".join(columns) + " |",
             "|---|" + "---|" * len(columns)]
    for name, per in data.items():
        cells = [f"{per[c]['rank1']:.3f} / {per[c]['mAP']:.3f}" if c in per else "-"
                 for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n", data


def main(argv=None) -> int:
    parser = OneLineErrorParser(prog="python -m mami_jax.evaluate.features",
                                description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", required=True, help="folder written by teachers.extract")
    parser.add_argument("--manifest", required=True,
                        help="manifest CSV the features were extracted for")
    parser.add_argument("--out", required=True,
                        help="folder for zero_shot.md, .json and .png (and per-teacher scores)")
    parser.add_argument("--teachers", default="", help="comma list (default: every stored one)")
    parser.add_argument("--split", default=None, help="split to score (default: config eval.split)")
    args = parser.parse_args(argv)
    from mami_jax.config import base_config
    from mami_jax.data.loading import load_rows

    config = base_config()
    config.data.manifest = args.manifest
    if args.split:
        config.eval.split = args.split
    teachers = [t for t in args.teachers.split(",") if t] or None
    try:
        if same_or_inside(args.out, args.features):
            raise ValueError(f"--out {args.out}: is or lies inside --features {args.features} "
                             "(inputs are never modified)")
        check_output_folder(args.out, "--out", "zero_shot.json",   # or one stopped half-way
                            own_names=lambda: {"zero_shot.md", "zero_shot.png",
                                               *read_index(args.features)["teachers"]})
        rows = load_rows(config, args.out)
        results = score_teachers(args.features, rows, config.eval, args.out, teachers,
                                 manifest_name=args.manifest)
        if not results:
            raise ValueError(f"no stored teacher could be scored on split "
                             f"{config.eval.split!r} (none has features of a group with a "
                             "query that has a true match)")
    except (ValueError, OSError, ManifestError, TeacherFeatureError) as e:
        print_error(e, where=args.out)
        return 1
    except KeyboardInterrupt:
        return say_interrupted()
    table, data = summary(results)
    write_text_atomic(os.path.join(args.out, "zero_shot.md"), table)
    write_text_atomic(os.path.join(args.out, "zero_shot.json"),
                      strict_json.dumps(data, indent=1, sort_keys=True) + "\n")
    picture = write_zero_shot_figure(
        data, os.path.join(args.out, "zero_shot.png"),
        f"zero-shot re-ID of stored teacher features ({SUMMARY_PROTOCOL}, split "
        f"{config.eval.split})")
    print(f"\nzero-shot re-ID ({SUMMARY_PROTOCOL}, split {config.eval.split}): Rank-1 / mAP\n"
          + table + f"picture: {picture}")
    return 0


if __name__ == "__main__":
    run_command(main)
