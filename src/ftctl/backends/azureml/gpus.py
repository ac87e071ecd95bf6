"""What `ftctl plan` knows about Azure ML's GPU sizes and the registry's models without asking Azure.

`compute.list_sizes()` gives a size's GPU count and host memory, not its GPU memory, and the registry
gives a model's name, not its shape. The plan's memory estimate needs both, so they are kept here: the
GPU sizes the fine-tuning allow-lists and the tutorials use, and the shapes of the Phi models the
registry offers for chat fine-tuning. Each entry names where its figures come from. GPU memory is the
product's nominal size in GiB; a few hundred MiB of it are not usable, which the plan's 10% margin
("tight") covers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class GpuSize:
    name: str
    gpu: str
    gpus: int
    memory_gib: int  # per GPU
    source: str


def _series(page: str) -> str:
    return f"https://learn.microsoft.com/azure/virtual-machines/sizes/gpu-accelerated/{page}"


_NCV3 = _series("ncv3-series")
_NCT4 = _series("ncast4v3-series")
_NCA10 = _series("nca10v4-series")
_NCA100 = _series("nca100v4-series")
_NDA100 = _series("ndasra100v4-series")
_NDMA100 = _series("ndma100v4-series")
_NDV2 = _series("ndv2-series")
_NCH100 = _series("ncadsh100v5-series")
_NDH100 = _series("ndh100v5-series")

SIZES = [
    GpuSize("Standard_NC6s_v3", "Tesla V100", 1, 16, _NCV3),
    GpuSize("Standard_NC12s_v3", "Tesla V100", 2, 16, _NCV3),
    GpuSize("Standard_NC24s_v3", "Tesla V100", 4, 16, _NCV3),
    GpuSize("Standard_NC24rs_v3", "Tesla V100", 4, 16, _NCV3),
    GpuSize("Standard_ND40rs_v2", "Tesla V100 (32 GB)", 8, 32, _NDV2),
    GpuSize("Standard_NC4as_T4_v3", "Tesla T4", 1, 16, _NCT4),
    GpuSize("Standard_NC8as_T4_v3", "Tesla T4", 1, 16, _NCT4),
    GpuSize("Standard_NC16as_T4_v3", "Tesla T4", 1, 16, _NCT4),
    GpuSize("Standard_NC64as_T4_v3", "Tesla T4", 4, 16, _NCT4),
    GpuSize("Standard_NC8ads_A10_v4", "A10", 1, 24, _NCA10),
    GpuSize("Standard_NC16ads_A10_v4", "A10", 1, 24, _NCA10),
    GpuSize("Standard_NC32ads_A10_v4", "A10", 2, 24, _NCA10),
    GpuSize("Standard_NC24ads_A100_v4", "A100 PCIe 80GB", 1, 80, _NCA100),
    GpuSize("Standard_NC48ads_A100_v4", "A100 PCIe 80GB", 2, 80, _NCA100),
    GpuSize("Standard_NC96ads_A100_v4", "A100 PCIe 80GB", 4, 80, _NCA100),
    GpuSize("Standard_ND96asr_v4", "A100 40GB", 8, 40, _NDA100),
    GpuSize("Standard_ND96amsr_A100_v4", "A100 80GB", 8, 80, _NDMA100),
    GpuSize("Standard_NC40ads_H100_v5", "H100 NVL", 1, 94, _NCH100),
    GpuSize("Standard_NC80adis_H100_v5", "H100 NVL", 2, 94, _NCH100),
    GpuSize("Standard_ND96isr_H100_v5", "H100", 8, 80, _NDH100),
]
_BY_NAME = {size.name.lower(): size for size in SIZES}


def gpu_size(name: str | None) -> GpuSize | None:
    """The table's entry for an Azure VM size (case-insensitive, as Azure ML compares sizes)."""
    return _BY_NAME.get((name or "").lower())


@dataclass(frozen=True)
class KnownModel:
    hub_id: str  # where the same weights and tokenizer are on the Hugging Face hub
    config: dict[str, Any]  # the fields of its config.json the memory estimate reads
    parameters: int

    @property
    def source(self) -> str:
        return f"config.json of {self.hub_id} on the Hugging Face hub"


def _phi3(hidden: int, layers: int, heads: int, kv: int, inter: int, context: int) -> dict[str, Any]:
    return {
        "model_type": "phi3",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "intermediate_size": inter,
        "vocab_size": 32064,
        "max_position_embeddings": context,
        "tie_word_embeddings": False,
    }


_MINI_4K = _phi3(3072, 32, 32, 32, 8192, 4096)
_MINI_128K = _phi3(3072, 32, 32, 32, 8192, 131072)
_MEDIUM_4K = _phi3(5120, 40, 40, 10, 17920, 4096)
_PHI4 = {**_phi3(5120, 40, 40, 10, 17920, 16384), "vocab_size": 100352}  # microsoft/phi-4 config.json
_PHI4_MINI = {
    **_phi3(3072, 32, 24, 8, 8192, 131072),
    "vocab_size": 200064,
    "tie_word_embeddings": True,
}

# Registry model name -> its shape. Parameter counts are the sum of the config's weight shapes (the
# checkpoints' safetensors index agrees: 2 bytes per parameter).
MODELS = {
    "Phi-3-mini-4k-instruct": KnownModel("microsoft/Phi-3-mini-4k-instruct", _MINI_4K, 3_821_079_552),
    "Phi-3-mini-128k-instruct": KnownModel("microsoft/Phi-3-mini-128k-instruct", _MINI_128K, 3_821_079_552),
    "Phi-3.5-mini-instruct": KnownModel("microsoft/Phi-3.5-mini-instruct", _MINI_128K, 3_821_079_552),
    "Phi-3-medium-4k-instruct": KnownModel("microsoft/Phi-3-medium-4k-instruct", _MEDIUM_4K, 13_960_238_080),
    "Phi-4": KnownModel("microsoft/phi-4", _PHI4, 14_659_507_200),
    "Phi-4-mini-instruct": KnownModel("microsoft/Phi-4-mini-instruct", _PHI4_MINI, 3_836_021_760),
}


def known_model(name: str | None) -> KnownModel | None:
    """The table's entry for a registry model name (a full azureml:// id or org/name is reduced to the
    name)."""
    short = (name or "").rstrip("/").split("/versions/")[0].rsplit("/", 1)[-1]
    return MODELS.get(short)
