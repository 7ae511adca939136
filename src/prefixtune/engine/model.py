"""`PrefixModel`: a frozen Hugging Face model plus a bank of named prefixes, by composition.

The base model is never subclassed or copied; it is switched to the `prefixtune` attention (see
`inject`) and each forward tells that attention which prefix each batch row sees.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from prefixtune.engine import prompt
from prefixtune.engine.config import PrefixConfig
from prefixtune.engine.errors import PrefixTuneError
from prefixtune.engine.initialise import initial_target, resolve_length
from prefixtune.engine.inject import Injector, PrefixBatch, detach
from prefixtune.engine.layout import SlotLayout
from prefixtune.engine.positions import PositionHook
from prefixtune.engine.prefix import Prefix
from prefixtune.engine.storage import Extra, save_prefix

DEFAULT_NAME = "default"
RowPrefixes = str | Sequence[str | None] | None
"""What the `prefix=` argument takes: one name for every row, one name (or None) per row, or None
for the default prefix on every row."""


class Attachment(Protocol):
    """What code outside the engine keeps on a PrefixModel (`PrefixModel.attachments`), e.g. a task
    head: trained with the prefixes, saved with every prefix, let go of when the model is unloaded."""

    def parameters(self) -> list[nn.Parameter]:
        """What trains with the prefixes (`PrefixModel.prefix_parameters` lists those requiring grad)."""

    def extra(self) -> Extra | None:
        """The tensors to save beside each prefix as `NAME.safetensors` (None: nothing to save)."""

    def release(self) -> None:
        """Undo what it did to the base model that `unload` must not leave behind (hooks)."""


class PrefixModel(nn.Module):
    """A frozen base model whose attention layers see trainable prefixes.

    `forward` and `generate` take the Hugging Face arguments plus `prefix=`: a prefix name for all
    rows, a list with one name (or None for no prefix) per row, or nothing for the default prefix.
    """

    def __init__(self, base: nn.Module, injector: Injector) -> None:
        super().__init__()
        self.base = base
        self.injector = injector
        self.layout = SlotLayout(injector.slots)
        self.prefixes = nn.ModuleDict()
        self.default_prefix: str | None = None
        self.attachments: dict[str, Attachment] = {}
        """Name -> state that other code keeps on this model; each is saved with every prefix as
        `NAME.safetensors` (see `storage.Extra`) and released by `unload`."""
        self._hook = PositionHook(injector, base.config)
        self._hook_handle = base.register_forward_pre_hook(self._hook, with_kwargs=True)

    # -- the bank -------------------------------------------------------------------------------
    def add(self, name: str, config: PrefixConfig, tokenizer=None) -> Prefix:
        """Create and initialise a new prefix called `name` (the first one becomes the default)."""
        if name in self.prefixes:
            raise PrefixTuneError(
                f"a prefix named {name!r} already exists; remove it first or pick another name"
            )
        _check_kind(config.kind, self.base, self.injector)  # before any work
        _check_positions(config, self.base)
        length = resolve_length(config, tokenizer)
        rng = torch.random.fork_rng() if config.seed is not None else contextlib.nullcontext()
        with rng:
            if config.seed is not None:
                torch.manual_seed(config.seed)
            prefix = Prefix(config, self.layout, length, self.base.get_input_embeddings().embedding_dim)
        target = initial_target(config, prefix, self.base, self.injector, tokenizer)
        prefix.set_initial(target, zero=config.init == "zero")
        return self.insert(name, prefix.to(self.device))

    def insert(self, name: str, prefix: Prefix) -> Prefix:
        """Put an existing `Prefix` (e.g. loaded from disk) into the bank."""
        if prefix.slots[-1] >= len(self.layout.slots) or prefix.layout.slots != [
            self.layout.slots[i] for i in prefix.slots
        ]:
            raise PrefixTuneError(f"prefix {name!r} was built for other attention layers than this model's")
        if prefix.config.positions == "shifted" and self.injector.bidirectional:
            raise PrefixTuneError(
                f"prefix {name!r} has positions='shifted', which only a causal decoder can honour; "
                "an encoder's prefix takes no positions: use positions='keep'"
            )
        _check_kind(prefix.config.kind, self.base, self.injector)
        if prefix.prompt:  # an unfolded embedding prompt computes its keys/values through this base
            prefix.encoder = functools.partial(
                prompt.encode_prompt, self.base, self.injector, prefix.slots, prefix.layout
            )
        self.prefixes[name] = prefix
        if self.default_prefix is None:
            self.default_prefix = name
        return prefix

    def remove(self, name: str) -> None:
        self._check_names([name])
        del self.prefixes[name]
        if self.default_prefix == name:
            self.default_prefix = next(iter(self.prefixes), None)

    @property
    def device(self) -> torch.device:
        return next(self.base.parameters()).device

    @property
    def config(self):
        """The base model's config (so code written for Hugging Face models finds it)."""
        return self.base.config

    # -- what trainers look up on a Hugging Face model (TRL's SFTTrainer; see interop.trainer) -----
    @property
    def generation_config(self):
        """The base model's generation config (SFTTrainer writes the tokenizer's pad/eos ids into it)."""
        return self.base.generation_config

    def get_input_embeddings(self) -> nn.Module:
        return self.base.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module | None:
        return self.base.get_output_embeddings()

    def add_model_tags(self, tags: str | list[str]) -> None:
        """Tag the base model's card (SFTTrainer adds "trl", "sft")."""
        if hasattr(self.base, "add_model_tags"):
            self.base.add_model_tags(tags)

    @property
    def base_model(self):
        """The base's body without its LM head, with the prefixes injected: a callable taking
        `forward`'s arguments and returning the body's output (`last_hidden_state`).

        TRL's SFTTrainer replaces `forward` with a fused loss that calls `model.base_model(...)` and
        projects the hidden states through `get_output_embeddings()` itself; without this, that path
        would skip `forward` and so never tell the attention which prefix each row sees.
        """
        return self._body_forward

    def _body_forward(
        self, input_ids=None, attention_mask=None, prefix: RowPrefixes = None, infix_at=None, **kwargs
    ):
        rows = _rows(input_ids, kwargs.get("inputs_embeds"))
        self.injector.current = self.prefix_batch(prefix, rows, infix_at)
        kwargs.update(input_ids=input_ids, attention_mask=attention_mask)
        # The position hook sits on the whole base model, which this path does not call: run it here
        # so the body gets the position ids the whole model's forward would give it.
        changed = self._hook(self.base, (), kwargs)
        body = self.base.base_model
        return body(**(changed[1] if changed is not None else kwargs))

    # -- running ----------------------------------------------------------------------------------
    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        prefix: RowPrefixes = None,
        labels=None,
        infix_at: torch.Tensor | None = None,
        **kwargs,
    ):
        """The base model's forward, with each row seeing the prefix `prefix` names for it.

        `labels` is named (not left to **kwargs) so that Hugging Face's Trainer finds it and reports
        an evaluation loss. `infix_at` (B,) long is needed when a row's prefix is an infix: the first
        column (of the padded input) whose query sees it, normally the source's last token, which
        predicts the target's first (`train.loss` derives it from the labels).
        """
        rows = _rows(input_ids, kwargs.get("inputs_embeds"))
        self.injector.current = self.prefix_batch(prefix, rows, infix_at)
        if labels is not None:
            kwargs["labels"] = labels
        return self.base(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    @torch.no_grad()
    def generate(
        self,
        input_ids=None,
        attention_mask=None,
        prefix: RowPrefixes = None,
        infix_at: torch.Tensor | None = None,
        **kwargs,
    ):
        """`generate` of the base model; the prefixes are materialised once for the whole call.

        An infix is seen from the prompt's last column on (`infix_at` by default), so that every
        new token is predicted with it and no prompt token's keys/values change.
        """
        rows = _rows(input_ids, kwargs.get("inputs_embeds"))
        if infix_at is None:
            width = (input_ids if input_ids is not None else kwargs["inputs_embeds"]).shape[1]
            infix_at = torch.full((rows,), width - 1, dtype=torch.long, device=self.device)
        batch = self.prefix_batch(prefix, rows, infix_at)
        self._hook.check_generation_length(batch, input_ids, kwargs)
        self.injector.current = batch
        return self.base.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    def prefix_batch(
        self, prefix: RowPrefixes, rows: int, infix_at: torch.Tensor | None = None
    ) -> PrefixBatch | None:
        """Materialise each named prefix once and lay them out per row.

        Args:
            infix_at: (B,) long, where the rows whose prefix is an infix start to see it (see `forward`).
        Returns None when no row has a prefix (the bare model runs).
        """
        names = self._row_names(prefix, rows)
        used = list(dict.fromkeys(n for n in names if n is not None))
        if not used:
            return None
        batch = self._shared_or_mixed(names, used)
        batch.seen_from = self._seen_from(names, infix_at)
        return batch

    def _seen_from(self, names: list[str | None], infix_at: torch.Tensor | None) -> torch.Tensor | None:
        """`PrefixBatch.seen_from`: `infix_at` for an infix's rows, 0 (every query) for the others."""
        infix = torch.tensor(
            [n is not None and self.prefixes[n].config.kind == "infix" for n in names], device=self.device
        )
        if not infix.any():
            return None
        if infix_at is None:
            raise PrefixTuneError(
                "an infix prefix needs infix_at=: per row, the first column whose query sees it "
                "(the source's last token)"
            )
        infix_at = torch.as_tensor(infix_at, device=self.device).long().expand(len(names))  # (B,)
        return torch.where(infix, infix_at, 0)

    def _shared_or_mixed(self, names: list[str | None], used: list[str]) -> PrefixBatch:
        if len(used) == 1 and None not in names:  # every row shares one prefix: broadcast, no copies
            only = self.prefixes[used[0]]
            pairs = dict(zip(only.slots, only.slot_tensors(), strict=True))
            keys = [pairs[i][0][None] if i in pairs else None for i in range(len(self.layout.slots))]
            values = [pairs[i][1][None] if i in pairs else None for i in range(len(self.layout.slots))]
            offsets = None
            if only.config.positions == "shifted":
                # one row, like the keys: it broadcasts over beams and returned sequences too
                offsets = torch.full((1,), only.length, dtype=torch.long, device=self.device)
            return PrefixBatch(keys, values, None, offsets)
        return self._mixed_batch(names, used)

    def _mixed_batch(self, names: list[str | None], used: list[str]) -> PrefixBatch:
        """Rows with different prefixes (or none): pad to the longest, mask each row's unused columns.

        A slot that some used prefix skips (`PrefixConfig.layers`) gets zero columns for that
        prefix's rows and a visibility of its own that masks them; a slot none covers runs bare.
        """
        prefixes = [self.prefixes[n] for n in used]
        longest = max(p.length for p in prefixes)
        table = {n: i for i, n in enumerate(used)}
        row_index = torch.tensor([table.get(n, len(used)) for n in names], device=self.device)  # (B,)
        per_prefix = [dict(zip(p.slots, p.slot_tensors(), strict=True)) for p in prefixes]
        lengths = torch.tensor([p.length for p in prefixes] + [0], device=self.device)  # (N+1,)
        visible = torch.arange(longest, device=self.device)[None, :] < lengths[:, None]  # (N+1, P_max)
        keys: list[torch.Tensor | None] = []
        values: list[torch.Tensor | None] = []
        slot_visible = {}
        for slot in range(len(self.layout.slots)):
            pairs = [own.get(slot) for own in per_prefix]
            covers = [pair is not None for pair in pairs]
            if not any(covers):
                keys.append(None)
                values.append(None)
                continue
            for which, out in ((0, keys), (1, values)):
                first = next(pair for pair in pairs if pair is not None)[which]  # (H_kv, P, D)
                zeros = first.new_zeros(first.shape[0], longest, first.shape[2])  # no prefix, or skipped
                stack = [zeros if pair is None else _pad(pair[which], longest) for pair in pairs]
                out.append(torch.stack([*stack, zeros]).index_select(0, row_index))  # (B, H_kv, P_max, D)
            if not all(covers):
                here = torch.tensor([*covers, False], device=self.device)  # (N+1,)
                slot_visible[slot] = (visible & here[:, None]).index_select(0, row_index)  # (B, P_max)
        shifted = torch.tensor(
            [p.config.positions == "shifted" for p in prefixes] + [False], device=self.device
        )
        offsets = torch.where(shifted, lengths, 0).index_select(0, row_index)
        return PrefixBatch(
            keys,
            values,
            visible.index_select(0, row_index),
            offsets if offsets.any() else None,
            slot_visible,
        )

    def _row_names(self, prefix: RowPrefixes, rows: int) -> list[str | None]:
        if prefix is None:
            if self.default_prefix is None:
                raise PrefixTuneError(
                    "this PrefixModel holds no prefix; add one with add_prefix or load_prefix"
                )
            return [self.default_prefix] * rows
        if isinstance(prefix, str):
            self._check_names([prefix])
            return [prefix] * rows
        names = list(prefix)
        if len(names) != rows:
            raise PrefixTuneError(f"prefix= names {len(names)} rows but the batch has {rows}")
        self._check_names([n for n in names if n is not None])
        return names

    def _check_names(self, names: list[str]) -> None:
        for name in names:
            if name not in self.prefixes:
                raise PrefixTuneError(f"no prefix named {name!r}; this model holds {sorted(self.prefixes)}")

    # -- training and storage -------------------------------------------------------------------
    def prefix_parameters(self, name: str | None = None, head: bool = True) -> list[nn.Parameter]:
        """The trainable parameters: every prefix's (or prefix `name`'s), then those that train with
        the prefixes, if any: the attachments' (a classifier's task head, see `train.heads`;
        `head=False` leaves them out). Each parameter appears once: hand the list to an optimizer as
        it is."""
        modules = [self.prefixes[name]] if name is not None else list(self.prefixes.values())
        params = [p for m in modules for p in m.parameters() if p.requires_grad]
        if head:
            params += [p for a in self.attachments.values() for p in a.parameters() if p.requires_grad]
        return list({id(p): p for p in params}.values())

    def gradient_checkpointing_enable(self) -> None:
        """Checkpoint the base model's layers.

        Non-reentrant checkpointing is required: the reentrant kind only sends gradients to a
        checkpointed block's tensor inputs, and the prefixes reach attention by another route.
        """
        self.activation_checkpointing_enable()

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: dict | None = None, **options):
        """What Hugging Face's Trainer calls for `activation_checkpointing=True`; always non-reentrant."""
        if (activation_checkpointing_kwargs or {}).get("use_reentrant"):
            raise PrefixTuneError(
                "reentrant checkpointing sends no gradient to the prefixes; use use_reentrant=False"
            )
        kwargs = {**(activation_checkpointing_kwargs or {}), "use_reentrant": False}
        self.base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs, **options)
        self.base.config.use_cache = False

    def state_dict(self, *, destination=None, prefix: str = "", keep_vars: bool = False):
        """The prefix bank (`prefixes.NAME.*`) and the base parameters the attachments train (a
        classifier's head, `base.NAME`), never the frozen base model's other weights.

        This is what makes a Hugging Face Trainer checkpoint of a PrefixModel a few KB instead of a
        copy of the base model; `load_state_dict` reads it back (see `prefixtune.interop.trainer`).
        """
        state = self.prefixes.state_dict(
            destination=destination, prefix=prefix + "prefixes.", keep_vars=keep_vars
        )
        for key, param in self._attached().items():
            state[prefix + key] = param if keep_vars else param.detach()
        return state

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Load what `state_dict` wrote; the base model's frozen weights are not touched."""
        own = {k.removeprefix("prefixes."): v for k, v in state_dict.items() if k.startswith("prefixes.")}
        result = self.prefixes.load_state_dict(own, strict=False, assign=assign)
        attached = self._attached()
        with torch.no_grad():
            for key in attached.keys() & state_dict.keys():
                attached[key].copy_(state_dict[key])
        missing = [f"prefixes.{k}" for k in result.missing_keys] + sorted(attached.keys() - state_dict.keys())
        unexpected = [f"prefixes.{k}" for k in result.unexpected_keys]
        unexpected += [k for k in state_dict if not k.startswith("prefixes.") and k not in attached]
        if strict and (missing or unexpected):
            raise RuntimeError(
                f"the state dict does not fit this prefix bank: missing {missing}, unexpected {unexpected}"
            )
        return type(result)(missing, unexpected)

    def _attached(self) -> dict[str, nn.Parameter]:
        """The base parameters the attachments train, by their names in the base (`base.NAME`)."""
        trained = {id(p) for a in self.attachments.values() for p in a.parameters() if p.requires_grad}
        return {f"base.{n}": p for n, p in self.base.named_parameters() if id(p) in trained}

    def fold(self) -> PrefixModel:
        """Replace every MLP reparametrisation by the flat prefix it produces (outputs unchanged)."""
        for prefix in self.prefixes.values():
            prefix.fold()
        return self

    def save(self, path: str | Path, name: str | None = None, include_trainable: bool = False) -> Path:
        """Write one prefix (default: the default prefix) as a prefix folder; see `storage`."""
        name = name or self.default_prefix
        if name is None:
            raise PrefixTuneError("nothing to save: this PrefixModel holds no prefix")
        if is_sharded(self):
            raise PrefixTuneError(
                "this PrefixModel is sharded (FSDP): on every process gather the prefix bank with "
                "torch.distributed.checkpoint.state_dict.get_model_state_dict(model, options="
                "StateDictOptions(full_state_dict=True)), load it into a PrefixModel of the unsharded "
                "base with load_state_dict, and save that one"
            )
        self._check_names([name])
        extras = {key: attachment.extra() for key, attachment in self.attachments.items()}
        kept = {key: extra for key, extra in extras.items() if extra is not None}
        return save_prefix(self, name, Path(path), include_trainable=include_trainable, extras=kept)

    def unload(self) -> nn.Module:
        """Detach all prefixes and give back the base model, running exactly as before."""
        self._hook_handle.remove()
        for attachment in self.attachments.values():
            attachment.release()
        self.attachments.clear()
        detach(self.base, self.injector)
        return self.base


def is_sharded(module: nn.Module) -> bool:
    """True when FSDP2 (`fully_shard`) has turned the module's parameters into sharded DTensors."""
    if not torch.distributed.is_available():
        return False
    try:
        from torch.distributed.tensor import DTensor  # public since torch 2.5, as FSDP2 is
    except ImportError:
        return False
    return any(isinstance(p, DTensor) for p in module.parameters())


def _check_kind(kind: str, base: nn.Module, injector: Injector) -> None:
    """An infix is defined for one causal stream `[x; INFIX; y]`; an embedding prompt, see `prompt`."""
    if kind == "embedding":
        prompt.check_supported(base, injector)
    if kind == "infix" and (getattr(base.config, "is_encoder_decoder", False) or injector.bidirectional):
        raise PrefixTuneError(
            f'kind="infix" ([x; INFIX; y] in one causal stream) needs a decoder-only model, not '
            f'{type(base).__name__}; use kind="prefix"'
        )


def _check_positions(config: PrefixConfig, base: nn.Module) -> None:
    """`shifted` is refused for encoder-decoder models: its reference (PEFT, the paper's GPT-2 code)
    treats the prefix as past tokens of one causal stream, which an encoder and a decoder with
    separate position counts (T5: relative bias) do not have. Their prefixes have no position."""
    if config.positions == "shifted" and getattr(base.config, "is_encoder_decoder", False):
        raise PrefixTuneError(
            'positions="shifted" is for decoder-only models; an encoder-decoder prefix has no position '
            '(T5: zero relative bias for the prefix columns): use positions="keep"'
        )


def _rows(input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None) -> int:
    source = input_ids if input_ids is not None else inputs_embeds
    if source is None:
        raise PrefixTuneError("pass input_ids or inputs_embeds")
    return source.shape[0]


def _pad(tensor: torch.Tensor, length: int) -> torch.Tensor:
    """(H_kv, p, D) -> (H_kv, length, D), zeros after the real columns."""
    return nn.functional.pad(tensor, (0, 0, 0, length - tensor.shape[1]))
