"""`dataset=union`: several registered datasets as one datamodule (the official OneNIP MVTec+VisA+BTAD models).

Members are keyed by a label (`members: {mvtec: {root: ...}, visa: {root: ...}}`); a member's registered dataset is
its label unless it says `name: <registered dataset>` (two copies of one dataset need two labels). A category keeps
its own name unless it could be confused with another member's: `<label>:<category>` (e.g. `visa:candle`) when two
members have a category of that name (`prefix: auto`), always (`always`), or never (`never`: a clash is an error).
`:` because category names become file names (heatmaps, leaderboard pages), where `/` would open a folder.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from anomaly_zoo.data.datamodule import AnomalyDataModule
from anomaly_zoo.data.registry import DatasetInfo, get_dataset_info
from anomaly_zoo.data.samples import Sample

log = logging.getLogger(__name__)

UNION = "union"
PREFIXES = ("auto", "always", "never")
SEPARATOR = ":"
#: Not members: `folder` has no categories of its own, and a union of unions says nothing a flat one does not.
_NOT_MEMBERS = ("folder", UNION)


class UnionConfigError(ValueError):
    """`dataset=union` names members or categories that cannot form one dataset."""


@dataclass(frozen=True)
class UnionMember:
    key: str  # the member's label: its prefix and its name in results.json `datasets`
    dataset: str  # the registered dataset (anomaly_zoo.data.registry)
    root: str
    categories: tuple[str, ...]  # the member's own names


def _known_datasets() -> list[str]:
    try:
        get_dataset_info("\0")
    except KeyError as err:  # the registry's message lists them: read them from it, not from a second list
        return [n for n in str(err.args[0]).split("known datasets: ", 1)[1].split(", ") if n not in _NOT_MEMBERS]
    return []


def _plain(value: Any) -> Any:
    return (
        OmegaConf.to_container(value, resolve=True)
        if isinstance(value, DictConfig) or OmegaConf.is_list(value)
        else value
    )


def parse_members(members: Any) -> list[UnionMember]:
    """`members` as a mapping {label: {root, name?, categories?} or a root} or a list of {name, root, key?, ...}."""
    members = _plain(members)
    if isinstance(members, Mapping):
        entries = [(str(k), {"root": v} if isinstance(v, str) else dict(v or {})) for k, v in members.items()]
    elif isinstance(members, Sequence) and not isinstance(members, str):
        entries = [(str(m.get("key") or m.get("name")), dict(m)) for m in members]
    else:
        raise UnionConfigError(f"dataset.members={members!r}: must be a mapping {{label: {{root: ...}}}} or a list")
    if not entries:
        raise UnionConfigError("dataset.members is empty: dataset=union needs at least one member dataset")
    labels = [k for k, _ in entries]
    if len(set(labels)) != len(labels):
        raise UnionConfigError(f"dataset.members: label(s) {sorted({k for k in labels if labels.count(k) > 1})} "
                               "given twice; give each member its own key")  # fmt: skip
    out = []
    for key, entry in entries:
        dataset = str(entry.get("name") or key)
        known = _known_datasets()
        if dataset not in known:
            raise UnionConfigError(f"dataset.members.{key}: {dataset!r} is not a registered dataset; known: "
                                   f"{', '.join(known)} (a label of your own: dataset.members.{key}.name=<one of "
                                   "them>)")  # fmt: skip
        if not entry.get("root"):
            raise UnionConfigError(f"dataset.members.{key}.root is not set (the folder of dataset={dataset})")
        info = get_dataset_info(dataset)
        chosen = tuple(entry.get("categories") or info.categories)
        unknown = [c for c in chosen if c not in info.categories]
        if unknown:
            raise UnionConfigError(f"dataset.members.{key}.categories: unknown {unknown} for dataset={dataset}; "
                                   f"valid: {', '.join(info.categories)}")  # fmt: skip
        out.append(UnionMember(key, dataset, str(entry["root"]), chosen))
    return out


def union_names(members: Sequence[UnionMember], prefix: str) -> dict[str, tuple[UnionMember, str]]:
    """Each category's name in the union → (its member, its own name), in member order."""
    if prefix not in PREFIXES:
        raise UnionConfigError(f"dataset.prefix={prefix!r}: must be one of {', '.join(PREFIXES)}")
    owners: dict[str, list[str]] = {}
    for m in members:
        for c in m.categories:
            owners.setdefault(c, []).append(m.key)
    if prefix == "never":
        clash = next(((c, k) for c, k in owners.items() if len(k) > 1), None)
        if clash:
            raise UnionConfigError(f"dataset.prefix=never: members {' and '.join(clash[1])} both have category "
                                   f"{clash[0]!r}; set dataset.prefix=auto to name them "
                                   f"{' and '.join(f'{k}{SEPARATOR}{clash[0]}' for k in clash[1])}")  # fmt: skip
    names = {}
    for m in members:
        for c in m.categories:
            prefixed = prefix == "always" or len(owners[c]) > 1
            names[f"{m.key}{SEPARATOR}{c}" if prefixed else c] = (m, c)
    return names


def union_config_errors(ds: DictConfig) -> list[str]:
    """The union's member and naming errors for the config check (before any work), one line each."""
    try:
        union_names(parse_members(ds.get("members")), str(ds.get("prefix", "auto")))
    except UnionConfigError as err:
        return [str(err)]
    return []


def member_roots(ds: DictConfig) -> list[tuple[str, str, str]]:
    """(config key, root, dataset) of every member, for the config check's root test."""
    try:
        return [(f"dataset.members.{m.key}.root", m.root, m.dataset) for m in parse_members(ds.get("members"))]
    except UnionConfigError:
        return []  # reported by union_config_errors


class UnionDataModule(AnomalyDataModule):
    """One datamodule over several registered datasets: their categories side by side (named as `prefix` says),
    every shared setting (image size, batches, protocol, ...) as for one dataset."""

    def __init__(self, members: Any, prefix: str = "auto", name: str = UNION, root: str | None = None,
                 **settings: Any) -> None:  # fmt: skip
        self.members = parse_members(members)
        self.names = union_names(self.members, prefix)
        self.prefix = prefix
        for key in ("normal_dir", "abnormal_dir", "normal_test_dir", "mask_dir", "extensions", "normal_test_ratio"):
            settings.pop(key, None)  # folder-only keys: no member is a folder dataset
        # Where the union's paths are relative to (results.json `images`): the members' common folder.
        common = os.path.commonpath([str(Path(m.root).expanduser().absolute()) for m in self.members])
        super().__init__(UNION, root or common, **settings)
        shared = {k: v for k, v in settings.items() if k not in ("protocol", "category", "categories")}
        self.member_modules = {m.key: AnomalyDataModule(m.dataset, m.root, categories=list(m.categories), **shared)
                               for m in self.members}  # fmt: skip

    def _dataset_info(self, name: str) -> DatasetInfo:
        infos = {m.key: get_dataset_info(m.dataset) for m in self.members}

        def each(field: str) -> str:
            return "; ".join(f"{key}: {getattr(info, field)}" for key, info in infos.items())

        return DatasetInfo(UNION, "", None, tuple(self.names), each("layout"), each("source"), each("licence"))

    def prepare_data(self) -> None:
        for key, module in self.member_modules.items():
            wanted = [c for c in module.categories if any(m.key == key and o == c for m, o in self.names.values())]
            if wanted:
                module.categories = wanted
                module.prepare_data()

    def _index(self, category: str, split: str) -> list[Sample]:
        member, own = self.names[category]
        samples = self.member_modules[member.key]._index(own, split)
        return [dataclasses.replace(s, category=category) for s in samples]  # sample ids, kinds, masks kept

    def category_sources(self) -> dict[str, tuple[str, str, str]]:
        return {name: (m.key, m.dataset, own) for name, (m, own) in self.names.items() if name in self.categories}

    def member_record(self) -> dict[str, dict[str, str]]:
        return {m.key: {"dataset": m.dataset, "root": m.root} for m in self.members}
