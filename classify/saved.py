"""Loading a saved head of any class: the one its config.json names, among finetext's heads."""
from __future__ import annotations

import os
from typing import Any

from finetext.classify.errors import HeadFormatError
from finetext.classify.heads import LayerAttention, ScalarMix
from finetext.classify.last_layer import LastLayerLogReg
from finetext.classify.persist import read_config, rebuild
from finetext.classify.token_attention import TokenLayerAttention

HEAD_CLASSES = {cls.__name__: cls for cls in (LastLayerLogReg, ScalarMix, LayerAttention, TokenLayerAttention)}


def load_head(directory: str | os.PathLike) -> Any:
    """Rebuild a saved head. Only JSON and safetensors are read: nothing in the folder can run code."""
    config = read_config(directory)
    cls = HEAD_CLASSES.get(config.get("class"))
    if cls is None:
        raise HeadFormatError(f"{directory}: unknown head class {config.get('class')!r}; known: "
                              f"{', '.join(HEAD_CLASSES)}.")
    return rebuild(cls, directory, config)
