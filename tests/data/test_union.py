"""dataset=union (issue 25 item 6): several registered datasets as one datamodule, per-dataset means, clear errors.

Two copies of the generated synthetic set stand in for two datasets: `a` with logo and coin, `b` with logo and brick,
so that `logo` collides and gets its member's prefix (prefix=auto).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from anomaly_zoo.data import AnomalyDataModule
from anomaly_zoo.data.union import UnionConfigError, UnionDataModule, parse_members, union_names
from anomaly_zoo.reporting.leaderboard import collect_runs, write_leaderboards
from anomaly_zoo.runner import instantiate_datamodule, instantiate_method, run
from anomaly_zoo.validation import ConfigError
from tests.conftest import CONF_DIR
from tests.helpers.cli import run_module

A, B = ["logo", "coin"], ["logo", "brick"]


@pytest.fixture(scope="module")
def two_roots(synthetic_root, tmp_path_factory) -> tuple[Path, Path]:
    """The synthetic set and a copy of it elsewhere (its marker too: the copy is not regenerated)."""
    copy = tmp_path_factory.mktemp("union") / "copy"
    shutil.copytree(synthetic_root, copy)
    return synthetic_root, copy


def union_overrides(a: Path, b: Path, prefix: str = "auto") -> list[str]:
    return ["dataset=union", "~dataset.members", f"dataset.prefix={prefix}",
            f"+dataset.members={{a: {{name: synthetic, root: '{a}', categories: [{','.join(A)}]}}, "
            f"b: {{name: synthetic, root: '{b}', categories: [{','.join(B)}]}}}}"]  # fmt: skip


def compose_run(overrides: list[str], out: Path, config: str = "train"):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config, overrides=["dataset.num_workers=0", "trainer.enable_progress_bar=false",
                                         "trainer.enable_model_summary=false", *overrides])  # fmt: skip
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    return cfg


def test_the_preset_composes_with_the_official_members_and_member_options_reach_the_datamodule(two_roots, tmp_path):
    cfg = compose_run(["dataset=union"], tmp_path)
    assert list(cfg.dataset.members) == ["mvtec", "visa", "btad"] and cfg.dataset.prefix == "auto"
    assert cfg.dataset._target_ == "anomaly_zoo.data.union.UnionDataModule"
    # MVTec, VisA and BTAD share no category name: with prefix=auto they keep the official union's plain names
    names = union_names(parse_members(cfg.dataset.members), "auto")
    assert len(names) == 15 + 12 + 3 and "bottle" in names and "candle" in names and "01" in names

    cfg = compose_run([*union_overrides(*two_roots), "dataset.image_size=64", "method.bank_size=64"], tmp_path)
    dm = instantiate_datamodule(cfg, instantiate_method(cfg))
    assert isinstance(dm, UnionDataModule) and dm.image_size == 64
    assert dm.categories == ["a:logo", "coin", "b:logo", "brick"]
    assert dm.category_sources()["b:logo"] == ("b", "synthetic", "logo")


def test_the_union_splits_are_the_members_splits_renamed(two_roots):
    a, b = two_roots
    union = UnionDataModule({"a": {"name": "synthetic", "root": str(a), "categories": A},
                             "b": {"name": "synthetic", "root": str(b), "categories": B}},
                            prefix="always", image_size=32, num_workers=0, val_ratio=0.2)  # fmt: skip
    union.setup()
    expected = {"test": [], "train": [], "val": []}
    for key, root, cats in (("a", a, A), ("b", b, B)):
        alone = AnomalyDataModule("synthetic", str(root), categories=cats, image_size=32, num_workers=0, val_ratio=0.2)
        alone.setup()
        for split in expected:
            samples = getattr(alone, f"{split}_dataset").samples
            expected[split] += [(s.image_path, s.label, f"{key}:{s.category}") for s in samples]
    for split, wanted in expected.items():
        assert [(s.image_path, s.label, s.category) for s in getattr(union, f"{split}_dataset").samples] == wanted
    assert union.categories == ["a:logo", "a:coin", "b:logo", "b:brick"]


def test_bad_members_and_clashing_names_are_one_line_errors_before_any_work(two_roots, tmp_path):
    a, b = two_roots
    with pytest.raises(UnionConfigError, match=r"^dataset\.members\.mvtex: 'mvtex' is not a registered dataset; "
                                               r"known: mvtec, visa, btad, .*synthetic"):  # fmt: skip
        parse_members({"mvtex": {"root": str(a)}})
    with pytest.raises(UnionConfigError, match=r"members a and b both have category 'logo'.*a:logo and b:logo"):
        union_names(parse_members({"a": {"name": "synthetic", "root": str(a), "categories": A},
                                   "b": {"name": "synthetic", "root": str(b), "categories": B}}), "never")  # fmt: skip
    with pytest.raises(UnionConfigError, match=r"dataset\.members\.a\.categories: unknown \['bottle'\]"):
        parse_members({"a": {"name": "synthetic", "root": str(a), "categories": ["bottle"]}})
    # in a run: refused by the config check, before the method or the data are touched, each one line
    cfg = compose_run([*union_overrides(a, b, "never"), "+dataset.members.c.root=/nowhere/mvtec",
                       "+dataset.members.c.name=mvtec"], tmp_path / "never")  # fmt: skip
    with pytest.raises(ConfigError) as err:
        run(cfg, fit=True)
    lines = str(err.value).splitlines()
    assert any("dataset.prefix=never: members a and b both have category 'logo'" in line for line in lines)
    assert any(line.startswith("dataset.members.c.root='/nowhere/mvtec': no such folder") for line in lines)
    assert not (tmp_path / "never").exists()


@pytest.mark.slow
def test_an_unregistered_member_is_one_line_from_the_command_line(two_roots, tmp_path):
    a, _ = two_roots
    proc = run_module("anomaly_zoo.train", "dataset=union", "~dataset.members", f"+dataset.members.foo.root={a}",
                      f"hydra.run.dir={tmp_path / 'run'}", expect=1)  # fmt: skip
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "dataset.members.foo: 'foo' is not a registered dataset; known: mvtec" in errors[0]
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def union_and_alone(two_roots, tmp_path_factory):
    """PatchKNN fitted on the union, then its checkpoint tested on each member alone (one image per batch
    everywhere: no batch-size effect on the features)."""
    a, b = two_roots
    out = tmp_path_factory.mktemp("union_runs")
    common = ["method.bank_size=64", "method.sampling=random", "dataset.image_size=64", "dataset.eval_batch_size=1",
              "eval.heatmaps_per_category=0", "eval.bootstrap_resamples=0"]  # fmt: skip
    union = run(compose_run([*union_overrides(a, b), *common], out / "union"), fit=True)
    ckpt = out / "union" / "checkpoints" / "last.ckpt"
    alone = {}
    for key, root, cats in (("a", a, A), ("b", b, B)):
        cfg = compose_run([f"dataset.root={root}", f"dataset.categories=[{','.join(cats)}]", f"ckpt_path={ckpt}",
                           "dataset.eval_batch_size=1", "eval.heatmaps_per_category=0",
                           "eval.bootstrap_resamples=0"], out / key, "test")  # fmt: skip
        alone[key] = run(cfg, fit=False)
    read = {k: json.loads(Path(v["results_path"]).read_text()) for k, v in {"union": union, **alone}.items()}
    return out, read


@pytest.mark.slow
def test_per_dataset_results_equal_the_same_model_on_each_dataset_alone(union_and_alone):
    _, res = union_and_alone
    union = res["union"]
    assert list(union["categories"]) == ["a:logo", "coin", "b:logo", "brick"]
    assert list(union["datasets"]) == ["a", "b"]
    for key, cats in (("a", A), ("b", B)):
        block, alone = union["datasets"][key], res[key]
        assert block["dataset"] == "synthetic"
        assert block["categories"] == [f"{key}:{c}" if c == "logo" else c for c in cats]
        for c in cats:
            assert union["categories"][f"{key}:{c}" if c == "logo" else c] == alone["categories"][c]
        assert block["mean"] == alone["mean"]
        # the single-dataset test knew which of the checkpoint's categories it was testing
        known = alone["checkpoint_categories"]
        assert known["renames"] == {f"{key}:logo": "logo"} and known["unknown"] == []
        assert known["trained"] == ["a:logo", "coin", "b:logo", "brick"]
    # the overall mean is over all four categories, not over the two datasets
    i_auroc = [row["I-AUROC"] for row in union["categories"].values()]
    assert union["mean"]["I-AUROC"] == pytest.approx(sum(i_auroc) / 4, abs=1e-12)


@pytest.mark.slow
def test_the_leaderboard_shows_each_members_mean(union_and_alone, tmp_path):
    out, res = union_and_alone
    written = write_leaderboards(collect_runs([out / "union"]), tmp_path)
    md = (tmp_path / "leaderboard_union.md").read_text()
    assert "### mean over a's categories" in md and "### mean over b's categories" in md
    row = next(line for line in md.split("### mean over b's categories")[1].splitlines() if line.startswith("| patch"))
    assert f"{100 * res['union']['datasets']['b']['mean']['I-AUROC']:.1f}" in row
    header = (tmp_path / "leaderboard_union.csv").read_text().splitlines()[0]
    assert "dataset:a/I-AUROC" in header and "a:logo/I-AUROC" in header
    page = (tmp_path / "leaderboard_union.html").read_text()
    assert "Mean over b's categories" in page and "leaderboard_union_a%3Alogo.html" in page
    assert tmp_path / "leaderboard_union_a:logo.html" in written


def test_the_union_presets_compose_and_the_evaluation_preset_counts_the_official_ones_keys(tmp_path):
    from anomaly_zoo.checkpoints.model import _experiment_keys

    train = compose_run(["experiment=onenip_union"], tmp_path)
    assert train.dataset._target_.endswith("UnionDataModule") and train.dataset.train_batch_size == 8
    assert train.method.lr == 1.0e-4 and train.method.max_epochs == 1000 and train.method.lr_step_fraction == 0.8
    assert train.backbone.name == "efficientnet_b4" and train.evaluation.protocol == "onenip_official"
    test = compose_run(["experiment=onenip_union_official_eval", "ckpt_path=x.ckpt"], tmp_path, "test")
    assert test.dataset._target_.endswith("UnionDataModule") and list(test.dataset.members) == ["mvtec", "visa", "btad"]
    assert test.method.score_scaling == "transductive" and test.method.prompt_selection == "random"
    # the keys the preset sets through the one it builds on count as the command line's (checkpoint adoption)
    assert {"dataset", "method", "method.score_scaling", "method.prompt_selection"} <= _experiment_keys(
        "onenip_union_official_eval"
    )
