"""Will a new cluster fit the subscription's Azure ML quota in the workspace's region?

Azure ML counts dedicated cluster vCPUs per VM family and in total per region (`compute.list_usage()`:
entries of type `.../vmFamily/usages` named "Standard NCADSA100v4 Family Cluster Dedicated vCPUs", and
`.../dedicatedCores/usages` "Total Cluster Dedicated Regional vCPUs"; limit and current value each).
A VM size's family and vCPUs come from `compute.list_sizes()` (`family` "standardNCADSA100v4Family").

The nodes a fine-tuning job needs (finetune.num_nodes, at least one, at least compute.min_instances) must
fit, or the job would wait for nodes that never come: check-compute refuses such a cluster (exit 2) with
the numbers and the allowed sizes that would fit. A cluster that can scale beyond the quota is only
warned about. No azure imports here: it works on the SDK's VmSize and Usage objects.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

REGIONAL = "total cluster dedicated regional vcpus"


def _field(obj: Any, snake: str, rest: str) -> Any:
    """An SDK entity's field: azure-ai-ml 1.35 fills VmSize/Usage from the REST model's as_dict(), so the
    REST name (vCPUs, currentValue) holds the value and the documented attribute stays None."""
    value = getattr(obj, snake, None)
    return getattr(obj, rest, None) if value is None else value


def vcpus_of(vm: Any) -> int:
    return int(_field(vm, "v_cp_us", "vCPUs") or 0)


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def family_key(family: str) -> str:
    """'standardNCADSA100v4Family' and 'Standard NCADSA100v4 Family Cluster Dedicated vCPUs' -> one key."""
    key = _norm(family)
    return key.removesuffix("clusterdedicatedvcpus")


@dataclass(frozen=True)
class Free:
    name: str  # as Azure names the quota
    limit: int | None  # None: no limit
    used: int

    @property
    def free(self) -> int | None:
        return None if self.limit is None else max(self.limit - self.used, 0)

    def text(self) -> str:
        if self.limit is None:
            return f"{self.name}: no limit ({self.used} in use)"
        return f"{self.name}: {self.free} of {self.limit} free ({self.used} in use)"


@dataclass(frozen=True)
class Quotas:
    families: dict[str, Free]  # family_key -> quota
    regional: Free | None

    @classmethod
    def from_usages(cls, usages: Iterable[Any]) -> Quotas:
        families: dict[str, Free] = {}
        regional = None
        for usage in usages:
            label = getattr(usage, "name", None)  # a UsageName, or its dict (Usage._from_rest_object)
            name = str(
                (label.get("value") if isinstance(label, dict) else getattr(label, "value", None)) or ""
            )
            kind = str(getattr(usage, "type", "") or "")
            limit = getattr(usage, "limit", None)
            used = int(_field(usage, "current_value", "currentValue") or 0)
            free = Free(name, None if limit is None or int(limit) < 0 else int(limit), used)
            if name.lower() == REGIONAL:
                regional = free
            elif kind.lower().endswith("vmfamily/usages") and _norm(name).endswith("clusterdedicatedvcpus"):
                families[family_key(name)] = free
        return cls(families, regional)

    def fits(self, family: str, vcpus: int) -> tuple[bool, list[Free]]:
        """Whether `vcpus` more dedicated vCPUs of `family` fit, and the quotas that decide it."""
        checked = [q for q in (self.families.get(family_key(family)), self.regional) if q is not None]
        return all(q.free is None or vcpus <= q.free for q in checked), checked


@dataclass(frozen=True)
class Verdict:
    ok: bool
    known: bool  # False: the family's quota was not in the usage list (nothing checked)
    message: str
    warning: str | None
    alternatives: list[str]


def check(
    size: str,
    sizes: list[Any],
    usages: Iterable[Any],
    nodes_needed: int,
    max_nodes: int,
    candidates: list[str],
) -> Verdict:
    """Whether `nodes_needed` nodes of `size` fit (and `max_nodes` for the warning); `candidates`: the
    sizes that may be used instead (the allow-list), named when they would fit."""
    by_name = {(vm.name or "").lower(): vm for vm in sizes}
    vm = by_name.get(size.lower())
    quotas = Quotas.from_usages(usages)
    if vm is None or not getattr(vm, "family", None):
        return Verdict(True, False, f"no family known for {size}", None, [])
    vcpus = vcpus_of(vm)
    if family_key(vm.family) not in quotas.families:
        return Verdict(True, False, f"no quota listed for {vm.family}", None, [])
    need = nodes_needed * vcpus
    ok, checked = quotas.fits(vm.family, need)
    numbers = "; ".join(q.text() for q in checked)
    message = (
        f"{nodes_needed} node{'s' if nodes_needed != 1 else ''} of {size} ({vcpus} vCPUs each) need "
        f"{need} dedicated vCPUs; {numbers}"
    )
    warning = None
    if ok and max_nodes > nodes_needed:
        most, _ = quotas.fits(vm.family, max_nodes * vcpus)
        if not most:
            warning = (
                f"the cluster may scale to {max_nodes} nodes ({max_nodes * vcpus} vCPUs), more than {numbers}"
            )
    alternatives = []
    if not ok:
        for name in candidates:
            other = by_name.get(name.lower())
            if other is None or not getattr(other, "gpus", 0) or name.lower() == size.lower():
                continue
            other_vcpus = vcpus_of(other)
            fits, quotas_checked = quotas.fits(other.family or "", nodes_needed * other_vcpus)
            if fits and family_key(other.family or "") in quotas.families:
                free = quotas.families[family_key(other.family or "")].free
                alternatives.append(
                    f"{other.name} ({other.gpus} GPU, {other_vcpus} vCPUs; "
                    f"{'no limit' if free is None else f'{free} vCPUs free'})"
                )
    return Verdict(ok, True, message, warning, alternatives)
