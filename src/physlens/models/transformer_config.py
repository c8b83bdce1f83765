"""The architecture of an :class:`~physlens.models.transformer.OscillatorTransformer`, as one dataclass.

Its fields are what a study's ``[model]`` table and a checkpoint's ``config.json`` hold; the read-only
properties answer the TransformerLens config fields its tools read.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from physlens._validation import check_bool_fields, check_positive_int, resolve_dtype


@dataclass
class TransformerConfig:
    """Architecture of an :class:`OscillatorTransformer`. Field defaults give the seed's OLA."""

    d_model: int = 2  # width of the residual stream
    n_layers: int = 1  # number of blocks
    n_heads: int = 1  # attention heads per block
    d_head: int = 2  # width of each head's query/key/value space
    n_ctx: int = 40  # longest sequence the model accepts
    d_in: int = 2  # components per input state: (x, p)
    causal: bool = True  # position q attends only to keys k <= q
    attn_window: int | None = None  # attend only to keys with |q - k| < window (1: self only, model becomes linear)
    attn_only: bool = True  # no MLP in the blocks (the seed's OLA / nLA)
    d_mlp: int | None = None  # MLP width; None means 4 * d_model
    embed_bias: bool = True  # bias b_E on the embedding W_E
    unembed_bias: bool = True  # bias b_U on the unembedding W_U
    layer_norm: bool = False  # LayerNorm before attention, MLP and unembedding
    positional_embedding: bool = False  # learned W_pos added to the embedding
    scale_by_first_state: bool = False  # divide the input by the norm of its first state, multiply the output back: f(λs) = λ f(s)
    seed: int = 0  # seed of the weight initialisation
    dtype: str | torch.dtype = torch.float32  # parameter dtype (float64 for exact work); "float32"/"float64" are read as torch dtypes
    device: str = "cpu"  # where parameters live
    n_key_value_heads: int | None = None  # TransformerLens field; always equals n_heads here
    use_split_qkv_input: bool = False  # TransformerLens flag: each head reads its own copy of the block input (hook_q_input ...)
    attn_bias: bool = False  # biases b_Q, b_K, b_V on queries, keys and values (fold_layer_norm adds them to take ln1's bias)

    def __post_init__(self) -> None:
        for name in ("d_model", "n_layers", "n_heads", "d_head", "n_ctx", "d_in"):
            check_positive_int(name, getattr(self, name))
        if self.attn_window is not None:
            check_positive_int("attn_window", self.attn_window)
        if self.d_mlp is None:
            self.d_mlp = 4 * self.d_model
        check_positive_int("d_mlp", self.d_mlp)
        if self.n_key_value_heads is None:
            self.n_key_value_heads = self.n_heads
        if self.n_key_value_heads != self.n_heads:
            raise ValueError(f"n_key_value_heads must equal n_heads ({self.n_heads}), got {self.n_key_value_heads}")
        self.dtype = resolve_dtype(self.dtype)  # a torch.dtype, as TransformerLens code expects of cfg.dtype
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError, ValueError):
            raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda', got {self.device!r}") from None
        check_bool_fields(self)  # causal="false" would be truthy: a causal mask under a config that reads false
        if self.scale_by_first_state and self.attn_window is not None:
            raise ValueError(
                "scale_by_first_state passes the first state's size to every position, which an attention window "
                f"(attn_window={self.attn_window}) is meant to hide; use one or the other"
            )

    @property
    def normalization_type(self) -> str | None:
        """TransformerLens's name for the normalisation: ``"LN"`` (unfolded LayerNorm) or None."""
        return "LN" if self.layer_norm else None

    @property
    def d_vocab(self) -> int:
        """TransformerLens's width of ``W_U``'s output: here the state's components, not a vocabulary."""
        return self.d_in

    # Read-only answers to the TransformerLens config fields its code reads, for this architecture.
    @property
    def d_vocab_out(self) -> int:
        """TransformerLens field: the unembedding's width, the state's components."""
        return self.d_in

    @property
    def act_fn(self) -> str | None:
        """TransformerLens field: the MLP's nonlinearity, ``"gelu"`` (None when attention-only)."""
        return None if self.attn_only else "gelu"

    @property
    def positional_embedding_type(self) -> str | None:
        """TransformerLens field: ``"standard"`` (a learned ``W_pos``) or None (no positional embedding)."""
        return "standard" if self.positional_embedding else None

    @property
    def use_attn_result(self) -> bool:
        """TransformerLens flag: always True, every head's ``hook_result`` is computed."""
        return True

    @property
    def use_hook_mlp_in(self) -> bool:
        """TransformerLens flag: False, there is no ``hook_mlp_in``."""
        return False

    @property
    def use_attn_in(self) -> bool:
        """TransformerLens flag: False, there is no ``hook_attn_in``."""
        return False

    @property
    def default_prepend_bos(self) -> bool:
        """TransformerLens field: False, inputs are states and there is no BOS token."""
        return False

    @property
    def sees_future(self) -> bool:
        """True when some position can attend to a later one (no causal mask and window > 1).

        Such a model must not be trained with a loss on every position: position t would read its
        own target, the state at t + 1, from its input.
        """
        return not self.causal and (self.attn_window is None or self.attn_window > 1)


__all__ = ["TransformerConfig"]
