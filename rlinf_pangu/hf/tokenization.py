"""``PanguTokenizer``: the slow SentencePiece tokenizer openPangu-Embedded ships, without remote code."""

from __future__ import annotations

from typing import Any

from transformers.tokenization_utils_sentencepiece import SentencePieceBackend

from ..chat import BOS, CHAT_TEMPLATE, EOS_PIECE, UNK


class PanguTokenizer(SentencePieceBackend):
    vocab_files_names = {"vocab_file": "tokenizer.model"}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(
        self,
        vocab_file: str,
        unk_token: str = UNK,
        bos_token: str = BOS,
        eos_token: str = EOS_PIECE,
        pad_token: str = UNK,
        add_bos_token: bool = True,
        add_eos_token: bool = False,
        chat_template: str | None = CHAT_TEMPLATE,
        **kwargs: Any,
    ) -> None:
        self.add_bos_token = add_bos_token
        self.add_eos_token = add_eos_token
        kwargs.setdefault("legacy", True)
        kwargs.setdefault("clean_up_tokenization_spaces", False)
        super().__init__(
            vocab_file=vocab_file,
            unk_token=unk_token,
            bos_token=bos_token,
            eos_token=eos_token,
            pad_token=pad_token,
            add_bos_token=add_bos_token,
            add_eos_token=add_eos_token,
            chat_template=chat_template,
            **kwargs,
        )

    @property
    def special_ids_to_skip(self) -> set[int]:
        """The ids ``skip_special_tokens=True`` drops: every added token flagged ``"special": true``
        (the release's tokenizer_config.json flags ``<unk> <s> </s>`` and ``[unused0]..[unused33]``,
        the chat and thinking markers included), plus the named special tokens (bos, eos, unk, pad).

        transformers' slow tokenizers skip only the named ones (``all_special_ids``), which kept
        ``</s>`` and ``[unused9]`` in decoded text while dropping ``<s>`` and ``[unused10]``.
        """
        flagged = {i for i, tok in self.added_tokens_decoder.items() if tok.special}
        return flagged | set(self.all_special_ids)

    def convert_ids_to_tokens(self, ids: int | list[int], skip_special_tokens: bool = False) -> str | list[str]:
        if skip_special_tokens and not isinstance(ids, int):
            skip = self.special_ids_to_skip
            ids = [i for i in ids if int(i) not in skip]
        return super().convert_ids_to_tokens(ids, skip_special_tokens=skip_special_tokens)

    def _wrap(self, ids: list[int]) -> list[int]:
        bos = [self.bos_token_id] if self.add_bos_token else []
        eos = [self.eos_token_id] if self.add_eos_token else []
        return bos + ids + eos

    def build_inputs_with_special_tokens(self, token_ids_0: list[int], token_ids_1: list[int] | None = None) -> list[int]:
        out = self._wrap(list(token_ids_0))
        if token_ids_1 is not None:
            out += self._wrap(list(token_ids_1))
        return out

    def get_special_tokens_mask(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None, already_has_special_tokens: bool = False
    ) -> list[int]:
        if already_has_special_tokens:
            return super().get_special_tokens_mask(token_ids_0, token_ids_1, already_has_special_tokens=True)
        mask = self._wrap([0] * len(token_ids_0))
        mask = [1 if i == 0 and self.add_bos_token else m for i, m in enumerate(mask)]
        if self.add_eos_token:
            mask[-1] = 1
        if token_ids_1 is not None:
            m1 = [0] * len(token_ids_1)
            mask += ([1] if self.add_bos_token else []) + m1 + ([1] if self.add_eos_token else [])
        return mask

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        per = int(self.add_bos_token) + int(self.add_eos_token)
        return per * (2 if pair else 1)
