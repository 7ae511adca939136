"""A minimal greedy decoder over llama-cpp-python's C API: how the tests and `bench/export_speed.py`
run exported states in an unmodified llama.cpp (`pip install 'prefixtune[llamacpp]'`).

It exists to check exports, not to serve: it restores a `.ggsq` into sequences, decodes prompts at
the positions after the restored cells and picks argmax tokens, several sequences per batch.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Collection
from pathlib import Path

import numpy as np

from prefixtune.errors import PrefixTuneError
from prefixtune.export.llamacpp import KV_TYPES

_GGML_LOG_ERROR = 4
MAX_UBATCH = 512
"""llama.cpp's default physical batch."""


class LlamaCppRunner:
    """One llama.cpp model and context, on the CPU."""

    def __init__(
        self,
        gguf: str | os.PathLike,
        n_ctx: int = 1024,
        flash_attn: bool = False,
        kv_type: str = "f32",
        threads: int = 2,
        sequences: int = 1,
        unified: bool = True,
    ) -> None:
        """Args: unified: one KV stream shared by the `sequences` (else one stream each: export the
        state with `LlamaCppOptions(streams=sequences)`)."""
        try:
            import llama_cpp as lc
        except ImportError as err:
            raise PrefixTuneError("running llama.cpp needs: pip install 'prefixtune[llamacpp]'") from err
        self.lc = lc
        lc.llama_backend_init()
        _quiet(lc)
        params = lc.llama_model_default_params()
        # CPUs with AMX (this machine's) crash in llama_decode's repacked AMX matmul: plain buffers only
        params.use_extra_bufts = False
        self.model = lc.llama_model_load_from_file(str(gguf).encode(), params)
        if not self.model:
            raise PrefixTuneError(f"llama.cpp could not load {gguf}")
        cparams = lc.llama_context_default_params()
        # one llama_decode may hold every row's prompt (n_batch), but llama.cpp sizes its compute
        # buffers by the physical batch, which it splits that into: n_ctx there asked 25 GB at 25k
        cparams.n_ctx, cparams.n_batch, cparams.n_ubatch = n_ctx, n_ctx, min(n_ctx, MAX_UBATCH)
        cparams.n_seq_max, cparams.kv_unified = sequences, unified
        cparams.n_threads = cparams.n_threads_batch = threads
        cparams.flash_attn_type = (
            lc.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else lc.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        cparams.type_k = cparams.type_v = KV_TYPES[kv_type][0]
        self.ctx = lc.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            lc.llama_model_free(self.model)
            raise PrefixTuneError(f"llama.cpp could not create a context of {n_ctx} cells for {gguf}")
        self.vocab_size = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(self.model))
        self.batch = lc.llama_batch_init(n_ctx, 0, sequences)

    def close(self) -> None:
        self.lc.llama_batch_free(self.batch)
        self.lc.llama_free(self.ctx)
        self.lc.llama_model_free(self.model)

    def clear(self) -> None:
        self.lc.llama_memory_clear(self.lc.llama_get_memory(self.ctx), True)

    def restore(self, state: str | os.PathLike, seq_id: int = 0) -> list[int]:
        """Load a `.ggsq` file into sequence `seq_id`; returns the token ids it records."""
        tokens = (self.lc.llama_token * 4096)()
        count = ctypes.c_size_t(0)
        read = self.lc.llama_state_seq_load_file(
            self.ctx, str(Path(state)).encode(), seq_id, tokens, len(tokens), ctypes.byref(count)
        )
        if read == 0:
            raise PrefixTuneError(f"llama.cpp refused the state {state} (its log says why)")
        return list(tokens[: count.value])

    def save(self, state: str | os.PathLike, tokens: list[int], seq_id: int = 0) -> None:
        """Write sequence `seq_id` as a `.ggsq` file recording `tokens` (llama.cpp's own writer)."""
        ids = (self.lc.llama_token * len(tokens))(*tokens)
        if (
            self.lc.llama_state_seq_save_file(self.ctx, str(Path(state)).encode(), seq_id, ids, len(tokens))
            == 0
        ):
            raise PrefixTuneError(f"llama.cpp could not save sequence {seq_id} to {state}")

    def decode(self, rows: list[list[int]], starts: list[int]) -> np.ndarray:
        """Decode row i's tokens as sequence i from position starts[i]; (rows, V) last-token logits."""
        batch, n = self.batch, 0
        for seq, (tokens, start) in enumerate(zip(rows, starts, strict=True)):
            for j, token in enumerate(tokens):
                batch.token[n], batch.pos[n], batch.n_seq_id[n] = token, start + j, 1
                batch.seq_id[n][0] = seq
                batch.logits[n] = j == len(tokens) - 1
                n += 1
        batch.n_tokens = n
        if self.lc.llama_decode(self.ctx, batch) != 0:
            raise PrefixTuneError("llama_decode failed (context full?)")
        out, index = [], 0
        for tokens in rows:
            index += len(tokens)
            logits = self.lc.llama_get_logits_ith(self.ctx, index - 1)
            out.append(np.ctypeslib.as_array(logits, shape=(self.vocab_size,)).copy())
        return np.stack(out)

    def greedy(
        self, prompts: list[list[int]], starts: list[int], max_new: int, stops: Collection[int] = ()
    ) -> tuple[list[list[int]], np.ndarray]:
        """Greedy continuation of each prompt (sequence i): `max_new` tokens, or up to one of `stops`.

        Returns the new tokens per row (without the stop token) and the first step's logits (rows, V).
        """
        logits = self.decode(prompts, starts)
        first = logits
        positions = [s + len(p) for s, p in zip(starts, prompts, strict=True)]
        new: list[list[int]] = [[] for _ in prompts]
        live = list(range(len(prompts)))
        for step in range(max_new):
            picks = logits.argmax(-1)
            for row, token in zip(live, picks, strict=True):
                new[row].append(int(token))
            live = [r for r in live if new[r][-1] not in stops]
            if not live or step == max_new - 1:
                break
            tokens = [new[r][-1] for r in live]
            logits = self._step(live, tokens, [positions[r] + len(new[r]) - 1 for r in live])
        return [row[:-1] if row and row[-1] in stops else row for row in new], first

    def _step(self, seqs: list[int], tokens: list[int], positions: list[int]) -> np.ndarray:
        """One token for each of the sequences `seqs`; (len(seqs), V) logits."""
        batch = self.batch
        for n, (seq, token, pos) in enumerate(zip(seqs, tokens, positions, strict=True)):
            batch.token[n], batch.pos[n], batch.n_seq_id[n], batch.logits[n] = token, pos, 1, True
            batch.seq_id[n][0] = seq
        batch.n_tokens = len(seqs)
        if self.lc.llama_decode(self.ctx, batch) != 0:
            raise PrefixTuneError("llama_decode failed (context full?)")
        rows = [self.lc.llama_get_logits_ith(self.ctx, n) for n in range(len(seqs))]
        return np.stack([np.ctypeslib.as_array(r, shape=(self.vocab_size,)).copy() for r in rows])


def _quiet(lc) -> None:
    """Silence llama.cpp's log but for errors (why a state is refused, say), which go to stderr."""

    def log(level, text, data):
        if level == _GGML_LOG_ERROR:
            sys.stderr.write(text.decode(errors="replace"))

    callback = lc.llama_log_callback(log)
    _quiet.keep = callback  # the C side holds a pointer: keep the Python callable alive
    lc.llama_log_set(callback, ctypes.c_void_p())
