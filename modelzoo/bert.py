"""A BERT-base-shaped encoder: transformers' BertModel from a config (seeded random weights),
exported by torch.onnx with dynamic batch and sequence, and the same after onnxruntime's
transformer optimizer (EmbedLayerNormalization, Attention, SkipLayerNormalization, BiasGelu:
com.microsoft operators).

The TorchScript exporter (`dynamo=False`) is used here: onnxruntime's transformer optimizer
matches its attention pattern (with eager attention) and fuses every layer, while on the dynamo
exporter's graph of the same model it fuses no Attention (transformers 5.x, torch 2.13).
"""

from __future__ import annotations

import functools
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OUTPUTS = ("last_hidden_state", "pooler_output")


@dataclass(frozen=True)
class BertSize:
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int
    max_positions: int


SIZES = {
    "full": BertSize(768, 12, 12, 3072, 30522, 512),  # bert-base-uncased's shape: 110 M
    "small": BertSize(32, 2, 2, 64, 256, 128),
}


def bert(size: BertSize, seed: int = 0):
    """transformers.BertModel from a config, seeded, eval mode, eager attention."""
    import torch
    from transformers import BertConfig, BertModel

    config = BertConfig(
        hidden_size=size.hidden,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        intermediate_size=size.intermediate,
        vocab_size=size.vocab,
        max_position_embeddings=size.max_positions,
    )
    config._attn_implementation = "eager"  # the pattern the transformer optimizer fuses
    torch.manual_seed(seed)
    model = BertModel(config).eval()

    class Encoder(torch.nn.Module):
        """BertModel with the three inputs by name and both outputs as a tuple."""

        def __init__(self) -> None:
            super().__init__()
            self.bert = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            out = self.bert(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=token_type_ids,
                return_dict=True,
            )
            return out.last_hidden_state, out.pooler_output

    return Encoder().eval()


@functools.cache
def exported(size_name: str) -> tuple[object, bytes]:
    """(torch module, ONNX bytes) of the encoder at `size_name`, exported once per process."""
    import torch

    size = SIZES[size_name]
    model = bert(size)
    feeds = tokens(size_name, 2, 16)
    example = tuple(torch.from_numpy(feeds[name]) for name in INPUTS)
    axes = {name: {0: "batch", 1: "sequence"} for name in INPUTS}
    axes["last_hidden_state"] = {0: "batch", 1: "sequence"}
    axes["pooler_output"] = {0: "batch"}
    with tempfile.TemporaryDirectory(prefix="modelzoo-") as folder:
        path = Path(folder) / "model.onnx"
        torch.onnx.export(
            model,
            example,
            str(path),
            dynamo=False,
            input_names=list(INPUTS),
            output_names=list(OUTPUTS),
            dynamic_axes=axes,
            opset_version=17,
        )
        return model, path.read_bytes()


def optimize(source: str, target: str, size_name: str) -> dict[str, int]:
    """onnxruntime's transformer optimizer on the exported model; returns the fused counts."""
    from onnxruntime.transformers import optimizer

    size = SIZES[size_name]
    optimized = optimizer.optimize_model(
        source, model_type="bert", num_heads=size.heads, hidden_size=size.hidden
    )
    optimized.save_model_to_file(target)
    return {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}


def tokens(size_name: str, batch: int, sequence: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Token ids (int64 [N, S]) with right padding of varying length, as a tokenizer pads a
    batch: row i keeps at least half of the sequence; two segments (token_type_ids 0 then 1)."""
    size = SIZES[size_name]
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, size.vocab, (batch, sequence), dtype=np.int64)
    mask = np.ones((batch, sequence), np.int64)
    types = np.zeros((batch, sequence), np.int64)
    for row in range(batch):
        keep = int(rng.integers((sequence + 1) // 2, sequence + 1))
        ids[row, keep:] = 0
        mask[row, keep:] = 0
        types[row, keep // 2 : keep] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def torch_outputs(model, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import torch

    with torch.no_grad():
        hidden, pooled = model(*(torch.from_numpy(feeds[name]) for name in INPUTS))
    return {"last_hidden_state": hidden.numpy(), "pooler_output": pooled.numpy()}
