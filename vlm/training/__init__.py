"""Training CoCa/CLIP models with Hugging Face Accelerate (one CPU, one or many GPUs, DDP or FSDP).

    accelerate launch scripts/train.py --config configs/shapes_tiny.yaml [key=value ...]

``load_train_config`` reads the YAML recipe, ``train`` runs it (see
``vlm.training.loop``). The objective is CoCa's (Yu et al. 2022). The config
module is light; torch and accelerate load when ``train`` is first used.
"""

from vlm.training.config import DataConfig, TrainConfig, load_train_config

__all__ = ["DataConfig", "NonFiniteLossError", "TrainConfig", "load_train_config", "train"]


def __getattr__(name):
    if name in ("train", "NonFiniteLossError"):
        from vlm.training import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'vlm.training' has no attribute {name!r}")
